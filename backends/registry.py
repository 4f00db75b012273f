"""The explicit table of backends: type name (net-conf.json ``Backend.Type``) -> factory.

Each entry imports its backend's modules when it is used, so a daemon loads
only the backend net-conf.json names (start-up time and memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

from backends.base import Backend, ExternalInterface, ipv4_network
from subnet.errors import ConfigError
from subnet.netconf import BackendConfig, NetConfig

if TYPE_CHECKING:
    from backends.netlink import Netlink


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What a backend is built from.

    ``previous_data`` / ``previous_v6_data`` are this node's BackendData /
    BackendV6Data from before (its previous lease in etcd mode, its
    ``backend-data`` / ``backend-v6-data`` annotations in kube mode): opaque
    JSON that only the backend decodes, e.g. to keep its VTEP MACs.
    ``environ`` is flanneld's environment, for the variables a backend reads
    (``WIREGUARD_KEY_FILE``).
    """

    ext: ExternalInterface
    netlink: Netlink
    config: BackendConfig
    previous_data: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    previous_v6_data: str | None = None


BackendFactory: TypeAlias = Callable[[BackendContext], Backend]
OptionsCheck: TypeAlias = Callable[[BackendConfig], dict[str, object]]
ConfigCheck: TypeAlias = Callable[[NetConfig], object]  # raises ConfigError


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """How to build a backend, and how to check a net-conf.json for it without building it.

    ``options`` reads the Backend options; ``accepts`` refuses address
    families the backend does not run.  Both are what the backend itself
    applies, so ``flannelctl netconf validate`` and the daemon agree.
    """

    build: BackendFactory
    options: OptionsCheck
    accepts: ConfigCheck


def backends() -> dict[str, BackendEntry]:
    """Every backend this build has, by lower-case type name."""
    return {
        "vxlan": BackendEntry(_vxlan, _vxlan_options, _vxlan_check),
        "host-gw": BackendEntry(_hostgw, lambda c: {}, _hostgw_check),
        "udp": BackendEntry(_udp, _udp_options, partial(ipv4_network, backend="udp")),
        "wireguard": BackendEntry(
            _wireguard, _wireguard_options, _wireguard_check
        ),
    }


def lookup(backend_type: str) -> BackendEntry:
    """The entry for ``backend_type``; ConfigError naming the known ones if there is none."""
    entries = backends()
    entry = entries.get(backend_type)
    if entry is None:
        raise ConfigError(
            f"unknown backend type: {backend_type} (this build has: {', '.join(sorted(entries))})"
        )
    return entry


def _vxlan(ctx: BackendContext) -> Backend:
    from backends.vxlan import VxlanBackend
    from backends.vxlan_state import previous_vtep_mac

    previous = {4: previous_vtep_mac(ctx.previous_data),
                6: previous_vtep_mac(ctx.previous_v6_data)}
    return VxlanBackend(ctx.ext, ctx.netlink, ctx.config, previous_macs=previous)


def _vxlan_options(config: BackendConfig) -> dict[str, object]:
    from backends.vxlan_state import parse_options

    return asdict(parse_options(config))


def _vxlan_check(config: NetConfig) -> None:
    from backends.vxlan_state import check_config

    check_config(config)


def _hostgw(ctx: BackendContext) -> Backend:
    from backends.hostgw import HostGwBackend

    return HostGwBackend(ctx.ext, ctx.netlink)


def _hostgw_check(config: NetConfig) -> None:
    from backends.hostgw import check_config

    check_config(config)


def _udp(ctx: BackendContext) -> Backend:
    from backends.udp import UdpBackend

    return UdpBackend(ctx.ext, ctx.netlink, ctx.config)


def _udp_options(config: BackendConfig) -> dict[str, object]:
    from backends.udp import parse_port

    return {"port": parse_port(config)}


def _wireguard(ctx: BackendContext) -> Backend:
    from backends.wireguard import WireguardBackend, key_file_path

    return WireguardBackend(ctx.ext, ctx.netlink, ctx.config, key_file_path(ctx.environ))


def _wireguard_options(config: BackendConfig) -> dict[str, object]:
    from backends.wireguard_state import parse_options

    return parse_options(config).summary()


def _wireguard_check(config: NetConfig) -> None:
    from backends.wireguard_state import check_config

    check_config(config)
