"""Daemon start-up wiring with fakes: no etcd, no kernel, no iptables.

``Daemon.serve`` runs in the test thread; the fake network stops it from
inside a reconcile, so nothing here waits on the clock.  A guard timer sets
the stop event if the wiring never gets that far, and the test then fails on
its assertions instead of hanging.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.base import (
    InterfaceAddress,
    InterfaceInfo,
    KernelProbe,
    ReconcileReport,
    RouteLookup,
)
from backends.kernelwatch import OwnDeletions
from backends.registry import BackendContext, BackendEntry
from bench.fakes import FakeSubnetManager
from flanneld.daemon import (
    LOOP_SWITCH_INTERVAL,
    SERVING_SWITCH_INTERVAL,
    Daemon,
    Node,
    Parts,
    backend_entry,
)
from flanneld.flags import Flags
from flanneld.health import HealthState
from flanneld.metrics import Metrics
from flanneld.subnetfile import PreviousRun
from flanneld.trafficmgr.rules import FamilyNets, family_nets
from subnet.errors import ConfigError, DataplaneError, StoreError
from subnet.lease import IPNetwork, Lease, LeaseAttrs
from subnet.manager import SubnetManager
from subnet.netconf import NetConfig, parse_net_config

CONFIG = parse_net_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "fake"}}')
OUR_ADDRESS = ipaddress.IPv4Address("198.18.0.1")
GUARD_SECONDS = 30.0


def peer(third: int) -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"), None,
        LeaseAttrs(public_ip=ipaddress.IPv4Address(f"198.18.0.{third}"), backend_type="fake"),
    )


class FakeNetlink:
    """One uplink with the default route; remembers blackhole syncs."""

    def __init__(self) -> None:
        self.blackholes: list[list[IPNetwork]] = []
        self.deletions = OwnDeletions()

    def interfaces(self) -> list[InterfaceInfo]:
        return [
            InterfaceInfo("lo", 1, 65536, True, (InterfaceAddress(ipaddress.IPv4Address("127.0.0.1"), 8),)),
            InterfaceInfo("uplink0", 2, 1500, True, (InterfaceAddress(OUR_ADDRESS, 24),)),
        ]

    def default_route_ifindex(self, family: int) -> int | None:
        return 2 if family == socket.AF_INET else None

    def route_get(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[RouteLookup]:
        return []

    def sync_blackholes(self, subnets: Sequence[IPNetwork]) -> int:
        self.blackholes.append(list(subnets))
        return len(subnets)


class FakeNetwork:
    def __init__(self, lease: Lease, on_reconcile: Callable[[FakeNetwork], None]) -> None:
        self._lease = lease
        self._on_reconcile = on_reconcile
        self.calls: list[tuple[list[str], bool]] = []
        self.closed = False

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return 1450

    @property
    def forward_stats(self) -> None:
        return None

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        self.calls.append((sorted(p.key for p in peers), full))
        self._on_reconcile(self)
        return ReconcileReport(peers=len(peers))

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        return None

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    def __init__(self, ctx: BackendContext, on_reconcile: Callable[[FakeNetwork], None]) -> None:
        self.ctx = ctx
        self._on_reconcile = on_reconcile
        self.networks: list[FakeNetwork] = []

    def register_network(self, manager: SubnetManager, config: NetConfig) -> FakeNetwork:
        assert self.ctx.ext.ext_addr is not None
        lease = manager.acquire_lease(LeaseAttrs(public_ip=self.ctx.ext.ext_addr, backend_type="fake"))
        self.networks.append(FakeNetwork(lease, self._on_reconcile))
        return self.networks[-1]


@dataclass
class FakeRules:
    setups: list[tuple[bool, bool, list[FamilyNets], list[FamilyNets]]] = field(default_factory=list)

    def setup(
        self, masq: bool, forward: bool, nets: Sequence[FamilyNets],
        previous: Sequence[FamilyNets] = (),
    ) -> None:
        self.setups.append((masq, forward, list(nets), list(previous)))

    def resync(self) -> int:
        return 0


class FakeKernelWatch(threading.Thread):
    def __init__(self, notify: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name="fake-kernel-watch", daemon=True)
        self.notify = notify
        self._stop_event = stop

    def run(self) -> None:
        self._stop_event.wait()


class Rig:
    """A Daemon over fakes, and what the fakes saw."""

    def __init__(self, flags: Flags, manager: FakeSubnetManager,
                 done: Callable[[FakeNetwork], bool]) -> None:
        self.flags = flags
        self.manager = manager
        self.stop = threading.Event()
        self.previous: list[PreviousRun] = []
        self.netlinks: list[FakeNetlink] = []
        self.backends: list[FakeBackend] = []
        self.rules = FakeRules()
        self.kernel_watches: list[FakeKernelWatch] = []
        self._done = done

    def parts(self) -> Parts:
        def manager(flags: Flags, previous: PreviousRun, stop: threading.Event) -> SubnetManager:
            self.previous.append(previous)
            return self.manager

        def netlink() -> FakeNetlink:
            self.netlinks.append(FakeNetlink())
            return self.netlinks[-1]

        def backend(ctx: BackendContext) -> FakeBackend:
            self.backends.append(FakeBackend(ctx, self._stop_when_done))
            return self.backends[-1]

        def kernel_watch(
            notify: Callable[[], None], stop: threading.Event, _own: OwnDeletions
        ) -> FakeKernelWatch:
            self.kernel_watches.append(FakeKernelWatch(notify, stop))
            return self.kernel_watches[-1]

        return Parts(
            manager=manager,
            backend=lambda config, mode: BackendEntry(backend, lambda _c: {}, lambda _c: None),
            netlink=netlink,  # type: ignore[arg-type]
            rules=lambda config, flags: self.rules,
            kernel_watch=kernel_watch,
        )

    def _stop_when_done(self, network: FakeNetwork) -> None:
        if self._done(network):
            self.stop.set()

    def serve(self, daemon: Daemon | None = None) -> Daemon:
        """Run ``daemon`` (default: one over this rig's parts) until done; shut it down."""
        daemon = daemon or Daemon(self.flags, self.stop, self.parts())
        guard = threading.Timer(GUARD_SECONDS, self.stop.set)
        guard.start()
        try:
            daemon.serve()
        finally:
            guard.cancel()
            self.stop.set()
            daemon.shutdown()
        return daemon


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    yield Flags(subnet_file=str(tmp_path / "run" / "subnet.env"), ip_masq=True)


def make_rig(flags: Flags, peers: tuple[Lease, ...] = (),
             done: Callable[[FakeNetwork], bool] = lambda n: bool(n.calls)) -> Rig:
    """A rig whose daemon stops once ``done`` holds after a reconcile (default: the first)."""
    return Rig(flags, FakeSubnetManager(CONFIG, "10.244.7.0/24", peers=peers), done)


def test_start_up_acquires_writes_subnet_env_installs_rules_and_becomes_ready(
    flags: Flags,
) -> None:
    rig = make_rig(flags, peers=(peer(2), peer(3)))
    rig.serve()

    assert rig.previous == [PreviousRun()]
    assert [a.public_ip for a in rig.manager.acquired] == [OUR_ADDRESS]
    backend = rig.backends[0]
    assert backend.ctx.ext.name == "uplink0" and backend.ctx.netlink is rig.netlinks[0]
    network = backend.networks[0]
    assert network.calls == [(["10.244.2.0-24", "10.244.3.0-24"], True)]
    assert Path(flags.subnet_file).read_text() == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    ours = family_nets([(CONFIG.network, ipaddress.IPv4Network("10.244.7.0/24"))])
    assert rig.rules.setups == [(True, True, ours, [])]
    assert rig.manager.marked_available.is_set()
    assert network.closed  # shutdown closes the network (routes stay)
    assert len(rig.netlinks) == 1  # no blackhole thread without --ip-blackhole-route


def test_previous_subnet_env_reaches_the_manager_and_its_rules_are_replaced(
    flags: Flags,
) -> None:
    Path(flags.subnet_file).parent.mkdir()
    Path(flags.subnet_file).write_text(
        "FLANNEL_NETWORK=10.99.0.0/16\nFLANNEL_SUBNET=10.99.4.1/24\nFLANNEL_MTU=1450\n"
    )
    rig = make_rig(flags)
    rig.serve()
    previous = PreviousRun(network=ipaddress.IPv4Network("10.99.0.0/16"),
                           subnet=ipaddress.IPv4Network("10.99.4.0/24"))
    assert rig.previous == [previous]
    old = family_nets([(previous.network, previous.subnet)])
    assert [setup[3] for setup in rig.rules.setups] == [old]


def test_kernel_watch_kick_reaches_the_main_loop_as_a_full_pass(flags: Flags) -> None:
    def kick_once_then_stop(network: FakeNetwork) -> bool:
        if len(network.calls) == 1:
            rig.kernel_watches[0].notify()
        return len(network.calls) == 2

    rig = make_rig(flags, peers=(peer(2),), done=kick_once_then_stop)
    rig.serve()
    assert [full for _peers, full in rig.backends[0].networks[0].calls] == [True, True]


def test_blackhole_route_flag_syncs_our_subnet_through_its_own_netlink(tmp_path: Path) -> None:
    flags = Flags(subnet_file=str(tmp_path / "subnet.env"), ip_blackhole_route=True)
    rig = make_rig(flags)
    rig.serve()
    assert len(rig.netlinks) == 2  # the backend's, and the blackhole thread's own
    assert rig.netlinks[1].blackholes[0] == [ipaddress.IPv4Network("10.244.7.0/24")]


def test_unknown_backend_type_fails_before_the_kernel_is_touched(flags: Flags) -> None:
    rig = make_rig(flags)
    rig.manager = FakeSubnetManager(
        parse_net_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "nope"}}'),
        "10.244.7.0/24",
    )
    parts = rig.parts()
    daemon = Daemon(flags, rig.stop, Parts(parts.manager, backend_entry, parts.netlink,
                                           parts.rules, parts.kernel_watch))
    try:
        with pytest.raises(ConfigError, match="unknown backend type: nope"):
            daemon.serve()
    finally:
        rig.stop.set()
        daemon.shutdown()
    assert rig.netlinks == [] and rig.manager.acquired == []
    assert not Path(flags.subnet_file).exists()


