"""NetworkPolicy enforcement in the kernel: our table ``inet pyflannel-policy``.

The rules come from the pure :func:`flanneld.netpol.ruleset.desired_ruleset`;
this module only observes and applies:

* :meth:`PolicyTable.apply` reads the table back (``nft -j list table``),
  plans with :func:`flanneld.netpol.script.plan` and runs the script in one
  ``nft -f -`` transaction: nothing when the kernel already holds the desired
  ruleset, set/map elements only when only pods changed, the whole table
  replaced atomically (``add table; delete table; table {...}``) otherwise.
  When an incremental script is refused (someone changed the table between
  our read and our write) the full replace is applied instead.
* :meth:`PolicyTable.remove` deletes our table (the flag switched off).
* :func:`ensure_bridge_netfilter` makes same-node (bridged) pod traffic visible
  to the inet forward hook: ``net.bridge.bridge-nf-call-iptables`` and
  ``-ip6tables`` = 1.  They are per network namespace (checked on Linux 6.18:
  setting 0 in a child namespace leaves the host's 1), so flanneld sets them
  in its own (the host's) namespace; when ``/proc/sys/net/bridge`` is absent
  it loads ``br_netfilter`` with modprobe and refuses to start, naming the
  fix, when that fails.

Only our table is touched; nothing here reads or writes another table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flanneld.netpol.table import FAMILY, TABLE, remove_script
from flanneld.trafficmgr.runner import CommandRunner
from subnet.errors import ConfigError, DataplaneError

if TYPE_CHECKING:
    from flanneld.netpol import script as S
    from flanneld.netpol.ruleset import Ruleset

log = logging.getLogger(__name__)

BRIDGE_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    kind: str  # "none", "incremental" or "full"
    commands: int  # script lines sent to nft


class PolicyTable:
    def __init__(self, runner: CommandRunner) -> None:
        self._run = runner
        self._known: S.Observed | None = None  # what our last successful apply left
        self._counters: dict[str, int] = {}  # as of the last read-back

    def observe(self) -> S.Observed | None:
        """Our table as the kernel holds it; None when it does not exist."""
        from flanneld.netpol import script as S  # loaded here: see remove()
        result = self._run.run(["nft", "-j", "list", "table", FAMILY, TABLE])
        if not result.ok:
            return None
        try:
            observed = S.observe(json.loads(result.stdout))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("cannot read back table %s %s (%s); replacing it whole", FAMILY, TABLE, err)
            return S.Observed(chains={"unreadable": S.ObservedChain(0, "", "forward")})
        self._counters = dict(observed.counters)
        return observed

    def apply(self, desired: Ruleset, verify: bool = True) -> ApplyResult:
        """Make the kernel hold ``desired``; raises DataplaneError when nft refuses it.

        ``verify=False`` plans against what our last apply left instead of reading
        the table back (saves the listing on every pod change); the periodic
        resync verifies, so manual damage is still repaired.
        """
        from flanneld.netpol import script as S  # loaded here: see remove()
        observed = self._known if not verify and self._known is not None else self.observe()
        text = S.plan(observed, desired)
        if not text:
            self._known = S.expected(desired)
            return ApplyResult("none", 0)
        self._known = None  # unknown until nft says yes
        full = S.render(desired)
        if text != full:
            result = self._run.run(["nft", "-f", "-"], stdin=text)
            if result.ok:
                self._known = S.expected(desired)
                return ApplyResult("incremental", text.count("\n"))
            log.warning("incremental policy update refused (%s); replacing the table",
                        result.stderr.strip())
        self._run.check(["nft", "-f", "-"], stdin=full)
        self._known = S.expected(desired)
        return ApplyResult("full", full.count("\n"))

    def counters(self) -> dict[str, int]:
        """Packets counted per chain (the iso chains' reject counters) at the last read-back.

        No nft run of its own: the periodic verifying apply reads the table.
        """
        return dict(self._counters)

    def remove(self) -> bool:
        """Delete our table; True when there was one.

        The policy engine's modules load when a table is first read or applied: a
        daemon without ``--network-policy`` only calls this (see
        :mod:`flanneld.netpol.table`).
        """
        self._known = None
        if self._run.run(["nft", "list", "table", FAMILY, TABLE]).ok:
            self._run.check(["nft", "-f", "-"], stdin=remove_script())
            log.info("removed nftables table %s %s (network policy off)", FAMILY, TABLE)
            return True
        return False


def ensure_bridge_netfilter(runner: CommandRunner, proc_sys: Path = Path("/proc/sys")) -> None:
    """Set bridge-nf-call-ip(6)tables=1, loading br_netfilter if needed; ConfigError if impossible."""
    bridge = proc_sys / "net" / "bridge"
    if not bridge.is_dir():
        try:
            loaded = runner.run(["modprobe", "br_netfilter"])
            detail = loaded.stderr.strip()
        except DataplaneError as err:
            detail = str(err)
        if not bridge.is_dir():
            raise ConfigError(
                "--network-policy needs br_netfilter so that the forward hook sees bridged "
                f"same-node pod traffic, and {bridge} is missing ({detail or 'modprobe failed'}):"
                " load it on the host (modprobe br_netfilter, or add br_netfilter to "
                "/etc/modules-load.d/) or run without --network-policy"
            )
        log.info("loaded br_netfilter for network policy")
    for name in BRIDGE_SYSCTLS:
        path = bridge / name
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
                log.info("set net.bridge.%s=1 for network policy", name)
        except OSError as err:
            raise ConfigError(
                f"--network-policy needs net.bridge.{name}=1 and it cannot be set ({err}): "
                f"set it on the host (sysctl -w net.bridge.{name}=1) or run without --network-policy"
            ) from err
