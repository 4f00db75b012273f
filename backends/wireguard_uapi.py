"""WireGuard's cross-platform userspace API (UAPI): the text protocol on wireguard-go's socket.

A request is ``get=1`` or ``set=1`` followed by ``key=value`` lines and an
empty line; the answer ends with ``errno=N`` and an empty line (wireguard-go
reports failures as ``errno=-N``).  Keys are lower-case hex here.  A failed
``set`` may have applied part of the request, so every request gets its own
connection and a failure is answered by reading the device back.

The encoders and the decoder are pure; :class:`UapiClient` is the socket.
"""

from __future__ import annotations

import ipaddress
import socket

from backends.wireguard_state import KEY_LEN, DeviceState, PeerPlan, PeerState, WgPeer
from subnet.errors import DataplaneError
from subnet.lease import IPAddress

ZERO_KEY = bytes(KEY_LEN)
TIMEOUT = 10.0
MAX_ANSWER = 64 << 20


def encode_set(plan: PeerPlan, private_key: bytes, listen_port: int) -> bytes:
    """The ``set=1`` request that applies ``plan`` (device keys first, then removals, then peers)."""
    lines = ["set=1"]
    if plan.configure_device:
        lines.append(f"private_key={private_key.hex()}")
        lines.append(f"listen_port={listen_port}")
    for key in plan.remove:
        lines.append(f"public_key={key.hex()}")
        lines.append("remove=true")
    for peer in plan.put:
        lines.extend(_peer_lines(peer))
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _peer_lines(peer: WgPeer) -> list[str]:
    addr, port = peer.endpoint
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    lines = [
        f"public_key={peer.public_key.hex()}",
        f"preshared_key={(peer.psk or ZERO_KEY).hex()}",
        f"endpoint={host}:{port}",
        f"persistent_keepalive_interval={peer.keepalive}",
        "replace_allowed_ips=true",
    ]
    lines.extend(f"allowed_ip={net}" for net in sorted(peer.allowed_ips, key=str))
    return lines


GET_REQUEST = b"get=1\n\n"


class UapiError(DataplaneError):
    """wireguard-go answered with a non-zero errno, or the socket failed."""


def decode_get(text: str) -> DeviceState:
    """The device as a ``get=1`` answer describes it; UapiError for a non-zero errno."""
    private_key: bytes | None = None
    listen_port = 0
    peers: dict[bytes, PeerState] = {}
    current: bytes | None = None
    fields: dict[str, object] = {}

    def close_peer() -> None:
        if current is not None:
            peers[current] = _peer_state(fields)

    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"malformed UAPI line {line[:40]!r}")
        if key == "errno":
            check_errno(value)
        elif key == "public_key":
            close_peer()
            current, fields = _hex_key(value), {"allowed": set()}
        elif current is None:
            if key == "private_key":
                private_key = _hex_key(value)
            elif key == "listen_port":
                listen_port = int(value)
        elif key == "allowed_ip":
            allowed = fields["allowed"]
            assert isinstance(allowed, set)
            allowed.add(ipaddress.ip_network(value, strict=False))
        else:
            fields[key] = value
    close_peer()
    return DeviceState(private_key if private_key != ZERO_KEY else None, listen_port, peers)


def _peer_state(fields: dict[str, object]) -> PeerState:
    psk_text = fields.get("preshared_key")
    psk = _hex_key(str(psk_text)) if psk_text else None
    allowed = fields["allowed"]
    assert isinstance(allowed, set)
    return PeerState(
        endpoint=_endpoint(str(fields["endpoint"])) if "endpoint" in fields else None,
        allowed_ips=frozenset(allowed),
        psk=None if psk == ZERO_KEY else psk,
        keepalive=int(str(fields.get("persistent_keepalive_interval", "0"))),
    )


def _endpoint(text: str) -> tuple[IPAddress, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def _hex_key(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != KEY_LEN:
        raise UapiError(f"UAPI key of {len(raw)} bytes")
    return raw


def check_errno(value: str) -> None:
    """UapiError unless the answer's errno is 0 (wireguard-go sends it negated)."""
    code = abs(int(value))
    if code:
        raise UapiError(f"wireguard-go refused the request (errno {code})", code)


class UapiClient:
    """Requests on the control socket at ``path``, one connection each."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.path = path
        self._timeout = timeout

    def get(self) -> DeviceState:
        return decode_get(self._exchange(GET_REQUEST))

    def listening(self) -> bool:
        """Whether something accepts connections on the socket (no request is sent)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(self.path)
        except OSError:
            return False
        return True

    def set(self, request: bytes) -> None:
        answer = self._exchange(request)
        for line in answer.splitlines():
            if line.startswith("errno="):
                check_errno(line[len("errno="):])
                return
        raise UapiError("wireguard-go's answer has no errno line")

    def _exchange(self, request: bytes) -> str:
        """Send ``request``, read until the empty line that ends the answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(self.path)
                sock.sendall(request)
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_ANSWER:
                        raise UapiError(f"UAPI answer on {self.path} is too long")
                    if b"".join(chunks[-2:]).endswith(b"\n\n"):
                        break
        except OSError as err:
            raise UapiError(f"UAPI socket {self.path}: {err.strerror or err}", err.errno) from err
        return b"".join(chunks).decode("ascii", errors="replace")