def test_network_policy_without_br_netfilter_refuses_to_start_first(flags: Flags) -> None:
    import dataclasses

    policy_flags = dataclasses.replace(flags, kube_subnet_mgr=True, network_policy=True)
    rig = make_rig(policy_flags)

    def no_br_netfilter() -> None:
        raise ConfigError("--network-policy needs br_netfilter: modprobe br_netfilter")

    parts = dataclasses.replace(rig.parts(), bridge_netfilter=no_br_netfilter)
    daemon = Daemon(policy_flags, rig.stop, parts)
    try:
        with pytest.raises(ConfigError, match="modprobe br_netfilter"):
            daemon.serve()
    finally:
        rig.stop.set()
        daemon.shutdown()
    assert rig.previous == [] and rig.netlinks == []  # nothing was touched


def test_network_policy_needs_a_manager_that_can_watch_objects(flags: Flags) -> None:
    import dataclasses

    policy_flags = dataclasses.replace(flags, kube_subnet_mgr=True, network_policy=True)
    rig = make_rig(policy_flags)
    parts = dataclasses.replace(rig.parts(), bridge_netfilter=lambda: None)
    daemon = Daemon(policy_flags, rig.stop, parts)
    try:
        with pytest.raises(ConfigError, match="needs the Kubernetes subnet manager"):
            daemon.serve()
    finally:
        rig.stop.set()
        daemon.shutdown()


