"""A node's lease as the lab reports it: subnet from its subnet.env, public
IP and VTEP MAC from the lease flanneld wrote to etcd (or, in kube mode, the
annotations it put on its Node).  Pure functions.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass

from subnet.errors import PeerDataError
from subnet.lease import decode_attrs, subnet_key

KUBE_ANNOTATION_PREFIX = "flannel.alpha.coreos.com"


@dataclass(frozen=True, slots=True)
class NodeLease:
    name: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network  # IPv6 in an IPv6-only lab
    public_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    backend_type: str
    vtep_mac: str | None  # vxlan only (flannel-v6.1's in an IPv6-only lab)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "subnet": str(self.subnet),
            "public_ip": str(self.public_ip),
            "backend_type": self.backend_type,
            "vtep_mac": self.vtep_mac,
        }


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines, split on the first ``=``; other lines are ignored."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def subnet_from_env(
    text: str, version: int = 4
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The node's own subnet of one family (``FLANNEL_SUBNET``, ``FLANNEL_IPV6_SUBNET``),
    host bits masked."""
    key = "FLANNEL_SUBNET" if version == 4 else "FLANNEL_IPV6_SUBNET"
    value = parse_env_file(text).get(key)
    if not value:
        return None
    try:
        subnet = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    return subnet if subnet.version == version else None


def node_lease(
    name: str, subnet: ipaddress.IPv4Network, etcd_prefix: str, kvs: Mapping[str, str]
) -> NodeLease:
    """Combine the node's subnet with its etcd lease; PeerDataError if it is missing."""
    key = f"{etcd_prefix.rstrip('/')}/subnets/{subnet_key(subnet, None)}"
    # a dual-stack lease's key goes on with "&<IPv6 subnet>"
    found = [k for k in kvs if k == key or k.startswith(key + "&")]
    if not found:
        raise PeerDataError(f"no lease {key} in etcd for node {name}")
    attrs = decode_attrs(kvs[found[0]])
    return NodeLease(
        name=name,
        subnet=subnet,
        public_ip=attrs.public_ip,
        backend_type=attrs.backend_type,
        vtep_mac=_vtep_mac(attrs.backend_data) or _vtep_mac(attrs.backend_v6_data),
    )


def _vtep_mac(backend_data: str | None) -> str | None:
    if not backend_data:
        return None
    try:
        data = json.loads(backend_data)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("VtepMAC"), str):
        return str(data["VtepMAC"])
    return None


def node_lease_from_annotations(
    name: str,
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
    annotations: Mapping[str, str],
    prefix: str = KUBE_ANNOTATION_PREFIX,
) -> NodeLease:
    """Combine the node's subnet with its Node's flannel annotations; PeerDataError if
    they are missing or unreadable."""
    key = "public-ip" if subnet.version == 4 else "public-ipv6"  # an IPv6-only lab: its IPv6
    public_ip = annotations.get(f"{prefix}/{key}")
    if annotations.get(f"{prefix}/kube-subnet-manager") != "true" or not public_ip:
        raise PeerDataError(f"node {name} carries no flannel annotations yet")
    try:
        address = ipaddress.ip_address(public_ip)
        if address.version != subnet.version:
            raise ValueError(f"not IPv{subnet.version}")
    except ValueError as err:
        raise PeerDataError(f"node {name}: bad {key} annotation {public_ip!r}") from err
    return NodeLease(
        name=name,
        subnet=subnet,
        public_ip=address,
        backend_type=annotations.get(f"{prefix}/backend-type", ""),
        vtep_mac=(_vtep_mac(annotations.get(f"{prefix}/backend-data"))
                  or _vtep_mac(annotations.get(f"{prefix}/backend-v6-data"))),
    )
