"""flanneld start-up and shutdown: build the parts from the flags and run them.

Order (as upstream, see the reference §1.1): subnet manager, health server,
network config, external interface, backend (devices + lease), subnet.env,
then the watcher, the renewer and the main loop.  Shutdown leaves devices,
routes and the lease in place so a restart does not interrupt traffic.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from backends.base import Backend, ExternalInterface, Network
from backends.kernelwatch import KernelWatch, OwnDeletions
from backends.netlink import Netlink
from backends.registry import BackendContext, BackendEntry, lookup
from flanneld import iface, subnetfile
from flanneld.flags import Flags
from flanneld.health import HealthServer, HealthState
from flanneld.health import start as start_health
from flanneld.loop import (
    ErrorHook,
    LeaseHolder,
    LoopSettings,
    MainLoop,
    Periodic,
    Renewer,
    Watcher,
    get_network_config,
    install_signal_handlers,
    retry_until_stopped,
)
from flanneld.loop_state import Kick
from flanneld.metrics import Metrics, metrics_handler
from flanneld.netconf_check import Mode, NetConfWatcher, verify
from flanneld.startphases import StartPhases, process_age, release_start_memory
from flanneld.trafficmgr.manager import TrafficManager, traffic_manager
from flanneld.trafficmgr.rules import FamilyNets, family_nets
from flanneld.trafficmgr.runner import CommandRunner
from subnet.errors import ConfigError, DataplaneError, StopRequested
from subnet.lease import Lease
from subnet.manager import SubnetManager
from subnet.netconf import IPStack, NetConfig, ip_stack
from subnet.retry import Backoff

if TYPE_CHECKING:
    from flanneld.trafficmgr.policy import PolicyTable
    from subnet.etcd import EtcdSettings
    from subnet.kube_state import KubeSettings

log = logging.getLogger(__name__)

BR_NETFILTER_V4 = "/proc/sys/net/bridge/bridge-nf-call-iptables"
JOIN_TIMEOUT = 5.0
NETCONF_POLL = 5.0
STORE_GRACE = 10.0  # seconds of failing lease watch before /readyz says not ready
STORE_TOPIC = "store"


def build_manager(
    flags: Flags, previous: subnetfile.PreviousRun, stop: threading.Event
) -> SubnetManager:
    """The etcd or Kubernetes subnet manager the flags ask for."""
    if flags.kube_subnet_mgr:
        from subnet.kube import connect_and_sync

        return connect_and_sync(kube_settings(flags, os.environ), stop)
    from subnet.etcd import EtcdSubnetManager

    return EtcdSubnetManager(etcd_settings(flags), previous.subnets)


def etcd_settings(flags: Flags) -> EtcdSettings:
    """EtcdSettings from flanneld's ``--etcd-*`` flags."""
    from subnet.etcd import EtcdSettings

    return EtcdSettings(
        endpoints=tuple(e for e in flags.etcd_endpoints.split(",") if e),
        prefix=flags.etcd_prefix,
        keyfile=flags.etcd_keyfile,
        certfile=flags.etcd_certfile,
        cafile=flags.etcd_cafile,
        username=flags.etcd_username,
        password=flags.etcd_password,
        renew_margin_minutes=flags.subnet_lease_renew_margin,
    )


def kube_settings(flags: Flags, environ: Mapping[str, str]) -> KubeSettings:
    """KubeSettings from flanneld's flags and EVENT_QUEUE_DEPTH/CONT_WHEN_CACHE_NOT_READY."""
    from subnet.kube_state import KubeSettings, parse_env_bool, parse_event_queue_depth

    return KubeSettings(
        api_url=flags.kube_api_url,
        kubeconfig_file=flags.kubeconfig_file,
        annotation_prefix=flags.kube_annotation_prefix,
        net_config_path=flags.net_config_path,
        set_node_network_unavailable=flags.set_node_network_unavailable,
        event_queue_depth=parse_event_queue_depth(environ.get("EVENT_QUEUE_DEPTH")),
        cont_when_cache_not_ready=parse_env_bool(
            "CONT_WHEN_CACHE_NOT_READY", environ.get("CONT_WHEN_CACHE_NOT_READY")
        ),
    )