def test_store_failures_at_start_up_are_counted_and_shown_with_their_reason(
    flags: Flags,
) -> None:
    seen: list[tuple[str, ...]] = []

    class FlakyStore(FakeSubnetManager):
        failures = 2

        def get_network_config(self) -> NetConfig:
            seen.append(daemon._health.details())  # what /readyz shows at each attempt
            if self.failures:
                self.failures -= 1
                raise StoreError("cannot reach etcd at 198.18.0.9:2379")
            return super().get_network_config()

    rig = Rig(flags, FlakyStore(CONFIG, "10.244.7.0/24"), lambda n: bool(n.calls))
    daemon = Daemon(flags, rig.stop, rig.parts())
    rig.serve(daemon)
    assert seen[0] == ()
    assert any("subnet store failing for" in line and "198.18.0.9:2379" in line
               for line in seen[2]), seen
    assert not any("subnet store" in line for line in daemon._health.details())  # cleared
    assert b"flannel_store_errors_total 2.0" in daemon._metrics.exposition()


def test_kube_mode_without_network_policy_removes_a_left_over_policy_table(
    flags: Flags, tmp_path: Path,
) -> None:
    import dataclasses

    removed: list[bool] = []

    class LeftOver:
        def remove(self) -> bool:
            removed.append(True)
            return True

    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    kube_flags = dataclasses.replace(flags, kube_subnet_mgr=True, net_config_path=str(conf))
    rig = make_rig(kube_flags)
    parts = dataclasses.replace(rig.parts(), policy_table=LeftOver)
    rig.parts = lambda: parts  # type: ignore[method-assign]
    rig.serve()
    assert removed == [True]


