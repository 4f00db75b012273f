"""rtnetlink messages for our routes, neighbours and FDB entries, as bytes (pure).

The netlink seam (:mod:`backends.netlink`) sends thousands of these per pass,
so they are encoded straight from the model objects with ``struct`` (one
fixed layout per object shape: the same bytes pyroute2's ``rtmsg``/``ndmsg``
classes produce for the same request, which a unit test checks) and dump
replies are decoded only as far as our objects need.  Nothing here does I/O.

Layouts (linux/netlink.h, rtnetlink.h, neighbour.h): a 16-byte ``nlmsghdr``,
then a 12-byte ``rtmsg`` or ``ndmsg``, then 4-byte aligned attributes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from typing import NamedTuple, cast

from backends.model import ROUTE_PROTOCOL, FdbEntry, KernelObject, Neighbour, Route
from backends.plan import Change, Put

AF_INET = 2
AF_INET6 = 10
AF_BRIDGE = 7

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

MAIN_TABLE = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RTNH_F_ONLINK = 0x4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
ATTR = struct.Struct("=HH")
ERROR = struct.Struct("=i")
U32 = struct.Struct("=I")

# No NLM_F_ACK: rtnetlink answers a request that fails whether it asked or not,
# and the batch's closing NOOP is acked once all of them are handled (see
# netlink.Rtnl.transact), so a request that succeeded needs no answer of its own.
_PUT = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
_DEL = NLM_F_REQUEST


class Reply(NamedTuple):
    """One message read back from the kernel: header fields and the payload after it
    (a named tuple: a dump makes thousands of them)."""

    kind: int
    flags: int
    seq: int
    payload: bytes


# --- encoding -----------------------------------------------------------------------------


def attr(kind: int, data: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = ATTR.size + len(data)
    return ATTR.pack(length, kind) + data + b"\0" * (-length & 3)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message: header plus ``body`` (already aligned)."""
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def change_body(change: Change) -> tuple[int, int, bytes]:
    """(message type, flags, body) of the request that applies ``change``."""
    obj = change.obj
    put = isinstance(change, Put)
    if isinstance(obj, Route):
        return (RTM_NEWROUTE if put else RTM_DELROUTE, _PUT if put else _DEL,
                route_body(obj, put))
    if isinstance(obj, Neighbour):
        return (RTM_NEWNEIGH if put else RTM_DELNEIGH, _PUT if put else _DEL,
                neighbour_body(obj, put))
    return RTM_NEWNEIGH if put else RTM_DELNEIGH, _PUT if put else _DEL, fdb_body(obj)


# One pack for the common shapes (IPv4, a MAC of 6 bytes): the same bytes as the general
# path below, which a unit test checks.
_ROUTE4_PUT = struct.Struct("=BBBBBBBBIHH4sHH4sHHI")  # rtmsg, RTA_DST, RTA_GATEWAY, RTA_OIF
_NEIGH4_PUT = struct.Struct("=BBHiHBBHH4sHH6s2x")  # ndmsg, NDA_DST, NDA_LLADDR
_FDB4_PUT = struct.Struct("=BBHiHBBHH6s2xHH4s")  # ndmsg, NDA_LLADDR, NDA_DST


def family_of(version: int) -> int:
    """The address family (AF_INET, AF_INET6) of an IP version."""
    return AF_INET if version == 4 else AF_INET6


