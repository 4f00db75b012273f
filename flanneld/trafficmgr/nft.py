"""nftables mode: our tables ``ip flannel-ipv4`` and ``ip6 flannel-ipv6``.

Both tables are rebuilt in one ``nft -f -`` transaction (old table deleted
and new one created atomically), so rules built from a previous subnet
never survive a setup and applying twice changes nothing.  Unlike
upstream, which has no resync in this mode, :meth:`NftablesManager.resync`
compares ``nft list table`` with the expected text and rebuilds a table
that differs.  The rule semantics follow iptables mode (see
:mod:`flanneld.trafficmgr.rules`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flanneld.trafficmgr import rules as R
from flanneld.trafficmgr.ipt import remove_iptables_chains
from flanneld.trafficmgr.runner import CommandRunner
from subnet.errors import DataplaneError

log = logging.getLogger(__name__)

VERSIONS = (4, 6)


class NftablesManager:
    """Masquerade/forward rules through nft (``EnableNFTables``)."""

    def __init__(self, runner: CommandRunner, random_fully_disabled: bool = False) -> None:
        self._run = runner
        self._random_fully_disabled = random_fully_disabled
        self._random_fully: bool | None = None
        self._desired: dict[int, list[R.NftChain]] = {}

    def setup(
        self,
        masq: bool,
        forward: bool,
        nets: Sequence[R.FamilyNets],
        previous: Sequence[R.FamilyNets] = (),
    ) -> None:
        """Replace both tables with the rules for ``nets``.

        ``previous`` needs no handling here: the tables are rebuilt whole.
        """
        del previous
        remove_iptables_chains(self._run)
        by_version = {fam.version: fam for fam in nets}
        random_fully = self.random_fully()
        desired = {
            v: R.nft_chains(v, by_version.get(v), masq, forward, random_fully) for v in VERSIONS
        }
        self._desired = desired  # kept even if applying fails: resync() retries
        self._apply("".join(R.nft_replace_script(v, chains) for v, chains in desired.items()))
        log.info("installed nftables tables %s", ", ".join(R.nft_table(v) for v in VERSIONS))

    def resync(self) -> int:
        """Rebuild every table whose listing differs from the expected one."""
        restored = 0
        for version, chains in self._desired.items():
            try:
                if self.listing(version) == R.nft_listing(version, chains):
                    continue
                log.warning(
                    "nftables table %s differs from ours, rebuilding it", R.nft_table(version)
                )
                self._apply(R.nft_replace_script(version, chains))
                restored += 1
            except DataplaneError as err:
                log.error("rebuilding nftables table %s failed: %s", R.nft_table(version), err)
        return restored

    def listing(self, version: int) -> str | None:
        """``nft list table`` of our table, None when it does not exist."""
        argv = ["nft", "list", "table", R.nft_family(version), R.nft_table(version)]
        result = self._run.run(argv)
        return result.stdout if result.ok else None

    def random_fully(self) -> bool:
        """Whether ``masquerade fully-random`` is accepted (checked, not committed)."""
        if self._random_fully_disabled:
            return False
        if self._random_fully is None:
            probe = self._run.run(["nft", "--check", "-f", "-"], stdin=R.NFT_RANDOM_FULLY_PROBE)
            self._random_fully = probe.ok
            if not probe.ok:
                log.info("nft does not accept masquerade fully-random: %s", probe.stderr.strip())
        return self._random_fully

    def _apply(self, script: str) -> None:
        self._run.check(["nft", "-f", "-"], stdin=script)