DUAL_CONFIG = parse_net_config(
    '{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56",'
    ' "Backend": {"Type": "fake"}}'
)
OUR_ADDRESS6 = ipaddress.IPv6Address("fd00:198:18::1")


class DualNetlink(FakeNetlink):
    """The uplink with an IPv6 address too, and both default routes on it."""

    def interfaces(self) -> list[InterfaceInfo]:
        lo, uplink = super().interfaces()
        return [lo, InterfaceInfo("uplink0", 2, 1500, True,
                                  (*uplink.addresses, InterfaceAddress(OUR_ADDRESS6, 64)))]

    def default_route_ifindex(self, family: int) -> int | None:
        return 2


class AnnotatedStore(FakeSubnetManager):
    """A store whose Node carries node-public-ipv6."""

    def public_ipv6_override(self) -> ipaddress.IPv6Address | None:
        return ipaddress.IPv6Address("2001:db8::77")


def serve_dual_stack(rig: Rig, flags: Flags) -> None:
    """Run the daemon with netlinks that see a dual-stack interface."""

    def netlink() -> FakeNetlink:
        rig.netlinks.append(DualNetlink())
        return rig.netlinks[-1]

    rig.serve(Daemon(flags, rig.stop, dataclasses.replace(rig.parts(), netlink=netlink)))


@pytest.mark.parametrize(
    ("store", "advertised"),
    [(FakeSubnetManager, OUR_ADDRESS6), (AnnotatedStore, ipaddress.IPv6Address("2001:db8::77"))],
)
def test_dual_stack_start_up_takes_the_interface_ipv6_or_the_node_override(
    flags: Flags, store: type[FakeSubnetManager], advertised: ipaddress.IPv6Address
) -> None:
    rig = Rig(flags, store(DUAL_CONFIG, "10.244.7.0/24", "fd00:10:244:7::/64"),
              lambda n: bool(n.calls))
    serve_dual_stack(rig, flags)
    ext = rig.backends[0].ctx.ext
    assert (ext.iface_addr, ext.iface_addr6, ext.ext_addr6) == (OUR_ADDRESS, OUR_ADDRESS6, advertised)
    assert Path(flags.subnet_file).read_text() == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )


class RememberingStore(FakeSubnetManager):
    """A store that still has what this node advertised before (its lease, its annotations)."""

    def previous_attrs(self, public_ip: ipaddress.IPv4Address | None) -> LeaseAttrs | None:
        return LeaseAttrs(
            public_ip=OUR_ADDRESS, public_ipv6=OUR_ADDRESS6, backend_type="vxlan",
            backend_data='{"VNI":1,"VtepMAC":"0a:00:00:00:00:04"}',
            backend_v6_data='{"VNI":1,"VtepMAC":"0a:00:00:00:00:06"}',
        )


