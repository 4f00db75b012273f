"""The udp backend: a TUN device and a userspace forwarder (debugging only, as upstream).

Kernel side: the TUN ``flannel0`` (no packet-info header) carries our
subnet's network address as a /32 and MTU external MTU - 28, and one route
(protocol 44) sends the whole Network into it.  :meth:`UdpNetwork.reconcile`
re-ensures device, address and route the way the other backends do
(desired state -> plan -> netlink) and swaps the forwarder's route table
{peer subnet -> peer public IP} in one assignment.

User side: two threads.  tun->udp reads a packet, routes it
(:func:`backends.udp_packet.outbound`) and sends it to the peer's public IP
at our port; udp->tun accepts datagrams from known peers only and writes
them to the TUN.  Buffers are preallocated; both file descriptors are
non-blocking and a thread only polls (with a self-pipe for shutdown) when
there is nothing to read.  Wire format and port (8285) are upstream's.
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
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from backends.base import ExternalInterface, ReconcileReport, summarize
from backends.model import DataplaneState, Route, Skipped
from backends.netlink import LinkState, Netlink
from backends.peers import usable_peers
from backends.skiplog import SkipLog
from backends.udp_packet import (
    DEFAULT_PORT,
    ENCAP_OVERHEAD,
    Drop,
    ForwardStats,
    RouteTable,
    SockAddr,
    inbound,
    net_unreachable,
    outbound,
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
BUFFER_SIZE = 65535
POLL_MS = 1000
JOIN_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The TUN file descriptor and the bound UDP socket."""

    tun_fd: int
    tun_name: str
    sock: socket.socket

    def close(self) -> None:
        self.sock.close()
        os.close(self.tun_fd)


def open_endpoints(tun_name: str, bind: SockAddr) -> Endpoints:
    """Create the TUN and bind the UDP socket, in the calling thread's namespace.

    Also sets ``net.ipv4.conf.<tun>.accept_local`` there (see :func:`_accept_local`).
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise DataplaneError(f"cannot open /dev/net/tun: {err.strerror}", err.errno) from err
    try:
        answer = fcntl.ioctl(
            fd, TUNSETIFF, struct.pack("16sH", tun_name.encode(), IFF_TUN | IFF_NO_PI)
        )
        name = answer[:16].rstrip(b"\0").decode()
        os.set_blocking(fd, False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as err:
        os.close(fd)
        raise DataplaneError(f"cannot create TUN {tun_name}: {err.strerror}", err.errno) from err
    try:
        sock.setblocking(False)
        sock.bind(bind)
    except OSError as err:
        sock.close()
        os.close(fd)
        raise DataplaneError(
            f"cannot bind UDP {bind[0]}:{bind[1]}: {err.strerror}", err.errno
        ) from err
    _accept_local(name)
    log.info("TUN %s opened, UDP socket bound to %s:%d", name, bind[0], bind[1])
    return Endpoints(fd, name, sock)


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
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._tun_to_udp,), name="udp-tx", daemon=True
            ),
            threading.Thread(
                target=self._guard, args=(self._udp_to_tun,), name="udp-rx", daemon=True
            ),
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

    def _reply_unreachable(self, buf: bytearray, length: int) -> None:
        reply = net_unreachable(buf, length, self.tun_address)
        if reply is not None:
            try:
                os.write(self.endpoints.tun_fd, reply)
            except (BlockingIOError, InterruptedError):
                pass


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
        if config.enable_ipv6:
            raise ConfigError("the udp backend supports IPv4 only")
        if config.network is None or not config.enable_ipv4:
            raise ConfigError("the udp backend needs an IPv4 Network")
        if self._ext.ext_addr is None or self._ext.iface_addr is None:
            raise InterfaceError(f"interface {self._ext.name} has no IPv4 address")
        lease = manager.acquire_lease(LeaseAttrs(public_ip=self._ext.ext_addr))
        if lease.subnet is None:
            raise LeaseError(f"lease {lease.key} has no IPv4 subnet")
        network = UdpNetwork(self, lease, config.network)
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
    ) -> ReconcileReport:
        netlink = self._backend.netlink
        forwarder, link, recreated = self._ensure_device()
        usable, skipped = udp_peers(self._lease, peers, [self._network])
        self._skips.report(skipped)
        forwarder.table = RouteTable(
            {p.subnet: p.attrs.public_ip for p in usable if p.subnet is not None},
            self._backend.port,
        )
        desired = DataplaneState(frozenset({Route(self._network, None, link.index)}))
        result = netlink.sync(desired, [], [socket.AF_INET], fresh=full or recreated)
        return summarize(
            result.applied, result.failed, skipped=skipped, peers=len(usable),
            device_recreated=recreated,
        )

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


def udp_peers(
    own: Lease, peers: Sequence[Lease], networks: Sequence[IPNetwork]
) -> tuple[list[Lease], list[Skipped]]:
    """Peers of any backend type (as upstream) with an IPv4 subnet and public address."""
    usable, skipped = usable_peers(own, peers, networks, None)
    result = []
    for peer in usable:
        if peer.subnet is None or peer.attrs.public_ip == UNSPECIFIED_V4:
            skipped.append(Skipped(peer.key, "no IPv4 subnet and public address"))
            continue
        result.append(peer)
    return result, skipped