def check_br_netfilter(config: NetConfig) -> None:
    """Warn (upstream exits) when bridged pod traffic would bypass iptables."""
    if config.enable_ipv4 and not config.enable_nftables and not os.path.exists(BR_NETFILTER_V4):
        log.warning(
            "%s is missing: load the br_netfilter module (modprobe br_netfilter), or Service "
            "traffic between pods on one node may bypass kube-proxy's rules",
            BR_NETFILTER_V4,
        )


def external_interface(
    flags: Flags, manager: SubnetManager, netlink: Netlink, stack: IPStack = IPStack.IPV4
) -> ExternalInterface:
    override = manager.public_ip_override()
    if override is not None:
        log.info("using public IP %s from the node annotation", override)
        flags = replace(flags, public_ip=str(override))
    override6 = manager.public_ipv6_override() if stack.ipv6 else None
    if override6 is not None:
        log.info("using public IPv6 %s from the node annotation", override6)
        flags = replace(flags, public_ipv6=str(override6))
    ext = iface.discover(netlink, flags, stack)
    log.info(
        "using interface %s (index %d, MTU %d), address %s, public address %s",
        ext.name, ext.index, ext.mtu, ext.iface_addr, ext.ext_addr,
    )
    if stack.ipv6:
        log.info("IPv6 address %s, public IPv6 address %s", ext.iface_addr6, ext.ext_addr6)
    return ext


def backend_entry(config: NetConfig, mode: Mode) -> BackendEntry:
    """The backend net-conf.json names, the config checked (as the validator does)
    before anything is touched."""
    verify(config, mode)
    return lookup(config.backend.type)


def make_backend(
    flags: Flags, manager: SubnetManager, config: NetConfig, entry: BackendEntry,
    netlink: Netlink, stop: threading.Event, on_error: ErrorHook,
) -> Backend:
    """The backend, seeded with what this node advertised before."""
    ext = external_interface(flags, manager, netlink, ip_stack(config))
    previous = retry_until_stopped(
        "reading our previous lease", lambda: manager.previous_attrs(ext.ext_addr), stop,
        Backoff(1.0, 30.0), on_error,
    )
    return entry.build(
        BackendContext(ext, netlink, config.backend, previous.backend_data if previous else None,
                       os.environ, previous.backend_v6_data if previous else None)
    )


def register(
    backend: Backend, manager: SubnetManager, config: NetConfig, stop: threading.Event,
    on_error: ErrorHook,
) -> Network:
    """Devices up and our lease acquired, retrying while the store is unavailable."""
    return retry_until_stopped(
        "registering the network", lambda: backend.register_network(manager, config), stop,
        Backoff(1.0, 30.0), on_error,
    )


def write_subnet_env(flags: Flags, config: NetConfig, network: Network) -> None:
    text = subnetfile.render_subnet_env(config, network.lease, network.mtu, flags.ip_masq)
    try:
        subnetfile.write_subnet_env(flags.subnet_file, text)
    except OSError as err:
        log.error("failed to write %s: %s (pods cannot start on this node)", flags.subnet_file, err)
        return
    log.info("wrote %s: subnet %s, MTU %d", flags.subnet_file, network.lease.key, network.mtu)


def traffic_rules(config: NetConfig, flags: Flags) -> TrafficManager:
    """The iptables or nftables manager that net-conf.json's EnableNFTables picks."""
    return traffic_manager(config.enable_nftables, flags.ip_masq_fully_random_disable)


# The policy modules load only where policy is in play (kube mode): etcd mode's
# start does not pay for importing them.
def make_policy_table() -> PolicyTable:
    from flanneld.trafficmgr.policy import PolicyTable

    return PolicyTable(CommandRunner())