def test_the_backend_is_seeded_with_both_families_previous_data(flags: Flags) -> None:
    """So vxlan recreates flannel.1 and flannel-v6.1 with the MACs its peers know."""
    rig = Rig(flags, RememberingStore(DUAL_CONFIG, "10.244.7.0/24", "fd00:10:244:7::/64"),
              lambda n: bool(n.calls))
    serve_dual_stack(rig, flags)
    ctx = rig.backends[0].ctx
    assert (ctx.previous_data, ctx.previous_v6_data) == (
        '{"VNI":1,"VtepMAC":"0a:00:00:00:00:04"}', '{"VNI":1,"VtepMAC":"0a:00:00:00:00:06"}')


def test_the_switch_interval_is_lowered_for_the_loop_and_again_once_peers_are_programmed(
    flags: Flags,
) -> None:
    rig = make_rig(flags, peers=(peer(2),))
    calls: list[tuple[float, int]] = []

    def switch_interval(seconds: float) -> None:
        passes = len(rig.backends[0].networks[0].calls) if rig.backends else 0
        calls.append((seconds, passes))

    rig.serve(Daemon(flags, rig.stop, rig.parts(), switch_interval=switch_interval))
    # the loop's interval before its first pass, the serving one after it
    assert calls == [(LOOP_SWITCH_INTERVAL, 0), (SERVING_SWITCH_INTERVAL, 1)]


def test_start_done_is_called_once_after_the_first_pass(flags: Flags) -> None:
    rig = make_rig(flags, peers=(peer(2),))
    calls: list[int] = []

    def start_done() -> None:
        calls.append(len(rig.backends[0].networks[0].calls))

    rig.serve(Daemon(flags, rig.stop, rig.parts(), start_done=start_done))
    assert calls == [1]


class RulesAfterFirstPass(FakeRules):
    """Rules whose setup waits for the first pass to begin (as slow iptables would)."""

    def __init__(self) -> None:
        super().__init__()
        self.first_pass = threading.Event()
        self.beside: list[bool] = []

    def setup(
        self, masq: bool, forward: bool, nets: Sequence[FamilyNets],
        previous: Sequence[FamilyNets] = (),
    ) -> None:
        self.beside.append(self.first_pass.wait(GUARD_SECONDS / 3))
        super().setup(masq, forward, nets, previous)


def test_rules_and_subnet_env_go_in_beside_the_first_pass_and_ready_waits_for_them(
    flags: Flags,
) -> None:
    rules = RulesAfterFirstPass()
    env_at_first_pass: list[bool] = []

    def done(network: FakeNetwork) -> bool:
        env_at_first_pass.append(Path(flags.subnet_file).exists())
        rules.first_pass.set()
        return True

    rig = Rig(flags, FakeSubnetManager(CONFIG, "10.244.7.0/24", peers=(peer(2),)), done)
    rig.rules = rules
    daemon = rig.serve()
    assert rules.beside == [True]  # the first pass began while the rules were going in
    assert env_at_first_pass == [False]  # subnet.env is written after the rules, as before
    assert Path(flags.subnet_file).read_text().startswith("FLANNEL_NETWORK=10.244.0.0/16\n")
    assert daemon._health.ready


class BrokenRules(FakeRules):
    def setup(
        self, masq: bool, forward: bool, nets: Sequence[FamilyNets],
        previous: Sequence[FamilyNets] = (),
    ) -> None:
        raise RuntimeError("a bug in the rules code")


def test_an_unexpected_error_while_announcing_ends_the_start(flags: Flags) -> None:
    rig = make_rig(flags, peers=(peer(2),))
    rig.rules = BrokenRules()
    with pytest.raises(RuntimeError, match="a bug in the rules code"):
        rig.serve()


