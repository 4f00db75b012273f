"""rtnetlink messages for links, addresses and route lookups, as bytes (pure).

The few requests flanneld makes about its devices (create the VXLAN or
WireGuard link, set its MTU, MAC and state, give it its address, ask which
interface reaches an address) are encoded here with ``struct``, in the layout
pyroute2's ``ifinfmsg``/``ifaddrmsg``/``rtmsg`` classes produce for the same
request, and their replies are read back into attribute tables.  Doing it
here rather than through pyroute2's ``IPRoute`` keeps its request machinery
(with asyncio about 115 modules, 0.1 s and 4-5 MiB at every start)
out of the daemon.  Nothing here does I/O; :mod:`backends.netlink` sends.

Layouts (linux/rtnetlink.h, if_link.h, if_addr.h): a 16-byte ``ifinfomsg``,
an 8-byte ``ifaddrmsg`` or a 12-byte ``rtmsg``, then 4-byte aligned
attributes (nested ones without ``NLA_F_NESTED``, as pyroute2 sends them).
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from typing import NamedTuple

from backends.rtnl import (
    AF_INET,
    ATTR,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    RTA_DST,
    RTA_OIF,
    RTA_TABLE,
    RTMSG,
    U32,
    attr,
    family_of,
    mac_bytes,
)
from subnet.lease import IPAddress

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_EXCL = 0x200
CREATE = NLM_F_CREATE | NLM_F_EXCL  # "add": fails with EEXIST when it is there already
REPLACE = NLM_F_CREATE | NLM_F_REPLACE

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 10, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_L2MISS, IFLA_VXLAN_L3MISS, IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 13, 14, 15, 17
IFLA_VXLAN_GBP = 23
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH = 6, 7, 9
IFF_UP = 0x1

IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
U8 = struct.Struct("=B")
BE16 = struct.Struct("!H")

Attributes = dict[int, bytes]


class Link(NamedTuple):
    """An RTM_NEWLINK reply: header fields, attributes, and those of its IFLA_LINKINFO."""

    ifindex: int
    flags: int
    attrs: Attributes
    kind: str
    data: Attributes  # IFLA_INFO_DATA (the kind's own attributes), empty if none


class Address(NamedTuple):
    """An RTM_NEWADDR reply."""

    family: int
    prefixlen: int
    flags: int
    ifindex: int
    attrs: Attributes


class RouteReply(NamedTuple):
    """An RTM_NEWROUTE reply."""

    family: int
    dst_len: int
    table: int
    kind: int
    attrs: Attributes


# --- encoding -----------------------------------------------------------------------------


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind, b"".join(parts))


def link_dump() -> bytes:
    return IFINFOMSG.pack(0, 0, 0, 0, 0)


def link_by_name(name: str) -> bytes:
    return IFINFOMSG.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _text(name))


def link_index(index: int) -> bytes:
    """The body of a request about one link by index (``link del``)."""
    return IFINFOMSG.pack(0, 0, index, 0, 0)


def vxlan_data(
    *, vni: int, port: int, local: IPAddress | None, underlay: int | None, learning: bool,
    gbp: bool,
) -> bytes:
    """The IFLA_INFO_DATA of a new VXLAN device: L2/L3 miss reports off, ``port`` (0: the
    kernel's default), ``underlay`` and ``local`` when given."""
    data = [
        attr(IFLA_VXLAN_ID, U32.pack(vni)),
        attr(IFLA_VXLAN_LEARNING, U8.pack(int(learning))),
        attr(IFLA_VXLAN_L2MISS, U8.pack(0)),
        attr(IFLA_VXLAN_L3MISS, U8.pack(0)),
    ]
    if port:
        data.append(attr(IFLA_VXLAN_PORT, BE16.pack(port)))
    if underlay:
        data.append(attr(IFLA_VXLAN_LINK, U32.pack(underlay)))
    if local is not None:
        data.append(attr(IFLA_VXLAN_LOCAL if local.version == 4 else IFLA_VXLAN_LOCAL6,
                         local.packed))
    if gbp:
        data.append(attr(IFLA_VXLAN_GBP, b""))
    return b"".join(data)


def link_add(
    name: str, kind: str, data: bytes | None = None, mac: str | None = None,
    mtu: int | None = None,
) -> bytes:
    """RTM_NEWLINK body creating link ``name`` of ``kind`` (``data``: its IFLA_INFO_DATA)."""
    parts = [IFINFOMSG.pack(0, 0, 0, 0, 0), attr(IFLA_IFNAME, _text(name))]
    if mac is not None:
        parts.append(attr(IFLA_ADDRESS, mac_bytes(mac)))
    if mtu is not None:
        parts.append(attr(IFLA_MTU, U32.pack(mtu)))
    info = [attr(IFLA_INFO_KIND, _text(kind))]
    if data is not None:
        info.append(nested(IFLA_INFO_DATA, data))
    parts.append(nested(IFLA_LINKINFO, *info))
    return b"".join(parts)


def link_set(index: int, mtu: int | None, mac: str | None, up: bool | None) -> bytes:
    """RTM_NEWLINK body changing the given properties of an existing link."""
    change = 0 if up is None else IFF_UP
    parts = [IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, change)]
    if mtu is not None:
        parts.append(attr(IFLA_MTU, U32.pack(mtu)))
    if mac is not None:
        parts.append(attr(IFLA_ADDRESS, mac_bytes(mac)))
    return b"".join(parts)


