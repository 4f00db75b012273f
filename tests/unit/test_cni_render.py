"""The delegate config rendered from netconf + subnet.env, against upstream's examples."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from cni import gojson
from cni.errors import INVALID_NETWORK_CONFIG, CniError
from cni.render import render_delegate
from cni.stdin_config import parse_netconf
from cni.subnetenv import SubnetEnv, parse_subnet_env

V4_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
V6_ENV = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
TWO_NETWORKS_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
BASE: dict[str, object] = {"name": "cni-flannel", "type": "flannel"}
# Upstream's input IPAM in its getDelegateIPAM tests.
INPUT_IPAM: dict[str, object] = {
    "type": "my-ipam",
    "unknown-param": "unknown-value",
    "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}],
}


def env(text: str = V4_ENV) -> SubnetEnv:
    return parse_subnet_env(text, "/run/flannel/subnet.env")


def render(conf: Mapping[str, object], text: str = V4_ENV) -> dict[str, object]:
    return render_delegate(parse_netconf(json.dumps(conf).encode()), env(text))


def as_json(value: object) -> Any:
    """What the delegate receives, decoded again (Struct and float details gone)."""
    return json.loads(gojson.dumps(value))


def test_upstream_rendered_example_same_keys_and_values() -> None:
    # flannel.md section 8 / upstream flannel_linux_test.go, v4 only.
    expected = {
        "name": "cni-flannel",
        "type": "bridge",
        "ipMasq": False,
        "isGateway": True,
        "mtu": 1472,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.1.17.0/24"}]],
            "routes": [{"dst": "10.1.0.0/16"}],
        },
    }
    assert as_json(render(BASE)) == expected


def test_upstream_example_bytes_are_what_go_marshals() -> None:
    # Go's json.Marshal of the map: keys sorted, compact.
    assert gojson.dumps(render(BASE)) == (
        b'{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],'
        b'"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,'
        b'"mtu":1472,"name":"cni-flannel","type":"bridge"}'
    )


def test_dual_stack_bytes_are_what_go_marshals() -> None:
    # upstream's dual-stack case (flannel_linux_test.go), as Go's json.Marshal writes it
    assert gojson.dumps(render(BASE, DUAL_ENV)) == (
        b'{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],'
        b'"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"type":"host-local"},'
        b'"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}'
    )


def test_ipv6_only_bytes_are_what_go_marshals() -> None:
    assert gojson.dumps(render(BASE, V6_ENV)) == (
        b'{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"fc00::/64"}]],'
        b'"routes":[{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,'
        b'"mtu":1472,"name":"cni-flannel","type":"bridge"}'
    )


def test_ipv6_only() -> None:
    ipam = as_json(render(BASE, V6_ENV))["ipam"]
    assert ipam == {
        "type": "host-local",
        "ranges": [[{"subnet": "fc00::/64"}]],
        "routes": [{"dst": "fc00::/48"}],
    }


def test_dual_stack_ranges_v4_then_v6_and_routes_for_both_networks() -> None:
    ipam = as_json(render(BASE, DUAL_ENV))["ipam"]
    assert ipam == {
        "type": "host-local",
        "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
        "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
    }


def test_two_networks_give_two_routes() -> None:
    ipam = as_json(render(BASE, TWO_NETWORKS_ENV))["ipam"]
    assert ipam["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]
    assert ipam["ranges"] == [[{"subnet": "10.1.17.0/24"}]]


@pytest.mark.parametrize(
    ("text", "routes", "ranges"),
    [
        (
            V4_ENV,
            [{"dst": "10.1.0.0/16"}],
            [[{"subnet": "10.1.17.0/24"}]],
        ),
        (
            DUAL_ENV,
            [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
            [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
        ),
    ],
)
def test_input_ipam_keeps_type_and_extra_keys_and_prepends_its_routes(
    text: str, routes: list[object], ranges: list[object]
) -> None:
    ipam = as_json(render({**BASE, "ipam": INPUT_IPAM}, text))["ipam"]
    assert ipam == {
        "type": "my-ipam",
        "unknown-param": "unknown-value",
        "routes": [
            {"dst": "10.96.0.0/12"},
            {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
            *routes,
        ],
        "ranges": ranges,
    }


def test_input_ipam_without_type_defaults_to_host_local() -> None:
    ipam = {key: value for key, value in INPUT_IPAM.items() if key != "type"}
    rendered = as_json(render({**BASE, "ipam": ipam}))["ipam"]
    assert rendered["type"] == "host-local"
    assert rendered["unknown-param"] == "unknown-value"


def test_input_ranges_are_always_replaced() -> None:
    ipam = {"ranges": [[{"subnet": "172.16.0.0/24"}]], "subnet": "172.16.0.0/24"}
    rendered = as_json(render({**BASE, "ipam": ipam}))["ipam"]
    assert rendered["ranges"] == [[{"subnet": "10.1.17.0/24"}]]
    assert rendered["subnet"] == "172.16.0.0/24"  # passes through


def test_routes_are_reencoded_like_libcni_types_route() -> None:
    routes = [
        # host bits kept, unknown key dropped, gw printed canonically, zero mtu omitted
        {"dst": "10.0.0.1/8", "gw": "2001:DB8::1", "mtu": 0, "color": "red"},
        {"Dst": "10.2.0.0/16", "priority": 5.0, "table": 0, "scope": None},
        {"dst": "10.3.0.0/16", "gw": ""},
    ]
    ipam = render({**BASE, "ipam": {"routes": routes}})["ipam"]
    assert isinstance(ipam, dict)
    assert gojson.dumps(ipam["routes"][:3]) == (
        b'[{"dst":"10.0.0.1/8","gw":"2001:db8::1"},'
        b'{"dst":"10.2.0.0/16","priority":5,"table":0},{"dst":"10.3.0.0/16"}]'
    )


@pytest.mark.parametrize(
    "routes",
    [
        "10.0.0.0/8",
        [None],
        [{"gw": "10.1.17.1"}],
        [{"dst": "10.0.0.0"}],
        [{"dst": "10.0.0.0/255.0.0.0"}],
        [{"dst": "10.0.0.0/8", "gw": "10.0.0.300"}],
        [{"dst": "10.0.0.0/8", "mtu": 1.5}],
        [{"dst": "10.0.0.0/8", "mtu": True}],
    ],
)
def test_bad_input_routes_are_invalid_network_config(routes: object) -> None:
    with pytest.raises(CniError) as caught:
        render({**BASE, "ipam": {"routes": routes}})
    assert caught.value.code == INVALID_NETWORK_CONFIG
    assert "ipam.routes" in caught.value.msg


def test_delegate_keys_pass_through_and_explicit_values_win() -> None:
    delegate = {
        "hairpinMode": True,
        "isDefaultGateway": True,
        "bridge": "cni9",
        "ipMasq": True,
        "mtu": 1400,
        "isGateway": False,
        "cniVersion": "0.3.0",
    }
    rendered = as_json(render({**BASE, "cniVersion": "0.3.1", "delegate": delegate}))
    assert rendered == {
        "name": "cni-flannel",
        "type": "bridge",
        "hairpinMode": True,
        "isDefaultGateway": True,
        "bridge": "cni9",
        "ipMasq": True,
        "mtu": 1400,
        "isGateway": False,
        "cniVersion": "0.3.1",  # the top-level version always wins
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.1.17.0/24"}]],
            "routes": [{"dst": "10.1.0.0/16"}],
        },
    }


def test_ipmasq_is_the_inverse_of_flanneld_masquerading() -> None:
    text = V4_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false")
    assert render(BASE, text)["ipMasq"] is True
    assert render(BASE)["ipMasq"] is False


def test_non_bridge_delegate_gets_no_isgateway() -> None:
    rendered = render({**BASE, "delegate": {"type": "ipvlan", "master": "eth1"}})
    assert rendered["type"] == "ipvlan"
    assert rendered["master"] == "eth1"
    assert "isGateway" not in rendered


def test_runtime_config_is_copied_into_the_delegate() -> None:
    runtime = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    rendered = as_json(render({**BASE, "runtimeConfig": runtime}))
    assert rendered["runtimeConfig"] == runtime
    assert "runtimeConfig" not in render(BASE)


def test_empty_cni_version_is_not_copied() -> None:
    assert "cniVersion" not in render(BASE)
    assert render({**BASE, "cniVersion": "1.0.0"})["cniVersion"] == "1.0.0"


@pytest.mark.parametrize(
    ("delegate", "message"),
    [
        (
            {"name": "x"},
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ),
        (
            {"ipam": {}},
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
        ),
        ({"type": 3}, "'delegate' dictionary, if present, must have (string) 'type' field"),
        ({"type": None}, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ],
)
def test_forbidden_delegate_keys_use_upstreams_messages(
    delegate: dict[str, object], message: str
) -> None:
    with pytest.raises(CniError) as caught:
        render({**BASE, "delegate": delegate})
    assert caught.value.code == INVALID_NETWORK_CONFIG
    assert caught.value.msg == message


def test_rendering_does_not_modify_its_input() -> None:
    conf_dict = {**BASE, "delegate": {"hairpinMode": True}, "ipam": copy.deepcopy(INPUT_IPAM)}
    conf = parse_netconf(json.dumps(conf_dict).encode())
    before = (copy.deepcopy(conf.delegate), copy.deepcopy(conf.ipam))
    render_delegate(conf, env())
    assert (conf.delegate, conf.ipam) == before


def test_numbers_in_pass_through_keys_come_out_as_go_writes_them() -> None:
    delegate = {"mtu": 1500.0, "x": 1e21, "y": 0.000001, "z": 12345678901234567890}
    data = gojson.dumps(render({**BASE, "delegate": delegate}))
    assert b'"mtu":1500,' in data
    assert b'"x":1e+21' in data
    assert b'"y":0.000001' in data
    assert b'"z":12345678901234567000' in data  # float64, as in Go
