"""subnet.env parsing as upstream's CNI plugin reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni.cidr import Network, network_string, parse_cidr
from cni.errors import INTERNAL, TRY_AGAIN_LATER, CniError
from cni.subnetenv import load_subnet_env, parse_subnet_env

PATH = "/run/flannel/subnet.env"
FULL = "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def net(text: str) -> Network:
    """The network ``text`` names (its host bits clear: ``text`` is printed back as is)."""
    network = parse_cidr(text).network
    assert network_string(network) == text
    return network


def test_v4_file_written_by_flanneld() -> None:
    text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n" + FULL
    env = parse_subnet_env(text, PATH)
    assert env.networks == (net("10.244.0.0/16"),)
    assert env.subnet == net("10.244.1.0/24")  # host bits masked
    assert env.ipv6_networks == ()
    assert env.ipv6_subnet is None
    assert env.mtu == 1450
    assert env.ipmasq is True


def test_dual_stack_and_v6_host_bits_masked() -> None:
    text = (
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n" + FULL
    )
    env = parse_subnet_env(text, PATH)
    assert env.ipv6_networks == (net("fc00::/48"),)
    assert env.ipv6_subnet == net("fc00::/64")
    assert env.subnet == net("10.1.17.0/24")


def test_v6_only_is_complete() -> None:
    text = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n" + FULL
    env = parse_subnet_env(text, PATH)
    assert env.networks == ()
    assert env.subnet is None


def test_network_lists_are_deduplicated_in_order_after_masking() -> None:
    text = (
        "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.5.5/16,192.168.0.0/16\n"
        "FLANNEL_SUBNET=10.1.17.1/24\n" + FULL
    )
    env = parse_subnet_env(text, PATH)
    assert env.networks == (
        net("10.1.0.0/16"),
        net("192.168.0.0/16"),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("True", False), ("1", False), ("", False)],
)
def test_ipmasq_is_true_only_for_exactly_true(value: str, expected: bool) -> None:
    text = f"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={value}\n"
    assert parse_subnet_env(text, PATH).ipmasq is expected


def test_last_value_wins_and_crlf_and_unknown_keys_are_fine() -> None:
    text = (
        "# written by hand\r\nFLANNEL_NETWORK=10.1.0.0/16\r\nFLANNEL_SUBNET=10.1.17.1/24\r\n"
        "FLANNEL_MTU=1450\r\nFLANNEL_MTU=8951\r\nFLANNEL_IPMASQ=false\r\nOTHER=x\r\n"
    )
    env = parse_subnet_env(text, PATH)
    assert env.mtu == 8951
    assert env.ipmasq is False


def test_upstreams_foo_bar_file_lists_every_missing_key() -> None:
    with pytest.raises(CniError) as caught:
        parse_subnet_env("foo=bar", PATH)
    assert caught.value.msg == (
        f"{PATH} is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET,"
        " FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
    )


def test_missing_keys_lists_only_what_is_missing() -> None:
    with pytest.raises(CniError) as caught:
        parse_subnet_env("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n", PATH)
    assert caught.value.msg == f"{PATH} is missing FLANNEL_MTU, FLANNEL_IPMASQ"
    assert caught.value.code == INTERNAL


@pytest.mark.parametrize(
    "line",
    [
        "FLANNEL_NETWORK=10.1.0.0",
        "FLANNEL_NETWORK=10.1.0.0/255.255.0.0",
        "FLANNEL_NETWORK=10.1.0.0/16,",
        "FLANNEL_NETWORK=10.1.0.0/33",
        "FLANNEL_SUBNET=10.1.17.1/24,10.1.18.1/24",
        "FLANNEL_SUBNET= 10.1.17.1/24",
        "FLANNEL_IPV6_SUBNET=fe80::1%eth0/64",
        "FLANNEL_MTU=abc",
        "FLANNEL_MTU=-1",
        "FLANNEL_MTU=4294967296",
        "FLANNEL_MTU=",
        "FLANNEL_SUBNET",
    ],
)
def test_bad_values_name_the_file_and_the_key(line: str) -> None:
    text = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" + FULL + line + "\n"
    with pytest.raises(CniError) as caught:
        parse_subnet_env(text, PATH)
    assert caught.value.code == INTERNAL
    assert caught.value.msg.startswith(f"{PATH}:5:")
    assert line.partition("=")[0] in caught.value.msg


def test_largest_mtu_is_accepted() -> None:
    text = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=4294967295\nFLANNEL_IPMASQ=true\n"
    assert parse_subnet_env(text, PATH).mtu == 4294967295


def test_missing_file_names_it_and_points_at_the_flannel_pod_log(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    with pytest.raises(CniError) as caught:
        load_subnet_env(str(path))
    assert caught.value.code == TRY_AGAIN_LATER
    assert caught.value.msg.startswith(f"failed to load flannel 'subnet.env' file: open {path}:")
    assert "Check the flannel pod log for this node" in caught.value.msg


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" + FULL)
    assert load_subnet_env(str(path)).subnet == net("10.1.17.0/24")