def route_body(route: Route, put: bool, rtype: int = RTN_UNICAST) -> bytes:
    """An ``rtmsg`` for our route: add/replace it, or delete it (matched by protocol id,
    and by ``rtype`` unless it is unicast)."""
    dst = route.dst.network_address.packed
    if (put and rtype == RTN_UNICAST and len(dst) == 4 and route.gateway is not None
            and route.gateway.version == 4 and route.ifindex is not None):
        return _ROUTE4_PUT.pack(
            AF_INET, route.dst.prefixlen, 0, 0, MAIN_TABLE, ROUTE_PROTOCOL, RT_SCOPE_UNIVERSE,
            RTN_UNICAST, RTNH_F_ONLINK if route.onlink else 0, 8, RTA_DST, dst, 8, RTA_GATEWAY,
            route.gateway.packed, 8, RTA_OIF, route.ifindex,
        )
    family = family_of(route.dst.version)
    if put:
        head = RTMSG.pack(family, route.dst.prefixlen, 0, 0, MAIN_TABLE, ROUTE_PROTOCOL,
                          RT_SCOPE_UNIVERSE, rtype, RTNH_F_ONLINK if route.onlink else 0)
    else:
        head = RTMSG.pack(family, route.dst.prefixlen, 0, 0, MAIN_TABLE, ROUTE_PROTOCOL,
                          RT_SCOPE_NOWHERE, 0 if rtype == RTN_UNICAST else rtype, 0)
    parts = [head, attr(RTA_DST, dst)]
    if put and route.gateway is not None:
        parts.append(attr(RTA_GATEWAY, route.gateway.packed))
    if put and route.ifindex is not None:
        parts.append(attr(RTA_OIF, U32.pack(route.ifindex)))
    return b"".join(parts)


def neighbour_body(neigh: Neighbour, put: bool) -> bytes:
    """An ``ndmsg`` for a permanent neighbour entry."""
    dst = neigh.dst.packed
    if put:
        mac = mac_bytes(neigh.lladdr)
        if len(dst) == 4 and len(mac) == 6:
            return _NEIGH4_PUT.pack(AF_INET, 0, 0, neigh.ifindex, NUD_PERMANENT, 0, 0,
                                    8, NDA_DST, dst, 10, NDA_LLADDR, mac)
    head = NDMSG.pack(family_of(neigh.dst.version), 0, 0, neigh.ifindex,
                      NUD_PERMANENT if put else 0, 0, 0)
    parts = [head, attr(NDA_DST, dst)]
    if put:
        parts.append(attr(NDA_LLADDR, mac))
    return b"".join(parts)


def fdb_body(entry: FdbEntry) -> bytes:
    """An ``ndmsg`` (family AF_BRIDGE) for a ``self`` FDB entry of a VXLAN device."""
    mac, dst = mac_bytes(entry.lladdr), entry.dst.packed
    if len(mac) == 6 and len(dst) == 4:
        return _FDB4_PUT.pack(AF_BRIDGE, 0, 0, entry.ifindex, NUD_PERMANENT, NTF_SELF, 0,
                              10, NDA_LLADDR, mac, 8, NDA_DST, dst)
    head = NDMSG.pack(AF_BRIDGE, 0, 0, entry.ifindex, NUD_PERMANENT, NTF_SELF, 0)
    return head + attr(NDA_LLADDR, mac) + attr(NDA_DST, dst)


def route_dump(family: int, rtype: int = 0, protocol: int = ROUTE_PROTOCOL) -> bytes:
    """A route dump request body that a strict-checking kernel filters to the main
    table and ``protocol`` (our id by default; 0: any) and to ``rtype`` if given."""
    return RTMSG.pack(family, 0, 0, 0, MAIN_TABLE, protocol, 0, rtype, 0) + attr(
        RTA_TABLE, U32.pack(MAIN_TABLE)
    )


def neighbour_dump(family: int, ifindex: int) -> bytes:
    """A neighbour dump request body filtered to one device."""
    return NDMSG.pack(family, 0, 0, 0, 0, 0, 0) + attr(NDA_IFINDEX, U32.pack(ifindex))


def fdb_dump(ifindex: int) -> bytes:
    """An FDB dump request body filtered to one (bridge port or VXLAN) device."""
    return NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, 0, 0, 0)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


# --- decoding -----------------------------------------------------------------------------


