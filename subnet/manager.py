"""The SubnetManager seam: what both the etcd and the Kubernetes managers do.

Watchers report what they see as typed messages; the daemon keeps the peer
map.  A :class:`Snapshot` replaces the whole map (after a re-list), so a
missed event can never leave a stale or missing peer behind.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from subnet.errors import StoreError
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import NetConfig


@dataclass(frozen=True, slots=True)
class LeaseAdded:
    """A lease appeared or changed."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class LeaseRemoved:
    """The lease with this key is gone (deleted or expired)."""

    key: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The complete set of leases at one point in time."""

    leases: tuple[Lease, ...]


LeaseMessage: TypeAlias = LeaseAdded | LeaseRemoved | Snapshot
Sink: TypeAlias = Callable[[LeaseMessage], None]
# What a watch tells about the store: the error of each failed attempt, then
# None once it works again (the daemon shows it on /readyz and in /metrics).
StoreReport: TypeAlias = Callable[[StoreError | None], None]


def ignore_store_report(_error: StoreError | None) -> None:
    """The default StoreReport: nobody listens."""


class SubnetManager(Protocol):
    """A store of per-node subnet leases."""

    def get_network_config(self) -> NetConfig:
        """The cluster's net-conf.json (raise ConfigError/StoreError)."""
        ...

    def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Get this node's lease, reusing a previous one where possible."""
        ...

    def renew_lease(self, lease: Lease) -> Lease:
        """Extend the lease; returns it with its new expiration."""
        ...

    def previous_attrs(self, public_ip: ipaddress.IPv4Address | None) -> LeaseAttrs | None:
        """What this node advertised last time (etcd: the lease with our public IP;
        kube: our node's annotations), so a backend can keep e.g. its VTEP MAC."""
        ...

    def public_ip_override(self) -> ipaddress.IPv4Address | None:
        """A public IP set for this node in the store (kube: node-public-ip)."""
        ...

    def public_ipv6_override(self) -> ipaddress.IPv6Address | None:
        """A public IPv6 set for this node in the store (kube: node-public-ipv6)."""
        ...

    def mark_network_available(self) -> None:
        """Tell the cluster this node's network is up (kube: NetworkUnavailable=False)."""
        ...

    def close(self) -> None:
        """Release connections; leases stay in the store."""
        ...

    def watch_leases(
        self, sink: Sink, stop: threading.Event, report: StoreReport = ignore_store_report
    ) -> None:
        """Report every lease (ours included) to ``sink`` until ``stop`` is set.

        Starts with a Snapshot and sends a new Snapshot after any gap
        (reconnect, compaction, 410 Gone).  Survives store outages by
        itself, telling ``report`` each failure and the recovery; returns
        only when ``stop`` is set.
        """
        ...
