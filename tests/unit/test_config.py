"""net-conf.json parsing (Go decoder rules) and etcd-mode validation (CheckNetworkConfig)."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from subnet.errors import ConfigError
from subnet.netconf import (
    DEFAULT_BACKEND_TYPE,
    BackendConfig,
    IPStack,
    NetConfig,
    SubnetRange,
    ip_stack,
    parse_net_config,
    subnet_ranges,
)

# --- parsing -------------------------------------------------------------------------


def test_kube_flannel_yml_example() -> None:
    cfg = parse_net_config(
        '{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}'
    )
    assert cfg.network == IPv4Network("10.244.0.0/16")
    assert cfg.enable_ipv4 and not cfg.enable_ipv6 and not cfg.enable_nftables
    assert cfg.backend == BackendConfig("vxlan", {"Type": "vxlan"})
    assert cfg.networks() == (IPv4Network("10.244.0.0/16"),)


def test_defaults_when_keys_are_absent() -> None:
    cfg = parse_net_config("{}")
    assert cfg == NetConfig()
    assert cfg.enable_ipv4 is True
    assert cfg.enable_ipv6 is False
    assert cfg.subnet_len == 0 and cfg.subnet_min is None


@pytest.mark.parametrize("key", ["Network", "network", "NETWORK", "nEtWoRk"])
def test_keys_match_case_insensitively(key: str) -> None:
    assert parse_net_config(f'{{"{key}": "10.1.0.0/16"}}').network == IPv4Network("10.1.0.0/16")


def test_case_insensitive_keys_for_every_field() -> None:
    cfg = parse_net_config(
        '{"network": "10.1.0.0/16", "ipv6network": "fd00::/48", "enableipv6": true,'
        ' "enableipv4": false, "enablenftables": true, "subnetlen": 26,'
        ' "subnetmin": "10.1.0.64", "subnetmax": "10.1.255.192", "ipv6subnetlen": 80,'
        ' "ipv6subnetmin": "fd00::1:0:0", "ipv6subnetmax": "fd00:0:0:ffff:ffff::",'
        ' "backend": {"type": "host-gw"}}'
    )
    assert cfg == NetConfig(
        network=IPv4Network("10.1.0.0/16"),
        ipv6_network=IPv6Network("fd00::/48"),
        enable_ipv4=False,
        enable_ipv6=True,
        enable_nftables=True,
        subnet_len=26,
        subnet_min=IPv4Address("10.1.0.64"),
        subnet_max=IPv4Address("10.1.255.192"),
        ipv6_subnet_len=80,
        ipv6_subnet_min=IPv6Address("fd00::1:0:0"),
        ipv6_subnet_max=IPv6Address("fd00:0:0:ffff:ffff::"),
        backend=BackendConfig("host-gw", {"type": "host-gw"}),
    )


def test_last_duplicate_key_wins_and_unknown_keys_are_ignored() -> None:
    cfg = parse_net_config('{"Network": "10.1.0.0/16", "network": "10.2.0.0/16", "Foo": [1]}')
    assert cfg.network == IPv4Network("10.2.0.0/16")


def test_null_leaves_the_default() -> None:
    cfg = parse_net_config('{"Network": null, "EnableIPv4": null, "Backend": null}')
    assert cfg == NetConfig()


def test_host_bits_are_masked() -> None:
    cfg = parse_net_config('{"Network": "10.1.2.3/16", "IPv6Network": "fd00::5/48"}')
    assert cfg.network == IPv4Network("10.1.0.0/16")
    assert cfg.ipv6_network == IPv6Network("fd00::/48")


def test_backend_defaults_to_udp_like_upstreams_code() -> None:
    assert DEFAULT_BACKEND_TYPE == "udp"
    assert parse_net_config('{"Network": "10.1.0.0/16"}').backend.type == "udp"


def test_backend_type_is_lower_cased_and_options_kept() -> None:
    cfg = parse_net_config('{"Backend": {"Type": "VXLAN", "VNI": 4096, "Port": 4789}}')
    assert cfg.backend.type == "vxlan"
    assert cfg.backend.option("VNI") == 4096
    assert cfg.backend.option("port") == 4789
    assert cfg.backend.option("DirectRouting", False) is False


@pytest.mark.parametrize("backend", ["{}", '{"Type": null}', '{"VNI": 1}'])
def test_backend_without_type_has_the_empty_type(backend: str) -> None:
    assert parse_net_config(f'{{"Backend": {backend}}}').backend.type == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"10.1.0.0/16"', "must be a JSON object"),
        ('{"Network": 10}', "invalid IPv4 CIDR format"),
        ('{"Network": "fd00::/48"}', "invalid IPv4 CIDR format"),
        ('{"Network": "10.1.0.0"}', "invalid IPv4 CIDR format"),
        ('{"Network": "10.1.0.0/255.255.0.0"}', "invalid IPv4 CIDR format"),
        ('{"Network": "10.1.0.0/33"}', "invalid IPv4 CIDR format"),
        ('{"IPv6Network": "10.1.0.0/16"}', "invalid IPv6 CIDR format"),
        ('{"IPv6Network": ["fd00::/48"]}', "invalid IPv6 CIDR format"),
        ('{"EnableIPv4": "true"}', "EnableIPv4 must be true or false"),
        ('{"enableIPv6": 1}', "enableIPv6 must be true or false"),
        ('{"EnableNFTables": "no"}', "EnableNFTables must be true or false"),
        ('{"SubnetLen": "24"}', "SubnetLen must be a non-negative integer"),
        ('{"SubnetLen": 24.5}', "SubnetLen must be a non-negative integer"),
        ('{"SubnetLen": -1}', "SubnetLen must be a non-negative integer"),
        ('{"SubnetLen": true}', "SubnetLen must be a non-negative integer"),
        ('{"IPv6SubnetLen": "64"}', "IPv6SubnetLen must be a non-negative integer"),
        ('{"SubnetMin": "10.1.0"}', "SubnetMin is not a valid address"),
        ('{"SubnetMin": 167837952}', "SubnetMin is not a valid address"),
        ('{"SubnetMax": "fd00::"}', "SubnetMax is not a valid address"),
        ('{"IPv6SubnetMin": "10.1.0.0"}', "IPv6SubnetMin is not a valid address"),
        ('{"IPv6SubnetMax": 5}', "IPv6SubnetMax is not a valid address"),
        ('{"Backend": "vxlan"}', "error decoding Backend property of config"),
        ('{"Backend": [1]}', "error decoding Backend property of config"),
        ('{"Backend": {"Type": 5}}', "error decoding Backend property of config"),
        ('{"Backend": {"Type": false}}', "error decoding Backend property of config"),
    ],
)
def test_wrong_types_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_net_config(text)


def test_bytes_are_accepted() -> None:
    assert parse_net_config(b'{"Network": "10.1.0.0/16"}').network == IPv4Network("10.1.0.0/16")


def test_invalid_utf8_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_net_config(b'{"Network": "\xff"}')


# --- validation and defaults (etcd mode) -------------------------------------------------


def ranges(text: str) -> tuple[SubnetRange | None, SubnetRange | None]:
    return subnet_ranges(parse_net_config(text))


def test_ipv4_defaults_from_upstreams_example() -> None:
    v4, v6 = ranges('{"network": "10.3.0.0/16"}')
    assert v6 is None
    assert v4 == SubnetRange(
        IPv4Network("10.3.0.0/16"), 24, IPv4Address("10.3.1.0"), IPv4Address("10.3.255.0")
    )


@pytest.mark.parametrize(
    ("network", "subnet_len", "lo", "hi"),
    [
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.3.0.0/22", 24, "10.3.1.0", "10.3.3.0"),
        ("10.3.0.0/23", 25, "10.3.0.128", "10.3.1.128"),
        ("10.3.0.0/28", 30, "10.3.0.4", "10.3.0.12"),
        ("255.0.0.0/8", 24, "255.0.1.0", "255.255.255.0"),  # no overflow at the top
    ],
)
def test_ipv4_default_subnet_len_and_range(
    network: str, subnet_len: int, lo: str, hi: str
) -> None:
    v4, _ = ranges(f'{{"Network": "{network}"}}')
    assert v4 is not None
    assert (v4.subnet_len, str(v4.subnet_min), str(v4.subnet_max)) == (subnet_len, lo, hi)


def test_ipv4_explicit_values_are_kept() -> None:
    v4, _ = ranges(
        '{"Network": "10.3.0.0/16", "SubnetLen": 26, "SubnetMin": "10.3.4.0",'
        ' "SubnetMax": "10.3.8.192"}'
    )
    assert v4 == SubnetRange(
        IPv4Network("10.3.0.0/16"), 26, IPv4Address("10.3.4.0"), IPv4Address("10.3.8.192")
    )


def test_zero_subnet_min_max_mean_unset_like_upstream() -> None:
    v4, _ = ranges('{"Network": "10.3.0.0/16", "SubnetMin": "0.0.0.0", "SubnetMax": "0.0.0.0"}')
    assert v4 is not None
    assert (str(v4.subnet_min), str(v4.subnet_max)) == ("10.3.1.0", "10.3.255.0")


def test_ipv6_defaults_from_upstreams_example() -> None:
    v4, v6 = ranges('{"Network": "10.3.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48"}')
    assert v4 is not None
    assert v6 == SubnetRange(
        IPv6Network("fc00::/48"), 64, IPv6Address("fc00:0:0:1::"), IPv6Address("fc00:0:0:ffff::")
    )


@pytest.mark.parametrize(
    ("network", "subnet_len", "lo"),
    [("fc00::/62", 64, "fc00:0:0:1::"), ("fc00::/100", 102, "fc00::400:0"),
     ("fc00::/124", 126, "fc00::4")],
)
def test_ipv6_default_subnet_len(network: str, subnet_len: int, lo: str) -> None:
    _, v6 = ranges(f'{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "{network}"}}')
    assert v6 is not None
    assert (v6.subnet_len, str(v6.subnet_min)) == (subnet_len, lo)


def test_ipv6_only() -> None:
    v4, v6 = ranges('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56"}')
    assert v4 is None
    assert v6 is not None and v6.network == IPv6Network("fd00::/56")


V6 = '"EnableIPv6": true, "IPv6Network": "fd00::/48"'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "please define a correct Network parameter in the flannel config"),
        ('{"Network": "0.0.0.0/0"}',
         "please define a correct Network parameter in the flannel config"),
        ('{"Network": "10.0.0.0/16", "SubnetLen": 31}', "SubnetLen must be less than /31"),
        ('{"Network": "10.0.0.0/16", "SubnetLen": 17}',
         "network must be able to accommodate at least four subnets"),
        ('{"Network": "10.0.0.0/29"}',
         "network is too small. Minimum useful network prefix is /28"),
        ('{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}',
         "SubnetMin is not in the range of the Network"),
        ('{"Network": "10.0.0.0/16", "SubnetMax": "11.0.0.0"}',
         "SubnetMax is not in the range of the Network"),
        ('{"Network": "10.0.0.0/16", "SubnetMin": "10.0.1.5"}',
         "SubnetMin is not on a SubnetLen boundary: 10.0.1.5"),
        ('{"Network": "10.0.0.0/16", "SubnetMax": "10.0.9.128"}',
         "SubnetMax is not on a SubnetLen boundary: 10.0.9.128"),
        ('{"Network": "10.0.0.0/16", "EnableIPv6": true}',
         "please define a correct IPv6Network parameter in the flannel config"),
        ('{"Network": "10.0.0.0/16", ' + V6 + ', "IPv6SubnetLen": 127}',
         "SubnetLen must be less than /127"),
        ('{"Network": "10.0.0.0/16", ' + V6 + ', "IPv6SubnetLen": 49}',
         "network must be able to accommodate at least four subnets"),
        ('{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/125"}',
         "IPv6Network is too small. Minimum useful network prefix is /124"),
        ('{"Network": "10.0.0.0/16", ' + V6 + ', "IPv6SubnetMin": "fd01::"}',
         "IPv6SubnetMin is not in the range of the IPv6Network"),
        ('{"Network": "10.0.0.0/16", ' + V6 + ', "IPv6SubnetMax": "fe00::"}',
         "IPv6SubnetMax is not in the range of the IPv6Network"),
        ('{"Network": "10.0.0.0/16", ' + V6 + ', "IPv6SubnetMin": "fd00:0:0:1::1"}',
         "IPv6SubnetMin is not on a SubnetLen boundary: fd00:0:0:1::1"),
        ('{"Network": "10.0.0.0/16", ' + V6 + ', "IPv6SubnetMax": "fd00:0:0:2:8000::"}',
         "IPv6SubnetMax is not on a SubnetLen boundary: fd00:0:0:2:8000::"),
    ],
)
def test_every_upstream_validation_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ranges(text)
    assert str(info.value) == message  # verbatim, as upstream prints it


def test_no_address_family_enabled() -> None:
    with pytest.raises(ConfigError, match="EnableIPv4 and EnableIPv6 are both false"):
        ranges('{"EnableIPv4": false}')


def test_disabled_family_is_not_validated() -> None:
    v4, v6 = ranges('{"Network": "10.0.0.0/16", "IPv6Network": "fd00::/127"}')
    assert v4 is not None and v6 is None


def test_validation_does_not_mutate_its_input() -> None:
    cfg = parse_net_config('{"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}}')
    before = copy.deepcopy(cfg)
    subnet_ranges(cfg)
    assert cfg == before
    assert cfg.subnet_len == 0 and cfg.subnet_min is None and cfg.subnet_max is None



# --- the IP stack ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stack", "v4", "v6"),
    [
        ('{"Network": "10.1.0.0/16"}', IPStack.IPV4, True, False),
        ('{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56"}',
         IPStack.DUAL, True, True),
        ('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56"}',
         IPStack.IPV6, False, True),
        # the keys decide, not which networks happen to be written
        ('{"Network": "10.1.0.0/16", "IPv6Network": "fd00::/56"}', IPStack.IPV4, True, False),
    ],
)
def test_ip_stack_follows_the_enable_keys(text: str, stack: IPStack, v4: bool, v6: bool) -> None:
    got = ip_stack(parse_net_config(text))
    assert got is stack
    assert (got.ipv4, got.ipv6) == (v4, v6)


def test_no_stack_is_upstreams_error_everywhere() -> None:
    cfg = parse_net_config('{"EnableIPv4": false, "Network": "10.1.0.0/16"}')
    with pytest.raises(ConfigError, match="^none defined stack"):
        ip_stack(cfg)
    with pytest.raises(ConfigError, match="^none defined stack"):
        subnet_ranges(cfg)
