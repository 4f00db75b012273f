"""The udp backend: a TUN device and a userspace forwarder (debugging only, as upstream).

Kernel side: the TUN ``flannel0`` (no packet-info header) carries our
subnet's network address as a /32 and MTU external MTU - 28, and one route
(protocol 44) sends the whole Network into it.  :meth:`UdpNetwork.reconcile`
re-ensures device, address and route the way the other backends do
(desired state -> plan -> netlink) and swaps the forwarder's route table
{peer subnet -> peer public IP} in one assignment.  An event changes only
its peers' entries (and leaves the device to the full passes).

User side: two threads.  tun->udp reads a packet, routes it
(:func:`backends.udp_packet.outbound`) and sends it to the peer's public IP
at our port; udp->tun accepts datagrams from known peers only and writes
them to the TUN.  Buffers are preallocated; both file descriptors are
non-blocking and a thread only polls (with a self-pipe for shutdown) when
there is nothing to read.  Wire format and port (8285) are upstream's.

Two packet loops do that work.  The offload path (where the kernel has UDP
GSO and GRO) reads packets straight into a send buffer and sends runs of
them for one peer in one UDP GSO call, and reads GRO batches whose TCP
segments it writes back to the TUN merged into super-frames (virtio-net
GSO header); Python then runs per batch, the kernel per packet.  The plain
path makes one system call per packet each way.  ``ForwardStats.path``
says which one runs.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from backends.base import (
    ExternalInterface,
    KernelProbe,
    ReconcileReport,
    ipv4_network,
    summarize,
)
from backends.model import DataplaneState, Route, Skipped
from backends.netlink import LinkState, Netlink
from backends.peers import PeerEntries, PeerIndex, screen_peers
from backends.skiplog import SkipLog
from backends.udp_packet import (
    DEFAULT_PORT,
    ENCAP_OVERHEAD,
    PLAIN_VNET_HDR,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
    Datapath,
    Drop,
    ForwardStats,
    RouteTable,
    SockAddr,
    inbound,
    merge_tcp,
    net_unreachable,
    outbound,
    tcp_run,
)
from subnet.errors import ConfigError, DataplaneError, InterfaceError, LeaseError
from subnet.lease import UNSPECIFIED_V4, IPNetwork, Lease, LeaseAttrs
from subnet.manager import SubnetManager
from subnet.netconf import BackendConfig, NetConfig

log = logging.getLogger(__name__)

TUN_NAME = "flannel0"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_SEGMENTS = 64  # per GSO send (the kernel's UDP_MAX_SEGMENTS)
MAX_UDP_PAYLOAD = 65507
BUFFER_SIZE = 65535
# Offload path: room for a batch of 64 KB plus one more packet, and for a GRO read.
OFFLOAD_BUFFER = 1 << 17
SOCKET_BUFFER = 8 << 20
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
POLL_MS = 1000
JOIN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The TUN file descriptor, the bound UDP socket and the path they were set up for.

    On :attr:`Datapath.OFFLOAD` the TUN carries a virtio-net header on every
    packet (it offers no offloads itself, but takes GSO super-frames); the
    socket has UDP GRO on and takes UDP GSO sends.
    """

    tun_fd: int
    tun_name: str
    sock: socket.socket
    path: Datapath = Datapath.PLAIN

    def close(self) -> None:
        self.sock.close()
        os.close(self.tun_fd)


def open_endpoints(tun_name: str, bind: SockAddr, offload: bool = True) -> Endpoints:
    """Create the TUN and bind the UDP socket, in the calling thread's namespace.

    With ``offload`` the TUN and socket are set up for the offload path when
    the kernel supports every offload it needs, for the plain path otherwise
    (logged with the reason).  Also sets ``net.ipv4.conf.<tun>.accept_local``
    there (see :func:`_accept_local`).
    """
    sock = _bound_socket(bind)
    try:
        endpoints = _offload_endpoints(tun_name, sock) if offload else None
        if endpoints is None:
            fd, name = _open_tun(tun_name, 0)
            endpoints = Endpoints(fd, name, sock, Datapath.PLAIN)
    except DataplaneError:
        sock.close()
        raise
    _accept_local(endpoints.tun_name)
    log.info(
        "TUN %s opened, UDP socket bound to %s:%d, %s path",
        endpoints.tun_name, bind[0], bind[1], endpoints.path,
    )
    return endpoints


