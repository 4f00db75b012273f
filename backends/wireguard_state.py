"""The wireguard backend's pure parts: options, keys, lease data, devices, peers and the peer plan.

The devices (:func:`tunnels`) follow upstream's ``Mode``: ``separate`` (the
default) gives IPv4 ``flannel-wg`` on ``ListenPort`` and IPv6
``flannel-wg-v6`` on ``ListenPortV6``; ``auto``, ``ipv4`` and ``ipv6`` give
one ``flannel-wg`` on ``ListenPort`` carrying every enabled family.  Both
devices use the one private key; BackendData and BackendV6Data each carry
it with the port of the device serving that family.

Per usable peer a device needs one WireGuard peer, as upstream programs it:
the peer's public key (from its lease), endpoint ``PublicIP:Port`` (or
``[PublicIPv6]:Port``), AllowedIPs = the peer's subnet(s) of the families
the device carries, our PSK and keepalive.  A one-device peer's endpoint
family follows the mode (:func:`endpoint_family`).  Beside the peers, a
device carries our subnet's network address as a /32 (/128) and one route
per cluster Network it serves.  Nothing here touches the kernel or a
socket; :func:`plan_peers` turns (observed, desired) into the few changes
a driver applies.

Keys are 32 raw bytes here; leases carry them in base64, the userspace
UAPI in hex.  A key is never part of a ``repr`` or a log line.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backends.model import Skipped
from backends.peers import PeerIndex, screen_peers
from subnet.errors import ConfigError, PeerDataError
from subnet.lease import UNSPECIFIED_V4, IPAddress, IPNetwork, Lease, LeaseAttrs, compact_json
from subnet.netconf import BackendConfig, NetConfig

BACKEND_TYPE = "wireguard"
DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
DEFAULT_PORT = 51820
DEFAULT_PORT_V6 = 51821
# Outer IPv6 header (40) + UDP (8) + WireGuard header (16) + auth tag (16): upstream's figure.
ENCAP_OVERHEAD = 80
MIN_DEVICE_MTU = 68
KEY_LEN = 32
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"
MODES = ("separate", "auto", "ipv4", "ipv6")
DRIVERS = ("auto", "kernel", "userspace")
MAX_KEEPALIVE = 65535
KEY_FORM = "base64 of 32 bytes, as `wg genpsk` prints"


@dataclass(frozen=True, slots=True)
class WireguardOptions:
    """The backend's net-conf.json keys; ``mtu`` is the underlay MTU (None: the interface's).

    ``driver`` is ours (upstream ignores unknown keys): ``auto`` uses the
    kernel module where it exists and ``wireguard-go`` elsewhere.
    """

    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    mtu: int | None = None
    psk: bytes | None = field(default=None, repr=False)
    keepalive: int = 0
    mode: str = "separate"
    driver: str = "auto"

    def device_mtu(self, ext_mtu: int) -> int:
        return (self.mtu if self.mtu is not None else ext_mtu) - ENCAP_OVERHEAD

    def summary(self) -> dict[str, object]:
        """The options for a person to read: the PSK only as set or not."""
        return {
            "listen_port": self.listen_port,
            "listen_port_v6": self.listen_port_v6,
            "mtu": self.mtu,
            "psk": "set" if self.psk else "none",
            "keepalive": self.keepalive,
            "mode": self.mode,
            "driver": self.driver,
        }


@dataclass(frozen=True, slots=True)
class WireguardData:
    """A lease's decoded wireguard BackendData; ``port`` None when the peer sent none (or 0)."""

    public_key: bytes
    port: int | None


@dataclass(frozen=True, slots=True)
class WgPeer:
    """One WireGuard peer as we want it on the device."""

    lease_key: str
    public_key: bytes
    endpoint: tuple[IPAddress, int]
    allowed_ips: frozenset[IPNetwork]
    psk: bytes | None = field(default=None, repr=False)
    keepalive: int = 0

    def state(self) -> PeerState:
        return PeerState(self.endpoint, self.allowed_ips, self.psk, self.keepalive)


