"""iptables mode: install, check and restore our chains with iptables-restore.

Each rule set (masquerade or forward, per family) is installed in one
``iptables-restore --noflush -w`` transaction (see
:func:`~flanneld.trafficmgr.rules.restore_script`).  Presence checks read
only our own chain (``iptables -S <chain>``) and test our jump rule with
``iptables -C``; nothing else in the tables is parsed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from flanneld.trafficmgr import rules as R
from flanneld.trafficmgr.runner import CommandRunner
from subnet.errors import DataplaneError

log = logging.getLogger(__name__)

RANDOM_FULLY_MIN_VERSION = (1, 6, 2)


@dataclass(frozen=True, slots=True)
class _Binaries:
    """The iptables programs of one IP family."""

    iptables: str
    restore: str


_BINARIES = {
    4: _Binaries("iptables", "iptables-restore"),
    6: _Binaries("ip6tables", "ip6tables-restore"),
}


@dataclass(frozen=True, slots=True)
class _RuleSet:
    """The rules of one of our chains in one IP family, installed as a whole."""

    version: int
    rules: tuple[R.IptRule, ...]

    @property
    def table(self) -> str:
        return self.rules[0].table

    @property
    def chain(self) -> str:
        return R.own_chain(self.rules)


class IptablesManager:
    """Masquerade/forward rules through iptables (the default mode)."""

    def __init__(self, runner: CommandRunner, random_fully_disabled: bool = False) -> None:
        self._run = runner
        self._random_fully_disabled = random_fully_disabled
        self._random_fully: dict[int, bool] = {}
        self._desired: list[_RuleSet] = []

    def setup(
        self,
        masq: bool,
        forward: bool,
        nets: Sequence[R.FamilyNets],
        previous: Sequence[R.FamilyNets] = (),
    ) -> None:
        """Install the rules for ``nets``; delete those built from ``previous`` first."""
        self._remove_nft_tables()
        desired: list[_RuleSet] = []
        for fam in nets:
            if masq:
                current = _RuleSet(
                    fam.version, tuple(R.masq_rules(fam, self.random_fully(fam.version)))
                )
                for prev in previous:
                    if prev.version == fam.version and prev != fam:
                        self._delete_stale(prev, current)
                desired.append(current)
            if forward:
                desired.append(_RuleSet(fam.version, tuple(R.forward_rules(fam.network))))
        self._desired = desired  # kept even if installing fails: resync() retries
        for rule_set in desired:
            self._install(rule_set)

    def resync(self) -> int:
        """Re-install every rule set that is incomplete; returns how many were."""
        restored = 0
        for rule_set in self._desired:
            try:
                if self._present(rule_set):
                    continue
                log.warning(
                    "iptables chain %s (IPv%d) is incomplete, restoring it",
                    rule_set.chain,
                    rule_set.version,
                )
                self._install(rule_set)
                restored += 1
            except DataplaneError as err:
                log.error(
                    "restoring iptables chain %s (IPv%d) failed: %s",
                    rule_set.chain,
                    rule_set.version,
                    err,
                )
        return restored

    def random_fully(self, version: int) -> bool:
        """Whether MASQUERADE gets ``--random-fully`` (flag and iptables >= 1.6.2)."""
        if self._random_fully_disabled:
            return False
        if version not in self._random_fully:
            result = self._run.run([_BINARIES[version].iptables, "--version"])
            found = re.search(r"v(\d+)\.(\d+)\.(\d+)", result.stdout)
            have = tuple(int(x) for x in found.groups()) if found else (0, 0, 0)
            self._random_fully[version] = result.ok and have >= RANDOM_FULLY_MIN_VERSION
        return self._random_fully[version]

    # --- checks and transactions ---------------------------------------------------

    def _present(self, rule_set: _RuleSet) -> bool:
        listing = self._chain_listing(rule_set.version, rule_set.table, rule_set.chain)
        if listing != R.chain_listing(rule_set.rules):
            return False
        jumps, _ = R.split_jumps(rule_set.rules)
        return all(self._rule_exists(rule_set.version, jump) for jump in jumps)

    def _chain_listing(self, version: int, table: str, chain: str) -> list[str] | None:
        result = self._run.run([_BINARIES[version].iptables, "-w", "-t", table, "-S", chain])
        return result.stdout.splitlines() if result.ok else None

    def _rule_exists(self, version: int, rule: R.IptRule) -> bool:
        argv = [_BINARIES[version].iptables, "-w", "-t", rule.table, "-C", rule.chain, *rule.spec]
        return self._run.run(argv).ok

    def _install(self, rule_set: _RuleSet) -> None:
        jumps, _ = R.split_jumps(rule_set.rules)
        present = 1 if all(self._rule_exists(rule_set.version, j) for j in jumps) else 0
        script = R.restore_script(rule_set.rules, present)
        self._restore(rule_set.version, script)
        log.info(
            "installed iptables chain %s/%s (IPv%d)",
            rule_set.table,
            rule_set.chain,
            rule_set.version,
        )

    def _delete_stale(self, prev: R.FamilyNets, current: _RuleSet) -> None:
        stale = [
            rule
            for rule in R.masq_rules(prev, self.random_fully(prev.version))
            if rule not in current.rules and self._rule_exists(prev.version, rule)
        ]
        if stale:
            log.info(
                "deleting %d masquerade rules built from the previous subnet %s",
                len(stale),
                prev.subnet,
            )
            self._restore(prev.version, R.delete_script(current.table, stale))

    def _restore(self, version: int, script: str) -> None:
        self._run.check([_BINARIES[version].restore, "--noflush", "-w"], stdin=script)

    def _remove_nft_tables(self) -> None:
        """Best effort: the nftables mode's tables must not stay in effect."""
        try:
            result = self._run.run(["nft", "-f", "-"], stdin=R.nft_delete_script())
        except DataplaneError as err:
            log.debug("not removing nftables tables: %s", err)
            return
        if not result.ok:
            log.warning("removing flannel's nftables tables failed: %s", result.stderr.strip())


def remove_iptables_chains(runner: CommandRunner) -> None:
    """Best effort: delete our chains and jump rules in both families (nftables mode start-up).

    Unlike upstream, FLANNEL-FWD is looked for in ``filter``, where it lives,
    and the jump rules go too.
    """
    for version, binaries in _BINARIES.items():
        for table, chain in (("nat", R.MASQ_CHAIN), ("filter", R.FORWARD_CHAIN)):
            try:
                if not runner.run([binaries.iptables, "-w", "-t", table, "-S", chain]).ok:
                    continue
                jump = R.jump_rule(table, chain)
                argv = [binaries.iptables, "-w", "-t", table, "-C", jump.chain, *jump.spec]
                jumps = [jump] if runner.run(argv).ok else []
                runner.check(
                    [binaries.restore, "--noflush", "-w"],
                    R.remove_chain_script(table, chain, jumps),
                )
                log.info("removed iptables chain %s/%s (IPv%d)", table, chain, version)
            except DataplaneError as err:
                log.warning(
                    "removing iptables chain %s/%s (IPv%d) failed: %s", table, chain, version, err
                )
