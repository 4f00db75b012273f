"""Bad peer input in a dual-stack cluster: each case is logged once with its reason and
skipped, while every good peer keeps both families (host-gw's routes, kube's node leases)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any, cast

import pytest

from backends.base import ExternalInterface
from backends.hostgw import HostGwNetwork
from backends.hostgw_state import hostgw_peers
from backends.model import DataplaneState
from backends.netlink import ApplyResult, Netlink
from subnet.errors import PeerDataError
from subnet.kube_state import AnnotationKeys, missing_families, node_to_lease
from subnet.lease import Lease, LeaseAttrs, decode_attrs

V4 = ipaddress.IPv4Network("10.244.0.0/16")
V6 = ipaddress.IPv6Network("fd00:10:244::/56")
NETWORKS = (V4, V6)


def peer(third: int, public_ipv6: str | None = "", v6_subnet: str | None = "") -> Lease:
    """A dual-stack host-gw lease; '' picks the good default of each field."""
    six = f"fd00:10:244:{third:x}::/64" if v6_subnet == "" else v6_subnet
    public6 = f"fd00:198:18::{third:x}" if public_ipv6 == "" else public_ipv6
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        ipaddress.IPv6Network(six) if six else None,
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(f"198.18.0.{third}"),
            public_ipv6=ipaddress.IPv6Address(public6) if public6 else None,
            backend_type="host-gw",
        ),
    )


OWN = peer(1)
GOOD = [peer(2), peer(3)]
BAD = {
    "outside IPv6Network": peer(10, v6_subnet="fd99:1::/64"),
    "IPv4-mapped": peer(11, public_ipv6="::ffff:198.18.0.11"),
    "link-local": peer(12, public_ipv6="fe80::12"),
    "loopback": peer(13, public_ipv6="::1"),
}
REASONS = {
    "outside IPv6Network": "subnet fd99:1::/64 is outside the cluster network",
    "IPv4-mapped": "PublicIPv6 ::ffff:c612:b is an IPv4-mapped address",
    "link-local": "PublicIPv6 fe80::12 is link-local",
    "loopback": "PublicIPv6 ::1 is the loopback address",
}


def test_each_bad_lease_is_skipped_with_its_reason_and_good_peers_keep_both_families() -> None:
    routes, skipped = hostgw_peers(OWN, [*BAD.values(), *GOOD], NETWORKS)
    reasons = {s.key: s.reason for s in skipped}
    for name, lease in BAD.items():
        assert REASONS[name] in reasons[lease.key], (name, reasons)
    assert sorted((str(r.subnet), str(r.gateway)) for r in routes) == [
        ("10.244.2.0/24", "198.18.0.2"), ("10.244.3.0/24", "198.18.0.3"),
        ("fd00:10:244:2::/64", "fd00:198:18::2"), ("fd00:10:244:3::/64", "fd00:198:18::3"),
    ]


@pytest.mark.parametrize("value", ['"10.0.0.1"', '"fd00::1/64"', '"::ffff:"', "7"])
def test_a_public_ipv6_that_is_not_an_ipv6_address_is_refused_when_decoded(value: str) -> None:
    with pytest.raises(PeerDataError, match="PublicIPv6"):
        decode_attrs('{"PublicIP":"198.18.0.9","PublicIPv6":' + value + ',"BackendType":"host-gw"}')


def test_a_peer_lacking_one_family_is_routed_over_the_other_and_says_which() -> None:
    no_v6_ip, no_v6_subnet = peer(4, public_ipv6=None), peer(5, v6_subnet=None)
    routes, skipped = hostgw_peers(OWN, [no_v6_ip, no_v6_subnet, *GOOD], NETWORKS)
    assert {str(r.subnet) for r in routes} >= {"10.244.4.0/24", "10.244.5.0/24"}
    assert not [r for r in routes if r.key in (no_v6_ip.key, no_v6_subnet.key)
                and r.subnet.version == 6]
    assert {s.key: s.reason for s in skipped} == {
        no_v6_ip.key: "IPv6 not routed: the lease has no IPv6 public address",
        no_v6_subnet.key: "IPv6 not routed: the lease has no IPv6 subnet",
    }
    assert len(routes) == 2 + 4  # the good peers keep both families


class _RecordingNetlink:
    """Netlink's ``sync``, recording what it was asked for and applying nothing."""

    def __init__(self) -> None:
        self.desired: list[DataplaneState] = []

    def sync(self, desired: DataplaneState, ifindexes: Iterable[int], families: Iterable[int],
             *, fresh: bool = True) -> ApplyResult:
        self.desired.append(desired)
        return ApplyResult()