def _bound_socket(bind: SockAddr) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(bind)
    except OSError as err:
        sock.close()
        raise DataplaneError(
            f"cannot bind UDP {bind[0]}:{bind[1]}: {err.strerror}", err.errno
        ) from err
    return sock


def _open_tun(tun_name: str, flags: int) -> tuple[int, str]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise DataplaneError(f"cannot open /dev/net/tun: {err.strerror}", err.errno) from err
    try:
        answer = fcntl.ioctl(
            fd, TUNSETIFF, struct.pack("16sH", tun_name.encode(), IFF_TUN | IFF_NO_PI | flags)
        )
        os.set_blocking(fd, False)
    except OSError as err:
        os.close(fd)
        raise DataplaneError(f"cannot create TUN {tun_name}: {err.strerror}", err.errno) from err
    return fd, answer[:16].rstrip(b"\0").decode()


def _offload_endpoints(tun_name: str, sock: socket.socket) -> Endpoints | None:
    """The offload path's endpoints, or None (TUN closed again) where an offload is missing."""
    fd, name = _open_tun(tun_name, IFF_VNET_HDR)
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # accepted where GSO sends are
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        _grow_buffers(sock)
    except OSError as err:
        os.close(fd)
        log.warning(
            "udp offloads unavailable (%s): forwarding one packet per system call",
            err.strerror,
        )
        return None
    return Endpoints(fd, name, sock, Datapath.OFFLOAD)


def _grow_buffers(sock: socket.socket) -> None:
    """Room for bursts of 64 KB batches while a thread waits for the GIL or a NIC drains.

    A full send buffer makes a non-blocking send fail, and a full receive
    buffer drops a whole GRO batch.  Above ``net.core.[rw]mem_max`` only with
    CAP_NET_ADMIN (SO_*BUFFORCE), as flanneld has.
    """
    for forced, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _accept_local(name: str) -> None:
    """Let the kernel take packets from our own TUN address (the ICMP replies).

    Without ``accept_local`` the "net unreachable" we write back from the
    TUN's own address is dropped as a martian (upstream's replies are).
    """
    path = f"/proc/sys/net/ipv4/conf/{name}/accept_local"
    try:
        with open(path, "w", encoding="ascii") as sysctl:
            sysctl.write("1")
    except OSError as err:
        log.warning("cannot set %s (ICMP unreachable replies will be dropped): %s", path, err)


Opener = Callable[[str, SockAddr], Endpoints]


def parse_port(backend: BackendConfig) -> int:
    value = backend.option("Port")
    if value is None or value == 0:
        return DEFAULT_PORT
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"udp backend: Port must be an integer in [1, 65535], not {value!r}")
    return value


