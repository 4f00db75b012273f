"""Active probes for the doctor: ICMP echoes through the overlay and the underlay.

Diagnostics only, never the data path; plain sockets, no scapy.  Per peer,
all at once and bounded by one deadline:

* an echo to the peer's overlay address (small), and one of the overlay MTU
  with the don't-fragment bit set (path MTU);
* an echo to the peer's public IP (is the underlay path up?);
* a datagram to the peer's encapsulation port: an ICMP port-unreachable
  answer means nothing listens there (flanneld or its device is gone);
* meanwhile a packet capture on the underlay device records which peers'
  encapsulated packets arrived and to which peers ours left, so a local
  firewall drop is told apart from one on the path.

One raw ICMP socket receives every answer; everything runs in one select
loop, so ten peers cost no more time than one.  Needs CAP_NET_RAW (root);
without it the probes are skipped and the report says so.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from flanneld.doctor.model import PeerProbe, ProbeTarget, ProbeView

ICMP_ECHO_REPLY = 0
ICMP_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_ECHO = 8
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
ETH_P_ALL = 0x0003  # a tap of one protocol would miss outgoing packets
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
IP_UDP_HEADERS = 28
SMALL_PAYLOAD = 56
RESEND_EVERY = 0.3
PORT_PROBE = b"\x00" * 8  # not a valid VXLAN or udp-backend packet: the peer drops it


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload_len: int) -> bytes:
    payload = bytes(i & 0xFF for i in range(payload_len))
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(header + payload), ident, seq) + payload


@dataclass(frozen=True, slots=True)
class IcmpEvent:
    """An ICMP packet that answers one of our echoes: a reply or an error about it."""

    kind: str  # "reply", "frag", "unreach"
    ident: int
    seq: int
    source: str
    mtu: int = 0


def parse_icmp(packet: bytes) -> IcmpEvent | None:
    """Decode an IPv4 packet from a raw ICMP socket into an event about our echoes."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    source = str(ipaddress.IPv4Address(packet[12:16]))
    icmp = packet[ihl:]
    if len(icmp) < 8:
        return None
    kind, code = icmp[0], icmp[1]
    if kind == ICMP_ECHO_REPLY:
        ident, seq = struct.unpack("!HH", icmp[4:8])
        return IcmpEvent("reply", ident, seq, source)
    if kind == ICMP_UNREACH:
        inner = icmp[8:]
        if len(inner) < 20:
            return None
        inner_ihl = (inner[0] & 0x0F) * 4
        quoted = inner[inner_ihl:]
        if len(quoted) < 8 or inner[9] != socket.IPPROTO_ICMP or quoted[0] != ICMP_ECHO:
            return None
        ident, seq = struct.unpack("!HH", quoted[4:8])
        mtu = struct.unpack("!H", icmp[6:8])[0]
        return IcmpEvent("frag" if code == ICMP_FRAG_NEEDED else "unreach", ident, seq, source,
                         mtu)
    return None


@dataclass(frozen=True, slots=True)
class EncapPacket:
    """An encapsulated packet seen on the underlay: direction and the peer's address."""

    outgoing: bool
    peer: str


def parse_encap(frame: bytes, outgoing: bool, port: int) -> EncapPacket | None:
    """A UDP packet to ``port`` carrying a payload (our zero-filled probe does not count)."""
    if len(frame) < 20 or frame[0] >> 4 != 4 or frame[9] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[0] & 0x0F) * 4
    udp = frame[ihl:]
    if len(udp) < 9 or struct.unpack("!H", udp[2:4])[0] != port or udp[8] == 0:
        return None
    peer = frame[16:20] if outgoing else frame[12:16]
    return EncapPacket(outgoing, str(ipaddress.IPv4Address(peer)))


@dataclass(slots=True)
class _Peer:
    """Mutable probe state of one peer while the loop runs."""

    target: ProbeTarget
    result: PeerProbe
    port_sock: socket.socket | None = None
    seqs: dict[int, str] = field(default_factory=dict)  # echo seq -> "overlay"/"df"/"underlay"
    started: float = 0.0

    def resolved(self) -> bool:
        r = self.result
        return bool(r.overlay_ok) and r.overlay_df_ok is not None and r.underlay_ok is not None


