"""The netlink seam: the one module that talks to the kernel's routing stack.

Everything above this module deals in plain values (``backends.model``,
``backends.base``); here they become pyroute2 calls.  Writes are idempotent
(``replace``; deletes treat a missing object as done), observation is one
dump per table per call, and a pyroute2 ``NetlinkError`` never leaves this
module: it becomes a :class:`~subnet.errors.DataplaneError` carrying the
kernel's errno.

With ``netns`` set, the socket is opened inside that named namespace (tests
and the lab); the daemon itself runs in its namespace and passes ``None``.
"""

from __future__ import annotations

import base64
import errno as errnos
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Self

from pyroute2 import IPRoute, NetlinkError, WireGuard
from pyroute2 import netns as pyroute2_netns

from backends.base import InterfaceAddress, InterfaceInfo, RouteLookup
from backends.model import (
    ROUTE_PROTOCOL,
    DataplaneState,
    FdbEntry,
    KernelObject,
    Neighbour,
    Route,
)
from backends.plan import Change, Put, plan
from backends.wireguard_state import (
    KEY_LEN,
    DeviceState,
    PeerPlan,
    PeerState,
    WgPeer,
    key_b64,
)
from subnet.errors import DataplaneError
from subnet.lease import IPAddress, IPNetwork

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 0x4
IFF_UP = 0x1
IFA_F_TEMPORARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

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

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._names: dict[int, str] = {}
        self._views: dict[tuple[tuple[int, ...], tuple[int, ...]], DataplaneState] = {}
        where = f" in netns {netns}" if netns else ""
        if netns is not None and not os.path.exists(_netns_path(netns)):
            # checked here because pyroute2 leaks its socket when the open fails
            raise DataplaneError(f"no network namespace {netns!r}", errnos.ENOENT)
        try:
            self._ipr = IPRoute() if netns is None else IPRoute(netns=netns, flags=0)
        except (NetlinkError, OSError) as err:
            raise DataplaneError(f"cannot open netlink socket{where}: {err}", _errno(err)) from err

    @property
    def netns(self) -> str | None:
        return self._netns

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- interface selection -------------------------------------------------------

    def interfaces(self) -> list[InterfaceInfo]:
        """Every link with its addresses (one link dump, one address dump)."""
        links = self._request("dump links", self._ipr.link, "dump")
        addrs = self._request("dump addresses", self._ipr.addr, "dump")
        by_index: dict[int, list[InterfaceAddress]] = {}
        for msg in addrs:
            by_index.setdefault(msg["index"], []).append(_interface_address(msg))
        result = []
        for msg in links:
            state = _link_state(msg)
            self._names[state.index] = state.name
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
        for msg in self._request("dump routes", self._ipr.route, "dump", family=family):
            if msg["dst_len"] or _table(msg) != MAIN_TABLE or msg["type"] != RTN_UNICAST:
                continue
            oif = _route_oif(msg)
            if oif is None:
                continue
            candidate = (msg.get("RTA_PRIORITY") or 0, oif)
            if best is None or candidate < best:
                best = candidate
        return None if best is None else best[1]

    def route_get(self, addr: IPAddress) -> list[RouteLookup]:
        """How the kernel would route to ``addr``; empty when it is unreachable."""
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        try:
            answer = self._ipr.route("get", dst=str(addr), family=family)
        except (NetlinkError, OSError) as err:
            if _errno(err) in _UNREACHABLE:
                return []
            raise _dataplane_error(f"route get {addr}", err) from err
        result = []
        for msg in answer:
            gateway = msg.get("RTA_GATEWAY")
            prefsrc = msg.get("RTA_PREFSRC")
            result.append(
                RouteLookup(
                    ifindex=_route_oif(msg) or 0,
                    gateway=ipaddress.ip_address(gateway) if gateway else None,
                    prefsrc=ipaddress.ip_address(prefsrc) if prefsrc else None,
                )
            )
        return result

    # --- links ---------------------------------------------------------------------------

    def links(self) -> list[LinkState]:
        """Every link (one dump); read-only, for diagnostics."""
        found = [_link_state(msg) for msg in self._request("dump links", self._ipr.link, "dump")]
        self._names.update((state.index, state.name) for state in found)
        return found

    def link(self, name: str) -> LinkState | None:
        """The link called ``name``, or None if there is none."""
        try:
            msgs = self._ipr.link("get", ifname=name)
        except (NetlinkError, OSError) as err:
            if _errno(err) in _ABSENT:
                return None
            raise _dataplane_error(f"link get {name}", err) from err
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
        self._request(f"link add {spec.name}", self._ipr.link, "add", **_vxlan_args(spec))
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
        self._request(f"link add {name} type wireguard", self._ipr.link, "add", ifname=name,
                      kind="wireguard")
        created = self.link(name)
        if created is None:
            raise DataplaneError(f"link {name} vanished right after it was created")
        log.info("link %s (wireguard): added", name)
        return created, True

    def delete_link(self, index: int) -> None:
        """Delete a link; a link that is already gone is fine."""
        name = self._name(index)
        try:
            self._ipr.link("del", index=index)
        except (NetlinkError, OSError) as err:
            if _errno(err) not in _ABSENT:
                raise _dataplane_error(f"link del {name}", err) from err
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
        args: dict[str, Any] = {}
        said = []
        if mtu is not None:
            args["mtu"] = mtu
            said.append(f"mtu {mtu}")
        if mac is not None:
            args["address"] = mac
            said.append(f"mac {mac}")
        if up is not None:
            args["state"] = "up" if up else "down"
            said.append(args["state"])
        if not args:
            return
        name = self._name(index)
        self._request(f"link set {name}", self._ipr.link, "set", index=index, **args)
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
        for msg in self._request("dump addresses", self._ipr.addr, "dump"):
            if msg["index"] == index:
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
        failure: list[OSError] = []

        def write() -> None:
            try:
                if self._netns is not None:
                    # /proc/sys/net shows the namespace of the opening thread, and
                    # setns() moves only this short-lived thread.
                    pyroute2_netns.setns(self._netns, flags=0)
                with open(path, "w", encoding="ascii") as sysctl:
                    sysctl.write("0")
            except OSError as err:
                failure.append(err)

        if self._netns is None:
            write()
        else:
            worker = threading.Thread(target=write, name="accept-ra")
            worker.start()
            worker.join()
        if failure:
            raise DataplaneError(f"cannot write {path}: {failure[0]}", failure[0].errno)
        log.info("sysctl net.ipv6.conf.%s.accept_ra: set 0", name)

    # --- routes, neighbours, FDB -------------------------------------------------------

    def observe(self, ifindexes: Iterable[int], families: Iterable[int]) -> DataplaneState:
        """Our kernel objects: routes with our protocol id in the main table, and
        permanent neighbours and ``self`` FDB entries with a remote on ``ifindexes``.

        One dump per table and family.
        """
        devices = frozenset(ifindexes)
        routes: set[Route] = set()
        neighbours: set[Neighbour] = set()
        for family in families:
            dump = self._request("dump routes", self._ipr.route, "dump", family=family)
            routes.update(r for r in map(_our_route, dump) if r is not None)
            dump = self._request("dump neighbours", self._ipr.neigh, "dump", family=family)
            neighbours.update(
                n for n in map(_permanent_neighbour, dump) if n and n.ifindex in devices
            )
        fdb: set[FdbEntry] = set()
        if devices:
            dump = self._request("dump fdb", self._ipr.fdb, "dump")
            fdb.update(e for e in map(_self_fdb_entry, dump) if e and e.ifindex in devices)
        return DataplaneState(frozenset(routes), frozenset(neighbours), frozenset(fdb))

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
        last fully successful sync of the same scope left is used instead
        (cheap on every watch event; the periodic resync and the kernel watch
        pass ``fresh`` so hand-made damage is still found).
        """
        scope = (tuple(sorted(ifindexes)), tuple(sorted(families)))
        observed = None if fresh else self._views.get(scope)
        if observed is None:
            observed = self.observe(*scope)
        result = self.apply(plan(observed, desired))
        if result.failed:
            self._views.pop(scope, None)
        else:
            self._views[scope] = desired
        return result

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        """Apply ``changes`` in order, continuing past failures, one log line each."""
        if any(c.obj.ifindex not in self._names for c in changes if c.obj.ifindex):
            self._refresh_names()
        applied: list[Change] = []
        failed: list[ApplyFailure] = []
        for change in changes:
            text = self._describe(change.obj)
            try:
                if isinstance(change, Put):
                    self._put(change.obj)
                    outcome = "added"
                else:
                    outcome = "removed" if self._delete(change.obj) else "already gone"
            except (NetlinkError, OSError) as err:
                failure = ApplyFailure(change, text, _errno(err), _message(err))
                failed.append(failure)
                verb = "add" if isinstance(change, Put) else "remove"
                log.warning("%s: %s failed: %s", text, verb, failure.message)
                continue
            applied.append(change)
            log.info("%s: %s", text, outcome)
        return ApplyResult(tuple(applied), tuple(failed))

    # --- internals -------------------------------------------------------------------------

    def sync_blackholes(self, subnets: Sequence[IPNetwork]) -> int:
        """Keep a ``blackhole`` route (proto 44) for each of ``subnets`` and no other of ours.

        Returns how many routes were added or removed.  A blackhole for a
        subnet we no longer hold is removed (upstream leaves it behind).
        """
        have = {
            ipaddress.ip_network(f"{m.get('RTA_DST')}/{m['dst_len']}")
            for family in (socket.AF_INET, socket.AF_INET6)
            for m in self._request("dump routes", self._ipr.route, "dump", family=family)
            if m["type"] == RTN_BLACKHOLE and m["proto"] == ROUTE_PROTOCOL
            and _table(m) == MAIN_TABLE and m.get("RTA_DST")
        }
        want = set(subnets)
        for subnet in sorted(want - have, key=str):
            self._request(
                f"add blackhole route {subnet}", self._ipr.route, "replace", dst=str(subnet),
                type=RTN_BLACKHOLE, proto=ROUTE_PROTOCOL, table=MAIN_TABLE,
            )
            log.info("blackhole route %s: added", subnet)
        for subnet in sorted(have - want, key=str):
            self._request(
                f"delete blackhole route {subnet}", self._ipr.route, "del", dst=str(subnet),
                type=RTN_BLACKHOLE, proto=ROUTE_PROTOCOL, table=MAIN_TABLE,
            )
            log.info("blackhole route %s: removed (no longer our subnet)", subnet)
        return len(want ^ have)

    def _request(
        self, what: str, call: Callable[..., Iterable[Any]], *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        """``call(*args, **kwargs)`` as a tuple of messages; DataplaneError on failure."""
        try:
            return tuple(call(*args, **kwargs))
        except (NetlinkError, OSError) as err:
            raise DataplaneError(f"{what}: {_message(err)}", _errno(err)) from err

    def _address(self, verb: str, index: int, iface: HostAddress) -> None:
        self._request(
            f"addr {verb} {iface} dev {self._name(index)}",
            self._ipr.addr,
            verb,
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )

    def _put(self, obj: KernelObject) -> None:
        if isinstance(obj, Route):
            args: dict[str, Any] = {
                "dst": str(obj.dst),
                "family": _family(obj.dst),
                "table": MAIN_TABLE,
                "proto": ROUTE_PROTOCOL,
                "type": RTN_UNICAST,
            }
            if obj.gateway is not None:
                args["gateway"] = str(obj.gateway)
            if obj.ifindex is not None:
                args["oif"] = obj.ifindex
            if obj.onlink:
                args["flags"] = RTNH_F_ONLINK
            self._ipr.route("replace", **args)
        elif isinstance(obj, Neighbour):
            self._ipr.neigh(
                "replace",
                dst=str(obj.dst),
                lladdr=obj.lladdr,
                ifindex=obj.ifindex,
                family=_family(obj.dst),
                state=NUD_PERMANENT,
            )
        else:
            self._ipr.fdb(
                "replace",
                ifindex=obj.ifindex,
                lladdr=obj.lladdr,
                dst=str(obj.dst),
                state=NUD_PERMANENT,
                flags=NTF_SELF,
            )

    def _delete(self, obj: KernelObject) -> bool:
        """Delete ``obj``; False if it was already gone."""
        try:
            if isinstance(obj, Route):
                # The protocol id makes the kernel match only our route.
                self._ipr.route(
                    "del",
                    dst=str(obj.dst),
                    family=_family(obj.dst),
                    table=MAIN_TABLE,
                    proto=ROUTE_PROTOCOL,
                )
            elif isinstance(obj, Neighbour):
                self._ipr.neigh(
                    "del", dst=str(obj.dst), ifindex=obj.ifindex, family=_family(obj.dst)
                )
            else:
                self._ipr.fdb(
                    "del", ifindex=obj.ifindex, lladdr=obj.lladdr, dst=str(obj.dst), flags=NTF_SELF
                )
        except NetlinkError as err:
            if err.code in _ABSENT:
                return False
            raise
        return True

    def _refresh_names(self) -> None:
        links = self._request("dump links", self._ipr.link, "dump")
        self._names = {msg["index"]: msg.get("IFLA_IFNAME") for msg in links}

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


# --- message decoding (pyroute2 messages are untyped) ---------------------------------------


def _errno(err: Exception) -> int | None:
    if isinstance(err, NetlinkError):
        return int(err.code)
    if isinstance(err, OSError):
        return err.errno
    return None


def _message(err: Exception) -> str:
    if isinstance(err, NetlinkError) and len(err.args) > 1:
        return str(err.args[1])
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def _dataplane_error(what: str, err: Exception) -> DataplaneError:
    return DataplaneError(f"{what}: {_message(err)}", _errno(err))


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else os.path.join("/var/run/netns", netns)


def _family(net: IPNetwork | IPAddress) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _within(addr: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def _table(msg: Any) -> int:
    return int(msg.get("RTA_TABLE") or msg["table"])


def _route_oif(msg: Any) -> int | None:
    oif = msg.get("RTA_OIF")
    if oif:
        return int(oif)
    hops = msg.get("RTA_MULTIPATH") or ()
    for hop in hops:
        if hop.get("oif"):
            return int(hop["oif"])
    return None


def _interface_address(msg: Any) -> InterfaceAddress:
    text = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    flags = msg.get("IFA_FLAGS")
    if flags is None:
        flags = msg["flags"]
    return InterfaceAddress(
        address=ipaddress.ip_address(text),
        prefixlen=int(msg["prefixlen"]),
        permanent=bool(flags & IFA_F_PERMANENT),
        # for IPv4 the same bit means "secondary", not "temporary"
        temporary=msg["family"] == socket.AF_INET6 and bool(flags & IFA_F_TEMPORARY),
        deprecated=bool(flags & IFA_F_DEPRECATED),
    )


def _link_state(msg: Any) -> LinkState:
    info = msg.get("IFLA_LINKINFO")
    kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
    data = info.get("IFLA_INFO_DATA") if info else None
    vxlan = None
    if kind == "vxlan" and data is not None:
        local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
        vxlan = VxlanAttrs(
            vni=int(data.get("IFLA_VXLAN_ID") or 0),
            port=int(data.get("IFLA_VXLAN_PORT") or 0),
            local=ipaddress.ip_address(local) if local else None,
            underlay=int(data.get("IFLA_VXLAN_LINK") or 0) or None,
            learning=bool(data.get("IFLA_VXLAN_LEARNING")),
            gbp=bool(data.get("IFLA_VXLAN_GBP")),
        )
    return LinkState(
        index=int(msg["index"]),
        name=str(msg.get("IFLA_IFNAME")),
        kind=kind,
        mtu=int(msg.get("IFLA_MTU") or 0),
        mac=str(msg.get("IFLA_ADDRESS") or "").lower(),
        up=bool(msg["flags"] & IFF_UP),
        vxlan=vxlan,
        master=int(msg.get("IFLA_MASTER") or 0) or None,
    )


def _vxlan_args(spec: VxlanSpec) -> dict[str, Any]:
    args: dict[str, Any] = {
        "ifname": spec.name,
        "kind": "vxlan",
        "vxlan_id": spec.vni,
        "vxlan_learning": int(spec.learning),
        "vxlan_l2miss": 0,
        "vxlan_l3miss": 0,
    }
    if spec.port:
        args["vxlan_port"] = spec.port
    if spec.underlay:
        args["vxlan_link"] = spec.underlay
    if spec.local is not None:
        args["vxlan_local" if spec.local.version == 4 else "vxlan_local6"] = str(spec.local)
    if spec.gbp:
        args["vxlan_gbp"] = True
    if spec.mac is not None:
        args["address"] = spec.mac
    if spec.mtu is not None:
        args["mtu"] = spec.mtu
    return args


def _our_route(msg: Any) -> Route | None:
    if msg["proto"] != ROUTE_PROTOCOL or _table(msg) != MAIN_TABLE or msg["type"] != RTN_UNICAST:
        return None
    dst = msg.get("RTA_DST") or ("0.0.0.0" if msg["family"] == socket.AF_INET else "::")
    gateway = msg.get("RTA_GATEWAY")
    return Route(
        dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}"),
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        ifindex=_route_oif(msg),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
    )


def _permanent_neighbour(msg: Any) -> Neighbour | None:
    dst = msg.get("NDA_DST")
    lladdr = msg.get("NDA_LLADDR")
    if not (msg["state"] & NUD_PERMANENT) or not dst or not lladdr:
        return None
    return Neighbour(
        ifindex=int(msg["ifindex"]), dst=ipaddress.ip_address(dst), lladdr=lladdr.lower()
    )


def _self_fdb_entry(msg: Any) -> FdbEntry | None:
    dst = msg.get("NDA_DST")
    lladdr = msg.get("NDA_LLADDR")
    if not (msg["flags"] & NTF_SELF) or not (msg["state"] & NUD_PERMANENT) or not dst or not lladdr:
        return None
    return FdbEntry(
        ifindex=int(msg["ifindex"]), lladdr=lladdr.lower(), dst=ipaddress.ip_address(dst)
    )


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
                self._wg = WireGuard() if netns is None else WireGuard(netns=netns, flags=0)
            return body(self._wg)
        except (NetlinkError, OSError) as err:
            self.close()  # a failed request may leave the socket out of step: start afresh
            raise _dataplane_error(f"wireguard {what} {self._ifname}", err) from err


def _wg_set(ifname: str, request: dict[str, Any], wg: Any) -> Any:
    return wg.set(ifname, **request)


def kernel_requests(plan: PeerPlan, private_key: bytes, listen_port: int) -> list[dict[str, Any]]:
    """The keyword arguments of each ``WireGuard.set`` call that applies ``plan``, in order."""
    requests: list[dict[str, Any]] = []
    if plan.configure_device:
        requests.append({"private_key": key_b64(private_key), "listen_port": listen_port})
    for key in plan.remove:
        requests.append({"peer": {"public_key": key_b64(key), "remove": True}})
    for peer in plan.put:
        requests.append({"peer": _kernel_peer(peer)})
    return requests


def _kernel_peer(peer: WgPeer) -> dict[str, Any]:
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
    if not value:
        return None
    raw = base64.b64decode(value)
    return None if raw == bytes(KEY_LEN) else raw
