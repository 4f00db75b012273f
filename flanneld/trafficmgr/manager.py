"""The traffic-manager seam the daemon uses, and the choice between the two modes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from flanneld.trafficmgr.ipt import IptablesManager
from flanneld.trafficmgr.nft import NftablesManager
from flanneld.trafficmgr.rules import FamilyNets
from flanneld.trafficmgr.runner import CommandRunner


class TrafficManager(Protocol):
    """Installs masquerade/forward rules and keeps them in place."""

    def setup(
        self,
        masq: bool,
        forward: bool,
        nets: Sequence[FamilyNets],
        previous: Sequence[FamilyNets] = (),
    ) -> None:
        """Install the rules for ``nets`` (one per enabled family).

        ``previous`` holds the network/subnet pairs read back from the old
        subnet.env; rules built from them are removed.  Also removes the
        other mode's artefacts.  Raises DataplaneError when a rule set
        cannot be installed.
        """
        ...

    def resync(self) -> int:
        """Restore missing or altered rules; returns how many rule sets were restored."""
        ...


def traffic_manager(
    nftables: bool, random_fully_disabled: bool = False, runner: CommandRunner | None = None
) -> TrafficManager:
    """The nftables manager when ``EnableNFTables`` is set, else the iptables one."""
    run = runner or CommandRunner()
    if nftables:
        return NftablesManager(run, random_fully_disabled)
    return IptablesManager(run, random_fully_disabled)
