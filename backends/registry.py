"""The explicit table of backends: type name (net-conf.json ``Backend.Type``) -> factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from backends.base import Backend, ExternalInterface
from backends.hostgw import HostGwBackend
from backends.netlink import Netlink
from backends.udp import UdpBackend
from backends.vxlan import VxlanBackend
from backends.vxlan_state import previous_vtep_mac
from flanneld.config import BackendConfig


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What a backend is built from.

    ``previous_data`` is this node's BackendData from before (its previous
    lease in etcd mode, its ``backend-data`` annotation in kube mode): opaque
    JSON that only the backend decodes, e.g. to keep its VTEP MAC.
    """

    ext: ExternalInterface
    netlink: Netlink
    config: BackendConfig
    previous_data: str | None = None


BackendFactory: TypeAlias = Callable[[BackendContext], Backend]


def backend_factories() -> dict[str, BackendFactory]:
    """Every backend this build has, by lower-case type name."""
    return {"vxlan": _vxlan, "host-gw": _hostgw, "udp": _udp}


def _vxlan(ctx: BackendContext) -> Backend:
    return VxlanBackend(
        ctx.ext, ctx.netlink, ctx.config, previous_mac=previous_vtep_mac(ctx.previous_data)
    )


def _hostgw(ctx: BackendContext) -> Backend:
    return HostGwBackend(ctx.ext, ctx.netlink)


def _udp(ctx: BackendContext) -> Backend:
    return UdpBackend(ctx.ext, ctx.netlink, ctx.config)
