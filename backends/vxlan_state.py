"""The vxlan backend's pure parts: options, lease data, and the desired kernel state.

Per usable peer and address family the kernel needs three objects on the
family's device, ``flannel.<VNI>`` (IPv4) or ``flannel-v6.<VNI>`` (IPv6), the
same as upstream flannel, so Go and Python nodes interoperate:

* neighbour: the peer subnet's network address -> the peer's VTEP MAC;
* FDB entry: the peer's VTEP MAC -> the peer's public IP of that family;
* route: the peer subnet via its network address, on the device, ``onlink``.

Each family has its own device, VTEP MAC (``BackendData`` / ``BackendV6Data``)
and underlay address.  With DirectRouting, a peer on our own L2 segment gets a
plain route via its public IP instead.  Nothing here touches the kernel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from backends.model import DataplaneState, FdbEntry, KernelObject, Neighbour, Route, Skipped
from backends.peers import PeerIndex, screen_peers
from subnet.errors import ConfigError, PeerDataError
from subnet.lease import (
    UNSPECIFIED_V4,
    IPAddress,
    IPNetwork,
    Lease,
    LeaseAttrs,
    compact_json,
)
from subnet.netconf import BackendConfig, NetConfig

BACKEND_TYPE = "vxlan"
# Bytes the kernel adds around a pod packet (outer IPv4 + UDP + VXLAN + Ethernet).
ENCAP_OVERHEAD = 50
# The same over an IPv6 underlay (the outer IPv6 header is 20 bytes longer).  Upstream
# uses 50 there too, which leaves full-size packets 20 bytes too big for the underlay.
ENCAP_OVERHEAD_V6 = 70
MAX_VNI = (1 << 24) - 1
MIN_DEVICE_MTU = 68
MIN_DEVICE_MTU_V6 = 1280  # below this the kernel turns IPv6 off on the device

_MAC_RE = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")


@dataclass(frozen=True, slots=True)
class VxlanOptions:
    """The backend's net-conf.json keys; ``mtu`` is the underlay MTU (None: the interface's)."""

    vni: int = 1
    port: int = 0
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int | None = None

    def device_name(self, version: int = 4) -> str:
        return f"flannel.{self.vni}" if version == 4 else f"flannel-v6.{self.vni}"

    def device_mtu(self, ext_mtu: int, version: int = 4) -> int:
        """The MTU of the family's device: the underlay's less that family's encapsulation."""
        overhead = ENCAP_OVERHEAD if version == 4 else ENCAP_OVERHEAD_V6
        return (self.mtu if self.mtu is not None else ext_mtu) - overhead

    def check_mtu(self, ext_mtu: int, versions: Sequence[int]) -> None:
        """ConfigError when a device would get an MTU its family cannot run on."""
        for version in versions:
            low = MIN_DEVICE_MTU if version == 4 else MIN_DEVICE_MTU_V6
            mtu = self.device_mtu(ext_mtu, version)
            if mtu < low:
                raise ConfigError(
                    f"vxlan backend: {self.device_name(version)} would get MTU {mtu}, below "
                    f"the IPv{version} minimum {low} (underlay MTU {self.mtu or ext_mtu})"
                )


@dataclass(frozen=True, slots=True)
class VxlanData:
    """A lease's decoded vxlan BackendData."""

    vni: int
    vtep_mac: str


@dataclass(frozen=True, slots=True)
class VxlanPeer:
    """A peer we can program: its subnet of one family, underlay address and VTEP MAC."""

    key: str
    subnet: IPNetwork
    public_ip: IPAddress
    vtep_mac: str


# --- options -----------------------------------------------------------------------------


def check_config(config: NetConfig) -> None:
    """The address families this backend runs (shared with ``flannelctl netconf validate``)."""
    if not config.networks():
        raise ConfigError("the vxlan backend needs an IPv4 or IPv6 Network")



def parse_options(backend: BackendConfig) -> VxlanOptions:
    """The vxlan keys of the Backend object (any case); ConfigError on a bad value."""
    vni = _int_option(backend, "VNI", 1, 0, MAX_VNI)
    port = _int_option(backend, "Port", 0, 0, 65535)
    mtu_value = backend.option("MTU")
    mtu = None
    if mtu_value is not None and mtu_value != 0:
        mtu = _int_option(backend, "MTU", 0, MIN_DEVICE_MTU + ENCAP_OVERHEAD, 65535)
    return VxlanOptions(
        vni=vni,
        port=port,
        gbp=_bool_option(backend, "GBP"),
        learning=_bool_option(backend, "Learning"),
        direct_routing=_bool_option(backend, "DirectRouting"),
        mtu=mtu,
    )