class _Run:
    """One probe run: sockets, the peers' states, the select loop."""

    def __init__(self, targets: Sequence[ProbeTarget], underlay: str | None) -> None:
        self.ident = os.getpid() & 0xFFFF
        self.plain = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.df = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.df.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        self.capture: socket.socket | None = None
        self.capture_error = ""
        if underlay and any(t.encap_port for t in targets):
            try:
                self.capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                                             socket.htons(ETH_P_ALL))
                self.capture.bind((underlay, ETH_P_ALL))
            except OSError as err:
                self.capture_error = f"no underlay capture ({err.strerror or err})"
                self.capture = None
        self.peers = [_Peer(t, PeerProbe(t.key)) for t in targets]
        self.by_seq: dict[int, _Peer] = {}
        self.by_public = {str(p.target.public_ip): p for p in self.peers}
        self.next_seq = 1

    def close(self) -> None:
        for sock in (self.plain, self.df, self.capture, *(p.port_sock for p in self.peers)):
            if sock is not None:
                sock.close()

    def send_all(self) -> None:
        for peer in self.peers:
            if peer.resolved():
                continue
            t, r = peer.target, peer.result
            if not r.overlay_ok:
                self._echo(peer, "overlay", t.overlay, SMALL_PAYLOAD, self.plain)
            if r.overlay_df_ok is None:
                self._echo(peer, "df", t.overlay, t.overlay_mtu - IP_UDP_HEADERS, self.df)
            if not r.underlay_ok:
                self._echo(peer, "underlay", t.public_ip, SMALL_PAYLOAD, self.plain)
            if t.encap_port and peer.port_sock is None:
                peer.port_sock = _port_probe(t)

    def _echo(self, peer: _Peer, what: str, dst: ipaddress.IPv4Address, size: int,
              sock: socket.socket) -> None:
        seq = self.next_seq
        self.next_seq = (self.next_seq + 1) & 0xFFFF
        self.by_seq[seq] = peer
        peer.seqs[seq] = what
        if what == "overlay" and not peer.started:
            peer.started = time.monotonic()
        try:
            sock.sendto(echo_request(self.ident, seq, max(size, 8)), (str(dst), 0))
        except OSError as err:
            if what == "df" and err.errno == errno.EMSGSIZE:
                peer.result = replace(peer.result, overlay_df_ok=False,
                                      df_error=f"a local route's MTU is below "
                                               f"{peer.target.overlay_mtu}")

    def on_icmp(self, event: IcmpEvent) -> None:
        peer = self.by_seq.get(event.seq) if event.ident == self.ident else None
        if peer is None:
            return
        what = peer.seqs.get(event.seq, "")
        r = peer.result
        if event.kind == "reply":
            if what == "overlay" and not r.overlay_ok:
                rtt = (time.monotonic() - peer.started) * 1000 if peer.started else None
                peer.result = replace(r, overlay_ok=True, rtt_ms=rtt)
            elif what == "df":
                peer.result = replace(r, overlay_df_ok=True)
            elif what == "underlay":
                peer.result = replace(r, underlay_ok=True)
        elif event.kind == "frag" and what == "df":
            peer.result = replace(r, overlay_df_ok=False,
                                  df_error=f"{event.source} needs fragmentation, MTU {event.mtu}")

    def on_encap(self, packet: EncapPacket) -> None:
        peer = self.by_public.get(packet.peer)
        if peer is None:
            return
        if packet.outgoing:
            peer.result = replace(peer.result, encap_sent=True)
        else:
            peer.result = replace(peer.result, encap_received=True)

    def on_port(self, peer: _Peer) -> None:
        assert peer.port_sock is not None
        try:
            peer.port_sock.recv(64)
        except ConnectionRefusedError:
            peer.result = replace(peer.result, port_refused=True)
        except OSError:
            pass

    def finish(self) -> ProbeView:
        results = []
        for peer in self.peers:
            r = peer.result
            r = replace(
                r,
                overlay_ok=bool(r.overlay_ok),
                overlay_df_ok=bool(r.overlay_df_ok),
                underlay_ok=bool(r.underlay_ok),
                port_refused=bool(r.port_refused) if peer.target.encap_port else None,
                encap_sent=bool(r.encap_sent) if self.capture else None,
                encap_received=bool(r.encap_received) if self.capture else None,
            )
            results.append(r)
        return ProbeView(tuple(results), self.capture_error, capture=self.capture is not None)


def _port_probe(target: ProbeTarget) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((str(target.public_ip), target.encap_port))
        sock.send(PORT_PROBE)
    except OSError:
        sock.close()
        return None
    return sock


def run_probes(targets: Sequence[ProbeTarget], underlay: str | None, timeout: float) -> ProbeView:
    """Probe every target at once until all answered or ``timeout`` seconds passed."""
    if not targets:
        return ProbeView(skipped="no peers to probe")
    try:
        run = _Run(targets, underlay)
    except PermissionError:
        return ProbeView(skipped="active probes need root (CAP_NET_RAW): skipped")
    try:
        _loop(run, timeout)
        return run.finish()
    finally:
        run.close()


def _loop(run: _Run, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline or all(p.resolved() for p in run.peers):
            return
        if now >= next_send:
            run.send_all()
            next_send = now + RESEND_EVERY
        ports = {p.port_sock: p for p in run.peers if p.port_sock is not None}
        readable = [run.plain, *ports]
        if run.capture is not None:
            readable.append(run.capture)
        ready, _, _ = select.select(readable, [], [], max(0.0, min(next_send, deadline) - now))
        for sock in ready:
            if sock is run.plain:
                event = parse_icmp(run.plain.recv(65535))
                if event is not None:
                    run.on_icmp(event)
            elif sock is run.capture:
                frame, addr = run.capture.recvfrom(65535)
                packet = None
                if addr[1] == ETH_P_IP:
                    packet = parse_encap(frame, addr[2] == PACKET_OUTGOING,
                                         next(p.target.encap_port for p in run.peers))
                if packet is not None:
                    run.on_encap(packet)
            else:
                run.on_port(ports[sock])