def test_an_unexpected_error_while_announcing_is_logged_at_once_and_ends_the_start_even_if_the_first_pass_keeps_failing(
    flags: Flags, caplog: pytest.LogCaptureFixture,
) -> None:
    first_pass_failed = threading.Event()

    class BrokenAfterTheFirstPass(FakeRules):
        def setup(
            self, masq: bool, forward: bool, nets: Sequence[FamilyNets],
            previous: Sequence[FamilyNets] = (),
        ) -> None:
            first_pass_failed.wait(GUARD_SECONDS / 3)
            raise RuntimeError("a bug in the rules code")

    def fail(network: FakeNetwork) -> bool:
        first_pass_failed.set()
        raise DataplaneError("the kernel refused")

    rig = make_rig(flags, peers=(peer(2),), done=fail)
    rig.rules = BrokenAfterTheFirstPass()
    # (before: the daemon ran on, silent, until the guard stopped it without an error)
    with pytest.raises(RuntimeError, match="a bug in the rules code"):
        rig.serve()
    errors = [r.getMessage() for r in caplog.records
              if r.name == "flanneld.daemon" and r.levelname == "ERROR"]
    assert len(errors) == 1 and "a bug in the rules code" in errors[0], errors
    assert "failed unexpectedly" in errors[0] and "flanneld stops" in errors[0]
    assert not rig.manager.marked_available.is_set()


class HeldRules(FakeRules):
    """Rules whose setup holds until the test releases it; counts the resyncs that reach them."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.resyncs = 0

    def setup(
        self, masq: bool, forward: bool, nets: Sequence[FamilyNets],
        previous: Sequence[FamilyNets] = (),
    ) -> None:
        self.entered.set()
        assert self.release.wait(GUARD_SECONDS)
        super().setup(masq, forward, nets, previous)

    def resync(self) -> int:
        self.resyncs += 1
        return 2


def test_the_rules_resync_waits_for_the_start_announce(flags: Flags) -> None:
    """Else it finds the chains the first setup is still installing "incomplete" and
    restores them, a second iptables-restore beside the first."""
    manager = FakeSubnetManager(CONFIG, "10.244.7.0/24")
    lease = manager.acquire_lease(LeaseAttrs(public_ip=OUR_ADDRESS, backend_type="fake"))
    rules = HeldRules()
    node = Node(flags, CONFIG, manager, None, rules,  # type: ignore[arg-type] # no re-register
                HealthState(), Metrics(), FakeNetwork(lease, lambda n: None))
    start = threading.Thread(target=node.announce, args=(lease, []), name="test-announce")
    start.start()
    try:
        assert rules.entered.wait(GUARD_SECONDS)
        assert node.resync_rules() == 0  # the rules are going in, not damaged
        assert rules.resyncs == 0
    finally:
        rules.release.set()
        start.join(GUARD_SECONDS)
    assert not start.is_alive()
    assert node.resync_rules() == 2  # and once they are in, it restores what is missing
    assert rules.resyncs == 1


def test_a_reacquire_announces_after_the_start_whichever_thread_runs_first(flags: Flags) -> None:
    """The start's announce runs on a thread of its own: when that thread is scheduled
    late, the loop's re-acquire must still announce last, replacing the start's lease."""
    manager = FakeSubnetManager(CONFIG, "10.244.7.0/24")
    old = manager.acquire_lease(LeaseAttrs(public_ip=OUR_ADDRESS, backend_type="fake"))
    new = dataclasses.replace(old, subnet=ipaddress.IPv4Network("10.244.8.0/24"))
    rules = FakeRules()
    node = Node(flags, CONFIG, manager, None, rules,  # type: ignore[arg-type] # no re-register
                HealthState(), Metrics(), FakeNetwork(old, lambda n: None))
    waiting = threading.Event()

    class SeenWaiting(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.set()
            return super().wait(timeout)

    node._started = SeenWaiting()
    reacquire = threading.Thread(target=node.on_lease, args=(new,), name="test-reacquire")
    reacquire.start()
    try:
        assert waiting.wait(GUARD_SECONDS)  # the re-acquire waits for the start's announce
        assert rules.setups == []  # (before: its rules went in here, first)
        node.announce(old, [])
    finally:
        reacquire.join(GUARD_SECONDS)
    assert not reacquire.is_alive()
    nets = [family_nets([(CONFIG.network, lease.subnet)]) for lease in (old, new)]
    assert [(setup[2], setup[3]) for setup in rules.setups] == [(nets[0], []), (nets[1], nets[0])]
