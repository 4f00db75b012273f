"""The wireguard backend: encrypted pod traffic through ``flannel-wg``, kernel or userspace.

Design: like vxlan, one path serves every event and every resync tick.
:meth:`WireguardNetwork.reconcile` makes sure the device exists (the
driver recreates it, or restarts wireguard-go, when it is gone), gives it
our MTU, address and route, computes the desired peers from the leases
(pure, :mod:`backends.wireguard_state`), reads the device's peers back and
applies only the difference (an event writes only its own peers, planned
against what the last pass left).  So a peer whose lease is gone is removed, a
rotated key replaces the old peer, a restart changes nothing, and a device
lost to a crash comes back with the same key and every peer.

Two drivers sit behind one seam (:class:`WgDriver`): the kernel module
through generic netlink (:class:`backends.netlink.WireGuardKernel`), and
``wireguard-go`` through its UAPI socket (:class:`backends.wireguard_go.WireguardGo`).
``Driver: auto`` (the default) probes the kernel once by adding the link and
falls back to wireguard-go when the kernel has no module.

Unlike upstream, the device is neither deleted at start-up nor at shutdown:
a flanneld restart keeps pod traffic flowing.  Only IPv4 is wired up for now
(``flannel-wg-v6`` and the dual-stack modes wait for the dual-stack work).
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from backends.base import ExternalInterface, KernelProbe, ReconcileReport, ipv4_network
from backends.model import DataplaneState, Route, Skipped
from backends.netlink import ApplyResult, LinkState, Netlink, WireGuardKernel
from backends.peers import PeerEntries, PeerIndex
from backends.plan import Delete, Put
from backends.skiplog import SkipLog
from backends.udp_packet import ForwardStats
from backends.wireguard_go import WireguardGo, find_binary
from backends.wireguard_state import (
    BACKEND_TYPE,
    DEFAULT_KEY_FILE,
    DEVICE,
    KEY_FILE_ENV,
    KEY_LEN,
    DeviceState,
    PeerPlan,
    WgPeer,
    WireguardOptions,
    apply_plan,
    clamp,
    device_address,
    encode_backend_data,
    key_b64,
    parse_options,
    plan_changes,
    plan_peers,
    public_key,
    wg_peer,
    wireguard_peers,
)
from subnet.errors import ConfigError, DataplaneError, InterfaceError, LeaseError, PeerDataError
from subnet.lease import IPNetwork, Lease, LeaseAttrs
from subnet.manager import SubnetManager
from subnet.netconf import BackendConfig, NetConfig

log = logging.getLogger(__name__)

NO_MODULE = frozenset({errno.EOPNOTSUPP, errno.ENOENT})


class WgDriver(Protocol):
    """How a WireGuard device is created and programmed."""

    name: str

    def ensure_device(self) -> bool:
        """Make the device exist; True when it was (re)created and needs everything again."""
        ...

    def read(self) -> DeviceState:
        ...

    def apply(self, plan: PeerPlan, private_key: bytes, listen_port: int) -> None:
        ...

    def close(self) -> None:
        ...


# --- the key file ----------------------------------------------------------------------------


def key_file_path(environ: Mapping[str, str]) -> str:
    return environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE


def load_or_create_key(path: str, random: Callable[[int], bytes] = os.urandom) -> bytes:
    """Our private key from ``path`` (base64, as upstream and ``wg genkey`` write it).

    Created with mode 0400 when absent.  A file that group or others can
    read, that cannot be read, or that holds no key is a ConfigError naming
    the fix.  The key itself never appears in a message.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return _create_key(path, random)
    except OSError as err:
        raise ConfigError(f"cannot read WireGuard key file {path}: {err.strerror}") from err
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"WireGuard key file {path} is not a regular file: remove it or set "
                          f"{KEY_FILE_ENV} to another path")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"WireGuard key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be "
            f"readable by its owner only: chmod 400 {path}"
        )
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError as err:
        raise ConfigError(f"cannot read WireGuard key file {path}: {err.strerror}") from err
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_LEN:
        raise ConfigError(
            f"WireGuard key file {path} holds no private key (base64 of 32 bytes, as `wg genkey` "
            "prints): fix it, or delete it and flanneld makes a new one (peers learn the new "
            "public key from the lease)"
        )
    return raw


def _create_key(path: str, random: Callable[[int], bytes]) -> bytes:
    key = clamp(random(KEY_LEN))
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key_b64(key))
    except OSError as err:
        raise ConfigError(f"cannot create WireGuard key file {path}: {err.strerror} "
                          f"(set {KEY_FILE_ENV} to a writable path)") from err
    log.info("created WireGuard private key file %s (mode 0400)", path)
    return key


# --- driver choice ---------------------------------------------------------------------------


