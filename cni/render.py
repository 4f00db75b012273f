"""The delegate netconf that upstream's flannel plugin renders (pure).

Given the plugin's netconf and this node's subnet.env, :func:`render_delegate`
returns the config handed to the delegate (``bridge`` by default) on Linux,
key for key as upstream's ``cmdAdd``/``doCmdAdd``/``getDelegateIPAM`` build it.
The inputs are not modified.
"""

from __future__ import annotations

from cni import cidr, gojson
from cni.errors import INVALID_NETWORK_CONFIG, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cni.stdin_config import NetConf
    from cni.subnetenv import SubnetEnv

_INT64 = 2**63


def _check_delegate(delegate: dict[str, object]) -> None:
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CniError(
            INVALID_NETWORK_CONFIG,
            "'delegate' dictionary, if present, must have (string) 'type' field",
        )
    for key in ("name", "ipam"):
        if key in delegate:
            raise CniError(
                INVALID_NETWORK_CONFIG,
                f"'delegate' dictionary must not have '{key}' field, it'll be set by flannel",
            )


def _route_int(value: object, where: str) -> int:
    """A Go ``int`` route field: the number as Go re-marshals it must be an integer."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = gojson.format_float(float(value))
        if text.lstrip("-").isdigit() and -_INT64 <= int(text) < _INT64:
            return int(text)
    raise TypeError(f"{where} must be an integer, not {value!r}")


def _route(index: int, route: object) -> gojson.Struct:
    """One input route re-encoded as libcni's ``types.Route`` (unknown keys dropped)."""
    where = f"ipam.routes[{index}]"
    if not isinstance(route, dict):
        raise TypeError(f"{where} must be an object")
    present, dst = gojson.field(route, "dst")
    if not present or not isinstance(dst, str):
        raise TypeError(f"{where}.dst must be a CIDR string")
    rendered = gojson.Struct(dst=cidr.interface_string(cidr.parse_cidr(dst)))
    _, gw = gojson.field(route, "gw")
    if gw is not None and gw != "":
        if not isinstance(gw, str):
            raise TypeError(f"{where}.gw must be an IP address string")
        rendered["gw"] = cidr.ip_string(cidr.parse_ip(gw))
    for key in ("mtu", "advmss", "priority"):
        _, value = gojson.field(route, key)
        number = 0 if value is None else _route_int(value, f"{where}.{key}")
        if number:
            rendered[key] = number
    for key in ("table", "scope"):
        _, value = gojson.field(route, key)
        if value is not None:
            rendered[key] = _route_int(value, f"{where}.{key}")
    return rendered


def _routes(ipam: dict[str, object]) -> list[object]:
    """The input ``ipam.routes`` the way upstream parses them."""
    if "routes" not in ipam or ipam["routes"] is None:
        return []
    routes = ipam["routes"]
    if not isinstance(routes, list):
        raise TypeError("ipam.routes must be a list")
    return [_route(index, route) for index, route in enumerate(routes)]


def delegate_ipam(conf: NetConf, env: SubnetEnv) -> dict[str, object]:
    """The delegate's ``ipam``: the input ``ipam`` with flannel's ranges and routes."""
    ipam = dict(conf.ipam or {})
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [
        [{"subnet": cidr.network_string(subnet)}]
        for subnet in (env.subnet, env.ipv6_subnet)
        if subnet is not None
    ]
    try:
        routes = _routes(ipam)
    except (TypeError, ValueError) as err:
        raise CniError(INVALID_NETWORK_CONFIG, f"failed to parse ipam.routes: {err}") from None
    routes += [
        gojson.Struct(dst=cidr.network_string(network))
        for network in (*env.networks, *env.ipv6_networks)
    ]
    ipam["routes"] = routes
    return ipam


def render_delegate(conf: NetConf, env: SubnetEnv) -> dict[str, object]:
    """The complete delegate netconf for ADD. Raises CniError (code 7) on bad input."""
    delegate = dict(conf.delegate or {})
    _check_delegate(delegate)
    if conf.runtime_config is not None:
        delegate["runtimeConfig"] = conf.runtime_config
    delegate["name"] = conf.name
    delegate.setdefault("type", "bridge")
    delegate.setdefault("ipMasq", not env.ipmasq)  # flanneld masquerades unless told not to
    delegate.setdefault("mtu", env.mtu)
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if conf.cni_version:
        delegate["cniVersion"] = conf.cni_version
    delegate["ipam"] = delegate_ipam(conf, env)
    return delegate
