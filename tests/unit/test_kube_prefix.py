"""Pure parts of the kube subnet manager: annotation prefix and keys, node -> lease,
the annotations we write, lease bookkeeping of watched nodes."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest

from subnet.errors import ConfigError, LeaseError, PeerDataError
from subnet.kube_state import (
    AnnotationKeys,
    NodeLeaseTable,
    annotation_changes,
    desired_annotations,
    network_available_patch,
    node_to_lease,
    normalize_annotation_prefix,
    own_lease,
    parse_env_bool,
    parse_event_queue_depth,
    pod_cidrs,
    vtep_mac_from_backend_data,
)
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseRemoved
from subnet.netconf import parse_net_config

P = "flannel.alpha.coreos.com/"
KEYS = AnnotationKeys.for_prefix()


# --- prefix normalisation (upstream's table, plus our stricter anchoring) ------------


@pytest.mark.parametrize(
    ("prefix", "backend_type_key"),
    [
        ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"),
        ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"),
        ("flannel.alpha.coreos.com/prefix", "flannel.alpha.coreos.com/prefix-backend-type"),
        ("flannel.alpha.coreos.com/prefix-", "flannel.alpha.coreos.com/prefix-backend-type"),
        ("org.com", "org.com/backend-type"),
        ("org9.com", "org9.com/backend-type"),
        ("org.com/9", "org.com/9-backend-type"),
        ("a_b.c-d.io/x_y", "a_b.c-d.io/x_y-backend-type"),
    ],
)
def test_valid_prefixes(prefix: str, backend_type_key: str) -> None:
    assert AnnotationKeys.for_prefix(prefix).backend_type == backend_type_key


@pytest.mark.parametrize(
    "prefix",
    [
        "org",  # not an FQDN
        "org/",  # not an FQDN before /
        "org/prefix",
        "org.COM",  # upper case
        "org.com/PREFIX",
        "Org.com",  # upstream's unanchored regexp would accept the "rg.com/" tail
        "org.com/a.b",  # dots after the slash
        "",
    ],
)
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_annotation_prefix(prefix)
    assert str(caught.value) == "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*"


def test_two_slashes_have_their_own_message() -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_annotation_prefix("a.com/b/c")
    assert str(caught.value) == "subnet/kube: prefix can contain at most single slash"


def test_all_keys_of_the_default_prefix() -> None:
    assert KEYS == AnnotationKeys(
        kube_subnet_manager=P + "kube-subnet-manager",
        backend_type=P + "backend-type",
        backend_data=P + "backend-data",
        backend_v6_data=P + "backend-v6-data",
        public_ip=P + "public-ip",
        public_ipv6=P + "public-ipv6",
        public_ip_overwrite=P + "public-ip-overwrite",
        public_ipv6_overwrite=P + "public-ipv6-overwrite",
        node_public_ip=P + "node-public-ip",
        node_public_ipv6=P + "node-public-ipv6",
    )


# --- node -> lease -------------------------------------------------------------------


def node(name: str = "n1", *, annotations: dict[str, str] | None = None,
         pod_cidr: str | None = None, pod_cidrs: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if pod_cidr is not None:
        spec["podCIDR"] = pod_cidr
    if pod_cidrs is not None:
        spec["podCIDRs"] = pod_cidrs
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def managed(ip: str = "192.168.1.2", **extra: str) -> dict[str, str]:
    ann = {P + "kube-subnet-manager": "true", P + "backend-type": "vxlan",
           P + "backend-data": '{"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}', P + "public-ip": ip}
    ann.update({P + k.replace("_", "-"): v for k, v in extra.items()})
    return ann


def test_managed_v4_node_becomes_a_lease() -> None:
    lease = node_to_lease(node(annotations=managed(), pod_cidr="10.244.1.0/24"), KEYS)
    assert lease == Lease(
        subnet=ipaddress.IPv4Network("10.244.1.0/24"),
        ipv6_subnet=None,
        attrs=LeaseAttrs(public_ip=ipaddress.IPv4Address("192.168.1.2"), backend_type="vxlan",
                         backend_data='{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}'),
        expiration=None,
    )


@pytest.mark.parametrize("value", [None, "false", "True", ""])
def test_unmanaged_nodes_have_no_lease(value: str | None) -> None:
    ann = managed()
    if value is None:
        del ann[P + "kube-subnet-manager"]
    else:
        ann[P + "kube-subnet-manager"] = value
    assert node_to_lease(node(annotations=ann, pod_cidr="10.244.1.0/24"), KEYS) is None


def test_pod_cidrs_list_wins_over_pod_cidr_and_is_classified_by_family() -> None:
    n = node(annotations=managed(public_ipv6="fd00::2", backend_v6_data='{"VNI":1}'),
             pod_cidr="10.244.9.0/24", pod_cidrs=["fd00:1::/64", "10.244.1.0/24"])
    lease = node_to_lease(n, KEYS, enable_ipv4=True, enable_ipv6=True)
    assert lease is not None
    assert lease.subnet == ipaddress.IPv4Network("10.244.1.0/24")
    assert lease.ipv6_subnet == ipaddress.IPv6Network("fd00:1::/64")
    assert lease.attrs.public_ipv6 == ipaddress.IPv6Address("fd00::2")
    assert lease.attrs.backend_v6_data == '{"VNI":1}'
    assert lease.key == "10.244.1.0-24&fd00:1::-64"


def test_ipv6_only_node() -> None:
    ann = {P + "kube-subnet-manager": "true", P + "backend-type": "vxlan",
           P + "public-ipv6": "fd00::2", P + "backend-v6-data": '{"VNI":1}'}
    lease = node_to_lease(node(annotations=ann, pod_cidr="fd00:1::/64"), KEYS,
                          enable_ipv4=False, enable_ipv6=True)
    assert lease is not None
    assert (lease.subnet, lease.ipv6_subnet) == (None, ipaddress.IPv6Network("fd00:1::/64"))
    assert lease.attrs.public_ip == ipaddress.IPv4Address("0.0.0.0")


def test_host_bits_are_masked_and_null_backend_data_is_none() -> None:
    n = node(annotations=managed(backend_data="null"), pod_cidr="10.244.1.7/24")
    lease = node_to_lease(n, KEYS)
    assert lease is not None
    assert lease.subnet == ipaddress.IPv4Network("10.244.1.0/24")
    assert lease.attrs.backend_data is None


@pytest.mark.parametrize(
    ("annotations", "cidr", "message"),
    [
        (managed(ip="garbage"), "10.244.1.0/24", "public-ip"),
        (managed(ip=""), "10.244.1.0/24", "public-ip"),
        (managed(backend_data="{not json"), "10.244.1.0/24", "backend-data"),
        (managed(), None, "missing IPv4 address on n.Spec.PodCIDRs"),
        (managed(), "fd00::/64", "missing IPv4 address on n.Spec.PodCIDRs"),
        (managed(), "10.244.1.0/33", "invalid pod CIDR"),
    ],
)
def test_garbage_nodes_raise_peer_data_error(annotations: dict[str, str], cidr: str | None,
                                             message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        node_to_lease(node(annotations=annotations, pod_cidr=cidr), KEYS)


IPV4_TEXTS = ["10.244.1.7", "0.0.0.0", "255.255.255.255", "010.244.1.0", "10.244.1.00",
              "10.244.1", "10.244.1.0.1", "256.0.0.1", " 10.244.1.0", "10.244.1.0\n",
              "0x0a.244.1.0", "+10.244.1.0", "\u0661\u0660.244.1.0", "10.244.1.0\x00", "",
              "fd00::1"]


@pytest.mark.parametrize("address", IPV4_TEXTS)
@pytest.mark.parametrize("prefix", ["/24", "/0", "/32", "/33", "/024", "/+24", "/ 24",
                                    "/\u0662\u0664", "/255.255.255.0", "/", ""])
def test_pod_cidr_parse_agrees_with_ipaddress(address: str, prefix: str) -> None:
    """The inet_pton fast path takes and refuses exactly what ip_network does."""
    text = address + prefix
    try:
        expected: Any = ipaddress.ip_network(text, strict=False)
    except ValueError:
        expected = None
    n = node(annotations=managed(), pod_cidrs=[text])
    if expected is None:
        with pytest.raises(PeerDataError, match="invalid pod CIDR"):
            pod_cidrs(n)
    else:
        assert [c for c in pod_cidrs(n) if c is not None] == [expected]


@pytest.mark.parametrize("address", IPV4_TEXTS)
def test_public_ip_parse_agrees_with_ipaddress(address: str) -> None:
    n = node(annotations=managed(ip=address), pod_cidr="10.244.1.0/24")
    try:
        expected = ipaddress.IPv4Address(address)
    except ValueError:
        with pytest.raises(PeerDataError, match="public-ip"):
            node_to_lease(n, KEYS)
        return
    lease = node_to_lease(n, KEYS)
    assert lease is not None and lease.attrs.public_ip == expected


def test_three_pod_cidrs() -> None:
    n = node("big", pod_cidrs=["10.0.0.0/24", "fd00::/64", "10.0.1.0/24"])
    with pytest.raises(PeerDataError) as caught:
        pod_cidrs(n)
    assert str(caught.value) == 'node "big" pod cidrs should be IPv4/IPv6 only or dualstack'


# --- own lease --------------------------------------------------------------------


CFG = parse_net_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL = parse_net_config('{"Network":"10.244.0.0/16","EnableIPv6":true,'
                        '"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}')
VX = LeaseAttrs(backend_type="vxlan", backend_data='{"VNI":1}')


def test_own_lease_checks_containment_in_both_families() -> None:
    n = node("me", pod_cidrs=["10.244.3.0/24", "fd00:10:0:3::/64"], pod_cidr="10.244.3.0/24")
    lease = own_lease(n, "me", DUAL, VX)
    assert (lease.subnet, lease.ipv6_subnet) == (
        ipaddress.IPv4Network("10.244.3.0/24"), ipaddress.IPv6Network("fd00:10:0:3::/64"))
    assert own_lease(n, "me", CFG, VX).ipv6_subnet is None  # IPv6 not enabled
    udp = LeaseAttrs(backend_type="udp")
    assert own_lease(n, "me", DUAL, udp).ipv6_subnet is None  # forced IPv4-only backend
    far = node("me", pod_cidrs=["10.244.3.0/24", "fd99::/64"], pod_cidr="10.244.3.0/24")
    with pytest.raises(LeaseError) as caught:
        own_lease(far, "me", DUAL, VX)
    assert str(caught.value) == ('subnet "fd00:10::/56" specified in the flannel net config '
                                 'doesn\'t contain "fd99::/64" IPv6 PodCIDR of the "me" node')


def test_own_lease_bigger_than_network_is_rejected() -> None:
    with pytest.raises(LeaseError, match="doesn't contain \"10.0.0.0/8\" PodCIDR"):
        own_lease(node("me", pod_cidr="10.0.0.0/8"), "me", CFG, VX)


# --- annotations we write -----------------------------------------------------------


def test_desired_annotations_vxlan_v4() -> None:
    attrs = LeaseAttrs(public_ip=ipaddress.IPv4Address("10.0.0.5"), backend_type="vxlan",
                       backend_data='{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}')
    assert desired_annotations({}, attrs, KEYS) == {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}',
        P + "public-ip": "10.0.0.5",
    }


def test_desired_annotations_ipv6_only_vxlan_skips_v4_pair() -> None:
    attrs = LeaseAttrs(public_ipv6=ipaddress.IPv6Address("fd00::5"), backend_type="vxlan",
                       backend_v6_data='{"VNI":1}')
    current = {P + "public-ipv6-overwrite": "2001:db8::9"}
    assert desired_annotations(current, attrs, KEYS) == {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-v6-data": '{"VNI":1}',
        P + "public-ipv6": "2001:db8::9",
    }


def test_desired_annotations_host_gw_and_udp() -> None:
    hostgw = LeaseAttrs(public_ip=ipaddress.IPv4Address("10.0.0.5"),
                        public_ipv6=ipaddress.IPv6Address("fd00::5"), backend_type="host-gw")
    assert desired_annotations({}, hostgw, KEYS) == {
        P + "kube-subnet-manager": "true", P + "backend-type": "host-gw",
        P + "backend-data": "null", P + "public-ip": "10.0.0.5",
        P + "backend-v6-data": "null", P + "public-ipv6": "fd00::5",
    }
    udp = LeaseAttrs(backend_type="")
    assert desired_annotations({}, udp, KEYS) == {
        P + "kube-subnet-manager": "true", P + "backend-type": "",
        P + "backend-data": "null", P + "public-ip": "0.0.0.0",
    }
    wireguard_no_v6_ip = LeaseAttrs(backend_type="wireguard", backend_data='{"Port":51820}',
                                    backend_v6_data='{"Port":51821}')
    assert P + "backend-v6-data" not in desired_annotations({}, wireguard_no_v6_ip, KEYS)


def test_public_ip_overwrite_and_changes() -> None:
    attrs = LeaseAttrs(public_ip=ipaddress.IPv4Address("10.0.0.5"), backend_type="host-gw")
    current = {P + "public-ip-overwrite": "203.0.113.1", P + "public-ip": "203.0.113.1",
               P + "backend-type": "host-gw", P + "backend-data": "null"}
    desired = desired_annotations(current, attrs, KEYS)
    assert desired[P + "public-ip"] == "203.0.113.1"
    assert annotation_changes(current, desired) == {P + "kube-subnet-manager": "true"}


# --- watch bookkeeping ---------------------------------------------------------------


def lease(cidr: str, ip: str = "10.0.0.1") -> Lease:
    return Lease(subnet=ipaddress.IPv4Network(cidr), ipv6_subnet=None,
                 attrs=LeaseAttrs(public_ip=ipaddress.IPv4Address(ip)))


def test_peer_table_messages() -> None:
    table = NodeLeaseTable()
    a = lease("10.244.1.0/24")
    assert table.set("a", a) == [LeaseAdded(a)]
    assert table.set("a", a) == []
    moved_ip = lease("10.244.1.0/24", "10.0.0.9")
    assert table.set("a", moved_ip) == [LeaseAdded(moved_ip)]
    moved_cidr = lease("10.244.5.0/24", "10.0.0.9")
    assert table.set("a", moved_cidr) == [LeaseRemoved("10.244.1.0-24"), LeaseAdded(moved_cidr)]
    assert table.set("b", None) == []
    assert table.leases() == (moved_cidr,)
    assert table.set("a", None) == [LeaseRemoved("10.244.5.0-24")]
    assert table.leases() == ()


# --- small codecs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ('{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}', "12:c6:65:89:b4:e3"),
        ('{"VtepMAC":"12:C6:65:89:B4:E3","VNI":1}', "12:c6:65:89:b4:e3"),  # order, case
        ('{"vtepmac":"12:c6:65:89:b4:e3"}', "12:c6:65:89:b4:e3"),  # Go decodes keys case-blind
        ('{"VNI":1}', None),
        ('{"VtepMAC":"12:c6:65"}', None),
        ("null", None),
        ("not json", None),
        ("", None),
        (None, None),
    ],
)
def test_vtep_mac_from_backend_data(text: str | None, mac: str | None) -> None:
    assert vtep_mac_from_backend_data(text) == mac


def test_network_available_patch() -> None:
    when = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert network_available_patch(when) == {"status": {"conditions": [{
        "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
        "message": "Flannel is running on this node",
        "lastTransitionTime": "2026-05-04T03:02:01Z", "lastHeartbeatTime": "2026-05-04T03:02:01Z",
    }]}}


def test_environment_values() -> None:
    assert parse_event_queue_depth(None) == 5000
    assert parse_event_queue_depth("200") == 200
    assert parse_event_queue_depth("0") == 5000
    with pytest.raises(ConfigError, match="env EVENT_QUEUE_DEPTH=ten format error"):
        parse_event_queue_depth("ten")
    assert parse_env_bool("CONT_WHEN_CACHE_NOT_READY", "true") is True
    assert parse_env_bool("CONT_WHEN_CACHE_NOT_READY", "false") is False
    assert parse_env_bool("CONT_WHEN_CACHE_NOT_READY", None) is False
    with pytest.raises(ConfigError):
        parse_env_bool("CONT_WHEN_CACHE_NOT_READY", "yes")


def test_dual_stack_v4_change_is_not_masked_by_unchanged_v6() -> None:
    """Upstream's update handler drops this change (QUIRK); the lease comparison does not."""
    ann = managed(ip="192.168.1.2", public_ipv6="fd00::2", backend_v6_data='{"VNI":1}')
    before = node(annotations=ann, pod_cidrs=["10.244.1.0/24", "fd00:1::/64"])
    after = node(annotations={**ann, P + "public-ip": "192.168.1.9"},
                 pod_cidrs=["10.244.1.0/24", "fd00:1::/64"])
    table = NodeLeaseTable()
    table.set("n1", node_to_lease(before, KEYS, enable_ipv4=True, enable_ipv6=True))
    changed = node_to_lease(after, KEYS, enable_ipv4=True, enable_ipv6=True)
    assert changed is not None
    assert table.set("n1", changed) == [LeaseAdded(changed)]