def choose_driver(
    options: WireguardOptions,
    netlink: Netlink,
    userspace: Callable[[], WgDriver],
) -> WgDriver:
    """The driver ``options.driver`` asks for; ``auto`` probes the kernel module once."""
    if options.driver == "userspace":
        log.info("wireguard: using wireguard-go (userspace), as Driver asks")
        return userspace()
    kernel = WireGuardKernel(netlink, DEVICE)
    existing = netlink.link(DEVICE)
    if options.driver == "auto" and existing is not None and existing.kind != "wireguard":
        # wireguard-go's TUN from before a restart: keep it and its peers
        log.info("wireguard: %s is a userspace device; using wireguard-go (userspace)", DEVICE)
        return userspace()
    try:
        kernel.ensure_device()
    except DataplaneError as err:
        if options.driver == "kernel" or err.errno not in NO_MODULE:
            raise DataplaneError(
                f"cannot create the kernel WireGuard device {DEVICE}: {err}"
                + ("; load the module (modprobe wireguard) or set Driver to auto"
                   if err.errno in NO_MODULE else ""),
                err.errno,
            ) from err
        log.info("wireguard: the kernel has no wireguard module (errno %s); "
                 "using wireguard-go (userspace)", err.errno)
        return userspace()
    log.info("wireguard: using the kernel module")
    return kernel


# --- backend and network ---------------------------------------------------------------------


class WireguardBackend:
    """Builds the wireguard :class:`WireguardNetwork`.

    ``userspace`` makes the wireguard-go driver (tests point it at a namespace).
    """

    def __init__(
        self,
        ext: ExternalInterface,
        netlink: Netlink,
        backend_config: BackendConfig,
        key_file: str,
        userspace: Callable[[], WgDriver] | None = None,
    ) -> None:
        self._ext = ext
        self._netlink = netlink
        self._options = parse_options(backend_config)
        self._private_key = load_or_create_key(key_file)
        self._public_key = public_key(self._private_key)
        state_dir = os.path.dirname(key_file) or "."
        self._userspace = userspace or (
            lambda: WireguardGo(DEVICE, state_dir, find_binary())
        )
        self._driver: WgDriver | None = None

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def register_network(self, manager: SubnetManager, config: NetConfig) -> WireguardNetwork:
        cluster_network = ipv4_network(config, "wireguard")
        if self._ext.ext_addr is None:
            raise InterfaceError(f"interface {self._ext.name} has no IPv4 address to advertise")
        if self._driver is None:
            self._driver = choose_driver(self._options, self._netlink, self._userspace)
        attrs = LeaseAttrs(
            public_ip=self._ext.ext_addr,
            backend_type=BACKEND_TYPE,
            backend_data=encode_backend_data(self._public_key, self._options.listen_port),
        )
        lease = manager.acquire_lease(attrs)
        network = WireguardNetwork(
            self._netlink, self._driver, self._options, lease, cluster_network,
            self._private_key, self._public_key, self._ext.mtu,
        )
        network.prepare()
        return network


