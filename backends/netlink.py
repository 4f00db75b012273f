"""The netlink seam: the one module that talks to the kernel's routing stack.

Everything above this module deals in plain values (``backends.model``,
``backends.base``); here they become netlink requests, all over one raw
rtnetlink socket (:class:`Rtnl`).  Our routes, neighbours and FDB entries,
thousands at a time, are encoded by :mod:`backends.rtnl`, sent many per
``send()``; the kernel answers a failed request with its error and the
request's sequence number, which tells which object failed.  Dumps are
filtered by the kernel to our own objects.  Links, addresses, route
lookups and blackholes are one request each, encoded by
:mod:`backends.rtlink`.  pyroute2 is imported only for what the daemon
rarely needs (the kernel WireGuard driver's generic netlink, entering a named
namespace), so its ``IPRoute`` (and asyncio) stay out of every start.
Writes are idempotent (``replace``; deletes treat a missing object as done),
and a pyroute2 ``NetlinkError`` or socket error never leaves this module: it
becomes a :class:`~subnet.errors.DataplaneError` carrying the kernel's errno.

With ``netns`` set, the socket is opened inside that named namespace (tests
and the lab); the daemon itself runs in its namespace and passes ``None``.
"""

from __future__ import annotations

import base64
import errno as errnos
import ipaddress
import itertools
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias, TypeVar

from subnet.lazyimport import defer_package_init

defer_package_init("pyroute2")  # pyroute2's __init__ loads ~70 modules; we use a few

from backends import rtlink, rtnl
from backends.base import InterfaceAddress, InterfaceInfo, KernelProbe, RouteLookup, Scope
from backends.kernelwatch import OwnDeletions
from backends.model import (
    DataplaneState,
    KernelObject,
    Neighbour,
    Route,
)
from backends.plan import Change, Put, apply_to, plan
from backends.rtnl import Signature
from subnet.errors import DataplaneError
from subnet.lease import IPAddress, IPNetwork

if TYPE_CHECKING:  # the WireGuard model loads with its driver: vxlan and host-gw never use it
    from backends.wireguard_state import DeviceState, PeerPlan, WgPeer

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
N = TypeVar("N")
F = TypeVar("F")
B = TypeVar("B")
Request: TypeAlias = tuple[int, int, bytes]  # message type, flags, body

IFA_F_TEMPORARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
RCVBUF_BYTES = 4 << 20
BATCH_BYTES = 32 << 10  # requests per send(): the kernel handles them all before it returns
AHEAD_MIN = 256  # above this many requests, the next send's are encoded during this one
RECV_BYTES = 64 << 10
REPLY_TIMEOUT = 10.0
ATTEMPTS = 3  # a request whose outcome is unknown (receive buffer overrun) is sent again
# A pass with more changes than this logs one summary line instead of one per object.
BULK_LOG_LINES = 10

_ABSENT = frozenset({errnos.ENOENT, errnos.ESRCH, errnos.ENODEV})
_UNREACHABLE = frozenset({errnos.ENETUNREACH, errnos.EHOSTUNREACH})

HostAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class VxlanAttrs:
    """The VXLAN attributes of a link, as the kernel reports them."""

    vni: int
    port: int
    local: IPAddress | None
    underlay: int | None
    learning: bool
    gbp: bool


@dataclass(frozen=True, slots=True)
class LinkState:
    """A link as the kernel reports it."""

    index: int
    name: str
    kind: str
    mtu: int
    mac: str
    up: bool
    vxlan: VxlanAttrs | None = None
    master: int | None = None  # the bridge (or bond) this link is enslaved to


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """The VXLAN device we want.

    ``port`` 0 means the kernel default (8472).  ``mac`` and ``mtu`` are used
    when the device is created; a reused device keeps its own.
    """

    name: str
    vni: int
    port: int
    local: IPAddress | None
    underlay: int | None
    learning: bool = False
    gbp: bool = False
    mac: str | None = None
    mtu: int | None = None

    def incompatibility(self, link: LinkState) -> str:
        """Why ``link`` cannot serve as this device ("" if it can).

        Attributes are compared where both sides know them, as upstream does.
        """
        attrs = link.vxlan
        if link.kind != "vxlan" or attrs is None:
            return f"kind {link.kind or 'unknown'!r}, not 'vxlan'"
        if attrs.vni != self.vni:
            return f"VNI {attrs.vni}, not {self.vni}"
        if self.underlay and attrs.underlay and attrs.underlay != self.underlay:
            return f"underlay ifindex {attrs.underlay}, not {self.underlay}"
        if self.local is not None and attrs.local is not None and attrs.local != self.local:
            return f"local address {attrs.local}, not {self.local}"
        if self.port and attrs.port and attrs.port != self.port:
            return f"port {attrs.port}, not {self.port}"
        if attrs.gbp != self.gbp:
            return f"gbp {'on' if attrs.gbp else 'off'}, not {'on' if self.gbp else 'off'}"
        return ""


@dataclass(frozen=True, slots=True)
class ApplyFailure:
    """A change the kernel refused."""

    change: Change
    what: str
    errno: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.what}: {self.message} (errno {self.errno})"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :meth:`Netlink.apply` did."""

    applied: tuple[Change, ...] = ()
    failed: tuple[ApplyFailure, ...] = ()