@dataclass(frozen=True, slots=True)
class PeerState:
    """What a device reports of one peer (the fields we program)."""

    endpoint: tuple[IPAddress, int] | None
    allowed_ips: frozenset[IPNetwork]
    psk: bytes | None = field(default=None, repr=False)
    keepalive: int = 0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A WireGuard device's configuration as read back from the kernel or wireguard-go."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    peers: Mapping[bytes, PeerState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerPlan:
    """What to change on the device: device keys, peers to remove, peers to (re)write."""

    configure_device: bool = False
    remove: tuple[bytes, ...] = ()
    put: tuple[WgPeer, ...] = ()

    def __bool__(self) -> bool:
        return self.configure_device or bool(self.remove) or bool(self.put)


# --- options -------------------------------------------------------------------------------


def parse_options(backend: BackendConfig) -> WireguardOptions:
    """The wireguard keys of the Backend object (any case); ConfigError with upstream's words."""
    mtu = _int_option(backend, "MTU", 0, 0, 65535)
    if mtu and mtu - ENCAP_OVERHEAD < MIN_DEVICE_MTU:
        raise ConfigError(
            f"wireguard backend: MTU {mtu} leaves no room for pods "
            f"(the device gets MTU - {ENCAP_OVERHEAD}, at least {MIN_DEVICE_MTU})"
        )
    mode = backend.option("Mode", "separate")
    if not isinstance(mode, str):
        raise _decode_error("Mode", mode, "a string")
    if mode not in MODES:
        raise ConfigError(f"no valid Mode configured ({mode!r}; one of {', '.join(MODES)})")
    driver = backend.option("Driver", "auto")
    if driver not in DRIVERS:
        raise ConfigError(
            f"wireguard backend: Driver must be one of {', '.join(DRIVERS)}, not {driver!r}"
        )
    return WireguardOptions(
        listen_port=_port_option(backend, "ListenPort", DEFAULT_PORT),
        listen_port_v6=_port_option(backend, "ListenPortV6", DEFAULT_PORT_V6),
        mtu=mtu or None,
        psk=_psk_option(backend),
        keepalive=_int_option(backend, "PersistentKeepaliveInterval", 0, 0, MAX_KEEPALIVE),
        mode=mode,
        driver=driver,
    )


def _decode_error(name: str, value: Any, kind: str) -> ConfigError:
    # upstream: "error decoding backend config: json: cannot unmarshal ..."
    return ConfigError(
        f"error decoding backend config: {name} must be {kind}, not {json.dumps(value)}"
    )


def _int_option(backend: BackendConfig, name: str, default: int, low: int, high: int) -> int:
    value = backend.option(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _decode_error(name, value, "an integer")
    if not low <= value <= high:
        raise ConfigError(f"wireguard backend: {name} must be in [{low}, {high}], not {value}")
    return value


def _port_option(backend: BackendConfig, name: str, default: int) -> int:
    port = _int_option(backend, name, default, 0, 65535)
    if port == 0:
        raise ConfigError(f"wireguard backend: {name} must be in [1, 65535], not 0")
    return port


def _psk_option(backend: BackendConfig) -> bytes | None:
    value = backend.option("PSK")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _decode_error("PSK", "<not shown>", "a string")
    try:
        return parse_key(value)
    except ValueError as err:
        # upstream: "could not parse psk: ..."; the value itself is a secret and not shown
        raise ConfigError(f"could not parse psk: {err}; PSK must be {KEY_FORM}") from err


# --- keys ----------------------------------------------------------------------------------


def parse_key(text: str) -> bytes:
    """A 32-byte key from its standard base64 form; ValueError saying what is wrong."""
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("not valid base64") from err
    if len(raw) != KEY_LEN:
        raise ValueError(f"key is {len(raw)} bytes, not {KEY_LEN}")
    return raw


def key_b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def clamp(raw: bytes) -> bytes:
    """A Curve25519 private key from 32 random bytes (RFC 7748 §5 clamping, as ``wg genkey``)."""
    if len(raw) != KEY_LEN:
        raise ValueError(f"a private key needs {KEY_LEN} bytes")
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


_P = 2**255 - 19
_A24 = 121665


def x25519(scalar: bytes, u_bytes: bytes) -> bytes:
    """RFC 7748 X25519 (the Montgomery ladder): scalar multiplication on Curve25519."""
    k = int.from_bytes(clamp(scalar), "little")
    u = int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, u, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = u * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_LEN, "little")