def test_host_gw_logs_each_bad_lease_once_across_passes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="backends.hostgw")
    netlink = _RecordingNetlink()
    ext = ExternalInterface("ul0", 7, 1500, ipaddress.IPv4Address("198.18.0.1"),
                            ipaddress.IPv4Address("198.18.0.1"),
                            ipaddress.IPv6Address("fd00:198:18::1"),
                            ipaddress.IPv6Address("fd00:198:18::1"))
    network = HostGwNetwork(cast(Netlink, netlink), ext, OWN, NETWORKS)
    peers = [*BAD.values(), peer(4, public_ipv6=None), *GOOD]
    for _ in range(3):
        network.reconcile(peers)
    network.reconcile(peers, full=False, changes={GOOD[0].key: GOOD[0]})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(BAD) + 1, lines
    for name, lease in BAD.items():
        assert [line for line in lines if lease.key in line and REASONS[name] in line], name
    assert {r.dst for r in netlink.desired[-1].routes} == {
        ipaddress.ip_network(n) for n in ("10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24",
                                          "fd00:10:244:2::/64", "fd00:10:244:3::/64")}


# --- kube mode: a Node lacking a family the config enables ------------------------------

KEYS = AnnotationKeys.for_prefix()
P = "flannel.alpha.coreos.com/"


def node(pod_cidrs: list[str], **annotations: str) -> dict[str, Any]:
    ann = {P + "kube-subnet-manager": "true", P + "backend-type": "host-gw",
           P + "backend-data": "null", P + "public-ip": "198.18.0.7",
           P + "backend-v6-data": "null", P + "public-ipv6": "fd00:198:18::7"}
    ann.update({P + k.replace("_", "-"): v for k, v in annotations.items()})
    ann = {k: v for k, v in ann.items() if v != "-"}  # "-": leave the annotation out
    return {"metadata": {"name": "n7", "annotations": ann},
            "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs}}


def dual_lease(n: dict[str, Any]) -> tuple[Lease | None, str]:
    lease = node_to_lease(n, KEYS, enable_ipv4=True, enable_ipv6=True)
    assert lease is not None
    return lease, missing_families(n, KEYS, lease, enable_ipv4=True, enable_ipv6=True)


def test_a_dual_stack_node_without_an_ipv6_pod_cidr_is_kept_for_ipv4() -> None:
    lease, why = dual_lease(node(["10.244.7.0/24"]))
    assert lease is not None
    assert (str(lease.subnet), lease.ipv6_subnet, lease.key) == ("10.244.7.0/24", None,
                                                                 "10.244.7.0-24")
    assert lease.attrs.public_ipv6 is None and lease.attrs.backend_v6_data is None
    assert why == "no IPv6 pod CIDR: not reached over IPv6"


def test_a_dual_stack_node_without_an_ipv4_pod_cidr_is_kept_for_ipv6() -> None:
    lease, why = dual_lease(node(["fd00:10:244:7::/64"]))
    assert lease is not None
    assert (lease.subnet, str(lease.ipv6_subnet)) == (None, "fd00:10:244:7::/64")
    assert lease.attrs.public_ipv6 == ipaddress.IPv6Address("fd00:198:18::7")
    assert why == "no IPv4 pod CIDR: not reached over IPv4"


def test_a_node_without_the_public_ipv6_annotation_is_kept_for_ipv4() -> None:
    lease, why = dual_lease(node(["10.244.7.0/24", "fd00:10:244:7::/64"], public_ipv6="-"))
    assert lease is not None and lease.ipv6_subnet is None and lease.subnet is not None
    assert why == f"no {P}public-ipv6 annotation: not reached over IPv6"


def test_a_complete_dual_stack_node_has_nothing_missing() -> None:
    lease, why = dual_lease(node(["10.244.7.0/24", "fd00:10:244:7::/64"]))
    assert lease is not None and lease.key == "10.244.7.0-24&fd00:10:244:7::-64"
    assert why == ""


@pytest.mark.parametrize(("annotations", "message"), [
    ({"public_ipv6": "10.0.0.1"}, "public-ipv6='10.0.0.1' is not a valid address"),
    ({"public_ip": "fd00::1"}, "public-ip='fd00::1' is not a valid address"),
    ({"backend_v6_data": "{oops"}, "backend-v6-data is not JSON"),
])
def test_garbage_in_a_dual_stack_node_still_skips_the_node(annotations: dict[str, str],
                                                           message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        node_to_lease(node(["10.244.7.0/24", "fd00:10:244:7::/64"], **annotations), KEYS,
                      enable_ipv4=True, enable_ipv6=True)


def test_a_dual_stack_node_with_no_usable_family_is_skipped_in_upstreams_words() -> None:
    with pytest.raises(PeerDataError, match="missing IPv4 address on n.Spec.PodCIDRs"):
        node_to_lease(node(["fd00:10:244:7::/64"], public_ipv6="-"), KEYS,
                      enable_ipv4=True, enable_ipv6=True)


def test_single_family_clusters_ignore_the_other_family() -> None:
    n = node(["10.244.7.0/24", "fd00:10:244:7::/64"], public_ipv6="garbage")
    lease = node_to_lease(n, KEYS, enable_ipv4=True, enable_ipv6=False)
    assert lease is not None and lease.key == "10.244.7.0-24"
    assert missing_families(n, KEYS, lease, enable_ipv4=True, enable_ipv6=False) == ""
    with pytest.raises(PeerDataError, match="missing IPv6 address"):
        node_to_lease(node(["10.244.7.0/24"]), KEYS, enable_ipv4=False, enable_ipv6=True)