def replies(datagram: bytes) -> Iterator[Reply]:
    """Every netlink message in one datagram."""
    offset = 0
    end = len(datagram)
    while offset + HEADER.size <= end:
        length, kind, flags, seq, _pid = HEADER.unpack_from(datagram, offset)
        if length < HEADER.size or offset + length > end:
            return
        yield Reply(kind, flags, seq, datagram[offset + HEADER.size : offset + length])
        offset += (length + 3) & ~3


def ack_errno(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload (0 for a plain ack)."""
    code: int = ERROR.unpack_from(payload)[0]
    return -code


def pick(payload: bytes, offset: int, wanted: frozenset[int]) -> dict[int, bytes]:
    """The attributes of the ``wanted`` types, reading no further than the last of them
    (the kernel writes the ones we need first: a dump of thousands is mostly this loop)."""
    found: dict[int, bytes] = {}
    end = len(payload)
    unpack = ATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(payload, offset)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind in wanted:
            found[kind] = payload[offset + 4 : offset + length]
            if len(found) == len(wanted):
                break
        offset += (length + 3) & ~3
    return found


_ROUTE_ATTRS = frozenset({RTA_TABLE, RTA_DST, RTA_GATEWAY, RTA_OIF})
NEIGH_ATTRS = frozenset({NDA_DST, NDA_LLADDR})


def our_route(payload: bytes, rtype: int = RTN_UNICAST) -> Route | None:
    """The route in an RTM_NEWROUTE payload if it is ours (protocol id, main table, ``rtype``)."""
    sig = route_signature(payload, rtype)
    return None if sig is None else _route_of(sig)


def _route_of(sig: RouteSignature) -> Route:
    _, dst, dst_len, gateway, oif, onlink = sig
    return Route(
        dst=ipaddress.ip_network((ipaddress.ip_address(dst), dst_len)),
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        ifindex=oif,
        onlink=onlink,
    )


def object_of(sig: Signature) -> KernelObject:
    """The object a signature describes (the inverse of :func:`signature`)."""
    if sig[0] == "route":
        return _route_of(cast(RouteSignature, sig))
    _, ifindex, first, second = cast(NeighbourSignature, sig)
    if sig[0] == "neigh":
        return Neighbour(ifindex=ifindex, dst=ipaddress.ip_address(first), lladdr=mac_text(second))
    return FdbEntry(ifindex=ifindex, lladdr=mac_text(first), dst=ipaddress.ip_address(second))


def permanent_neighbour(payload: bytes) -> Neighbour | None:
    """The neighbour in an RTM_NEWNEIGH payload if it is permanent with an address."""
    sig = neighbour_signature(payload)
    return None if sig is None else cast(Neighbour, object_of(sig))


def self_fdb_entry(payload: bytes) -> FdbEntry | None:
    """The FDB entry in an AF_BRIDGE RTM_NEWNEIGH payload if it is permanent, ``self``,
    with a remote address."""
    sig = fdb_signature(payload)
    return None if sig is None else cast(FdbEntry, object_of(sig))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)



# --- signatures: a cheap, hashable form of our objects for comparing whole tables ----------

Signature = tuple[object, ...]
RouteSignature = tuple[str, bytes, int, bytes | None, int | None, bool]
NeighbourSignature = tuple[str, int, bytes, bytes]


def signature(obj: KernelObject) -> Signature:
    """What a dump of ``obj`` decodes to with the ``*_signature`` functions below."""
    if isinstance(obj, Route):
        gateway = None if obj.gateway is None else obj.gateway.packed
        return ("route", obj.dst.network_address.packed, obj.dst.prefixlen, gateway, obj.ifindex,
                obj.onlink)
    if isinstance(obj, Neighbour):
        return ("neigh", obj.ifindex, obj.dst.packed, mac_bytes(obj.lladdr))
    return ("fdb", obj.ifindex, mac_bytes(obj.lladdr), obj.dst.packed)


def slot(sig: Signature) -> Signature:
    """The kernel slot a signature fills (its kind, then what identifies it, as an
    object's ``key`` does): two signatures with one slot replace each other."""
    return sig[:3]


# The attributes the kernel writes for our IPv4 routes, neighbours and FDB entries, in its
# order: a dump of thousands is decoded with one unpack per message when a message has
# exactly this shape (checked), with pick() otherwise.
_ROUTE4 = struct.Struct("=HHIHH4sHH4sHHI")  # RTA_TABLE, RTA_DST, RTA_GATEWAY, RTA_OIF
_ROUTE4_HEAD = (8, RTA_TABLE, 8, RTA_DST, 8, RTA_GATEWAY, 8, RTA_OIF)
_NEIGH4 = struct.Struct("=HH4sHH6s")  # NDA_DST, NDA_LLADDR
_FDB4 = struct.Struct("=HH6s2xHH4s")  # NDA_LLADDR, NDA_DST


def route_signature(payload: bytes, rtype: int = RTN_UNICAST) -> RouteSignature | None:
    """Our route (protocol id, main table, ``rtype``) in an RTM_NEWROUTE payload, as plain
    values; None for anybody else's."""
    family, dst_len, _src, _tos, table, proto, _scope, kind, flags = RTMSG.unpack_from(payload)
    if proto != ROUTE_PROTOCOL or kind != rtype:
        return None
    if family == AF_INET and len(payload) == RTMSG.size + _ROUTE4.size:
        (l1, t1, table_id, l2, t2, dst, l3, t3, gateway, l4, t4, oif
         ) = _ROUTE4.unpack_from(payload, RTMSG.size)
        if (l1, t1, l2, t2, l3, t3, l4, t4) == _ROUTE4_HEAD:
            if table_id != MAIN_TABLE:
                return None
            return ("route", dst, dst_len, gateway, oif, bool(flags & RTNH_F_ONLINK))
    attrs = pick(payload, RTMSG.size, _ROUTE_ATTRS)
    table_id = U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
    if table_id != MAIN_TABLE:
        return None
    dst = attrs.get(RTA_DST) or bytes(4 if family == AF_INET else 16)
    oif = attrs.get(RTA_OIF)
    return ("route", dst, dst_len, attrs.get(RTA_GATEWAY) or None,
            U32.unpack(oif)[0] if oif else None, bool(flags & RTNH_F_ONLINK))


def neighbour_signature(payload: bytes) -> NeighbourSignature | None:
    """A permanent neighbour with an address, as plain values."""
    family, _p1, _p2, ifindex, state, _flags, _type = NDMSG.unpack_from(payload)
    if not state & NUD_PERMANENT:
        return None
    if family == AF_INET and len(payload) >= NDMSG.size + _NEIGH4.size:
        l1, t1, dst, l2, t2, lladdr = _NEIGH4.unpack_from(payload, NDMSG.size)
        if (l1, t1, l2, t2) == (8, NDA_DST, 10, NDA_LLADDR):
            return ("neigh", ifindex, dst, lladdr)
    attrs = pick(payload, NDMSG.size, NEIGH_ATTRS)
    dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    return ("neigh", ifindex, dst, lladdr) if dst and lladdr else None


def fdb_signature(payload: bytes) -> NeighbourSignature | None:
    """A permanent ``self`` FDB entry with a remote address (AF_BRIDGE), as plain values."""
    _family, _p1, _p2, ifindex, state, flags, _type = NDMSG.unpack_from(payload)
    if not state & NUD_PERMANENT or not flags & NTF_SELF:
        return None
    if len(payload) >= NDMSG.size + _FDB4.size:
        l1, t1, lladdr, l2, t2, dst = _FDB4.unpack_from(payload, NDMSG.size)
        if (l1, t1, l2, t2) == (10, NDA_LLADDR, 8, NDA_DST):
            return ("fdb", ifindex, lladdr, dst)
    attrs = pick(payload, NDMSG.size, NEIGH_ATTRS)
    dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    return ("fdb", ifindex, lladdr, dst) if dst and lladdr else None