def enable_bridge_netfilter() -> None:
    from flanneld.trafficmgr.policy import ensure_bridge_netfilter

    ensure_bridge_netfilter(CommandRunner())


KernelWatchFactory = Callable[
    [Callable[[], None], threading.Event, OwnDeletions], threading.Thread
]


@dataclass(frozen=True, slots=True)
class Parts:
    """How start-up builds what talks to the outside world; unit tests pass fakes."""

    manager: Callable[
        [Flags, subnetfile.PreviousRun, threading.Event], SubnetManager
    ] = build_manager
    backend: Callable[[NetConfig, Mode], BackendEntry] = backend_entry
    netlink: Callable[[], Netlink] = Netlink  # one per thread that programs the kernel
    rules: Callable[[NetConfig, Flags], TrafficManager] = traffic_rules
    kernel_watch: KernelWatchFactory = KernelWatch
    policy_table: Callable[[], PolicyTable] = make_policy_table
    bridge_netfilter: Callable[[], None] = enable_bridge_netfilter


def rule_nets(config: NetConfig, lease: Lease) -> list[FamilyNets]:
    return family_nets([(config.network, lease.subnet), (config.ipv6_network, lease.ipv6_subnet)])


def setup_rules(
    flags: Flags, rules: TrafficManager, nets: list[FamilyNets], previous: list[FamilyNets]
) -> None:
    """Install masquerade/forward rules; a failure is retried by the resync thread."""
    try:
        rules.setup(flags.ip_masq, flags.iptables_forward_rules, nets, previous)
    except DataplaneError as err:
        log.error("installing traffic rules failed: %s (retrying every %ds)", err,
                  flags.iptables_resync)


class Blackholes:
    """``--ip-blackhole-route``: a blackhole route for our subnet(s), kept in place.

    Traffic to an unused address of our subnet is dropped here instead of
    following the default route out of the node.
    """

    def __init__(self, holder: LeaseHolder, netlink: Callable[[], Netlink]) -> None:
        self._holder = holder
        self._make_netlink = netlink
        self._netlink: Netlink | None = None

    def __call__(self) -> None:
        if self._netlink is None:
            self._netlink = self._make_netlink()
        self._netlink.sync_blackholes(self._holder.get().subnets())


# How long a thread holding the GIL may keep it while another waits (CPython's default:
# 5 ms).  The loop thread serving a lease event gives the GIL up at every socket call and
# queue wait; while a full pass's kernel read decodes on its own thread, each of those
# took up to one interval to win back.  1 ms from the main loop's start (the start-up
# before it keeps the default), 0.5 ms once the peers are programmed: at 5000 peers single
# events waited 60-100 ms with 1 ms.
LOOP_SWITCH_INTERVAL = 0.001
SERVING_SWITCH_INTERVAL = 0.0005


def run(flags: Flags, start_done: Callable[[], None] = lambda: None) -> int:
    """Run flanneld until SIGTERM/SIGINT; returns the exit code.

    ``start_done`` is called once the peers are programmed (the entry point
    resumes the garbage collection it paused for the start).
    """
    stop = threading.Event()
    install_signal_handlers(stop)
    daemon = Daemon(flags, stop, switch_interval=sys.setswitchinterval, start_done=start_done)
    try:
        daemon.serve()
    except StopRequested:
        log.info("stopped during start-up")
    finally:
        stop.set()
        daemon.shutdown()
    return 0


