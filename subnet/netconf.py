"""net-conf.json: parsing (Go encoding/json rules), validation and defaults.

The same JSON is the kube-mode file ``/etc/kube-flannel/net-conf.json`` and
the etcd-mode ``<prefix>/config`` value.  Parsing follows Go's decoder:
keys match case-insensitively (the last duplicate wins), unknown keys are
ignored, a ``null`` leaves the default, a wrong type is an error.

Parsing fills in nothing: a ``NetConfig`` is what the file says.  The
etcd-mode defaults and checks (SubnetLen, SubnetMin/Max) are derived by
:func:`subnet_ranges`, a pure function that never changes its input.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from subnet.errors import ConfigError
from subnet.lease import IPAddress, IPNetwork

DEFAULT_BACKEND_TYPE = "udp"  # what upstream's code returns when Backend is absent


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """The ``Backend`` object: its lower-cased type and the raw keys."""

    type: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        """Look an option up the way Go does: exact name first, then any case."""
        if name in self.options:
            return self.options[name]
        folded = name.lower()
        found = default
        for key, value in self.options.items():
            if key.lower() == folded:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class NetConfig:
    """net-conf.json as written; zero values mean "not given"."""

    network: ipaddress.IPv4Network | None = None
    ipv6_network: ipaddress.IPv6Network | None = None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    subnet_len: int = 0
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    backend: BackendConfig = field(default_factory=lambda: BackendConfig(DEFAULT_BACKEND_TYPE))

    def networks(self) -> tuple[IPNetwork, ...]:
        """The enabled cluster networks, IPv4 first."""
        nets: list[IPNetwork] = []
        if self.enable_ipv4 and self.network is not None:
            nets.append(self.network)
        if self.enable_ipv6 and self.ipv6_network is not None:
            nets.append(self.ipv6_network)
        return tuple(nets)


class IPStack(enum.Enum):
    """Which address families a cluster runs, as upstream's ``ipv4Stack``/``ipv6Stack``/``dualStack``."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DUAL = "dual"

    @property
    def ipv4(self) -> bool:
        return self is not IPStack.IPV6

    @property
    def ipv6(self) -> bool:
        return self is not IPStack.IPV4


def ip_stack(cfg: NetConfig) -> IPStack:
    """The stack ``EnableIPv4``/``EnableIPv6`` select; ConfigError (upstream's text) for neither."""
    if cfg.enable_ipv4 and cfg.enable_ipv6:
        return IPStack.DUAL
    if cfg.enable_ipv4:
        return IPStack.IPV4
    if cfg.enable_ipv6:
        return IPStack.IPV6
    raise ConfigError("none defined stack: EnableIPv4 and EnableIPv6 are both false")


@dataclass(frozen=True, slots=True)
class SubnetRange:
    """Where per-node subnets of one address family are carved from."""

    network: IPNetwork
    subnet_len: int
    subnet_min: IPAddress
    subnet_max: IPAddress


# --- parsing -----------------------------------------------------------------

_FIELDS = {
    "network": "network",
    "ipv6network": "ipv6_network",
    "enableipv4": "enable_ipv4",
    "enableipv6": "enable_ipv6",
    "enablenftables": "enable_nftables",
    "subnetlen": "subnet_len",
    "subnetmin": "subnet_min",
    "subnetmax": "subnet_max",
    "ipv6subnetlen": "ipv6_subnet_len",
    "ipv6subnetmin": "ipv6_subnet_min",
    "ipv6subnetmax": "ipv6_subnet_max",
    "backend": "backend",
}