class Netlink:
    """One rtnetlink socket, in our namespace or in the named one."""

    def __init__(self, netns: str | None = None, deletions: OwnDeletions | None = None) -> None:
        self._netns = netns
        # what our passes delete, for the kernel watch to tell its echo from damage
        self.deletions = deletions or OwnDeletions()
        self._names: dict[int, str] = {}
        # per scope (devices, families): our objects as the last pass left them, as the
        # state a full pass set (while no single change altered it) and by key (made from
        # that state when a single change first needs it)
        self._views: dict[Scope, dict[Hashable, KernelObject]] = {}
        self._view_of: dict[Scope, DataplaneState] = {}
        # The signatures of each view, with its version: made once per version by
        # whichever thread needs them first (a full pass's check, or the probe).
        self._signed: dict[Scope, tuple[int, frozenset[Signature]]] = {}
        # Scopes whose view is exactly the desired state their syncs were given (no
        # failure since): only those can be checked by a probe.
        self._exact: set[Scope] = set()
        self._versions: dict[Scope, int] = {}  # bumped whenever a scope's view changes
        self._version = itertools.count(1)
        # The probe in flight: its generation and the slots written per scope since it began.
        self._probe_generation = 0
        self._written: dict[Scope, set[Signature]] = {}
        self._probe_rtnl: Rtnl | None = None  # the probe thread's own socket
        where = f" in netns {netns}" if netns else ""
        if netns is not None and not os.path.exists(_netns_path(netns)):
            raise DataplaneError(f"no network namespace {netns!r}", errnos.ENOENT)
        try:
            self._rtnl = Rtnl(_in_netns(netns, open_rtnl_socket))
        except _failures() as err:
            raise DataplaneError(f"cannot open netlink socket{where}: {err}", _errno(err)) from err

    @property
    def netns(self) -> str | None:
        return self._netns

    def close(self) -> None:
        self._rtnl.close()
        if self._probe_rtnl is not None:
            self._probe_rtnl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- interface selection -------------------------------------------------------

    def interfaces(self) -> list[InterfaceInfo]:
        """Every link with its addresses (one link dump, one address dump)."""
        links = self.links()
        addrs = self._dump("dump addresses", rtlink.RTM_GETADDR, rtlink.address_dump(),
                           rtlink.address_reply)
        by_index: dict[int, list[InterfaceAddress]] = {}
        for msg in addrs:
            by_index.setdefault(msg.ifindex, []).append(_interface_address(msg))
        result = []
        for state in links:
            result.append(
                InterfaceInfo(
                    name=state.name,
                    index=state.index,
                    mtu=state.mtu,
                    up=state.up,
                    addresses=tuple(by_index.get(state.index, ())),
                )
            )
        return result

    def default_route_ifindex(self, family: int) -> int | None:
        """The output interface of the main table's best default route, if any."""
        best: tuple[int, int] | None = None
        routes = self._dump("dump routes", rtnl.RTM_GETROUTE,
                            rtnl.route_dump(family, rtnl.RTN_UNICAST, protocol=0),
                            rtlink.default_route)
        for msg in routes:
            if msg.table != rtnl.MAIN_TABLE or msg.kind != rtnl.RTN_UNICAST:
                continue
            oif = rtlink.route_oif(msg)
            if oif is None:
                continue
            candidate = (rtlink.number(msg.attrs.get(rtlink.RTA_PRIORITY)), oif)
            if best is None or candidate < best:
                best = candidate
        return None if best is None else best[1]

    def route_get(self, addr: IPAddress) -> list[RouteLookup]:
        """How the kernel would route to ``addr``; empty when it is unreachable."""
        answer = self._request(f"route get {addr}", rtnl.RTM_GETROUTE, 0,
                               rtlink.route_lookup(addr), tolerate=_UNREACHABLE)
        if answer is None:
            return []
        result = []
        for payload in answer:
            msg = rtlink.route_reply(payload)
            result.append(
                RouteLookup(
                    ifindex=rtlink.route_oif(msg) or 0,
                    gateway=rtlink.ip(msg.attrs.get(rtnl.RTA_GATEWAY)),
                    prefsrc=rtlink.ip(msg.attrs.get(rtlink.RTA_PREFSRC)),
                )
            )
        return result

    # --- links ---------------------------------------------------------------------------

    def links(self) -> list[LinkState]:
        """Every link (one dump)."""
        found = self._dump("dump links", rtlink.RTM_GETLINK, rtlink.link_dump(), _link_state)
        self._names.update((state.index, state.name) for state in found)
        return found

    def link(self, name: str) -> LinkState | None:
        """The link called ``name``, or None if there is none."""
        msgs = self._request(f"link get {name}", rtlink.RTM_GETLINK, 0,
                             rtlink.link_by_name(name), tolerate=_ABSENT)
        if msgs is None:
            return None
        if not msgs:
            raise DataplaneError(f"link get {name}: no answer")
        state = _link_state(msgs[0])
        self._names[state.index] = state.name
        return state

    def ensure_vxlan(self, spec: VxlanSpec) -> LinkState:
        """The VXLAN device of ``spec``: reused when compatible, else (re)created."""
        existing = self.link(spec.name)
        if existing is not None:
            reason = spec.incompatibility(existing)
            if not reason:
                return existing
            log.warning(
                "link %s already exists with incompatible configuration (%s); recreating it",
                spec.name,
                reason,
            )
            self.delete_link(existing.index)
        self._request(f"link add {spec.name}", rtlink.RTM_NEWLINK, rtlink.CREATE,
                      _vxlan_add(spec))
        created = self.link(spec.name)
        if created is None:
            raise DataplaneError(f"link {spec.name} vanished right after it was created")
        log.info(
            "link %s (vxlan id %d, mac %s, mtu %d): added",
            created.name,
            spec.vni,
            created.mac,
            created.mtu,
        )
        return created

    def ensure_wireguard(self, name: str) -> tuple[LinkState, bool]:
        """The kernel WireGuard link ``name``, and whether it had to be created.

        A link of another kind with that name (e.g. wireguard-go's TUN) is
        replaced.  Where the kernel has no WireGuard module the add fails with
        a DataplaneError carrying errno EOPNOTSUPP (95) or ENOENT (2).
        """
        existing = self.link(name)
        if existing is not None and existing.kind == "wireguard":
            return existing, False
        if existing is not None:
            log.warning("link %s is a %r link, not wireguard; replacing it", name,
                        existing.kind or "tun")
            self.delete_link(existing.index)
        self._request(f"link add {name} type wireguard", rtlink.RTM_NEWLINK, rtlink.CREATE,
                      rtlink.link_add(name, "wireguard"))
        created = self.link(name)
        if created is None:
            raise DataplaneError(f"link {name} vanished right after it was created")
        log.info("link %s (wireguard): added", name)
        return created, True

    def delete_link(self, index: int) -> None:
        """Delete a link; a link that is already gone is fine."""
        name = self._name(index)
        self._request(f"link del {name}", rtlink.RTM_DELLINK, 0, rtlink.link_index(index),
                      tolerate=_ABSENT)
        self._names.pop(index, None)
        log.info("link %s: removed", name)

    def set_link(
        self,
        index: int,
        *,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool | None = None,
    ) -> None:
        """Set the given properties of a link (those left None are not touched)."""
        said = []
        if mtu is not None:
            said.append(f"mtu {mtu}")
        if mac is not None:
            said.append(f"mac {mac}")
        if up is not None:
            said.append("up" if up else "down")
        if not said:
            return
        name = self._name(index)
        self._request(f"link set {name}", rtlink.RTM_NEWLINK, 0,
                      rtlink.link_set(index, mtu, mac, up))
        log.info("link %s: set %s", name, ", ".join(said))

    def sync_addresses(
        self,
        index: int,
        want: Sequence[HostAddress],
        scope_networks: Sequence[IPNetwork],
    ) -> None:
        """Give the link exactly the ``want`` addresses among those in ``scope_networks``.

        Addresses outside the scope networks (link-local, someone else's) stay.
        """
        name = self._name(index)
        have: list[HostAddress] = []
        for msg in self._dump("dump addresses", rtlink.RTM_GETADDR, rtlink.address_dump(),
                              rtlink.address_reply):
            if msg.ifindex == index:
                addr = _interface_address(msg)
                have.append(ipaddress.ip_interface(f"{addr.address}/{addr.prefixlen}"))
        for iface in have:
            if iface in want or not _within(iface.ip, scope_networks):
                continue
            self._address("del", index, iface)
            log.info("address %s dev %s: removed", iface, name)
        for iface in want:
            if iface in have:
                continue
            self._address("add", index, iface)
            log.info("address %s dev %s: added", iface, name)

    def disable_accept_ra(self, name: str) -> None:
        """Set ``net.ipv6.conf.<name>.accept_ra`` to 0 (in our namespace)."""
        if "/" in name or name in (".", ".."):
            raise DataplaneError(f"bad interface name {name!r}")
        path = f"/proc/sys/net/ipv6/conf/{name}/accept_ra"

        def write() -> None:
            # /proc/sys/net shows the namespace of the opening thread
            with open(path, "w", encoding="ascii") as sysctl:
                sysctl.write("0")

        try:
            _in_netns(self._netns, write)
        except OSError as err:
            raise DataplaneError(f"cannot write {path}: {err}", err.errno) from err
        log.info("sysctl net.ipv6.conf.%s.accept_ra: set 0", name)

    # --- routes, neighbours, FDB -------------------------------------------------------

    def observe(self, ifindexes: Iterable[int], families: Iterable[int]) -> DataplaneState:
        """Our kernel objects: routes with our protocol id in the main table, and
        permanent neighbours and ``self`` FDB entries with a remote on ``ifindexes``.

        One dump per table, family and device, filtered by the kernel (strict
        checking: our protocol id and table, our devices), so only our own
        objects are read back and decoded.
        """
        routes, neighbours, fdb = self._read(
            self._rtnl, ifindexes, families, rtnl.our_route, rtnl.permanent_neighbour,
            rtnl.self_fdb_entry,
        )
        devices = set(ifindexes)
        return DataplaneState(
            frozenset(routes),
            frozenset(n for n in neighbours if n.ifindex in devices),
            frozenset(e for e in fdb if e.ifindex in devices),
        )

    def signatures(
        self, ifindexes: Iterable[int], families: Iterable[int], sock: Rtnl | None = None
    ) -> frozenset[Signature]:
        """What :meth:`observe` reads, as :func:`backends.rtnl.signature` tuples (cheap)."""
        routes, neighbours, fdb = self._read(
            sock or self._rtnl, ifindexes, families, rtnl.route_signature,
            rtnl.neighbour_signature, rtnl.fdb_signature,
        )
        devices = set(ifindexes)
        return frozenset(
            (*routes, *(n for n in neighbours if n[1] in devices), *(e for e in fdb if e[1] in devices))
        )

    def _read(
        self,
        sock: Rtnl,
        ifindexes: Iterable[int],
        families: Iterable[int],
        route: Callable[[bytes], R | None],
        neighbour: Callable[[bytes], N | None],
        fdb: Callable[[bytes], F | None],
    ) -> tuple[list[R], list[N], list[F]]:
        devices = sorted(set(ifindexes))
        routes: list[R] = []
        neighbours: list[N] = []
        entries: list[F] = []
        for family in families:
            routes += self._dump("dump routes", rtnl.RTM_GETROUTE, rtnl.route_dump(family), route,
                                 sock)
            for index in devices:
                neighbours += self._dump(
                    "dump neighbours", rtnl.RTM_GETNEIGH, rtnl.neighbour_dump(family, index),
                    neighbour, sock,
                )
        for index in devices:
            entries += self._dump("dump fdb", rtnl.RTM_GETNEIGH, rtnl.fdb_dump(index), fdb, sock)
        return routes, neighbours, entries

    def sync(
        self,
        desired: DataplaneState,
        ifindexes: Iterable[int],
        families: Iterable[int],
        *,
        fresh: bool = True,
    ) -> ApplyResult:
        """Apply only the difference between what is ours in the kernel and ``desired``.

        With ``fresh`` the kernel is dumped first; without it, the state the
        last sync of the same scope left is used instead (cheap on every
        watch event; the periodic resync and the kernel watch pass ``fresh``
        so hand-made damage is still found).  What failed stays out of that
        state, so the next pass retries exactly those objects.
        """
        scope = _scope(ifindexes, families)
        observed = None if fresh else self._view_state(scope)
        if observed is None:
            kernel = self.signatures(*scope)
            if self._matches(scope, desired, kernel):
                self._exact.add(scope)
                return ApplyResult()
            observed = DataplaneState.of(map(rtnl.object_of, kernel))
        result = self._apply_in(scope, plan(observed, desired))
        self._set_view(scope, apply_to(observed, list(result.applied)) if result.failed else desired)
        if not result.failed:
            self._exact.add(scope)
        return result

    def _matches(self, scope: Scope, desired: DataplaneState, kernel: frozenset[Signature]) -> bool:
        """Whether the ``kernel`` signatures of ``scope`` are exactly ``desired``: the
        periodic pass's check when nothing changed.  The counts are compared first, so a
        cold start (nothing of ours in the kernel) computes no signatures."""
        if len(kernel) != desired.count():
            return False
        known = self._view_of.get(scope) is desired
        if known:
            want = self._view_signatures(scope, self._versions[scope], desired.objects())
        else:
            want = frozenset(map(rtnl.signature, desired.objects()))
        if kernel != want:
            return False
        if not known:
            self._set_view(scope, desired)
            self._signed[scope] = self._versions[scope], want
        return True

    def _view_signatures(
        self, scope: Scope, version: int, objects: Sequence[KernelObject]
    ) -> frozenset[Signature]:
        """The signatures of ``objects``, the scope's view at ``version`` (either thread)."""
        cached = self._signed.get(scope)
        if cached is None or cached[0] != version:
            cached = version, frozenset(map(rtnl.signature, objects))
            self._signed[scope] = cached
        return cached[1]

    def _set_view(self, scope: Scope, state: DataplaneState) -> None:
        """The scope's objects are now ``state`` (its by-key view is made when first needed)."""
        self._views.pop(scope, None)
        self._view_of[scope] = state
        self._versions[scope] = next(self._version)

    def _view(self, scope: Scope) -> dict[Hashable, KernelObject] | None:
        """The scope's objects by key, as the last pass left them; None before any."""
        view = self._views.get(scope)
        state = self._view_of.get(scope)
        if view is None and state is not None:
            view = self._views[scope] = {obj.key: obj for obj in state.objects()}
        return view

    def _view_state(self, scope: Scope) -> DataplaneState | None:
        state = self._view_of.get(scope)
        if state is None and scope in self._views:
            state = DataplaneState.of(self._views[scope].values())
        return state

    def _view_objects(self, scope: Scope) -> tuple[KernelObject, ...] | None:
        state = self._view_of.get(scope)
        if state is not None:
            return state.objects()
        view = self._views.get(scope)
        return None if view is None else tuple(view.values())

    def sync_delta(
        self,
        old: Iterable[KernelObject],
        new: Iterable[KernelObject],
        ifindexes: Iterable[int],
        families: Iterable[int],
    ) -> ApplyResult | None:
        """Replace the objects ``old`` by ``new`` (the objects of the peers that changed),
        planned against what the last sync of the scope left; None when there was none
        (then a full :meth:`sync` is needed).  Costs in proportion to the objects given."""
        scope = _scope(ifindexes, families)
        view = self._view(scope)
        if view is None:
            return None
        wanted = list(new)
        keys = {obj.key for obj in old} | {obj.key for obj in wanted}
        observed = DataplaneState.of([view[k] for k in keys if k in view])
        result = self._apply_in(scope, plan(observed, DataplaneState.of(wanted)))
        for change in result.applied:
            if isinstance(change, Put):
                view[change.obj.key] = change.obj
            else:
                view.pop(change.obj.key, None)
        if result.applied:
            self._view_of.pop(scope, None)
            self._versions[scope] = next(self._version)
        return result

    def sync_changes(
        self,
        old: Iterable[KernelObject],
        new: Iterable[KernelObject],
        desired: Callable[[], DataplaneState],
        ifindexes: Iterable[int],
        families: Iterable[int],
        *,
        fresh: bool,
        probe: KernelProbe | None = None,
    ) -> ApplyResult:
        """The changed peers' objects ``old`` replaced by ``new`` (:meth:`sync_delta`);
        on a ``fresh`` pass every object is checked too: by ``probe`` when that kernel
        read still holds (:meth:`repairs`), else by reading the kernel (:meth:`sync`).
        ``desired`` (all objects) is only asked for when needed."""
        ifindexes, families = tuple(ifindexes), tuple(families)
        result = self.sync_delta(old, new, ifindexes, families)
        repairs = None
        if result is not None and fresh and probe is not None:
            repairs = self.repairs(probe, ifindexes, families)
        if result is not None and (not fresh or repairs is not None):
            if not repairs:
                return result
            log.info("the full pass found %d kernel objects of ours missing or changed",
                     len(repairs))
            rest = self._apply_in(_scope(ifindexes, families), repairs)
        else:
            rest = self.sync(desired(), ifindexes, families, fresh=fresh)
        if result is None:
            return rest
        return ApplyResult(result.applied + rest.applied, result.failed + rest.failed)

    # --- full passes off the loop thread -------------------------------------------------

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """Start a kernel read of every scope synced so far without failure; returns the
        read, to run on another thread (it has a socket of its own).  From now on the
        slots this thread writes are counted, for :meth:`repairs`.  None: nothing to read."""
        scopes = {
            scope: (self._versions.get(scope, 0), objects)
            for scope in sorted(self._exact) if (objects := self._view_objects(scope)) is not None
        }
        if not scopes:
            return None
        self._probe_generation += 1
        self._written = {scope: set() for scope in scopes}
        return partial(self._read_probe, self._probe_generation, scopes)

    def _read_probe(
        self, generation: int, scopes: dict[Scope, tuple[int, tuple[KernelObject, ...]]]
    ) -> KernelProbe:
        """(The probe's thread.)  Per scope, what the view the probe began with has and the
        kernel lacks, and the reverse; DataplaneError when the kernel cannot be read."""
        started = time.thread_time()
        if self._probe_rtnl is None:
            try:
                self._probe_rtnl = Rtnl(_in_netns(self._netns, open_rtnl_socket))
            except _failures() as err:
                raise _dataplane_error("netlink socket for the full pass", err) from err
        differing: dict[Scope, tuple[frozenset[Signature], frozenset[Signature]]] = {}
        for scope, (version, objects) in scopes.items():
            view = self._view_signatures(scope, version, objects)
            kernel = self.signatures(*scope, sock=self._probe_rtnl)
            differing[scope] = view - kernel, kernel - view
        return KernelProbe(generation, differing, time.thread_time() - started)

    def repairs(
        self, probe: KernelProbe, ifindexes: Iterable[int], families: Iterable[int]
    ) -> list[Change] | None:
        """What makes the kernel hold exactly what the syncs of this scope left, by ``probe``
        (empty: it does), leaving out every slot this thread wrote since the read began
        (the read may have seen it before or after); None when the probe cannot tell: a
        write failed meanwhile, or it is not the latest.  Reads nothing from the kernel;
        ends the count of writes.  A slot the read got wrong (a dump the kernel
        interrupted) is only written again: every write is idempotent."""
        scope = _scope(ifindexes, families)
        written = self._written.pop(scope, None)
        reading = probe.differing.get(scope)
        if (probe.generation != self._probe_generation or written is None or reading is None
                or scope not in self._exact):
            return None
        lacking, extra = ([rtnl.object_of(sig) for sig in sigs if rtnl.slot(sig) not in written]
                          for sigs in reading)
        if not lacking and not extra:
            return []
        return plan(DataplaneState.of(extra), DataplaneState.of(lacking))

    def _apply_in(self, scope: Scope, changes: Sequence[Change]) -> ApplyResult:
        """:meth:`apply` for one scope's sync: counts its written slots for a probe in
        flight, and drops the scope's exactness when anything failed."""
        written = self._written.get(scope)
        if written is not None:
            written.update(rtnl.slot(rtnl.signature(c.obj)) for c in changes)
        try:
            result = self.apply(changes)
        except DataplaneError:
            self._exact.discard(scope)
            raise
        if result.failed:
            self._exact.discard(scope)
        return result

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        """Apply ``changes`` in order, continuing past failures.

        The requests go many per ``send()``; the kernel's answer to each one that
        fails is matched back by sequence number, so every object gets its own
        result (see :class:`Rtnl`).  Up to
        ``BULK_LOG_LINES`` changes log one line each; a bulk pass logs one
        summary line (and each object at DEBUG).
        """
        if not changes:
            return ApplyResult()
        if any(c.obj.ifindex not in self._names for c in changes if c.obj.ifindex):
            self._refresh_names()
        started = time.monotonic()
        self.deletions.expect(c.obj.key for c in changes if not isinstance(c, Put))
        try:
            codes = self._rtnl.transact(changes, rtnl.change_body)
        except OSError as err:
            raise _dataplane_error("netlink batch", err) from err
        bulk = len(changes) > BULK_LOG_LINES
        applied: list[Change] = []
        failed: list[ApplyFailure] = []
        gone = 0
        for change, code in zip(changes, codes, strict=True):
            put = isinstance(change, Put)
            if code and (put or code not in _ABSENT):
                failure = ApplyFailure(change, self._describe(change.obj), code, os.strerror(code))
                failed.append(failure)
                if not bulk or len(failed) <= BULK_LOG_LINES:
                    log.warning("%s: %s failed: %s", failure.what, "add" if put else "remove",
                                failure.message)
                continue
            applied.append(change)
            gone += bool(code)
            outcome = "added" if put else "already gone" if code else "removed"
            if not bulk:
                log.info("%s: %s", self._describe(change.obj), outcome)
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s", self._describe(change.obj), outcome)
        if bulk:
            puts = sum(isinstance(c, Put) for c in applied)
            log.info(
                "kernel objects: %d added, %d removed, %d already gone, %d failed "
                "(%d requests in %.3fs)",
                puts, len(applied) - puts - gone, gone, len(failed), len(changes),
                time.monotonic() - started,
            )
            if len(failed) > BULK_LOG_LINES:
                log.warning("... and %d more failures", len(failed) - BULK_LOG_LINES)
        return ApplyResult(tuple(applied), tuple(failed))

    # --- internals -------------------------------------------------------------------------

    def sync_blackholes(self, subnets: Sequence[IPNetwork]) -> int:
        """Keep a ``blackhole`` route (proto 44) for each of ``subnets`` and no other of ours.

        Returns how many routes were added or removed.  A blackhole for a
        subnet we no longer hold is removed (upstream leaves it behind).
        """
        have = {
            route.dst
            for family in (socket.AF_INET, socket.AF_INET6)
            for route in self._dump(
                "dump routes", rtnl.RTM_GETROUTE, rtnl.route_dump(family, rtnl.RTN_BLACKHOLE),
                _our_blackhole,
            )
            if route.dst.prefixlen
        }
        want = set(subnets)
        for subnet in sorted(want - have, key=str):
            self._request(f"add blackhole route {subnet}", rtnl.RTM_NEWROUTE, rtlink.REPLACE,
                          rtnl.route_body(Route(subnet, None, None), True, rtnl.RTN_BLACKHOLE))
            log.info("blackhole route %s: added", subnet)
        for subnet in sorted(have - want, key=str):
            self._request(f"delete blackhole route {subnet}", rtnl.RTM_DELROUTE, 0,
                          rtnl.route_body(Route(subnet, None, None), False, rtnl.RTN_BLACKHOLE))
            log.info("blackhole route %s: removed (no longer our subnet)", subnet)
        return len(want ^ have)

    def _request(
        self, what: str, kind: int, flags: int, body: bytes,
        tolerate: Collection[int] = frozenset(),
    ) -> list[bytes] | None:
        """One acknowledged request (:meth:`Rtnl.call`) and its replies' payloads; None
        when the kernel refused it with an errno in ``tolerate``, DataplaneError when it
        refused it otherwise."""
        try:
            return self._rtnl.call(kind, flags, body)
        except OSError as err:
            if err.errno in tolerate:
                return None
            raise _dataplane_error(what, err) from err

    def _address(self, verb: str, index: int, iface: HostAddress) -> None:
        add = verb == "add"
        self._request(
            f"addr {verb} {iface} dev {self._name(index)}",
            rtlink.RTM_NEWADDR if add else rtlink.RTM_DELADDR,
            rtlink.CREATE if add else 0,
            rtlink.address(index, iface),
        )

    def _dump(
        self, what: str, kind: int, body: bytes, decode: Callable[[bytes], T | None],
        sock: Rtnl | None = None,
    ) -> list[T]:
        """The decoded objects of one (kernel-filtered) dump; DataplaneError on failure."""
        try:
            return (sock or self._rtnl).dump(kind, body, decode)
        except OSError as err:
            raise _dataplane_error(what, err) from err

    def _refresh_names(self) -> None:
        self._names = {state.index: state.name for state in self.links()}

    def _name(self, index: int) -> str:
        return self._names.get(index) or f"if{index}"

    def _describe(self, obj: KernelObject) -> str:
        if isinstance(obj, Route):
            text = f"route {obj.dst}"
            if obj.gateway is not None:
                text += f" via {obj.gateway}"
            if obj.ifindex is not None:
                text += f" dev {self._name(obj.ifindex)}"
            return text + (" onlink" if obj.onlink else "")
        if isinstance(obj, Neighbour):
            return f"neigh {obj.dst} lladdr {obj.lladdr} dev {self._name(obj.ifindex)}"
        return f"fdb {obj.lladdr} dst {obj.dst} dev {self._name(obj.ifindex)} self"


