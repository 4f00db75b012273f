"""``--network-policy``: informers in, one reconciler thread, the policy table out.

Threads (see :func:`policy_threads`): one list+watch per kind
(``networkpolicies``, ``namespaces``, ``pods``; :class:`subnet.kube.ObjectWatch`)
puts :class:`~subnet.kube_state.ObjectEvent` messages on one queue; the
reconciler (:class:`PolicyController`) owns the :class:`PolicyStore` and the
table.  It applies nothing before all three kinds have been listed once (so
a restart keeps the previous table, with its isolation, until the new view is
complete), then after each batch of events and every ``resync`` seconds
(repairing manual damage): desired ruleset (pure) -> ``PolicyTable.apply``
(no-op, element changes, or an atomic full replace).  While the API server is
unreachable no event arrives, so the last rules stay in force.

One INFO line per sync that changed the kernel, e.g. ``network policy: 1
policies; local pod addresses isolated: 1 ingress, 0 egress; 11 rules;
incremental apply (10 nft commands) in 10.5 ms after networkpolicies added 1``.  Metrics (``flannel_netpol_*``) live in
the daemon's registry.  Objects that cannot be enforced as written are logged
once per content with namespace/name and reason (see
:mod:`flanneld.netpol.model`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from flanneld.exposition import Gauge, Histogram, Registry
from flanneld.netpol.model import (
    Cluster,
    IPNetwork,
    Namespace,
    Pod,
    Policy,
    Problem,
    parse_namespace,
    parse_pod,
    parse_policy,
)
from flanneld.netpol.ruleset import Desired, LocalNode, PeerCache, Ruleset, desired_ruleset
from subnet.errors import DataplaneError, StoreError
from subnet.kube_state import JSON, WATCHED_KINDS, ObjectEvent

log = logging.getLogger(__name__)

_PARSERS: Mapping[str, Callable[[JSON], tuple[Any, list[Problem]]]] = {
    "networkpolicies": parse_policy,
    "namespaces": parse_namespace,
    "pods": parse_pod,
}


@runtime_checkable
class ObjectSource(Protocol):
    """What the Kubernetes subnet manager offers the policy engine."""

    node_name: str

    def object_watch(self, kind: str) -> Any:
        """An object with ``run(sink, stop, report)`` (subnet.kube.ObjectWatch)."""
        ...


class Table(Protocol):
    """The kernel side (flanneld.trafficmgr.policy.PolicyTable)."""

    def apply(self, desired: Ruleset, verify: bool = True) -> Any: ...

    def counters(self) -> dict[str, int]: ...


def _key(obj: JSON) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(meta, dict)
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class PolicyStore:
    """The parsed objects of the three kinds, as the informers describe them."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, Any]] = {k: {} for k in WATCHED_KINDS}
        self._problems: dict[tuple[str, str], tuple[Problem, ...]] = {}
        self._listed: set[str] = set()

    @property
    def synced(self) -> bool:
        return self._listed == set(WATCHED_KINDS)

    def handle(self, event: ObjectEvent) -> bool:
        """Apply one informer message; True when the parsed view changed."""
        values = self._values[event.kind]
        before = dict(values)
        if event.type == "SNAPSHOT":
            self._listed.add(event.kind)
            values.clear()
            for obj in event.objects:
                self._put(event.kind, obj)
        elif event.type == "DELETED":
            for obj in event.objects:
                values.pop(_key(obj), None)
                self._problems.pop((event.kind, _key(obj)), None)
        else:
            for obj in event.objects:
                self._put(event.kind, obj)
        return values != before

    def _put(self, kind: str, obj: JSON) -> None:
        value, problems = _PARSERS[kind](obj)
        key = _key(obj)
        if tuple(problems) != self._problems.get((kind, key), ()):
            for problem in problems:
                log.warning("network policy: %s", problem)
        self._problems[(kind, key)] = tuple(problems)
        if value is not None and self._values[kind].get(key) != value:
            self._values[kind][key] = value  # an equal value keeps its object (PeerCache)

    def cluster(self) -> Cluster:
        policies: list[Policy] = list(self._values["networkpolicies"].values())
        namespaces: list[Namespace] = list(self._values["namespaces"].values())
        pods: list[Pod] = list(self._values["pods"].values())
        return Cluster(tuple(policies), tuple(namespaces), tuple(pods))


class PolicyMetrics:
    def __init__(self, registry: Registry) -> None:
        self.policies = Gauge("flannel_netpol_policies", "NetworkPolicies known.",
                              registry=registry)
        self.rules = Gauge("flannel_netpol_rules", "nft rules in our policy table.",
                           registry=registry)
        self.isolated = Gauge("flannel_netpol_isolated_pod_addresses",
                              "Local pod addresses isolated, by direction.", ["direction"],
                              registry=registry)
        self.sync = Histogram("flannel_netpol_sync_duration_seconds",
                              "Build and apply of the policy ruleset.", registry=registry)
        self.drops = Gauge("flannel_netpol_dropped_packets",
                           "Packets rejected at pods this policy isolates (counts of one "
                           "table; reset when the table is replaced).", ["policy"],
                           registry=registry)
        self.errors = Gauge("flannel_netpol_apply_failing",
                            "1 while the last apply of the policy table failed.",
                            registry=registry)


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    kind: str  # none / incremental / full / failed
    commands: int
    seconds: float