def address_dump() -> bytes:
    return IFADDRMSG.pack(0, 0, 0, 0, 0)


def address(index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bytes:
    """RTM_NEWADDR/RTM_DELADDR body for ``iface`` on link ``index`` (IPv4 carries the
    address as both IFA_LOCAL and IFA_ADDRESS, as ``ip address add`` sends it)."""
    family = family_of(iface.version)
    head = IFADDRMSG.pack(family, iface.network.prefixlen, 0, 0, index)
    packed = iface.ip.packed
    if family == AF_INET:
        return head + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    return head + attr(IFA_ADDRESS, packed)


def route_lookup(addr: IPAddress) -> bytes:
    """RTM_GETROUTE body asking how ``addr`` is reached (``ip route get``)."""
    return RTMSG.pack(family_of(addr.version), addr.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + attr(
        RTA_DST, addr.packed
    )


def _text(value: str) -> bytes:
    return value.encode() + b"\0"


# --- decoding -----------------------------------------------------------------------------


def attributes(payload: bytes, offset: int) -> Attributes:
    """Every attribute from ``offset`` on, by type (flags stripped)."""
    found: Attributes = {}
    end = len(payload)
    while offset + ATTR.size <= end:
        length, kind = ATTR.unpack_from(payload, offset)
        if length < ATTR.size:
            break
        found[kind & 0x3FFF] = payload[offset + ATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def link(payload: bytes) -> Link:
    _, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = attributes(payload, IFINFOMSG.size)
    info = attributes(attrs.get(IFLA_LINKINFO, b""), 0)
    return Link(index, flags, attrs, text(info.get(IFLA_INFO_KIND)),
                attributes(info.get(IFLA_INFO_DATA, b""), 0))


def address_reply(payload: bytes) -> Address:
    family, prefixlen, flags, _scope, index = IFADDRMSG.unpack_from(payload)
    return Address(family, prefixlen, flags, index, attributes(payload, IFADDRMSG.size))


def route_reply(payload: bytes) -> RouteReply:
    family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = RTMSG.unpack_from(payload)
    attrs = attributes(payload, RTMSG.size)
    if RTA_TABLE in attrs:
        table = U32.unpack(attrs[RTA_TABLE][:4])[0]
    return RouteReply(family, dst_len, table, kind, attrs)


def default_route(payload: bytes) -> RouteReply | None:
    """The route in a reply if it is a default route (the cheap test first: a node's
    table is mostly routes that are not)."""
    if payload[1]:  # rtm_dst_len
        return None
    return route_reply(payload)


def route_oif(route: RouteReply) -> int | None:
    """The output interface of a route, or of its first multipath hop that has one."""
    if route.attrs.get(RTA_OIF):
        return number(route.attrs[RTA_OIF]) or None
    hops = route.attrs.get(RTA_MULTIPATH, b"")
    offset = 0
    while offset + RTNEXTHOP.size <= len(hops):
        length, _flags, _hops, ifindex = RTNEXTHOP.unpack_from(hops, offset)
        if ifindex:
            return int(ifindex)
        if length < RTNEXTHOP.size:
            break
        offset += (length + 3) & ~3
    return None


def ip(raw: bytes | None) -> IPAddress | None:
    """An address attribute (4 or 16 bytes), None when absent or empty."""
    if not raw:
        return None
    return ipaddress.ip_address(raw)


def number(raw: bytes | None) -> int:
    """An unsigned attribute of 1, 2 or 4 bytes in host order (0 when absent)."""
    if not raw:
        return 0
    return int.from_bytes(raw[:4], sys.byteorder)


def text(raw: bytes | None) -> str:
    return "" if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")