def _int_option(backend: BackendConfig, name: str, default: int, low: int, high: int) -> int:
    value = backend.option(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"vxlan backend: {name} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"vxlan backend: {name} must be in [{low}, {high}], not {value}")
    return value


def _bool_option(backend: BackendConfig, name: str) -> bool:
    value = backend.option(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"vxlan backend: {name} must be true or false, not {value!r}")
    return value


# --- MACs and lease data -------------------------------------------------------------------


def vtep_mac(raw: bytes) -> str:
    """A locally administered unicast MAC from 6 random bytes (bit 0 cleared, bit 1 set)."""
    if len(raw) != 6:
        raise ValueError("a MAC needs 6 bytes")
    first = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in (first, *raw[1:]))


def parse_mac(text: Any) -> str:
    """A unicast, non-zero Ethernet MAC as lower-case colon form; PeerDataError otherwise."""
    if not isinstance(text, str) or not _MAC_RE.fullmatch(text.lower()):
        raise PeerDataError(f"VtepMAC {text!r} is not a MAC address")
    mac = text.lower().replace("-", ":")
    if int(mac[:2], 16) & 0x01:
        raise PeerDataError(f"VtepMAC {mac} is a multicast address")
    if mac == "00:00:00:00:00:00":
        raise PeerDataError("VtepMAC is all zeros")
    return mac


def encode_backend_data(vni: int, mac: str) -> str:
    """BackendData as upstream writes it: ``{"VNI":1,"VtepMAC":"..."}``."""
    return compact_json({"VNI": vni, "VtepMAC": mac})


