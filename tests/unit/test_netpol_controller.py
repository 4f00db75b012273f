"""The policy store and reconciler without threads: events, metrics, apply failures."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flanneld.exposition import Registry
from flanneld.netpol.controller import PolicyController, PolicyMetrics, PolicyStore
from flanneld.netpol.ruleset import LocalNode, Ruleset
from flanneld.trafficmgr.policy import ApplyResult
from subnet.errors import DataplaneError
from subnet.kube_state import ObjectEvent

NS = {"metadata": {"name": "x"}}
POD = {"metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
       "spec": {"nodeName": "me"}, "status": {"podIP": "10.0.0.1", "phase": "Running"}}
DENY = {"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}


@dataclass
class FakeTable:
    fail: bool = False
    applied: list[Ruleset] = field(default_factory=list)
    drops: int = 0

    def apply(self, desired: Ruleset, verify: bool = True) -> ApplyResult:
        if self.fail:
            raise DataplaneError("nft: Operation not permitted")
        self.applied.append(desired)
        return ApplyResult("full", 3)

    def counters(self) -> dict[str, int]:
        if not self.applied:
            return {}
        chains = [c.name for c in self.applied[-1].chains if c.name.startswith("iso_")]
        return dict.fromkeys(chains, self.drops)


def synced_store(*policies: dict[str, Any]) -> PolicyStore:
    store = PolicyStore()
    store.handle(ObjectEvent("namespaces", "SNAPSHOT", (NS,)))
    store.handle(ObjectEvent("pods", "SNAPSHOT", (POD,)))
    assert not store.synced  # policies not listed yet: nothing may be applied
    store.handle(ObjectEvent("networkpolicies", "SNAPSHOT", policies))
    assert store.synced
    return store


def test_store_events_and_equal_updates_keep_the_object() -> None:
    store = synced_store()
    pod_before = store.cluster().pods[0]
    assert not store.handle(ObjectEvent("pods", "MODIFIED", (POD,)))
    assert store.cluster().pods[0] is pod_before
    assert store.handle(ObjectEvent("networkpolicies", "ADDED", (DENY,)))
    assert [p.key for p in store.cluster().policies] == ["x/deny"]
    assert store.handle(ObjectEvent("networkpolicies", "DELETED", (DENY,)))
    assert store.cluster().policies == ()


def make(table: FakeTable, registry: Registry) -> PolicyController:
    controller = PolicyController(table, lambda: LocalNode("me"), PolicyMetrics(registry),
                                  threading.Event())
    controller.store = synced_store(DENY)
    return controller


def test_sync_records_policies_rules_and_drops_per_policy() -> None:
    registry = Registry()
    table = FakeTable(drops=7)
    outcome = make(table, registry).sync({"networkpolicies added": 1})
    assert outcome.kind == "full"
    assert registry.sample_value("flannel_netpol_policies") == 1
    assert registry.sample_value("flannel_netpol_dropped_packets", {"policy": "x/deny"}) == 7
    assert registry.sample_value("flannel_netpol_isolated_pod_addresses",
                                     {"direction": "ingress"}) == 1
    assert registry.sample_value("flannel_netpol_apply_failing") == 0


def test_apply_failure_is_reported_not_raised() -> None:
    registry = Registry()
    outcome = make(FakeTable(fail=True), registry).sync()
    assert outcome.kind == "failed"
    assert registry.sample_value("flannel_netpol_apply_failing") == 1