def parse_net_config(text: str | bytes) -> NetConfig:
    """Parse net-conf.json text; raise ConfigError naming the bad key."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"net-conf.json is not valid JSON: {err}") from err
    except RecursionError:
        raise ConfigError("net-conf.json is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ConfigError("net-conf.json must be a JSON object")
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = _FIELDS.get(key.lower())
        if name is None or value is None:
            continue
        values[name] = _decode_field(name, key, value)
    return NetConfig(**values)


def _decode_field(name: str, key: str, value: Any) -> Any:
    if name in ("enable_ipv4", "enable_ipv6", "enable_nftables"):
        if not isinstance(value, bool):
            raise ConfigError(f"net-conf.json: {key} must be true or false, not {value!r}")
        return value
    if name in ("subnet_len", "ipv6_subnet_len"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"net-conf.json: {key} must be a non-negative integer, not {value!r}")
        return value
    if name == "network":
        return _cidr(key, value, ipaddress.IPv4Network, "invalid IPv4 CIDR format")
    if name == "ipv6_network":
        return _cidr(key, value, ipaddress.IPv6Network, "invalid IPv6 CIDR format")
    if name in ("subnet_min", "subnet_max"):
        return _address(key, value, ipaddress.IPv4Address)
    if name in ("ipv6_subnet_min", "ipv6_subnet_max"):
        return _address(key, value, ipaddress.IPv6Address)
    return _backend(value)


def _cidr(key: str, value: Any, kind: type[Any], message: str) -> Any:
    # Like Go's ParseCIDR: "addr/len" only (no bare address, no netmask form).
    if not isinstance(value, str) or not value.rpartition("/")[2].isdigit():
        raise ConfigError(f"net-conf.json: {key}: {message}: {value!r}")
    try:
        return kind(value, strict=False)  # Go's ParseCIDR masks host bits
    except ValueError as err:
        raise ConfigError(f"net-conf.json: {key}: {message}: {value!r}") from err


def _address(key: str, value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, str):  # ipaddress would take an int
        raise ConfigError(f"net-conf.json: {key} is not a valid address: {value!r}")
    try:
        return kind(value)
    except ValueError as err:
        raise ConfigError(f"net-conf.json: {key} is not a valid address: {value!r}") from err


def _backend(value: Any) -> BackendConfig:
    if not isinstance(value, dict):
        raise ConfigError(
            f"error decoding Backend property of config: expected an object, got {value!r}"
        )
    probe = BackendConfig("", value)
    kind = probe.option("Type")
    if kind is None:  # absent or null: Go leaves the empty string
        kind = ""
    if not isinstance(kind, str):
        raise ConfigError("error decoding Backend property of config: Type must be a string")
    return BackendConfig(kind.lower(), dict(value))


# --- validation and defaults (etcd mode) ---------------------------------------


@dataclass(frozen=True, slots=True)
class _FamilyRules:
    """What net-conf.json checks for one family's network, and the words its errors use."""

    network_key: str
    max_len: int
    too_small_prefix: int
    default_len_prefix: int
    default_len: int
    missing: str
    too_long: str
    too_small: str
    min_key: str
    max_key: str


_V4 = _FamilyRules(
    network_key="Network", max_len=30, too_small_prefix=28, default_len_prefix=22,
    default_len=24,
    missing="please define a correct Network parameter in the flannel config",
    too_long="SubnetLen must be less than /31",
    too_small="network is too small. Minimum useful network prefix is /28",
    min_key="SubnetMin", max_key="SubnetMax",
)
_V6 = _FamilyRules(
    network_key="IPv6Network", max_len=126, too_small_prefix=124, default_len_prefix=62,
    default_len=64,
    missing="please define a correct IPv6Network parameter in the flannel config",
    too_long="SubnetLen must be less than /127",
    too_small="IPv6Network is too small. Minimum useful network prefix is /124",
    min_key="IPv6SubnetMin", max_key="IPv6SubnetMax",
)


def subnet_ranges(cfg: NetConfig) -> tuple[SubnetRange | None, SubnetRange | None]:
    """Validate and derive the (IPv4, IPv6) allocation ranges, as etcd mode does.

    Raises ConfigError with upstream's messages.  ``cfg`` is not changed.
    """
    stack = ip_stack(cfg)
    v4 = None
    v6 = None
    if stack.ipv4:
        v4 = _family_range(_V4, cfg.network, cfg.subnet_len, cfg.subnet_min, cfg.subnet_max)
    if stack.ipv6:
        v6 = _family_range(
            _V6, cfg.ipv6_network, cfg.ipv6_subnet_len, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max
        )
    return v4, v6


def _family_range(
    rules: _FamilyRules,
    network: IPNetwork | None,
    subnet_len: int,
    lo: IPAddress | None,
    hi: IPAddress | None,
) -> SubnetRange:
    if network is None or (network.prefixlen == 0 and int(network.network_address) == 0):
        raise ConfigError(rules.missing)
    if subnet_len > 0:
        if subnet_len > rules.max_len:
            raise ConfigError(rules.too_long)
        if subnet_len < network.prefixlen + 2:
            raise ConfigError("network must be able to accommodate at least four subnets")
    elif network.prefixlen > rules.too_small_prefix:
        raise ConfigError(rules.too_small)
    elif network.prefixlen <= rules.default_len_prefix:
        subnet_len = rules.default_len
    else:
        subnet_len = network.prefixlen + 2
    size = 1 << (network.max_prefixlen - subnet_len)
    # As upstream, the all-zero address means "not given".
    if lo is None or int(lo) == 0:
        lo = network.network_address + size
    elif lo not in network:
        raise ConfigError(f"{rules.min_key} is not in the range of the {rules.network_key}")
    if hi is None or int(hi) == 0:
        hi = network.broadcast_address - (size - 1)  # no overflow past the top address
    elif hi not in network:
        raise ConfigError(f"{rules.max_key} is not in the range of the {rules.network_key}")
    for key, addr in ((rules.min_key, lo), (rules.max_key, hi)):
        if int(addr) % size:
            raise ConfigError(f"{key} is not on a SubnetLen boundary: {addr}")
    if int(lo) > int(hi):  # upstream accepts it and then finds no free subnet
        raise ConfigError(
            f"{rules.min_key} {lo} is above {rules.max_key} {hi}: there is no subnet to lease"
        )
    return SubnetRange(network, subnet_len, lo, hi)