class Daemon:
    """One flanneld: start-up in upstream's order, the main loop, and shutdown."""

    def __init__(
        self,
        flags: Flags,
        stop: threading.Event,
        parts: Parts | None = None,
        switch_interval: Callable[[float], None] = lambda _seconds: None,
        start_done: Callable[[], None] = lambda: None,
    ) -> None:
        """``switch_interval`` sets the process's GIL switch interval (``run`` passes
        ``sys.setswitchinterval``; unit tests run the daemon in their own process);
        ``start_done`` is called once the peers are programmed and the start's
        garbage is collected (``run`` passes what the entry point gave it)."""
        self._flags = flags
        self._switch_interval = switch_interval
        self._start_done = start_done
        self._stop = stop
        self._parts = parts or Parts()
        self._health = HealthState()
        self._metrics = Metrics()
        self._store_status = StoreStatus(self._health, self._metrics)
        self._server: HealthServer | None = None
        self._manager: SubnetManager | None = None
        self._node: Node | None = None
        self._announcing: Beside | None = None
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        flags, metrics, stop, parts = self._flags, self._metrics, self._stop, self._parts
        phases = StartPhases(process_age())
        phases.mark("imports")
        if flags.healthz_port > 0:
            self._server = start_health(
                self._health, flags.healthz_ip, flags.healthz_port,
                {"/metrics": metrics_handler(metrics)},
            )
        if flags.network_policy:
            parts.bridge_netfilter()  # refuse to start before touching anything
        previous = subnetfile.read_previous_run(flags.subnet_file)
        manager = self._manager = parts.manager(flags, previous, stop)
        status = self._store_status
        config = get_network_config(manager, stop, status)
        phases.mark("store")
        entry = parts.backend(config, "kube" if flags.kube_subnet_mgr else "etcd")
        check_br_netfilter(config)
        netlink = parts.netlink()
        backend = make_backend(flags, manager, config, entry, netlink, stop, status)
        phases.mark("interface")
        network = register(backend, manager, config, stop, status)
        status(None)
        phases.mark("device and lease")
        rules = parts.rules(config, flags)
        node = self._node = Node(flags, config, manager, backend, rules, self._health, metrics,
                                 network)
        announcing = self._announcing = self._announce_beside(
            node, family_nets(zip(previous.networks, previous.subnets, strict=True)))
        phases.mark("rules and subnet.env")
        holder = LeaseHolder(network.lease)
        after_sync: list[threading.Thread] = []

        def synced() -> None:
            announcing.wait()
            phases.mark("first pass")
            log.info("start-up %s", phases.summary())
            metrics.record_start(phases.seconds)
            node.on_synced()
            release_start_memory()
            self._start_done()
            self._switch_interval(SERVING_SWITCH_INTERVAL)
            while after_sync:
                thread = after_sync.pop()
                thread.start()
                self._threads.append(thread)

        settings = LoopSettings(flags.resync_interval, 100.0 / flags.resync_max_cpu)
        loop = MainLoop(node.reregister, node.on_lease, synced, settings, stop, metrics)
        policy = self._policy_threads(manager, holder) if flags.network_policy else []
        self._threads = node.helpers(loop, holder, stop, parts, netlink.deletions, status)
        self._threads += policy
        if not flags.network_policy and flags.kube_subnet_mgr:
            # after the first pass: its nft calls took the GIL from the pass when they ran
            # beside it (the policy engine itself is not loaded for this: see PolicyTable.remove)
            after_sync.append(threading.Thread(
                target=lambda: remove_policy_table(parts.policy_table()),
                name="policy-table-cleanup", daemon=True))
        for thread in self._threads:
            thread.start()
        self._switch_interval(LOOP_SWITCH_INTERVAL)
        loop.run(network, holder)
        announcing.raise_error()  # when the loop ended because the announce failed

    def _announce_beside(self, node: Node, previous: list[FamilyNets]) -> Beside:
        """The start's rules and subnet.env, on a thread of their own beside the first pass.

        iptables runs as processes of its own and the pass's kernel writes release the
        GIL, so neither waits for the other; the daemon is ready once both are done.
        An unexpected error there is logged at once (the first pass may keep failing
        and never ask) and stops the daemon, which ``serve`` then raises it from.
        """
        lease, stop = node.network.lease, self._stop

        def failed(err: BaseException) -> None:
            log.error("installing the traffic rules and writing %s for lease %s failed "
                      "unexpectedly: %r; flanneld stops (routes and the lease stay in place): "
                      "restart it, and report the error if it repeats",
                      self._flags.subnet_file, lease.key, err)
            stop.set()

        return Beside("announce-lease", lambda: node.announce(lease, previous), failed)

    def _policy_threads(self, manager: SubnetManager, holder: LeaseHolder) -> list[threading.Thread]:
        """``--network-policy``: informers and the policy reconciler (table kept on shutdown)."""
        from flanneld.netpol.controller import ObjectSource, policy_threads

        if not isinstance(manager, ObjectSource):
            raise ConfigError("--network-policy needs the Kubernetes subnet manager")
        _, threads = policy_threads(
            manager, self._parts.policy_table(), lambda: tuple(holder.get().subnets()),
            self._metrics.registry, self._stop, self._flags.resync_interval,
        )
        log.info("network policy enforcement on (nftables table inet pyflannel-policy)")
        return threads

    def shutdown(self) -> None:
        """Stop the threads; leave devices, routes and the lease in place."""
        if self._announcing is not None:
            self._announcing.join(JOIN_TIMEOUT)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.0fs", thread.name, JOIN_TIMEOUT)
        if self._node is not None:
            self._node.network.close()
        if self._manager is not None:
            self._manager.close()
        if self._server is not None:
            self._server.stop()


