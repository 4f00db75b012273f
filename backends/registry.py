"""The explicit table of backends: type name (net-conf.json ``Backend.Type``) -> factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TypeAlias

from backends import hostgw, wireguard
from backends.base import Backend, ExternalInterface, ipv4_network
from backends.hostgw import HostGwBackend
from backends.netlink import Netlink
from backends.udp import UdpBackend, parse_port
from backends.vxlan import VxlanBackend
from backends.vxlan_state import parse_options, previous_vtep_mac
from backends.wireguard import WireguardBackend, key_file_path
from backends.wireguard_state import parse_options as parse_wireguard_options
from subnet.errors import ConfigError
from subnet.netconf import BackendConfig, NetConfig


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What a backend is built from.

    ``previous_data`` is this node's BackendData from before (its previous
    lease in etcd mode, its ``backend-data`` annotation in kube mode): opaque
    JSON that only the backend decodes, e.g. to keep its VTEP MAC.
    ``environ`` is flanneld's environment, for the variables a backend reads
    (``WIREGUARD_KEY_FILE``).
    """

    ext: ExternalInterface
    netlink: Netlink
    config: BackendConfig
    previous_data: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict)


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
        "vxlan": BackendEntry(
            _vxlan, lambda c: asdict(parse_options(c)), partial(ipv4_network, backend="vxlan")
        ),
        "host-gw": BackendEntry(_hostgw, lambda c: {}, hostgw.check_config),
        "udp": BackendEntry(
            _udp, lambda c: {"port": parse_port(c)}, partial(ipv4_network, backend="udp")
        ),
        "wireguard": BackendEntry(
            _wireguard, lambda c: parse_wireguard_options(c).summary(), wireguard.check_config,
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
    return VxlanBackend(
        ctx.ext, ctx.netlink, ctx.config, previous_mac=previous_vtep_mac(ctx.previous_data)
    )


def _hostgw(ctx: BackendContext) -> Backend:
    return HostGwBackend(ctx.ext, ctx.netlink)


def _udp(ctx: BackendContext) -> Backend:
    return UdpBackend(ctx.ext, ctx.netlink, ctx.config)


def _wireguard(ctx: BackendContext) -> Backend:
    return WireguardBackend(ctx.ext, ctx.netlink, ctx.config, key_file_path(ctx.environ))