class WireguardNetwork:
    """Our lease and ``flannel-wg``; :meth:`reconcile` programs the peers."""

    def __init__(
        self,
        netlink: Netlink,
        driver: WgDriver,
        options: WireguardOptions,
        lease: Lease,
        network: IPNetwork,
        private_key: bytes,
        own_public_key: bytes,
        ext_mtu: int,
    ) -> None:
        if lease.subnet is None:
            raise LeaseError(f"lease {lease.key} has no IPv4 subnet")
        self._netlink = netlink
        self._driver = driver
        self._options = options
        self._lease = lease
        self._network = network
        self._private_key = private_key
        self._public_key = own_public_key
        self._mtu = options.device_mtu(ext_mtu)
        self._address = device_address(lease.subnet)
        self._skips = SkipLog(log)
        self._peers: PeerEntries[WgPeer] = PeerEntries()
        self._device: DeviceState | None = None  # as the last pass left it (None: read it)
        self._link: LinkState | None = None

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def forward_stats(self) -> ForwardStats | None:
        return None  # the kernel or wireguard-go forwards

    @property
    def driver(self) -> WgDriver:
        return self._driver

    def prepare(self) -> None:
        """Device, MTU, address and route, without touching the peers.

        Start-up runs this before the first lease snapshot arrives, so the
        peers a previous flanneld programmed keep carrying traffic meanwhile.
        """
        recreated, link = self._ensure_link()
        self._sync_route(link, fresh=True)
        if recreated:
            self._reconcile_peers([], remove=False)

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        recreated, link = False, self._link
        if full or link is None:
            recreated, link = self._ensure_link()
            self._link = link
        delta = None
        if changes is not None and not full and self._device is not None:
            delta = self._peers.change(changes, self._peer_view)
        skipped: Sequence[Skipped] = ()
        if delta is None:
            usable, skipped = wireguard_peers(
                self._lease, self._public_key, peers, [self._network], self._options
            )
            self._skips.report(skipped)
            self._peers.reset(None if skipped else self._index(peers, usable),
                              {p.lease_key: [p] for p in usable})
            plan, failed = self._reconcile_peers(usable)
        else:
            plan, failed = self._apply(plan_changes(self._device or DeviceState(), *delta))
        routes = self._sync_route(link, fresh=full or recreated)
        return _report(plan, routes.applied, failed + [str(f) for f in routes.failed],
                       skipped, len(self._peers), recreated)

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """None: a full pass reads the device's peers on the loop thread."""
        return None

    def _index(self, peers: Sequence[Lease], usable: Sequence[WgPeer]) -> PeerIndex:
        keys = {p.lease_key: p.public_key for p in usable}
        index = PeerIndex(self._lease, [self._network], BACKEND_TYPE, [self._public_key])
        for lease in peers:
            index.hold(lease, (keys[lease.key],))
        return index

    def _peer_view(self, lease: Lease) -> tuple[list[WgPeer], tuple[bytes]] | None:
        try:
            peer = wg_peer(lease, self._options)
        except PeerDataError:
            return None
        return [peer], (peer.public_key,)

    def _ensure_link(self) -> tuple[bool, LinkState]:
        recreated = self._driver.ensure_device()
        link = self._netlink.link(DEVICE)
        if link is None:
            raise DataplaneError(f"device {DEVICE} is missing right after it was ensured")
        self._netlink.set_link(
            link.index, mtu=None if link.mtu == self._mtu else self._mtu,
            up=None if link.up else True,
        )
        self._netlink.sync_addresses(link.index, [self._address], [self._network])
        return recreated, link

    def _sync_route(self, link: LinkState, fresh: bool) -> ApplyResult:
        desired = DataplaneState(frozenset({Route(self._network, None, link.index)}))
        return self._netlink.sync(desired, [], [socket.AF_INET], fresh=fresh)

    def _reconcile_peers(self, usable: Sequence[WgPeer], remove: bool = True,
                         ) -> tuple[PeerPlan, list[str]]:
        """Read the device, apply the difference to ``usable`` (keeping others unless ``remove``)."""
        self._device = None
        try:
            observed = self._driver.read()
        except DataplaneError as err:
            log.warning("programming %s failed: %s (retried on the next pass)", DEVICE, err)
            return PeerPlan(), [str(err)]
        plan = plan_peers(observed, usable, self._private_key, self._options.listen_port)
        if not remove:
            plan = replace(plan, remove=())
        result = self._apply(plan, observed)
        if not remove:
            self._device = None
        return result

    def _apply(self, plan: PeerPlan, observed: DeviceState | None = None,
               ) -> tuple[PeerPlan, list[str]]:
        """Apply ``plan`` to the device as the last pass left it (or as ``observed``)."""
        before = observed or self._device
        self._device = None
        if plan:
            try:
                self._driver.apply(plan, self._private_key, self._options.listen_port)
            except DataplaneError as err:
                log.warning("programming %s failed: %s (retried on the next pass)", DEVICE, err)
                return plan, [str(err)]
            self._log_plan(plan)
        if before is not None:
            self._device = apply_plan(before, plan, self._private_key, self._options.listen_port)
        return plan, []

    def close(self) -> None:
        """The device (and wireguard-go) stay, so a restart keeps pod traffic flowing."""
        self._driver.close()

    def _log_plan(self, plan: PeerPlan) -> None:
        if plan.configure_device:
            log.info("%s: private key and listen port %d set", DEVICE, self._options.listen_port)
        for key in plan.remove:
            log.info("%s peer %s: removed", DEVICE, key_b64(key))
        for peer in plan.put:
            addr, port = peer.endpoint
            log.info("%s peer %s (%s) endpoint %s:%d allowed-ips %s: added",
                     DEVICE, key_b64(peer.public_key), peer.lease_key, addr, port,
                     ",".join(sorted(str(n) for n in peer.allowed_ips)))


def _report(
    plan: PeerPlan, route_changes: Sequence[object], failed: list[str],
    skipped: Sequence[Skipped], peers: int, recreated: bool,
) -> ReconcileReport:
    return ReconcileReport(
        added=len(plan.put) + sum(isinstance(c, Put) for c in route_changes),
        removed=len(plan.remove) + sum(isinstance(c, Delete) for c in route_changes),
        failed=tuple(failed),
        skipped=tuple(skipped),
        device_recreated=recreated,
        peers=peers,
    )