def decode_backend_data(text: str | None) -> VxlanData:
    """Decode BackendData (keys in any case, as Go does); PeerDataError if unusable."""
    if text is None:
        raise PeerDataError("no backend data")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
        raise PeerDataError(f"backend data is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise PeerDataError("backend data is not a JSON object")
    fields = BackendConfig("", doc)
    vni = fields.option("VNI", 0)
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= MAX_VNI:
        raise PeerDataError(f"VNI {vni!r} is not a VNI")
    return VxlanData(vni=vni, vtep_mac=parse_mac(fields.option("VtepMAC")))


def previous_vtep_mac(text: str | None) -> str | None:
    """The VtepMAC in our own earlier BackendData, if it has a usable one."""
    try:
        return decode_backend_data(text).vtep_mac
    except PeerDataError:
        return None


# --- peers and desired state ------------------------------------------------------------------


def vxlan_peers(
    own: Lease,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    vni: int,
    version: int = 4,
) -> tuple[list[VxlanPeer], list[Skipped]]:
    """The peers whose ``version`` family we can program, and the skipped ones with reasons."""
    found, skipped = family_peers(own, peers, networks, vni, (version,))
    return found[version], skipped


def family_peers(
    own: Lease,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    vni: int,
    versions: Sequence[int],
) -> tuple[dict[int, list[VxlanPeer]], list[Skipped]]:
    """Per family in ``versions``, the peers we can program; and the skipped ones with reasons
    (:func:`screen_families` with nothing decoded before)."""
    found, skipped, _ = screen_families(own, peers, networks, PeerViews(vni, versions))
    return found, skipped


def screen_families(
    own: Lease,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    views: PeerViews,
) -> tuple[dict[int, list[VxlanPeer]], list[Skipped], PeerIndex | None]:
    """Per family of ``views``, the peers we can program; the skipped ones with reasons;
    and, when none was skipped, the pass's :class:`PeerIndex` (tokens: (version, VTEP MAC)).

    On top of :func:`backends.peers.usable_peers`: a family of a peer needs a
    subnet and public address of that family and vxlan data of that family
    with our VNI and a VTEP MAC nobody else (ourselves included) uses on that
    family's device.  A peer usable for one family but not the other is
    programmed for the one and listed as skipped for the other, with a reason
    that names the family.
    """
    versions = views.versions
    macs: dict[int, dict[str, str]] = {}
    for version in versions:
        own_mac = own_vtep_mac(own, version)
        macs[version] = {own_mac: "ours"} if own_mac is not None else {}
    usable, skipped, index = screen_peers(
        own, peers, networks, BACKEND_TYPE,
        [(version, mac) for version in versions for mac in macs[version]],
    )
    result: dict[int, list[VxlanPeer]] = {version: [] for version in versions}
    for peer in usable:
        reasons = []
        tokens = []
        for version, found in zip(versions, views.of(peer), strict=True):
            if isinstance(found, str):
                reasons.append((version, found))
                continue
            owner = macs[version].get(found.vtep_mac)
            if owner is not None:
                reasons.append((version, f"VtepMAC {found.vtep_mac} is already used ({owner})"))
                continue
            macs[version][found.vtep_mac] = f"by {peer.key}"
            result[version].append(found)
            tokens.append((version, found.vtep_mac))
        if reasons:
            skipped.append(Skipped(peer.key, _family_reasons(reasons, len(versions))))
        else:
            index.add_tokens(peer.key, tokens)
    views.end_pass()
    return result, skipped, None if skipped else index


class PeerViews:
    """Each peer lease's vxlan view per family (the peer to program, or why there is
    none), decoded once and kept while the lease's attributes stay the same.

    A full pass keeps only the leases it looked at, so this holds no more than the
    current peers (and those an event looked at since).  The same attributes give
    the very same :class:`VxlanPeer` objects, which lets a pass reuse their kernel
    objects.
    """

    def __init__(self, vni: int, versions: Sequence[int]) -> None:
        self._vni = vni
        self.versions = tuple(versions)
        self._known: dict[str, tuple[LeaseAttrs, tuple[VxlanPeer | str, ...]]] = {}
        self._seen: dict[str, tuple[LeaseAttrs, tuple[VxlanPeer | str, ...]]] = {}

    def of(self, lease: Lease) -> tuple[VxlanPeer | str, ...]:
        """Per family of :attr:`versions`, the vxlan view of ``lease`` or why it has none."""
        known = self._known.get(lease.key)
        if known is None or (known[0] is not lease.attrs and known[0] != lease.attrs):
            known = (lease.attrs, tuple(self._view(lease, version) for version in self.versions))
            self._known[lease.key] = known
        self._seen[lease.key] = known
        return known[1]

    def _view(self, lease: Lease, version: int) -> VxlanPeer | str:
        try:
            return vxlan_peer(lease, self._vni, version)
        except PeerDataError as err:
            return str(err)

    def end_pass(self) -> None:
        """Forget the leases not looked at since the last call."""
        self._known, self._seen = self._seen, {}


def _family_reasons(reasons: Sequence[tuple[int, str]], families: int) -> str:
    if families == 1:
        return reasons[0][1]
    text = "; ".join(f"IPv{version} not programmed: {why}" for version, why in reasons)
    if len(reasons) < families:
        text += " (the other family is)"
    return text


def vxlan_peer(peer: Lease, vni: int, version: int = 4) -> VxlanPeer:
    """The vxlan view of one lease; PeerDataError when it lacks what we need."""
    subnet = peer.subnet if version == 4 else peer.ipv6_subnet
    if subnet is None:
        raise PeerDataError(f"no IPv{version} subnet")
    public_ip = _public_ip(peer, version)
    if public_ip is None:
        raise PeerDataError(f"no IPv{version} public address")
    data = _family_data(peer, version)
    if data.vni != vni:
        raise PeerDataError(f"VNI {data.vni}, not {vni}")
    return VxlanPeer(peer.key, subnet, public_ip, data.vtep_mac)


def lease_attrs(
    public_ip: IPv4Address | None,
    public_ipv6: IPv6Address | None,
    vni: int,
    macs: Mapping[int, str],
) -> LeaseAttrs:
    """Our lease attributes as upstream writes them: per family in ``macs`` (version ->
    VTEP MAC) its public address and vxlan data; ``PublicIP`` 0.0.0.0 without IPv4."""
    return LeaseAttrs(
        public_ip=public_ip if 4 in macs and public_ip is not None else UNSPECIFIED_V4,
        public_ipv6=public_ipv6 if 6 in macs else None,
        backend_type=BACKEND_TYPE,
        backend_data=encode_backend_data(vni, macs[4]) if 4 in macs else None,
        backend_v6_data=encode_backend_data(vni, macs[6]) if 6 in macs else None,
    )


def own_vtep_mac(own: Lease, version: int = 4) -> str | None:
    """Our own VTEP MAC as our lease advertises it (None if it does not parse)."""
    try:
        return _family_data(own, version).vtep_mac
    except PeerDataError:
        return None


def _public_ip(lease: Lease, version: int) -> IPAddress | None:
    if version == 4:
        addr = lease.attrs.public_ip
        return None if addr == UNSPECIFIED_V4 else addr
    return lease.attrs.public_ipv6


def _family_data(lease: Lease, version: int) -> VxlanData:
    attrs = lease.attrs
    return decode_backend_data(attrs.backend_data if version == 4 else attrs.backend_v6_data)


def desired_state(
    peers: Sequence[VxlanPeer],
    ifindex: int,
    direct: Mapping[IPAddress, int],
) -> DataplaneState:
    """The kernel objects serving ``peers`` through the device ``ifindex``.

    ``direct`` maps the public address of each peer reachable without a
    gateway (DirectRouting) to the interface the kernel reaches it on.
    """
    objects: list[KernelObject] = []
    for peer in peers:
        objects += peer_objects(peer, ifindex, direct.get(peer.public_ip))
    return DataplaneState.of(objects)


def peer_objects(
    peer: VxlanPeer, ifindex: int, via_dev: int | None
) -> tuple[KernelObject, ...]:
    """The kernel objects of one peer: a direct route through ``via_dev`` if given,
    else neighbour, FDB entry and onlink route through the VXLAN device."""
    if via_dev is not None:
        return (Route(peer.subnet, peer.public_ip, via_dev),)
    gateway = peer.subnet.network_address
    return (
        Neighbour(ifindex, gateway, peer.vtep_mac),
        FdbEntry(ifindex, peer.vtep_mac, peer.public_ip),
        Route(peer.subnet, gateway, ifindex, onlink=True),
    )