def public_key(private_key: bytes) -> bytes:
    """The public key of a Curve25519 private key (what ``wg pubkey`` prints, raw)."""
    return x25519(private_key, (9).to_bytes(KEY_LEN, "little"))


# --- lease data ------------------------------------------------------------------------------


def encode_backend_data(public: bytes, port: int) -> str:
    """BackendData as upstream writes it: ``{"PublicKey":"<base64>","Port":51820}``."""
    return compact_json({"PublicKey": key_b64(public), "Port": port})


def decode_backend_data(text: str | None) -> WireguardData:
    """Decode BackendData (keys in any case, as Go does); PeerDataError if unusable."""
    if text is None:
        raise PeerDataError("no backend data")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PeerDataError(f"backend data is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise PeerDataError("backend data is not a JSON object")
    fields = BackendConfig("", doc)
    key_text = fields.option("PublicKey")
    if not isinstance(key_text, str):
        raise PeerDataError("PublicKey is missing or not a string")
    try:
        key = parse_key(key_text)
    except ValueError as err:
        raise PeerDataError(f"PublicKey is not a WireGuard key: {err}") from err
    port = fields.option("Port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise PeerDataError(f"Port {port!r} is not a UDP port")
    return WireguardData(key, port or None)


def check_config(config: NetConfig) -> None:
    """The address families this backend runs (shared with ``flannelctl netconf validate``)."""
    if not config.networks():
        raise ConfigError("the wireguard backend needs an IPv4 or IPv6 Network")


# --- devices and our lease -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tunnel:
    """One WireGuard device: its name, the pod address families it carries, its UDP port."""

    name: str
    versions: frozenset[int]
    listen_port: int


def tunnels(options: WireguardOptions, versions: Iterable[int]) -> tuple[Tunnel, ...]:
    """The devices ``options.mode`` asks for when the cluster runs ``versions`` (4 and/or 6)."""
    enabled = frozenset(versions)
    if options.mode != "separate":
        return (Tunnel(DEVICE, enabled, options.listen_port),)
    found = []
    if 4 in enabled:
        found.append(Tunnel(DEVICE, frozenset({4}), options.listen_port))
    if 6 in enabled:
        found.append(Tunnel(DEVICE_V6, frozenset({6}), options.listen_port_v6))
    return tuple(found)


def lease_attrs(
    public_ip: ipaddress.IPv4Address | None,
    public_ipv6: ipaddress.IPv6Address | None,
    public: bytes,
    devices: Sequence[Tunnel],
) -> LeaseAttrs:
    """Our lease's attributes: BackendData for IPv4, BackendV6Data for IPv6, each with the
    port of the device that serves the family (upstream's two JSON objects share the key)."""
    port = {v: t.listen_port for t in devices for v in t.versions}
    return LeaseAttrs(
        public_ip=public_ip if public_ip is not None else UNSPECIFIED_V4,
        public_ipv6=public_ipv6,
        backend_type=BACKEND_TYPE,
        backend_data=encode_backend_data(public, port[4]) if 4 in port else None,
        backend_v6_data=encode_backend_data(public, port[6]) if 6 in port else None,
    )


_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_PRIVATE_V6 = ipaddress.IPv6Network("fc00::/7")


def is_private(addr: IPAddress) -> bool:
    """Go's ``net.IP.IsPrivate``: RFC 1918 for IPv4, unique local fc00::/7 for IPv6."""
    if isinstance(addr, ipaddress.IPv4Address):
        return any(addr in net for net in _PRIVATE_V4)
    return addr in _PRIVATE_V6


def endpoint_family(mode: str, own: LeaseAttrs, peer: LeaseAttrs) -> int:
    """Which of a peer's public addresses a one-device tunnel sends to (4 or 6).

    ``ipv4``/``ipv6`` say it; ``auto`` follows upstream: IPv4 when the peer
    has no IPv6; else IPv4 when the peer's IPv4 is public (not RFC 1918) and
    we advertise an IPv4; else IPv6 when both ends' IPv6 are public (not
    unique local); else IPv4 (IPv6 if the peer has no IPv4 at all).  ``own``
    is our lease's attributes: the addresses we advertise.
    """
    if mode in ("ipv4", "ipv6"):
        return 4 if mode == "ipv4" else 6
    peer_v4, peer_v6 = _public(peer, 4), peer.public_ipv6
    if peer_v6 is None:
        return 4
    if peer_v4 is not None and not is_private(peer_v4) and _public(own, 4) is not None:
        return 4
    if not is_private(peer_v6) and own.public_ipv6 is not None and not is_private(
            own.public_ipv6):
        return 6
    return 4 if peer_v4 is not None else 6


def _public(attrs: LeaseAttrs, version: int) -> IPAddress | None:
    if version == 4:
        return attrs.public_ip if attrs.public_ip != UNSPECIFIED_V4 else None
    return attrs.public_ipv6


# --- peers and desired state ------------------------------------------------------------------


def wireguard_peers(
    own: Lease,
    own_public_key: bytes,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    options: WireguardOptions,
    tunnel: Tunnel | None = None,
) -> tuple[list[WgPeer], list[Skipped]]:
    """The peers to program on ``tunnel``'s device, and the skipped ones with reasons.

    ``tunnel`` defaults to the device carrying IPv4 (or the only one).  On
    top of :func:`backends.peers.usable_peers`, each family the device
    carries needs the peer's subnet and wireguard data (BackendData for
    IPv4, BackendV6Data for IPv6) with a valid key, and the endpoint needs
    the peer's public address of its family.  A family that fails is
    reported alone (prefixed ``IPv6:`` or ``IPv4:`` in a dual-stack
    cluster) while the peer's other families are still programmed.  A key
    nobody else (ourselves included) may use is checked per device.  A peer
    without a port (old upstream leases) is reached at the device's own
    listen port, as upstream does.
    """
    found, skipped, _ = screen_wireguard_peers(own, own_public_key, peers, networks, options,
                                               tunnel)
    return found, skipped


def screen_wireguard_peers(
    own: Lease,
    own_public_key: bytes,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    options: WireguardOptions,
    tunnel: Tunnel | None = None,
) -> tuple[list[WgPeer], list[Skipped], PeerIndex | None]:
    """:func:`wireguard_peers`, and the device's :class:`PeerIndex` (each peer holding its
    public key) when it skipped no peer."""
    versions = sorted({n.version for n in networks})
    device = tunnel or tunnels(options, versions)[0]
    carried = [v for v in versions if v in device.versions]
    usable, skipped, index = screen_peers(own, peers, networks, BACKEND_TYPE, [own_public_key])
    keys: dict[bytes, str] = {own_public_key: "ours"}
    tag = len(versions) > 1
    result: list[WgPeer] = []
    for peer in usable:
        found, reasons = _wg_peer(peer, own.attrs, options, device, carried, tag)
        if found is not None:
            owner = keys.get(found.public_key)
            if owner is None:
                keys[found.public_key] = f"by {peer.key}"
                result.append(found)
                index.add_tokens(peer.key, (found.public_key,))
            else:
                reasons = [f"PublicKey {key_b64(found.public_key)} is already used ({owner})"]
        if reasons:
            skipped.append(Skipped(peer.key, "; ".join(reasons)))
    return result, skipped, None if skipped else index


def merge_skipped(skipped: Iterable[Skipped]) -> list[Skipped]:
    """One entry per lease, its reasons from every device joined (a dual-stack peer may be
    refused on ``flannel-wg-v6`` only)."""
    reasons: dict[str, list[str]] = {}
    for skip in skipped:
        found = reasons.setdefault(skip.key, [])
        if skip.reason not in found:
            found.append(skip.reason)
    return [Skipped(key, "; ".join(texts)) for key, texts in reasons.items()]


def tunnel_peer(
    own: Lease, peer: Lease, networks: Sequence[IPNetwork], options: WireguardOptions,
    tunnel: Tunnel,
) -> tuple[WgPeer | None, list[str]]:
    """One lease's peer on ``tunnel``'s device alone (an event's view; the checks against
    the other peers are :class:`backends.peers.PeerIndex`'s), and why families were left out."""
    versions = sorted({n.version for n in networks})
    carried = [v for v in versions if v in tunnel.versions]
    return _wg_peer(peer, own.attrs, options, tunnel, carried, len(versions) > 1)


def plan_changes(observed: DeviceState, old: Sequence[WgPeer], new: Sequence[WgPeer]) -> PeerPlan:
    """The changes that replace the peers ``old`` by ``new`` on a device in state
    ``observed``, leaving every other peer as it is (an event's plan)."""
    keep = {p.public_key for p in new}
    remove = tuple(sorted(
        p.public_key for p in old if p.public_key not in keep and p.public_key in observed.peers
    ))
    put = tuple(sorted(
        (p for p in new if observed.peers.get(p.public_key) != p.state()),
        key=lambda p: p.public_key,
    ))
    return PeerPlan(remove=remove, put=put)


@dataclass(frozen=True, slots=True)
class _Family:
    """What a peer lease gives for one address family."""

    subnet: IPNetwork
    data: WireguardData


def _family(peer: Lease, version: int) -> _Family:
    """The peer's subnet and wireguard data of ``version``; PeerDataError if unusable."""
    if version == 4:
        if peer.subnet is None:
            raise PeerDataError("no IPv4 subnet")
        return _Family(peer.subnet, decode_backend_data(peer.attrs.backend_data))
    if peer.ipv6_subnet is None:
        raise PeerDataError("no IPv6 subnet")
    try:
        return _Family(peer.ipv6_subnet, decode_backend_data(peer.attrs.backend_v6_data))
    except PeerDataError as err:
        raise PeerDataError(f"BackendV6Data: {err}") from err


def _wg_peer(
    peer: Lease,
    own: LeaseAttrs,
    options: WireguardOptions,
    device: Tunnel,
    carried: Sequence[int],
    tag: bool,
) -> tuple[WgPeer | None, list[str]]:
    """The peer for ``device`` (None if no family is usable) and why families were left out."""
    families: dict[int, _Family] = {}
    reasons: list[str] = []
    for version in carried:
        try:
            families[version] = _family(peer, version)
        except PeerDataError as err:
            reasons.append(f"IPv{version}: {err}" if tag else str(err))
    if len(carried) == 1:
        via = carried[0]
    else:
        via = endpoint_family(options.mode, own, peer.attrs)
    address = _public(peer.attrs, via)
    if address is None:
        missing = f"no IPv{via} public address"
        reasons.append(f"IPv{via}: {missing}" if tag and len(carried) == 1 else missing)
        return None, reasons
    if not families:
        return None, reasons
    chosen = families.get(via)
    return WgPeer(
        lease_key=peer.key,
        # upstream: the IPv6 data's key wins where the peer has both
        public_key=(families[6] if 6 in families else families[4]).data.public_key,
        endpoint=(address, (chosen.data.port if chosen else None) or device.listen_port),
        allowed_ips=frozenset(f.subnet for f in families.values()),
        psk=options.psk,
        keepalive=options.keepalive,
    ), reasons


def device_address(subnet: IPNetwork) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A device's own address: our subnet's network address as a /32 (IPv6: /128)."""
    return ipaddress.ip_interface(f"{subnet.network_address}/{subnet.max_prefixlen}")


def plan_peers(
    observed: DeviceState,
    desired: Sequence[WgPeer],
    private_key: bytes,
    listen_port: int,
) -> PeerPlan:
    """The changes that make ``observed`` match ``desired``; falsy when they match.

    A peer whose key left the desired set is removed (so a rotated key
    replaces the old peer instead of adding a second one); a peer is
    rewritten only when a programmed field differs.
    """
    want = {p.public_key: p for p in desired}
    remove = tuple(sorted(k for k in observed.peers if k not in want))
    put = tuple(
        sorted(
            (p for k, p in want.items() if observed.peers.get(k) != p.state()),
            key=lambda p: p.public_key,
        )
    )
    configure = observed.private_key != private_key or observed.listen_port != listen_port
    return PeerPlan(configure_device=configure, remove=remove, put=put)


def apply_plan(observed: DeviceState, plan: PeerPlan, private_key: bytes, listen_port: int,
               ) -> DeviceState:
    """What a device becomes after ``plan`` (the model of a perfect driver)."""
    peers = {k: v for k, v in observed.peers.items() if k not in plan.remove}
    peers.update({p.public_key: p.state() for p in plan.put})
    if plan.configure_device:
        return DeviceState(private_key, listen_port, peers)
    return DeviceState(observed.private_key, observed.listen_port, peers)
