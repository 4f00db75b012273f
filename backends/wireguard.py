"""The wireguard backend: encrypted pod traffic through ``flannel-wg``, kernel or userspace.

Design: like vxlan, one path serves every event and every resync tick.
:meth:`WireguardNetwork.reconcile` makes sure the device exists (the
driver recreates it, or restarts wireguard-go, when it is gone), gives it
our MTU, address and route, computes the desired peers from the leases
(pure, :mod:`backends.wireguard_state`), reads the device's peers back and
applies only the difference (an event writes only its own peers, planned
against what the last pass left, without reading the device back).  So a peer whose lease is gone is removed, a
rotated key replaces the old peer, a restart changes nothing, and a device
lost to a crash comes back with the same key and every peer.

Two drivers sit behind one seam (:class:`WgDriver`): the kernel module
through generic netlink (:class:`backends.netlink.WireGuardKernel`), and
``wireguard-go`` through its UAPI socket (:class:`backends.wireguard_go.WireguardGo`).
``Driver: auto`` (the default) probes the kernel once by adding the link and
falls back to wireguard-go when the kernel has no module.

Dual stack follows upstream's ``Mode`` (:func:`backends.wireguard_state.tunnels`):
``separate`` runs IPv6 on a second device ``flannel-wg-v6`` (``ListenPortV6``),
the other modes carry both families on ``flannel-wg``.  Every device goes
through the same pass.  Unlike upstream, a device is neither deleted at
start-up nor at shutdown: a flanneld restart keeps pod traffic flowing.
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
from functools import partial
from typing import Protocol

from backends.base import ExternalInterface, KernelProbe, ReconcileReport
from backends.model import DataplaneState, Route, Skipped
from backends.netlink import ApplyResult, LinkState, Netlink, WireGuardKernel
from backends.peers import PeerEntries
from backends.plan import Delete, Put
from backends.skiplog import SkipLog
from backends.udp_packet import ForwardStats
from backends.wireguard_go import WireguardGo, find_binary
from backends.wireguard_state import (
    DEFAULT_KEY_FILE,
    KEY_FILE_ENV,
    KEY_LEN,
    DeviceState,
    PeerPlan,
    Tunnel,
    WgPeer,
    WireguardOptions,
    apply_plan,
    check_config,
    clamp,
    device_address,
    key_b64,
    lease_attrs,
    merge_skipped,
    parse_options,
    plan_changes,
    plan_peers,
    public_key,
    screen_wireguard_peers,
    tunnel_peer,
    tunnels,
)
from subnet.errors import ConfigError, DataplaneError, InterfaceError, LeaseError
from subnet.lease import IPNetwork, Lease
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
    userspace: Callable[[str], WgDriver],
    name: str,
) -> WgDriver:
    """The driver ``options.driver`` asks for device ``name``; ``auto`` probes the kernel module."""
    if options.driver == "userspace":
        log.info("wireguard: using wireguard-go (userspace) for %s, as Driver asks", name)
        return userspace(name)
    kernel = WireGuardKernel(netlink, name)
    existing = netlink.link(name)
    if options.driver == "auto" and existing is not None and existing.kind != "wireguard":
        # wireguard-go's TUN from before a restart: keep it and its peers
        log.info("wireguard: %s is a userspace device; using wireguard-go (userspace)", name)
        return userspace(name)
    try:
        kernel.ensure_device()
    except DataplaneError as err:
        if options.driver == "kernel" or err.errno not in NO_MODULE:
            raise DataplaneError(
                f"cannot create the kernel WireGuard device {name}: {err}"
                + ("; load the module (modprobe wireguard) or set Driver to auto"
                   if err.errno in NO_MODULE else ""),
                err.errno,
            ) from err
        log.info("wireguard: the kernel has no wireguard module (errno %s); "
                 "using wireguard-go (userspace) for %s", err.errno, name)
        return userspace(name)
    log.info("wireguard: using the kernel module for %s", name)
    return kernel


# --- backend and network ---------------------------------------------------------------------


class WireguardBackend:
    """Builds the wireguard :class:`WireguardNetwork`.

    ``userspace`` makes the wireguard-go driver for a device name (tests
    point it at a namespace).
    """

    def __init__(
        self,
        ext: ExternalInterface,
        netlink: Netlink,
        backend_config: BackendConfig,
        key_file: str,
        userspace: Callable[[str], WgDriver] | None = None,
    ) -> None:
        self._ext = ext
        self._netlink = netlink
        self._options = parse_options(backend_config)
        self._private_key = load_or_create_key(key_file)
        self._public_key = public_key(self._private_key)
        state_dir = os.path.dirname(key_file) or "."
        self._userspace = userspace or (
            lambda name: WireguardGo(name, state_dir, find_binary())
        )
        self._drivers: dict[str, WgDriver] = {}

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def register_network(self, manager: SubnetManager, config: NetConfig) -> WireguardNetwork:
        check_config(config)
        networks = config.networks()
        versions = [n.version for n in networks]
        for version in versions:
            if (self._ext.ext_addr if version == 4 else self._ext.ext_addr6) is None:
                raise InterfaceError(
                    f"interface {self._ext.name} has no IPv{version} address to advertise")
        devices = tunnels(self._options, versions)
        for tunnel in devices:
            if tunnel.name not in self._drivers:
                self._drivers[tunnel.name] = choose_driver(
                    self._options, self._netlink, self._userspace, tunnel.name)
        attrs = lease_attrs(self._ext.ext_addr if 4 in versions else None,
                            self._ext.ext_addr6 if 6 in versions else None,
                            self._public_key, devices)
        lease = manager.acquire_lease(attrs)
        network = WireguardNetwork(
            self._netlink, [(t, self._drivers[t.name]) for t in devices], self._options, lease,
            networks, self._private_key, self._public_key, self._ext.mtu,
        )
        network.prepare()
        return network


class _Programmed:
    """What one device got from the last pass, for events that touch only their peers."""

    def __init__(self) -> None:
        self.peers: PeerEntries[WgPeer] = PeerEntries()
        self.device: DeviceState | None = None  # as the last pass left it (None: read it)
        self.link: LinkState | None = None


class WireguardNetwork:
    """Our lease and its WireGuard device(s); :meth:`reconcile` programs the peers."""

    def __init__(
        self,
        netlink: Netlink,
        devices: Sequence[tuple[Tunnel, WgDriver]],
        options: WireguardOptions,
        lease: Lease,
        networks: Sequence[IPNetwork],
        private_key: bytes,
        own_public_key: bytes,
        ext_mtu: int,
    ) -> None:
        own: dict[int, IPNetwork] = {s.version: s for s in lease.subnets()}
        missing = sorted({n.version for n in networks} - set(own))
        if missing:
            raise LeaseError(f"lease {lease.key} has no IPv{missing[0]} subnet")
        self._netlink = netlink
        self._devices = tuple(devices)
        self._options = options
        self._lease = lease
        self._networks = tuple(networks)
        self._private_key = private_key
        self._public_key = own_public_key
        self._mtu = options.device_mtu(ext_mtu)
        self._addresses = {
            t.name: [device_address(own[v]) for v in sorted(t.versions)] for t, _ in devices
        }
        self._families = sorted(
            {socket.AF_INET if n.version == 4 else socket.AF_INET6 for n in networks})
        self._skips = SkipLog(log)
        self._programmed = {t.name: _Programmed() for t, _ in devices}

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
        """The first device's driver (``flannel-wg``, or ``flannel-wg-v6`` when IPv6-only)."""
        return self._devices[0][1]

    @property
    def drivers(self) -> dict[str, WgDriver]:
        """Each device's driver, by device name."""
        return {t.name: d for t, d in self._devices}

    def prepare(self) -> None:
        """Devices, MTU, addresses and routes, without touching the peers.

        Start-up runs this before the first lease snapshot arrives, so the
        peers a previous flanneld programmed keep carrying traffic meanwhile.
        """
        links = []
        for tunnel, driver in self._devices:
            recreated, link = self._ensure_link(tunnel, driver)
            links.append(link)
            if recreated:
                self._reconcile_peers(tunnel, driver, [], remove=False)
        self._sync_routes(links, fresh=True)

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        links: list[LinkState] = []
        plans: list[PeerPlan] = []
        failed: list[str] = []
        any_recreated = False
        for tunnel, driver in self._devices:
            state = self._programmed[tunnel.name]
            if full or state.link is None:
                recreated, state.link = self._ensure_link(tunnel, driver)
                any_recreated |= recreated
            links.append(state.link)
        deltas = None if full or changes is None else self._changes(changes)
        skipped: list[Skipped] = []
        if deltas is None:
            skipped = self._compute_all(peers)
        for tunnel, driver in self._devices:
            state = self._programmed[tunnel.name]
            if deltas is None or state.device is None:
                plan, errors = self._reconcile_peers(tunnel, driver, state.peers.all())
            else:
                plan, errors = self._apply(tunnel, driver,
                                           plan_changes(state.device, *deltas[tunnel.name]))
            plans.append(plan)
            failed += errors
        routes = self._sync_routes(links, fresh=full or any_recreated)
        programmed = {key for state in self._programmed.values() for key in state.peers.peer_keys()}
        return ReconcileReport(
            added=sum(len(p.put) for p in plans) + sum(isinstance(c, Put) for c in routes.applied),
            removed=sum(len(p.remove) for p in plans)
            + sum(isinstance(c, Delete) for c in routes.applied),
            failed=tuple(failed + [str(f) for f in routes.failed]),
            skipped=tuple(skipped),
            device_recreated=any_recreated,
            peers=len(programmed),
        )

    def _compute_all(self, peers: Sequence[Lease]) -> list[Skipped]:
        """Every device's peers from scratch; keeps an index per device that skipped none."""
        skipped: list[Skipped] = []
        for tunnel, _ in self._devices:
            usable, refused, index = screen_wireguard_peers(
                self._lease, self._public_key, peers, self._networks, self._options, tunnel)
            skipped += refused
            self._programmed[tunnel.name].peers.reset(index, {p.lease_key: [p] for p in usable})
        merged = merge_skipped(skipped)
        self._skips.report(merged)
        return merged

    def _changes(
        self, changes: Mapping[str, Lease | None]
    ) -> dict[str, tuple[list[WgPeer], list[WgPeer]]] | None:
        """Per device, the changed peers' old and new peers; None when any device needs
        the full computation (a conflict, a peer it cannot take alone)."""
        deltas = {}
        for tunnel, _ in self._devices:
            state = self._programmed[tunnel.name]
            delta = state.peers.change(changes, partial(self._peer_view, tunnel))
            if delta is None or state.device is None:
                return None
            deltas[tunnel.name] = delta
        return deltas

    def _peer_view(self, tunnel: Tunnel, lease: Lease) -> tuple[list[WgPeer], tuple[bytes]] | None:
        found, reasons = tunnel_peer(self._lease, lease, self._networks, self._options, tunnel)
        if found is None or reasons:  # the full computation reports what it lacks
            return None
        return [found], (found.public_key,)

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """None: a full pass reads the devices' peers on the loop thread."""
        return None

    def _ensure_link(self, tunnel: Tunnel, driver: WgDriver) -> tuple[bool, LinkState]:
        recreated = driver.ensure_device()
        link = self._netlink.link(tunnel.name)
        if link is None:
            raise DataplaneError(f"device {tunnel.name} is missing right after it was ensured")
        self._netlink.set_link(
            link.index, mtu=None if link.mtu == self._mtu else self._mtu,
            up=None if link.up else True,
        )
        self._netlink.sync_addresses(link.index, self._addresses[tunnel.name], self._networks)
        return recreated, link

    def _sync_routes(self, links: Sequence[LinkState], fresh: bool) -> ApplyResult:
        """One route per cluster Network through the device that carries its family."""
        routes = {
            Route(network, None, link.index)
            for (tunnel, _), link in zip(self._devices, links, strict=True)
            for network in self._networks
            if network.version in tunnel.versions
        }
        return self._netlink.sync(DataplaneState(frozenset(routes)), [], self._families,
                                  fresh=fresh)

    def _reconcile_peers(self, tunnel: Tunnel, driver: WgDriver, usable: Sequence[WgPeer],
                         remove: bool = True) -> tuple[PeerPlan, list[str]]:
        """Read the device, apply the difference to ``usable`` (keeping others unless ``remove``)."""
        state = self._programmed[tunnel.name]
        state.device = None
        try:
            observed = driver.read()
        except DataplaneError as err:
            log.warning("programming %s failed: %s (retried on the next pass)", tunnel.name, err)
            return PeerPlan(), [str(err)]
        plan = plan_peers(observed, usable, self._private_key, tunnel.listen_port)
        if not remove:
            plan = replace(plan, remove=())
        result = self._apply(tunnel, driver, plan, observed)
        if not remove:
            state.device = None  # other peers stay: not what a full pass leaves
        return result

    def _apply(self, tunnel: Tunnel, driver: WgDriver, plan: PeerPlan,
               observed: DeviceState | None = None) -> tuple[PeerPlan, list[str]]:
        """Apply ``plan`` to the device as the last pass left it (or as ``observed``)."""
        state = self._programmed[tunnel.name]
        before = observed or state.device
        state.device = None
        if plan:
            try:
                driver.apply(plan, self._private_key, tunnel.listen_port)
            except DataplaneError as err:
                log.warning("programming %s failed: %s (retried on the next pass)", tunnel.name,
                            err)
                return plan, [str(err)]
            _log_plan(tunnel, plan)
        if before is not None:
            state.device = apply_plan(before, plan, self._private_key, tunnel.listen_port)
        return plan, []

    def close(self) -> None:
        """The devices (and wireguard-go) stay, so a restart keeps pod traffic flowing."""
        for _, driver in self._devices:
            driver.close()


def _log_plan(tunnel: Tunnel, plan: PeerPlan) -> None:
    if plan.configure_device:
        log.info("%s: private key and listen port %d set", tunnel.name, tunnel.listen_port)
    for key in plan.remove:
        log.info("%s peer %s: removed", tunnel.name, key_b64(key))
    for peer in plan.put:
        addr, port = peer.endpoint
        host = f"[{addr}]" if addr.version == 6 else str(addr)
        log.info("%s peer %s (%s) endpoint %s:%d allowed-ips %s: added",
                 tunnel.name, key_b64(peer.public_key), peer.lease_key, host, port,
                 ",".join(sorted(str(n) for n in peer.allowed_ips)))