def test_deeply_nested_backend_data_is_a_peer_data_error() -> None:
    from subnet.errors import PeerDataError
    from subnet.kube_state import AnnotationKeys, node_to_lease, vtep_mac_from_backend_data

    keys = AnnotationKeys.for_prefix("flannel.alpha.coreos.com/")
    deep = "[" * 100000
    node = {
        "metadata": {
            "name": "deep",
            "annotations": {
                keys.kube_subnet_manager: "true",
                keys.backend_type: "vxlan",
                keys.backend_data: deep,
                keys.public_ip: "198.18.0.20",
            },
        },
        "spec": {"podCIDR": "10.244.20.0/24"},
    }
    with pytest.raises(PeerDataError):
        node_to_lease(node, keys, enable_ipv4=True, enable_ipv6=False)
    assert vtep_mac_from_backend_data(deep) is None


def test_node_creation_time_orders_claims() -> None:
    from subnet.kube_state import AnnotationKeys, node_to_lease

    keys = AnnotationKeys.for_prefix("flannel.alpha.coreos.com/")

    def node(created: str | None) -> dict[str, object]:
        meta: dict[str, object] = {
            "name": "n",
            "annotations": {
                keys.kube_subnet_manager: "true",
                keys.backend_type: "vxlan",
                keys.backend_data: '{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}',
                keys.public_ip: "198.18.0.21",
            },
        }
        if created is not None:
            meta["creationTimestamp"] = created
        return {"metadata": meta, "spec": {"podCIDR": "10.244.21.0/24"}}

    early = node_to_lease(node("2026-01-01T00:00:00Z"), keys, enable_ipv4=True, enable_ipv6=False)
    late = node_to_lease(node("2026-06-01T00:00:00Z"), keys, enable_ipv4=True, enable_ipv6=False)
    assert early.claim_order is not None and late.claim_order is not None
    assert early.claim_order < late.claim_order
    assert node_to_lease(node("garbage"), keys, enable_ipv4=True, enable_ipv6=False).claim_order is None
    assert node_to_lease(node(None), keys, enable_ipv4=True, enable_ipv6=False).claim_order is None