# --- message decoding and errors -----------------------------------------------------------


def _failures() -> tuple[type[Exception], ...]:
    """What a netlink call may raise: OSError, and pyroute2's NetlinkError once pyroute2
    is loaded (by the WireGuard driver or a named namespace; the daemon's start never
    imports it, and nothing can raise it before)."""
    exceptions = sys.modules.get("pyroute2.netlink.exceptions")
    if exceptions is None:
        return (OSError,)
    return OSError, exceptions.NetlinkError


def _errno(err: Exception) -> int | None:
    if isinstance(err, OSError):
        return err.errno
    code = getattr(err, "code", None)  # pyroute2's NetlinkError
    return int(code) if isinstance(code, int) else None


def _message(err: Exception) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    if len(err.args) > 1:  # pyroute2's NetlinkError: (code, message)
        return str(err.args[1])
    return str(err)


def _dataplane_error(what: str, err: Exception) -> DataplaneError:
    return DataplaneError(f"{what}: {_message(err)}", _errno(err))


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else os.path.join("/var/run/netns", netns)


def _within(addr: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def _interface_address(msg: rtlink.Address) -> InterfaceAddress:
    address = rtlink.ip(msg.attrs.get(rtlink.IFA_LOCAL) or msg.attrs.get(rtlink.IFA_ADDRESS))
    if address is None:
        raise DataplaneError(f"dump addresses: an address of if{msg.ifindex} has none")
    flags_attr = msg.attrs.get(rtlink.IFA_FLAGS)
    flags = msg.flags if flags_attr is None else rtlink.number(flags_attr)
    return InterfaceAddress(
        address=address,
        prefixlen=msg.prefixlen,
        permanent=bool(flags & IFA_F_PERMANENT),
        # for IPv4 the same bit means "secondary", not "temporary"
        temporary=msg.family == socket.AF_INET6 and bool(flags & IFA_F_TEMPORARY),
        deprecated=bool(flags & IFA_F_DEPRECATED),
    )


def _link_state(payload: bytes) -> LinkState:
    msg = rtlink.link(payload)
    vxlan = None
    if msg.kind == "vxlan" and msg.data:
        data = msg.data
        port = data.get(rtlink.IFLA_VXLAN_PORT)
        vxlan = VxlanAttrs(
            vni=rtlink.number(data.get(rtlink.IFLA_VXLAN_ID)),
            port=rtlink.BE16.unpack(port[:2])[0] if port else 0,
            local=rtlink.ip(data.get(rtlink.IFLA_VXLAN_LOCAL)
                            or data.get(rtlink.IFLA_VXLAN_LOCAL6)),
            underlay=rtlink.number(data.get(rtlink.IFLA_VXLAN_LINK)) or None,
            learning=bool(rtlink.number(data.get(rtlink.IFLA_VXLAN_LEARNING))),
            gbp=rtlink.IFLA_VXLAN_GBP in data,
        )
    return LinkState(
        index=msg.ifindex,
        name=rtlink.text(msg.attrs.get(rtlink.IFLA_IFNAME)),
        kind=msg.kind,
        mtu=rtlink.number(msg.attrs.get(rtlink.IFLA_MTU)),
        mac=rtnl.mac_text(msg.attrs.get(rtlink.IFLA_ADDRESS, b"")),
        up=bool(msg.flags & rtlink.IFF_UP),
        vxlan=vxlan,
        master=rtlink.number(msg.attrs.get(rtlink.IFLA_MASTER)) or None,
    )


def _vxlan_add(spec: VxlanSpec) -> bytes:
    data = rtlink.vxlan_data(vni=spec.vni, port=spec.port, local=spec.local,
                             underlay=spec.underlay, learning=spec.learning, gbp=spec.gbp)
    return rtlink.link_add(spec.name, "vxlan", data, spec.mac, spec.mtu)


def _scope(ifindexes: Iterable[int], families: Iterable[int]) -> Scope:
    return tuple(sorted(ifindexes)), tuple(sorted(families))


def _our_blackhole(payload: bytes) -> Route | None:
    return rtnl.our_route(payload, rtnl.RTN_BLACKHOLE)


def _in_netns(netns: str | None, action: Callable[[], T]) -> T:
    """``action()`` run in the named namespace (in a short-lived thread that
    setns()-es; sockets and /proc/sys/net it opens belong there), or here."""
    if netns is None:
        return action()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            from pyroute2.netns import setns

            setns(netns, flags=0)
            outcome.append(action())
        except _failures() as err:
            failure.append(err)

    worker = threading.Thread(target=run, name="in-netns")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


class DatagramSocket(Protocol):
    """What :class:`Rtnl` needs of its socket (a netlink socket, or a test's fake)."""

    def send(self, data: bytes, /) -> int: ...

    def recv(self, size: int, /) -> bytes: ...

    def gettimeout(self) -> float | None: ...

    def settimeout(self, value: float | None, /) -> None: ...

    def close(self) -> None: ...


class Rtnl:
    """A raw rtnetlink socket for batched requests and kernel-filtered dumps.

    Requests go many per ``send()``; rtnetlink handles them in order inside
    that ``send()``.  Each one that fails is answered with its error and its
    sequence number, which maps it back to its object, whether it asked for an
    ack or not; a NOOP with ``NLM_F_ACK`` closes every ``send()``, and its ack
    says that every request before it was handled, so a request without an
    error by then succeeded.  (Asking each request for its ack cost one
    ``recv()`` per object: at 15 000 objects, about 0.1 s of Python between
    the kernel's sends.)

    An answer the receive buffer has no room for is dropped, and that marks
    the socket congested: the kernel then drops every later answer too, the
    closing ack included, until the socket's queue has been read empty, and
    the next ``recv()`` reports ENOBUFS before the answers queued ahead of the
    loss.  So a send whose closing ack arrives lost no error, and after
    ENOBUFS the requests without an answer are sent again (the queue is read
    dry first, without waiting: left there, it would keep the socket congested
    and the next send's answers would all be dropped).  This holds only while
    (1) NETLINK_NO_ENOBUFS is never set on the socket (losses would go
    unreported, and a later answer, the closing ack, could find room), and
    (2) one thread reads the socket, the one that sends: another reader
    emptying the queue while the kernel handles a send would end the
    congestion in the middle of it.  Reading dry cannot meet a second ENOBUFS
    (``_read_dry`` would let it out as an error) because (3) the socket joins no
    multicast group (``open_rtnl_socket`` binds it with none), so nothing but
    answers to our requests reaches it, and (4) the batched requests are no
    dumps: rtnetlink writes each of their answers inside the ``send()`` that
    carries it, so once ``send()`` has returned no new answer is queued and
    the queue only drains.
    """

    def __init__(self, sock: DatagramSocket) -> None:
        self._sock = sock
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def transact(self, requests: Sequence[T], encode: Callable[[T], Request]) -> list[int]:
        """The errno of each request, in order (0: done); ``encode`` turns a request into
        its (type, flags, body) triple.

        A bulk of requests is encoded on another thread while the kernel works
        through the previous send (``send()`` releases the GIL): encoding
        overlaps the kernel's own work.  Requests whose outcome is unknown (an
        answer was lost: the receive buffer overran) are sent again, up to
        ``ATTEMPTS`` times; every one of our writes is idempotent.
        """
        codes: list[int | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        for _ in range(ATTEMPTS):
            lost: list[int] = []
            batches = self._batches(pending, requests, encode)
            for seqs, closing, datagram in (
                _made_ahead(batches) if len(pending) > AHEAD_MIN else batches
            ):
                self._sock.send(datagram)
                lost += self._collect(seqs, closing, codes)
            pending = lost
            if not pending:
                break
        return [errnos.ETIMEDOUT if c is None else c for c in codes]

    def _batches(
        self, indexes: Sequence[int], requests: Sequence[T], encode: Callable[[T], Request]
    ) -> Iterator[tuple[dict[int, int], int, bytes]]:
        """The requests at ``indexes`` as datagrams of at most BATCH_BYTES, each closed by
        an acked NOOP: the request index of each sequence number, the NOOP's sequence
        number, the datagram."""
        seqs: dict[int, int] = {}
        parts: list[bytes] = []
        size = rtnl.HEADER.size  # the closing NOOP
        for i in indexes:
            kind, flags, body = encode(requests[i])
            length = rtnl.HEADER.size + len(body)
            if parts and size + length > BATCH_BYTES:
                yield self._closed(seqs, parts)
                seqs, parts, size = {}, [], rtnl.HEADER.size
            seq = next(self._seq)
            seqs[seq] = i
            parts.append(rtnl.message(kind, flags, seq, body))
            size += length
        if parts:
            yield self._closed(seqs, parts)

    def _closed(self, seqs: dict[int, int], parts: list[bytes]) -> tuple[dict[int, int], int, bytes]:
        closing = next(self._seq)
        parts.append(rtnl.message(rtnl.NLMSG_NOOP, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, closing,
                                  b""))
        return seqs, closing, b"".join(parts)

    def dump(self, kind: int, body: bytes, decode: Callable[[bytes], T | None]) -> list[T]:
        """Decoded replies of one dump; repeated (a few times) if the kernel says
        the table changed under it."""
        found: list[T] = []
        for _ in range(ATTEMPTS):
            seq = next(self._seq)
            self._sock.send(rtnl.message(kind, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, seq, body))
            found, interrupted = [], False
            for reply in self._answers(seq):
                interrupted = interrupted or bool(reply.flags & rtnl.NLM_F_DUMP_INTR)
                obj = decode(reply.payload)
                if obj is not None:
                    found.append(obj)
            if not interrupted:
                break
        return found

    def _answers(self, seq: int) -> Iterator[rtnl.Reply]:
        """The replies to request ``seq`` up to its end (a dump's NLMSG_DONE or an ack);
        OSError with the kernel's errno when it refused."""
        while True:
            for reply in rtnl.replies(self._sock.recv(RECV_BYTES)):
                if reply.seq != seq:
                    continue  # a late answer to an earlier request
                if reply.kind == rtnl.NLMSG_DONE:
                    return
                if reply.kind != rtnl.NLMSG_ERROR:
                    yield reply
                    continue
                code = rtnl.ack_errno(reply.payload)
                if code:
                    raise OSError(code, os.strerror(code))
                return

    def _collect(self, seqs: dict[int, int], closing: int, codes: list[int | None]) -> list[int]:
        """Read one send's answers into ``codes`` up to the ack of its ``closing`` NOOP
        (the requests of ``seqs`` without an error by then succeeded); the indexes whose
        outcome is unknown when an answer was lost."""
        while True:
            try:
                datagram = self._sock.recv(RECV_BYTES)
            except OSError as err:
                if err.errno not in (errnos.ENOBUFS, errnos.EAGAIN) and not isinstance(
                    err, TimeoutError
                ):
                    raise
                if err.errno == errnos.ENOBUFS:
                    self._read_dry(seqs, codes)
                unknown = [index for index in seqs.values() if codes[index] is None]
                log.debug("netlink: answers lost (%s); sending %d requests again", err,
                          len(unknown))
                return unknown
            if _note_answers(datagram, seqs, codes, closing):
                for index in seqs.values():
                    if codes[index] is None:
                        codes[index] = 0
                return []

    def _read_dry(self, seqs: dict[int, int], codes: list[int | None]) -> None:
        """After ENOBUFS: note the answers queued before the loss without waiting for
        more, until the queue is empty (which ends the socket's congestion).  A closing
        ack among them vouches for nothing: an answer before it may be the lost one."""
        timeout = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        try:
            while True:
                try:
                    datagram = self._sock.recv(RECV_BYTES)
                except BlockingIOError:
                    return
                _note_answers(datagram, seqs, codes, closing=None)
        finally:
            self._sock.settimeout(timeout)

    def call(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request (with ``NLM_F_REQUEST | NLM_F_ACK`` added to ``flags``) and
        return the payloads of its replies, read up to its ack; OSError with the
        kernel's errno when it refused."""
        seq = next(self._seq)
        self._sock.send(rtnl.message(kind, flags | rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, seq,
                                     body))
        return [reply.payload for reply in self._answers(seq)]


def _note_answers(
    datagram: bytes, seqs: dict[int, int], codes: list[int | None], closing: int | None
) -> bool:
    """Note in ``codes`` the answers in ``datagram`` to the requests of ``seqs`` (others
    are late answers to an earlier send); whether the ack of ``closing`` is among them."""
    for reply in rtnl.replies(datagram):
        if reply.kind != rtnl.NLMSG_ERROR:
            continue
        if reply.seq == closing:
            return True
        answered = seqs.get(reply.seq)
        if answered is not None:
            codes[answered] = rtnl.ack_errno(reply.payload)
    return False


def open_rtnl_socket() -> socket.socket:
    """A raw rtnetlink socket with strict dump checking, capped acks and a large buffer."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        # The kernel filters dumps by the header and attributes we send (Linux 4.20+),
        # and an error ack carries the request's header only (4.3+).  Without them
        # (ENOPROTOOPT on older kernels) dumps are whole and decoding filters instead.
        for option in (NETLINK_GET_STRICT_CHK, NETLINK_CAP_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError as err:
                if err.errno != errnos.ENOPROTOOPT:
                    raise
                log.info("netlink socket option %d not supported by this kernel", option)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.settimeout(REPLY_TIMEOUT)
    except OSError:
        sock.close()
        raise
    return sock


def _made_ahead(batches: Iterator[B]) -> Iterator[B]:
    """``batches``, made on a thread of their own as fast as it can (bounded work: it
    ends by itself even if the consumer stops early, and is joined then)."""
    ready: queue.SimpleQueue[tuple[B | None, Exception | None]] = queue.SimpleQueue()

    def produce() -> None:
        try:
            for batch in batches:
                ready.put((batch, None))
        except Exception as err:  # noqa: BLE001 - re-raised in the consumer's thread
            ready.put((None, err))
            return
        ready.put((None, None))

    worker = threading.Thread(target=produce, name="netlink-encode", daemon=True)
    worker.start()
    try:
        while True:
            batch, err = ready.get()
            if err is not None:
                raise err
            if batch is None:
                return
            yield batch
    finally:
        worker.join()


# --- the kernel WireGuard driver (generic netlink) ------------------------------------------


class WireGuardKernel:
    """The kernel driver for one WireGuard device, over pyroute2's generic netlink socket.

    Works in the namespace of ``netlink`` (flanneld's own unless a test names one).
    """

    name = "kernel"

    def __init__(self, netlink: Netlink, ifname: str) -> None:
        self._netlink = netlink
        self._ifname = ifname
        self._wg: Any = None

    def ensure_device(self) -> bool:
        _, created = self._netlink.ensure_wireguard(self._ifname)
        return created

    def read(self) -> DeviceState:
        msgs = self._call("get device", lambda wg: tuple(wg.info(self._ifname)))
        return kernel_device_state(msgs)

    def apply(self, plan: PeerPlan, private_key: bytes, listen_port: int) -> None:
        """One set request per device change and per peer (the key is never logged)."""
        for request in kernel_requests(plan, private_key, listen_port):
            self._call("set device", partial(_wg_set, self._ifname, request))

    def close(self) -> None:
        if self._wg is not None:
            self._wg.close()
            self._wg = None

    def _call(self, what: str, body: Callable[[Any], Any]) -> Any:
        try:
            if self._wg is None:
                netns = self._netlink.netns
                from pyroute2.netlink.generic.wireguard import WireGuard

                self._wg = WireGuard() if netns is None else WireGuard(netns=netns, flags=0)
            return body(self._wg)
        except _failures() as err:
            self.close()  # a failed request may leave the socket out of step: start afresh
            raise _dataplane_error(f"wireguard {what} {self._ifname}", err) from err


def _wg_set(ifname: str, request: dict[str, Any], wg: Any) -> Any:
    return wg.set(ifname, **request)


def kernel_requests(plan: PeerPlan, private_key: bytes, listen_port: int) -> list[dict[str, Any]]:
    """The keyword arguments of each ``WireGuard.set`` call that applies ``plan``, in order."""
    from backends.wireguard_state import key_b64

    requests: list[dict[str, Any]] = []
    if plan.configure_device:
        requests.append({"private_key": key_b64(private_key), "listen_port": listen_port})
    for key in plan.remove:
        requests.append({"peer": {"public_key": key_b64(key), "remove": True}})
    for peer in plan.put:
        requests.append({"peer": _kernel_peer(peer)})
    return requests


def _kernel_peer(peer: WgPeer) -> dict[str, Any]:
    from backends.wireguard_state import KEY_LEN, key_b64

    addr, port = peer.endpoint
    return {
        "public_key": key_b64(peer.public_key),
        # an all-zero key clears a PSK the peer had before
        "preshared_key": key_b64(peer.psk or bytes(KEY_LEN)),
        "endpoint_addr": str(addr),
        "endpoint_port": port,
        "persistent_keepalive": peer.keepalive,
        "replace_allowed_ips": True,
        "allowed_ips": sorted(str(net) for net in peer.allowed_ips),
    }


def kernel_device_state(msgs: Sequence[Any]) -> DeviceState:
    """The device as the kernel's GET_DEVICE dump describes it (peers may span messages)."""
    from backends.wireguard_state import DeviceState, PeerState

    private_key: bytes | None = None
    listen_port = 0
    peers: dict[bytes, PeerState] = {}
    for msg in msgs:
        private_key = _raw_key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) or private_key
        listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _raw_key(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            if key is None:
                continue
            endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
            psk = _raw_key(peer.get_attr("WGPEER_A_PRESHARED_KEY"))
            allowed = frozenset(
                ipaddress.ip_network(a["addr"], strict=False)
                for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()
                if a.get("addr")
            )
            known = peers.get(key)
            peers[key] = PeerState(
                endpoint=(ipaddress.ip_address(endpoint["addr"]), int(endpoint["port"]))
                if endpoint else None,
                allowed_ips=allowed | (known.allowed_ips if known else frozenset()),
                psk=psk,
                keepalive=int(peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
            )
    return DeviceState(private_key, listen_port, peers)


def _raw_key(value: Any) -> bytes | None:
    """A key from pyroute2's base64 text; None for a missing or all-zero key."""
    from backends.wireguard_state import KEY_LEN

    if not value:
        return None
    raw = base64.b64decode(value)
    return None if raw == bytes(KEY_LEN) else raw