class PolicyController:
    """The reconciler thread's work: events in, table synced."""

    def __init__(
        self,
        table: Table,
        node: Callable[[], LocalNode],
        metrics: PolicyMetrics | None,
        stop: threading.Event,
        resync: float = 10.0,
    ) -> None:
        self.store = PolicyStore()
        self.events: queue.Queue[ObjectEvent] = queue.Queue()
        self._table = table
        self._node = node
        self._metrics = metrics
        self._stop = stop
        self._resync = resync
        self._cache = PeerCache()

    def put(self, event: ObjectEvent) -> None:
        self.events.put(event)

    def run(self) -> None:
        last_sync = 0.0
        while not self._stop.is_set():
            changes: Tally[str] = Tally()
            try:
                self._take(self.events.get(timeout=min(self._resync, 1.0)), changes)
            except queue.Empty:
                pass
            while True:
                try:
                    self._take(self.events.get_nowait(), changes)
                except queue.Empty:
                    break
            due = time.monotonic() - last_sync >= self._resync
            if self.store.synced and (changes or due):
                self.sync(changes, verify=due)  # the periodic pass reads the table back
                last_sync = time.monotonic() if due else last_sync

    def _take(self, event: ObjectEvent, changes: Tally[str]) -> None:
        if self.store.handle(event):
            what = {"ADDED": "added", "DELETED": "deleted", "MODIFIED": "modified"}
            changes[f"{event.kind} {what.get(event.type, 'listed')}"] += 1

    def sync(self, changes: Mapping[str, int] | None = None, verify: bool = True) -> SyncOutcome:
        """Build the desired ruleset and apply it; failures are logged and retried next tick."""
        started = time.monotonic()
        desired = desired_ruleset(self.store.cluster(), self._node(), self._cache)
        try:
            result = self._table.apply(desired.ruleset, verify)
            kind, commands = str(result.kind), int(result.commands)
        except DataplaneError as err:
            log.error("network policy: applying the ruleset failed: %s (retrying in %.0f s)",
                      err, self._resync)
            kind, commands = "failed", 0
        seconds = time.monotonic() - started
        if kind != "none":
            what = ", ".join(f"{k} {n}" for k, n in sorted((changes or {}).items()))
            isolated = {d: sum(len(m.elements) for m in desired.ruleset.maps
                               if m.name.startswith(d)) for d in ("ingress", "egress")}
            log.info("network policy: %d policies; local pod addresses isolated: %d ingress, "
                     "%d egress; %d rules; %s apply (%d nft commands) in %.1f ms after %s",
                     desired.policy_count, isolated["ingress"], isolated["egress"],
                     desired.ruleset.rule_count, kind, commands, seconds * 1000,
                     what or "a resync")
        self._record(desired, kind, seconds)
        return SyncOutcome(kind, commands, seconds)

    def _record(self, desired: Desired, kind: str, seconds: float) -> None:
        m = self._metrics
        if m is None:
            return
        m.policies.set(desired.policy_count)
        m.rules.set(desired.ruleset.rule_count)
        for direction in ("ingress", "egress"):
            m.isolated.labels(direction=direction).set(sum(
                len(mp.elements) for mp in desired.ruleset.maps if mp.name.startswith(direction)))
        m.sync.observe(seconds)
        m.errors.set(1 if kind == "failed" else 0)
        try:
            counters = self._table.counters()
        except DataplaneError:
            return
        drops: Tally[str] = Tally()
        for chain, owners in desired.drop_owners.items():
            for owner in owners:
                drops[owner] += counters.get(chain, 0)
        for policy, packets in drops.items():
            m.drops.labels(policy=policy).set(packets)


def policy_threads(
    source: ObjectSource,
    table: Table,
    pod_cidrs: Callable[[], tuple[IPNetwork, ...]],
    registry: Registry | None,
    stop: threading.Event,
    resync: float,
    report: Callable[[StoreError | None], None] | None = None,
) -> tuple[PolicyController, list[threading.Thread]]:
    """The reconciler and the three informers, not started."""
    controller = PolicyController(
        table, lambda: LocalNode(source.node_name, pod_cidrs()),
        PolicyMetrics(registry) if registry is not None else None, stop, resync,
    )
    threads = [threading.Thread(target=controller.run, name="netpol-sync", daemon=True)]
    for kind in WATCHED_KINDS:
        watch = source.object_watch(kind)
        args = (controller.put, stop) if report is None else (controller.put, stop, report)
        threads.append(threading.Thread(target=watch.run, args=args, name=f"netpol-watch-{kind}",
                                        daemon=True))
    return controller, threads