class Beside:
    """``action`` run once on a thread of its own, beside what the caller goes on with.

    What it raises is handed to ``on_error`` on that thread as it happens (the caller
    may be busy elsewhere for long), and raised again on the caller's thread by
    ``wait`` or ``raise_error``.
    """

    def __init__(
        self, name: str, action: Callable[[], None], on_error: Callable[[BaseException], None]
    ) -> None:
        self._action = action
        self._on_error = on_error
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._action()
        except BaseException as err:  # noqa: BLE001 - raised again on the caller's thread
            self._error = err
            self._on_error(err)

    def wait(self) -> None:
        """Until ``action`` is done; what it raised is raised here."""
        self._thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        """What ``action`` raised, if it has (once: it is not raised twice); never waits."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def join(self, timeout: float) -> None:
        """Until ``action`` is done or ``timeout`` passed (shutdown: its error is not ours)."""
        self._thread.join(timeout)


class StoreStatus:
    """Failures of the subnet store, shown where operators look.

    Told by start-up's retries, the renewer and the lease watch (None: it
    works again).  Each failure counts in ``flannel_store_errors_total`` and
    is a detail on /readyz at once; once the store has kept failing for
    STORE_GRACE seconds (longer than an etcd restart or leader election),
    /readyz answers 503 until it works again.
    """

    def __init__(
        self, health: HealthState, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._health = health
        self._metrics = metrics
        self._clock = clock
        self._since: float | None = None

    def __call__(self, error: Exception | None) -> None:
        if error is None:
            if self._since is not None:
                log.info("the subnet store works again")
            self._since = None
            self._health.set_detail(STORE_TOPIC, None)
            return
        self._metrics.record_store_error(error)
        now = self._clock()
        if self._since is None:
            self._since = now
        failing = now - self._since
        self._health.set_detail(
            STORE_TOPIC, f"subnet store failing for {failing:.0f}s: {error}",
            blocking=failing >= STORE_GRACE,
        )


class Node:
    """This node once it holds a lease: what a new lease, readiness and re-registration do."""

    def __init__(
        self,
        flags: Flags,
        config: NetConfig,
        manager: SubnetManager,
        backend: Backend,
        rules: TrafficManager,
        health: HealthState,
        metrics: Metrics,
        network: Network,
    ) -> None:
        self._flags = flags
        self._config = config
        self._manager = manager
        self._backend = backend
        self._rules = rules
        self._health = health
        self._metrics = metrics
        self.network = network
        self._announced = network.lease
        # set once the start's announce (on a thread of its own) is over, whatever its end:
        # a re-acquire's announce and the rules' resync come after it
        self._started = threading.Event()

    def announce(self, lease: Lease, previous: list[FamilyNets]) -> None:
        """The start's announce of ``lease``, replacing ``previous`` (the last run's)."""
        try:
            self._announce(lease, previous)
        finally:
            self._started.set()

    def _announce(self, lease: Lease, previous: list[FamilyNets]) -> None:
        """Rules, subnet.env, metrics and /readyz for ``lease``, replacing ``previous``."""
        log.info("holding lease %s (%s)", lease.key, _expiry(lease))
        setup_rules(self._flags, self._rules, rule_nets(self._config, lease), previous)
        write_subnet_env(self._flags, self._config, self.network)
        self._metrics.set_lease_expiry(lease.expiration)
        network = self.network
        self._metrics.track_udp(network.forward_stats)
        ready = "" if self._health.ready else "; peers not synced yet"
        self._health.set_detail("lease", f"lease {lease.key}{ready}")
        self._announced = lease

    def on_lease(self, lease: Lease) -> None:
        """Our lease was re-acquired (maybe with another subnet).

        After the start's announce, which may still run: the newer lease's rules and
        subnet.env must be the ones that stay.  That wait has no bound of its own: each
        iptables or nft command the announce runs is stopped after 30 s, but writing
        subnet.env (a file write and fsync) is not.
        """
        self._started.wait()
        self._announce(lease, rule_nets(self._config, self._announced))

    def resync_rules(self) -> int:
        """Restore incomplete traffic rules; how many sets were (none before the start's
        announce is over: until then they are still going in, not damaged)."""
        if not self._started.is_set():
            return 0
        return self._rules.resync()

    def on_synced(self) -> None:
        self._health.mark_ready()
        self._health.set_detail("lease", f"lease {self.network.lease.key}")
        self._manager.mark_network_available()
        log.info("peers programmed; flanneld is ready")

    def reregister(self) -> Network:
        self.network = self._backend.register_network(self._manager, self._config)
        return self.network

    def helpers(
        self, loop: MainLoop, holder: LeaseHolder, stop: threading.Event, parts: Parts,
        deletions: OwnDeletions, status: StoreStatus,
    ) -> list[threading.Thread]:
        """The threads beside the main loop (not started)."""
        flags, metrics = self._flags, self._metrics
        margin = timedelta(minutes=flags.subnet_lease_renew_margin)

        def renewed(expiration: datetime | None) -> None:
            metrics.set_lease_expiry(expiration)
            status(None)

        threads: list[threading.Thread] = [
            Watcher(self._manager, loop.messages.put, stop, status, status),
            Renewer(self._manager, holder, margin, stop, renewed, status),
            Periodic("traffic-rules-resync", flags.iptables_resync,
                     lambda: metrics.record_rules_restored(self.resync_rules()), stop),
            parts.kernel_watch(lambda: loop.messages.put(Kick()), stop, deletions),
        ]
        if flags.ip_blackhole_route:
            blackholes = Blackholes(holder, parts.netlink)
            blackholes()
            threads.append(Periodic("blackhole-route", flags.iptables_resync, blackholes, stop))
        if flags.kube_subnet_mgr:
            conf_watch = NetConfWatcher(flags.net_config_path, self._config, "kube",
                                        self._health)
            threads.append(Periodic("net-conf-watch", NETCONF_POLL, conf_watch.poll, stop))
        return threads


def remove_policy_table(table: PolicyTable) -> None:
    """Without ``--network-policy`` our policy table must not stay behind (flag switched off)."""
    try:
        table.remove()
    except DataplaneError as err:
        log.warning("could not remove the network policy table: %s", err)


def _expiry(lease: Lease) -> str:
    return f"expires {lease.expiration:%Y-%m-%d %H:%M:%S}Z" if lease.expiration else "no expiry"
