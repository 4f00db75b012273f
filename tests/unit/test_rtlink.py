"""Link, address, lookup and blackhole requests: the bytes pyroute2 would send, replies
decoded back, and one request's answer collected up to its ack."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from backends import rtlink, rtnl
from backends.model import Route
from backends.netlink import LinkState, Rtnl, VxlanAttrs, VxlanSpec, _link_state, _vxlan_add
from tests.fakesocket import FakeSocketBase

IP = ipaddress.ip_address
ADD = rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtlink.CREATE
MAC = "0e:00:00:00:00:01"


def pyroute2_bytes(msg: Any, kind: int, nl_flags: int, attrs: list[Any], **fields: Any) -> bytes:
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg["header"]["type"] = kind
    msg["header"]["flags"] = nl_flags
    msg["header"]["sequence_number"] = 3
    msg.encode()
    return bytes(msg.data)


def ours(kind: int, flags: int, body: bytes) -> bytes:
    return rtnl.message(kind, flags, 3, body)


def vxlan_linkinfo(data: list[Any], kind: str = "vxlan") -> tuple[str, Any]:
    return "IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind), ("IFLA_INFO_DATA", {"attrs": data})]}


@pytest.mark.parametrize(
    ("spec", "extra"),
    [
        (VxlanSpec("flannel.1", 1, 0, None, None), []),
        (
            VxlanSpec("flannel.1", 7, 8472, IP("198.18.0.1"), 2, gbp=True, mac=MAC, mtu=1450),
            [("IFLA_VXLAN_PORT", 8472), ("IFLA_VXLAN_LINK", 2),
             ("IFLA_VXLAN_LOCAL", "198.18.0.1"), ("IFLA_VXLAN_GBP", True)],
        ),
        (
            VxlanSpec("flannel-v6.1", 1, 4789, IP("fd00::1"), None, learning=True),
            [("IFLA_VXLAN_PORT", 4789), ("IFLA_VXLAN_LOCAL6", "fd00::1")],
        ),
    ],
)
def test_vxlan_add_is_what_pyroute2s_ifinfmsg_encodes(spec: VxlanSpec, extra: list[Any]) -> None:
    data = [("IFLA_VXLAN_ID", spec.vni), ("IFLA_VXLAN_LEARNING", int(spec.learning)),
            ("IFLA_VXLAN_L2MISS", 0), ("IFLA_VXLAN_L3MISS", 0), *extra]
    attrs: list[Any] = [("IFLA_IFNAME", spec.name)]
    if spec.mac:
        attrs.append(("IFLA_ADDRESS", spec.mac))
    if spec.mtu:
        attrs.append(("IFLA_MTU", spec.mtu))
    attrs.append(vxlan_linkinfo(data))
    body = _vxlan_add(spec)
    assert ours(rtlink.RTM_NEWLINK, ADD, body) == pyroute2_bytes(
        ifinfmsg(), rtlink.RTM_NEWLINK, ADD, attrs)


def test_wireguard_add_and_link_set_are_what_pyroute2s_ifinfmsg_encodes() -> None:
    wg = [("IFLA_IFNAME", "flannel-wg"), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND",
                                                                         "wireguard")]})]
    assert ours(rtlink.RTM_NEWLINK, ADD, rtlink.link_add("flannel-wg", "wireguard")) == (
        pyroute2_bytes(ifinfmsg(), rtlink.RTM_NEWLINK, ADD, wg))
    req = rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK
    assert ours(rtlink.RTM_NEWLINK, req, rtlink.link_set(4, 1450, MAC, True)) == pyroute2_bytes(
        ifinfmsg(), rtlink.RTM_NEWLINK, req, [("IFLA_MTU", 1450), ("IFLA_ADDRESS", MAC)],
        index=4, flags=rtlink.IFF_UP, change=rtlink.IFF_UP)
    assert ours(rtlink.RTM_NEWLINK, req, rtlink.link_set(4, None, None, False)) == (
        pyroute2_bytes(ifinfmsg(), rtlink.RTM_NEWLINK, req, [], index=4, change=rtlink.IFF_UP))


@pytest.mark.parametrize(
    ("iface", "attrs"),
    [
        ("10.244.1.0/32", [("IFA_LOCAL", "10.244.1.0"), ("IFA_ADDRESS", "10.244.1.0")]),
        ("fd00:1::/128", [("IFA_ADDRESS", "fd00:1::")]),
    ],
)
def test_address_add_is_what_pyroute2s_ifaddrmsg_encodes(iface: str, attrs: list[Any]) -> None:
    host = ipaddress.ip_interface(iface)
    family = socket.AF_INET if host.version == 4 else socket.AF_INET6
    assert ours(rtlink.RTM_NEWADDR, ADD, rtlink.address(5, host)) == pyroute2_bytes(
        ifaddrmsg(), rtlink.RTM_NEWADDR, ADD, attrs, family=family,
        prefixlen=host.network.prefixlen, index=5)


def test_blackhole_replace_is_what_pyroute2s_rtmsg_encodes() -> None:
    flags = rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtlink.REPLACE
    body = rtnl.route_body(Route(ipaddress.ip_network("10.244.3.0/24"), None, None), True,
                           rtnl.RTN_BLACKHOLE)
    assert ours(rtnl.RTM_NEWROUTE, flags, body) == pyroute2_bytes(
        rtmsg(), rtnl.RTM_NEWROUTE, flags, [("RTA_DST", "10.244.3.0")], family=2, dst_len=24,
        table=254, proto=44, type=6)


def test_a_vxlan_link_reply_decodes_to_its_state() -> None:
    data = [("IFLA_VXLAN_ID", 9), ("IFLA_VXLAN_LINK", 2), ("IFLA_VXLAN_LOCAL", "198.18.0.1"),
            ("IFLA_VXLAN_LEARNING", 0), ("IFLA_VXLAN_PORT", 8472), ("IFLA_VXLAN_GBP", True)]
    reply = pyroute2_bytes(
        ifinfmsg(), rtlink.RTM_NEWLINK, 0,
        [("IFLA_IFNAME", "flannel.1"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", MAC),
         ("IFLA_MASTER", 8), vxlan_linkinfo(data)],
        index=6, flags=rtlink.IFF_UP | 0x40)
    assert _link_state(reply[rtnl.HEADER.size :]) == LinkState(
        6, "flannel.1", "vxlan", 1450, MAC, True,
        VxlanAttrs(vni=9, port=8472, local=IP("198.18.0.1"), underlay=2, learning=False,
                   gbp=True),
        master=8,
    )
    bare = pyroute2_bytes(ifinfmsg(), rtlink.RTM_NEWLINK, 0, [("IFLA_IFNAME", "lo")], index=1)
    assert _link_state(bare[rtnl.HEADER.size :]) == LinkState(1, "lo", "", 0, "", False)


def test_route_oif_falls_back_to_the_first_multipath_hop() -> None:
    msg = rtmsg()
    msg["attrs"] = [("RTA_TABLE", 254), ("RTA_MULTIPATH", [{"oif": 0}, {"oif": 7}])]
    reply = pyroute2_bytes(msg, rtnl.RTM_NEWROUTE, 0, msg["attrs"], family=2, table=254, type=1)
    route = rtlink.route_reply(reply[rtnl.HEADER.size :])
    assert (route.table, route.dst_len, rtlink.route_oif(route)) == (254, 0, 7)


class OneAnswer(FakeSocketBase):
    """Answers a request with ``replies`` (payloads) and then its ack carrying ``code``,
    after a stale ack of another sequence number."""

    def __init__(self, replies: list[bytes], code: int) -> None:
        super().__init__(None)
        self._replies, self._code = replies, code
        self._queue: list[bytes] = []

    def send(self, data: bytes, /) -> int:
        (request,) = rtnl.replies(data)
        assert request.flags & rtnl.NLM_F_ACK and request.flags & rtnl.NLM_F_REQUEST
        stale = rtnl.message(rtnl.NLMSG_ERROR, 0, request.seq + 100, rtnl.ERROR.pack(0))
        answers = [rtnl.message(rtlink.RTM_NEWLINK, 0, request.seq, r) for r in self._replies]
        ack = rtnl.message(rtnl.NLMSG_ERROR, 0, request.seq, rtnl.ERROR.pack(-self._code))
        self._queue += [stale, b"".join(answers), ack]
        return len(data)

    def recv(self, size: int, /) -> bytes:
        return self._queue.pop(0)


def test_a_call_returns_its_replies_read_up_to_its_ack() -> None:
    replies = [b"one!", b"and two!"]  # payloads are 4-byte aligned
    sock = Rtnl(OneAnswer(replies, 0))
    assert sock.call(rtlink.RTM_GETLINK, 0, rtlink.link_by_name("eth0")) == replies


def test_a_refused_call_raises_the_kernels_errno() -> None:
    sock = Rtnl(OneAnswer([], errno.EEXIST))
    with pytest.raises(OSError) as failure:
        sock.call(rtlink.RTM_NEWLINK, rtlink.CREATE, rtlink.link_add("x", "wireguard"))
    assert failure.value.errno == errno.EEXIST and failure.value.strerror == "File exists"