class Forwarder:
    """The two forwarding threads over one pair of endpoints."""

    def __init__(
        self, endpoints: Endpoints, tun_address: ipaddress.IPv4Address, stats: ForwardStats
    ):
        self.endpoints = endpoints
        self.table = RouteTable({}, DEFAULT_PORT)
        self.tun_address = tun_address
        self._stats = stats
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        offload = endpoints.path is Datapath.OFFLOAD
        stats.path = endpoints.path
        tx = self._tun_to_udp_offload if offload else self._tun_to_udp
        rx = self._udp_to_tun_offload if offload else self._udp_to_tun
        self._threads = [
            threading.Thread(target=self._guard, args=(tx,), name="udp-tx", daemon=True),
            threading.Thread(target=self._guard, args=(rx,), name="udp-rx", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Wake both threads, join them (bounded), close everything."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        for thread in self._threads:
            if thread.is_alive():
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():
                    log.error(
                        "forwarder thread %s did not stop in %.0fs", thread.name, JOIN_TIMEOUT
                    )
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.endpoints.close()

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except OSError as err:
            if not self._stopping:
                log.error("udp forwarder %s stopped: %s", threading.current_thread().name, err)

    def _wait(self, poller: select.poll) -> bool:
        """Block until readable or woken; False when stopping."""
        events = poller.poll(POLL_MS)
        return not (self._stopping or any(fd == self._wake_r for fd, _ in events))

    def _poller(self, fd: int) -> select.poll:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        return poller

    def _tun_to_udp(self) -> None:
        tun, sock, stats = self.endpoints.tun_fd, self.endpoints.sock, self._stats.tx
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        poller = self._poller(tun)
        while True:
            try:
                length = os.readv(tun, [buf])
            except BlockingIOError:
                if not self._wait(poller):
                    return
                continue
            verdict = outbound(buf, length, self.table)
            if isinstance(verdict, Drop):
                stats.dropped[verdict] += 1
                if verdict is Drop.NO_ROUTE:
                    self._reply_unreachable(buf, length)
                continue
            try:
                sock.sendto(view[:length], verdict)
            except OSError as err:
                if err.errno == errno.EBADF:
                    raise
                stats.dropped[Drop.SEND_FAILED] += 1
                continue
            stats.packets += 1
            stats.bytes += length

    def _udp_to_tun(self) -> None:
        tun, sock, stats = self.endpoints.tun_fd, self.endpoints.sock, self._stats.rx
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        poller = self._poller(sock.fileno())
        while True:
            try:
                length, sender = sock.recvfrom_into(buf)
            except BlockingIOError:
                if not self._wait(poller):
                    return
                continue
            except ConnectionError:
                continue
            verdict = inbound(buf, length, sender[0], self.table)
            if verdict is not None:
                stats.dropped[verdict] += 1
                continue
            try:
                os.write(tun, view[:length])
            except OSError as err:
                if err.errno in (errno.EBADF, errno.EBADFD):
                    raise
                stats.dropped[Drop.SEND_FAILED] += 1
                continue
            stats.packets += 1
            stats.bytes += length

    # --- the offload path: one UDP system call per batch -------------------------------------

    def _tun_to_udp_offload(self) -> None:
        """Read packets straight into a send buffer; one UDP GSO send per batch.

        A batch is a run of packets for one peer, all of one size but the last,
        which may be shorter (the UDP GSO rule), of at most 64 packets and one
        maximal UDP payload.  It goes out when the next packet does not fit
        it, and whenever the TUN has nothing more to read, so a lone packet
        waits for nothing.
        """
        tun, stats = self.endpoints.tun_fd, self._stats.tx
        vnet = bytearray(VNET_HDR_LEN)
        out = memoryview(bytearray(OFFLOAD_BUFFER))
        poller = self._poller(tun)
        start = pos = count = size = 0
        peer: SockAddr = ("", 0)
        last_read_at = len(out) - BUFFER_SIZE
        readv = os.readv  # per packet: spare the attribute lookups
        while True:
            if pos > last_read_at:
                if count:
                    self._send(out[start:pos], count, peer, size)
                start = pos = count = 0
            try:
                length = readv(tun, [vnet, out[pos : pos + BUFFER_SIZE]]) - VNET_HDR_LEN
            except BlockingIOError:
                if count:
                    self._send(out[start:pos], count, peer, size)
                    start = pos = count = 0
                if not self._wait(poller):
                    return
                continue
            if vnet[0] & VNET_F_NEEDS_CSUM or vnet[1]:
                stats.dropped[Drop.BAD_OFFLOAD] += 1  # the TUN offers no offloads
                continue
            packet = out[pos : pos + length]
            verdict = outbound(packet, length, self.table)
            if isinstance(verdict, Drop):
                stats.dropped[verdict] += 1
                if verdict is Drop.NO_ROUTE:
                    self._reply_unreachable(packet, length)
                continue
            if count and (
                verdict != peer
                or length > size
                or count == UDP_MAX_SEGMENTS
                or pos + length - start > MAX_UDP_PAYLOAD
            ):
                self._send(out[start:pos], count, peer, size)
                start, count = pos, 0
            if not count:
                peer, size = verdict, length
            pos += length
            count += 1
            if length < size:
                self._send(out[start:pos], count, peer, size)
                start, count = pos, 0

    def _send(self, data: memoryview, count: int, peer: SockAddr, size: int) -> None:
        """Send ``count`` packets of ``size`` bytes (the last may be shorter) in one call."""
        stats = self._stats.tx
        try:
            if count == 1:
                self.endpoints.sock.sendto(data, peer)
            else:
                gso = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
                self.endpoints.sock.sendmsg([data], gso, 0, peer)
                stats.batches += 1
        except OSError as err:
            if err.errno == errno.EBADF:
                raise
            stats.dropped[Drop.SEND_FAILED] += count
            return
        stats.packets += count
        stats.bytes += len(data)

    def _udp_to_tun_offload(self) -> None:
        """Read a UDP GRO batch; write runs of one TCP flow as one super-frame each."""
        sock, stats = self.endpoints.sock, self._stats.rx
        buf = memoryview(bytearray(OFFLOAD_BUFFER))
        ancillary = socket.CMSG_SPACE(4)
        poller = self._poller(sock.fileno())
        while True:
            try:
                length, cmsgs, _, sender = sock.recvmsg_into([buf], ancillary)
            except BlockingIOError:
                if not self._wait(poller):
                    return
                continue
            except ConnectionError:
                continue
            size = gro_size(cmsgs, length)
            table = self.table
            if not table.knows_source(sender[0]):
                stats.dropped[Drop.UNKNOWN_SENDER] += -(-length // size) or 1
                continue
            if not length:
                stats.dropped[Drop.NOT_IPV4] += 1
                continue
            first = 0
            while first * size < length:
                count = tcp_run(buf, size, length, first)
                start = first * size
                packet = buf[start : min(start + size, length)]
                verdict = inbound(packet, len(packet), sender[0], table)
                if verdict is not None:
                    stats.dropped[verdict] += count
                elif count == 1:
                    self._write([PLAIN_VNET_HDR, packet], 1)
                else:
                    stats.batches += 1
                    self._write(merge_tcp(buf, size, length, first, count), count)
                first += count

    def _write(self, parts: list[bytes | bytearray | memoryview], count: int) -> None:
        stats = self._stats.rx
        try:
            written = os.writev(self.endpoints.tun_fd, parts)
        except OSError as err:
            if err.errno in (errno.EBADF, errno.EBADFD):
                raise
            stats.dropped[Drop.SEND_FAILED] += count
            return
        stats.packets += count
        stats.bytes += written - VNET_HDR_LEN

    def _reply_unreachable(self, buf: bytearray | memoryview, length: int) -> None:
        reply = net_unreachable(buf, length, self.tun_address)
        if reply is not None:
            parts = [reply]
            if self.endpoints.path is Datapath.OFFLOAD:
                parts.insert(0, PLAIN_VNET_HDR)
            try:
                os.writev(self.endpoints.tun_fd, parts)
            except (BlockingIOError, InterruptedError):
                pass


def gro_size(cmsgs: list[tuple[int, int, bytes]], length: int) -> int:
    """The datagram size of a UDP GRO batch (``length`` when the read holds one datagram).

    Never 0: an empty datagram counts as one of size 1.
    """
    for level, kind, data in cmsgs:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            size = int.from_bytes(data[:4], sys.byteorder)
            if 0 < size < length:
                return size
    return length or 1


class UdpBackend:
    """Builds the udp :class:`UdpNetwork`; owns the forwarder across re-registrations.

    ``opener`` creates the TUN and socket (the default works in the calling
    thread's namespace; tests wrap it to open them elsewhere).
    """

    def __init__(
        self,
        ext: ExternalInterface,
        netlink: Netlink,
        backend_config: BackendConfig,
        opener: Opener = open_endpoints,
    ) -> None:
        self._ext = ext
        self._netlink = netlink
        self._port = parse_port(backend_config)
        self._opener = opener
        self.stats = ForwardStats()
        self._forwarder: Forwarder | None = None

    def register_network(self, manager: SubnetManager, config: NetConfig) -> UdpNetwork:
        cluster_network = ipv4_network(config, "udp")
        if self._ext.ext_addr is None or self._ext.iface_addr is None:
            raise InterfaceError(f"interface {self._ext.name} has no IPv4 address")
        lease = manager.acquire_lease(LeaseAttrs(public_ip=self._ext.ext_addr))
        if lease.subnet is None:
            raise LeaseError(f"lease {lease.key} has no IPv4 subnet")
        network = UdpNetwork(self, lease, cluster_network)
        network.reconcile([])
        return network

    # --- what UdpNetwork uses ---------------------------------------------------------

    @property
    def netlink(self) -> Netlink:
        return self._netlink

    @property
    def port(self) -> int:
        return self._port

    @property
    def device_mtu(self) -> int:
        return self._ext.mtu - ENCAP_OVERHEAD

    def forwarder(self, tun_address: ipaddress.IPv4Address, fresh: bool) -> Forwarder:
        """The running forwarder (a new one, over new endpoints, when ``fresh``)."""
        if self._forwarder is not None and fresh:
            self._forwarder.stop()
            self._forwarder = None
        if self._forwarder is None:
            if self._ext.iface_addr is None:
                raise InterfaceError(f"interface {self._ext.name} has no IPv4 address")
            endpoints = self._opener(TUN_NAME, (str(self._ext.iface_addr), self._port))
            self._forwarder = Forwarder(endpoints, tun_address, self.stats)
            self._forwarder.start()
        self._forwarder.tun_address = tun_address
        return self._forwarder

    def stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None


class UdpNetwork:
    """Our lease, flannel0, its route and the forwarder's route table."""

    def __init__(self, backend: UdpBackend, lease: Lease, network: ipaddress.IPv4Network) -> None:
        if lease.subnet is None:
            raise ValueError("a udp network needs an IPv4 lease")
        self._backend = backend
        self._lease = lease
        self._network = network
        self._address = ipaddress.IPv4Interface(f"{lease.subnet.network_address}/32")
        self._skips = SkipLog(log)
        self._routes: PeerEntries[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]] = (
            PeerEntries()
        )
        self._device: tuple[Forwarder, LinkState] | None = None  # as the last full pass left it

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return self._backend.device_mtu

    @property
    def forward_stats(self) -> ForwardStats | None:
        return self._backend.stats

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        netlink = self._backend.netlink
        if full or self._device is None:
            forwarder, link, recreated = self._ensure_device()
            self._device = forwarder, link
        else:
            (forwarder, link), recreated = self._device, False
        delta = None
        if changes is not None and not recreated:
            delta = self._routes.change(changes, _table_entry)
        skipped: Sequence[Skipped] = ()
        if delta is None:
            skipped = self._compute_all(peers)
            forwarder.table = RouteTable(dict(self._routes.all()), self._backend.port)
        elif delta[0] or delta[1]:
            forwarder.table = forwarder.table.changed((s for s, _ in delta[0]), dict(delta[1]))
        desired = DataplaneState(frozenset({Route(self._network, None, link.index)}))
        result = netlink.sync(desired, [], [socket.AF_INET], fresh=full or recreated)
        return summarize(
            result.applied, result.failed, skipped=skipped, peers=len(self._routes),
            device_recreated=recreated,
        )

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """None: a full pass here reads one route and the TUN, cheap on the loop thread."""
        return None

    def _compute_all(self, peers: Sequence[Lease]) -> list[Skipped]:
        usable, skipped, index = screen_udp_peers(self._lease, peers, [self._network])
        self._skips.report(skipped)
        self._routes.reset(
            index, {p.key: [(p.subnet, p.attrs.public_ip)] for p in usable if p.subnet is not None}
        )
        return skipped

    def close(self) -> None:
        """Stop the forwarder; the TUN (and with it the route) disappears, as upstream."""
        self._backend.stop()

    def _ensure_device(self) -> tuple[Forwarder, LinkState, bool]:
        netlink = self._backend.netlink
        forwarder = self._backend.forwarder(self._address.ip, fresh=False)
        link = netlink.link(forwarder.endpoints.tun_name)
        recreated = link is None
        if link is None:
            log.warning("TUN %s is gone; reopening it", forwarder.endpoints.tun_name)
            forwarder = self._backend.forwarder(self._address.ip, fresh=True)
            link = netlink.link(forwarder.endpoints.tun_name)
            if link is None:
                raise DataplaneError(
                    f"TUN {forwarder.endpoints.tun_name} vanished after it was opened"
                )
        mtu = self._backend.device_mtu
        netlink.set_link(
            link.index, mtu=None if link.mtu == mtu else mtu, up=None if link.up else True
        )
        netlink.sync_addresses(link.index, [self._address], [self._network])
        return forwarder, link, recreated


def _table_entry(
    lease: Lease,
) -> tuple[list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]], tuple[()]] | None:
    """The forwarder's table entry of one peer, None if it has no IPv4 subnet and address."""
    if lease.subnet is None or lease.attrs.public_ip == UNSPECIFIED_V4:
        return None
    return [(lease.subnet, lease.attrs.public_ip)], ()


def udp_peers(
    own: Lease, peers: Sequence[Lease], networks: Sequence[IPNetwork]
) -> tuple[list[Lease], list[Skipped]]:
    """Peers of any backend type (as upstream) with an IPv4 subnet and public address."""
    found, skipped, _ = screen_udp_peers(own, peers, networks)
    return found, skipped


def screen_udp_peers(
    own: Lease, peers: Sequence[Lease], networks: Sequence[IPNetwork]
) -> tuple[list[Lease], list[Skipped], PeerIndex | None]:
    """:func:`udp_peers`, and the pass's :class:`PeerIndex` when it skipped no peer."""
    usable, skipped, index = screen_peers(own, peers, networks, None)
    result = []
    for peer in usable:
        if peer.subnet is None or peer.attrs.public_ip == UNSPECIFIED_V4:
            skipped.append(Skipped(peer.key, "no IPv4 subnet and public address"))
            continue
        result.append(peer)
    return result, skipped, None if skipped else index
