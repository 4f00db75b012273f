"""NetworkPolicy informers and reconciler against the API server double (no kernel).

The table is a fake that records every ruleset it is asked to hold; the
expected ruleset is always the pure function's output for the objects the
double holds, so "the kernel ends with exactly the desired ruleset" is
checked after API restarts, expired watches and policy floods.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flanneld.lab.apiserver import KubeAPIDouble
from flanneld.netpol.controller import PolicyController, policy_threads
from flanneld.netpol.model import Cluster, parse_namespace, parse_pod, parse_policy
from flanneld.netpol.ruleset import LocalNode, Ruleset, desired_ruleset
from subnet.kube import KubeSubnetManager, KubeTimings
from subnet.kube_state import KubeSettings

pytestmark = pytest.mark.integration

FAST = KubeTimings(request_timeout=5, watch_timeout=5, retry_interval=0.05, retry_deadline=0.5,
                   sync_timeout=1, backoff_initial=0.05, backoff_max=0.5, stop_poll=0.05)


@dataclass
class FakeTable:
    applied: list[Ruleset] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, desired: Ruleset, verify: bool = True) -> Any:
        with self.lock:
            same = bool(self.applied) and self.applied[-1] == desired
            self.applied.append(desired)
        return type("R", (), {"kind": "none" if same else "full", "commands": 0})()

    def counters(self) -> dict[str, int]:
        return {}

    def last(self) -> Ruleset | None:
        with self.lock:
            return self.applied[-1] if self.applied else None


def pod(ns: str, name: str, ip: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def expected(api: KubeAPIDouble) -> Ruleset:
    """The pure function's ruleset for what the double holds now."""
    policies = [parse_policy(o)[0] for o in api.list_objects("networkpolicies")]
    namespaces = [parse_namespace(o)[0] for o in api.list_objects("namespaces")]
    pods = [parse_pod(o)[0] for o in api.list_objects("pods")]
    cluster = Cluster(tuple(p for p in policies if p), tuple(n for n in namespaces if n),
                      tuple(p for p in pods if p))
    return desired_ruleset(cluster, LocalNode("me")).ruleset


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[KubeAPIDouble, FakeTable, PolicyController]]:
    net_conf = tmp_path / "net-conf.json"
    net_conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    stop = threading.Event()
    with KubeAPIDouble() as api:
        api.put_object({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "x", "labels": {"ns": "x"}}})
        api.put_object(pod("x", "a", "10.244.1.2", "me", {"pod": "a"}))
        api.put_object(pod("x", "b", "10.244.2.2", "other", {"pod": "b"}))
        manager = KubeSubnetManager.connect(
            KubeSettings(api_url=api.url, net_config_path=str(net_conf)), {"NODE_NAME": "me"},
            FAST)
        table = FakeTable()
        controller, threads = policy_threads(manager, table, lambda: (), None, stop, resync=0.5)
        for t in threads:
            t.start()
        try:
            yield api, table, controller
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            manager.close()
            assert not any(t.is_alive() for t in threads)


def test_policy_created_is_enforced_and_survives_api_restart_and_410(
    rig: tuple[KubeAPIDouble, FakeTable, PolicyController],
) -> None:
    api, table, _ = rig
    wait_until(lambda: table.last() == expected(api))
    api.put_object(policy("x", "deny", {"podSelector": {}}))
    wait_until(lambda: table.last() == expected(api))
    isolated = table.last()
    assert isolated is not None
    assert any(m.elements for m in isolated.maps)

    api.stop()  # unreachable: nothing may open up
    count = len(table.applied)
    wait_until(lambda: len(table.applied) > count + 2)  # resync ticks keep applying
    assert table.last() == isolated
    api.start()
    api.update_object("pods", "b", lambda o: o["metadata"]["labels"].update(pod="z"), "x")
    wait_until(lambda: table.last() == expected(api))

    api.compact()
    api.drop_watches()
    api.put_object(policy("x", "allow", {"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "z"}}}]}]}))
    wait_until(lambda: table.last() == expected(api))
    api.delete_object("networkpolicies", "deny", "x")
    api.delete_object("networkpolicies", "allow", "x")
    wait_until(lambda: table.last() == expected(api))
    last = table.last()
    assert last is not None and not any(m.elements for m in last.maps)


def test_hundreds_of_policies_and_a_flapping_label_end_exactly_desired(
    rig: tuple[KubeAPIDouble, FakeTable, PolicyController],
) -> None:
    api, table, _ = rig
    for i in range(200):
        api.put_object(policy("x", f"p{i}", {"podSelector": {"matchLabels": {"pod": "a"}},
                                             "ingress": [{"ports": [{"port": 1000 + i}]}]}))
    for i in range(20):
        api.update_object("pods", "b", lambda o, i=i: o["metadata"]["labels"].update(
            pod="a" if i % 2 else "b"), "x")
    wait_until(lambda: table.last() == expected(api), timeout=60)


def test_bad_policy_is_logged_with_its_name_and_allows_nothing(
    rig: tuple[KubeAPIDouble, FakeTable, PolicyController], caplog: pytest.LogCaptureFixture,
) -> None:
    api, table, _ = rig
    api.put_object(policy("x", "broken", {"podSelector": {}, "ingress": [
        {"ports": [{"protocol": "ICMP"}]}]}))
    wait_until(lambda: table.last() == expected(api))
    assert any("x/broken" in r.getMessage() and "ICMP" in r.getMessage() for r in caplog.records)
    last = table.last()
    assert last is not None
    pol_chains = [c for c in last.chains if c.name.startswith("pol_")]
    assert pol_chains and all(not c.rules for c in pol_chains)  # isolated, nothing allowed


def test_flannelctl_netpol_explain_names_the_selecting_policies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flanneld import ctl

    with KubeAPIDouble() as api:
        api.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        api.put_object(pod("x", "a", "10.244.1.2", "me", {"pod": "a"}))
        api.put_object(policy("x", "deny", {"podSelector": {}}))
        api.put_object(policy("x", "web", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"ports": [{"port": 80}]}]}))
        assert ctl.main(["netpol", "explain", "--api-url", api.url, "x/a"]) == 0
    out = capsys.readouterr().out
    assert "Ingress: isolated by 2 policies" in out
    assert "x/deny: allows nothing" in out and "x/web: 1 rule" in out
    assert "Egress: not isolated" in out
