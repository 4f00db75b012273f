"""The Backend and Network seams, and what every backend is given."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from backends.model import Skipped
from backends.plan import Change, Delete, Put
from backends.rtnl import Signature
from backends.udp_packet import ForwardStats
from subnet.errors import ConfigError
from subnet.lease import Lease
from subnet.manager import SubnetManager
from subnet.netconf import NetConfig


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """One address on an interface, with what interface selection sorts on."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefixlen: int
    permanent: bool = True
    temporary: bool = False
    deprecated: bool = False


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """A link as the kernel reports it, for external-interface selection."""

    name: str
    index: int
    mtu: int
    up: bool
    addresses: tuple[InterfaceAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteLookup:
    """The answer of a route lookup (``ip route get``) for one destination."""

    ifindex: int
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    prefsrc: ipaddress.IPv4Address | ipaddress.IPv6Address | None


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    """The interface that carries inter-node traffic, and the addresses used.

    ``iface_addr`` is the address on the interface; ``ext_addr`` is the one
    advertised to peers (``--public-ip``), equal to it unless overridden.
    """

    name: str
    index: int
    mtu: int
    iface_addr: ipaddress.IPv4Address | None
    ext_addr: ipaddress.IPv4Address | None
    iface_addr6: ipaddress.IPv6Address | None = None
    ext_addr6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one reconcile pass did."""

    added: int = 0
    removed: int = 0
    failed: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    device_recreated: bool = False
    peers: int = 0


def summarize(
    applied: Sequence[Change],
    failed: Sequence[object],
    *,
    skipped: Sequence[Skipped],
    peers: int,
    device_recreated: bool = False,
) -> ReconcileReport:
    """The report of one reconcile pass from what the netlink layer applied."""
    return ReconcileReport(
        added=sum(isinstance(c, Put) for c in applied),
        removed=sum(isinstance(c, Delete) for c in applied),
        failed=tuple(str(f) for f in failed),
        skipped=tuple(skipped),
        device_recreated=device_recreated,
        peers=peers,
    )


# The devices and address families one sync covers (what its kernel dumps are filtered to).
Scope = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class KernelProbe:
    """A full pass's kernel read, made on another thread while the loop serves events.

    ``differing`` holds, per scope, the objects (as :func:`backends.rtnl.signature`
    tuples) the passes before it had left that the kernel lacked, and those the kernel
    had that they had not left; ``generation`` ties it to the writes the netlink layer
    has counted since the read began, so that the loop thread can tell a difference its
    own later writes explain from damage.
    ``seconds`` is the read's CPU time (its thread's: on a busy node its wall time
    would mostly be waiting for a core).
    """

    generation: int
    differing: Mapping[Scope, tuple[frozenset[Signature], frozenset[Signature]]]
    seconds: float


class Network(Protocol):
    """A registered network: our lease plus the kernel state that serves it."""

    @property
    def lease(self) -> Lease: ...

    @property
    def mtu(self) -> int:
        """The MTU pods should use (FLANNEL_MTU)."""
        ...

    @property
    def forward_stats(self) -> ForwardStats | None:
        """Counters of a userspace packet forwarder; None where the kernel forwards."""
        ...

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        """Make the kernel match ``peers`` (every known lease except ours).

        Idempotent; recreates our devices if they vanished; never raises for
        a single bad peer or a single failed kernel write.  ``full`` re-reads
        the kernel's tables; without it the state our last pass left is
        trusted (watch events), which keeps a pass cheap at thousands of peers.
        ``changes`` (key -> new lease, None when removed; None when unknown)
        are the leases changed since the last pass: a backend may then program
        only those peers, when that gives what a pass over all would.
        A full pass given the ``probe`` from :meth:`begin_probe` trusts its kernel
        read instead of reading the kernel again, when that read is still good.
        """
        ...

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """Start a full pass: what reads the kernel for it, to run on another thread
        (and hand to :meth:`reconcile`), so that events are served meanwhile; None
        when this network's full pass reads the kernel on the loop thread only."""
        ...

    def close(self) -> None:
        """Stop background work; leave routes and devices in place."""
        ...


class Backend(Protocol):
    """A way of carrying pod traffic between nodes."""

    def register_network(self, manager: SubnetManager, config: NetConfig) -> Network:
        """Prepare devices, acquire our lease from ``manager``, address the devices."""
        ...


def ipv4_network(config: NetConfig, backend: str) -> ipaddress.IPv4Network:
    """The IPv4 Network of a backend that runs IPv4 only; ConfigError otherwise.

    The backend applies it when it registers, and ``flannelctl netconf
    validate`` applies the same check through the backend registry.
    """
    if config.enable_ipv6:
        raise ConfigError(f"the {backend} backend supports IPv4 only, not IPv6 (EnableIPv6)")
    if config.network is None or not config.enable_ipv4:
        raise ConfigError(f"the {backend} backend needs an IPv4 Network")
    return config.network
