"""The Kubernetes subnet manager against the API server double (flanneld/lab/apiserver)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flanneld.daemon import kube_settings
from flanneld.flags import Flags
from flanneld.lab.apiserver import KubeAPIDouble
from flanneld.peertable import loses_own_lease
from subnet.errors import ConfigError, LeaseError, StopRequested, StoreError
from subnet.kube import KubeSubnetManager, KubeTimings, connect_and_sync
from subnet.kube_state import KubeSettings
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot, SubnetManager

pytestmark = pytest.mark.integration

P = "flannel.alpha.coreos.com/"
NET_CONF = '{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}'
MAC = "0e:1a:2b:3c:4d:5e"
VXLAN_DATA = '{"VNI":1,"VtepMAC":"' + MAC + '"}'
FAST = KubeTimings(request_timeout=5, watch_timeout=5, retry_interval=0.05, retry_deadline=0.5,
                   sync_timeout=1, backoff_initial=0.05, backoff_max=0.5, stop_poll=0.05)
OWN_ATTRS = LeaseAttrs(public_ip=ipaddress.IPv4Address("192.168.50.1"), backend_type="vxlan",
                       backend_data=VXLAN_DATA)


def peer_annotations(ip: str, mac: str = "aa:bb:cc:00:00:01") -> dict[str, str]:
    return {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": '{"VNI":1,"VtepMAC":"' + mac + '"}',
        P + "public-ip": ip,
    }


@pytest.fixture
def api() -> Iterator[KubeAPIDouble]:
    with KubeAPIDouble() as double:
        yield double


@pytest.fixture
def net_conf(tmp_path: Path) -> Path:
    path = tmp_path / "net-conf.json"
    path.write_text(NET_CONF)
    return path


@pytest.fixture
def make_manager(
    api: KubeAPIDouble, net_conf: Path
) -> Iterator[Callable[..., KubeSubnetManager]]:
    made: list[KubeSubnetManager] = []

    def make(node: str = "me", environ: dict[str, str] | None = None,
             **settings: Any) -> KubeSubnetManager:
        options: dict[str, Any] = {"api_url": api.url, "net_config_path": str(net_conf)}
        options.update(settings)
        env = {"NODE_NAME": node} if environ is None else environ
        manager = KubeSubnetManager.connect(KubeSettings(**options), env, FAST)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


class Watcher:
    """Runs watch_leases in a thread and keeps the peer map its messages describe."""

    def __init__(self, manager: KubeSubnetManager) -> None:
        self.messages: queue.Queue[LeaseMessage] = queue.Queue()
        self.log: list[LeaseMessage] = []
        self.peers: dict[str, Lease] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=manager.watch_leases,
                                       args=(self.messages.put, self.stop))
        self.thread.start()

    def pump(self, timeout: float) -> None:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        self.log.append(message)
        if isinstance(message, Snapshot):
            self.peers = {lease.key: lease for lease in message.leases}
        elif isinstance(message, LeaseAdded):
            self.peers[message.lease.key] = message.lease
        else:
            self.peers.pop(message.key, None)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> float:
        """Seconds until predicate held; fails after ``timeout``."""
        started = time.monotonic()
        while not predicate():
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                pytest.fail(f"timed out; peers are {sorted(self.peers)}, log {self.log[-5:]}")
            self.pump(min(remaining, 0.1))
        return time.monotonic() - started

    def wait_for_keys(self, keys: set[str], timeout: float = 5.0) -> float:
        return self.wait_for(lambda: set(self.peers) == keys, timeout)

    def settle(self, seconds: float = 0.3) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(0.05)

    def snapshots(self) -> int:
        return sum(isinstance(m, Snapshot) for m in self.log)

    def close(self) -> float:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        return time.monotonic() - started


@pytest.fixture
def watch(make_manager: Callable[..., KubeSubnetManager]) -> Iterator[Callable[[], Watcher]]:
    started: list[Watcher] = []

    def start() -> Watcher:
        watcher = Watcher(make_manager())
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.close()


# --- acquire ----------------------------------------------------------------------


def test_own_lease_from_pod_cidr_and_upstream_annotations(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24", annotations={"other/keep": "x"})
    lease = make_manager().acquire_lease(OWN_ATTRS)
    assert lease.subnet == ipaddress.IPv4Network("10.244.7.0/24")
    assert lease.ipv6_subnet is None
    assert lease.expiration is None
    assert lease.attrs == OWN_ATTRS
    assert api.node("me")["metadata"]["annotations"] == {
        "other/keep": "x",
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": VXLAN_DATA,
        P + "public-ip": "192.168.50.1",
    }
    patches = api.requests_matching("PATCH")
    assert [r.path for r in patches] == ["/api/v1/nodes/me/status"]
    assert patches[0].content_type == "application/strategic-merge-patch+json"


def test_second_acquire_with_same_attrs_sends_no_patch(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    manager = make_manager()
    manager.acquire_lease(OWN_ATTRS)
    manager.acquire_lease(OWN_ATTRS)
    assert len(api.requests_matching("PATCH")) == 1
    changed = LeaseAttrs(public_ip=ipaddress.IPv4Address("192.168.50.9"), backend_type="vxlan",
                         backend_data=VXLAN_DATA)
    manager.acquire_lease(changed)
    patches = api.requests_matching("PATCH")
    assert len(patches) == 2
    assert patches[1].body == {"metadata": {"annotations": {P + "public-ip": "192.168.50.9"}}}


def test_missing_pod_cidr_explains_the_fix(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me")
    with pytest.raises(LeaseError) as caught:
        make_manager().acquire_lease(OWN_ATTRS)
    text = str(caught.value)
    assert text.startswith('node "me" pod cidr not assigned')
    assert "--allocate-node-cidrs=true" in text and "--cluster-cidr" in text
    assert "kubeadm init --pod-network-cidr" in text
    assert api.requests_matching("PATCH") == []


def test_pod_cidr_outside_network_uses_upstream_message(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.99.1.0/24")
    with pytest.raises(LeaseError) as caught:
        make_manager().acquire_lease(OWN_ATTRS)
    assert str(caught.value) == (
        'subnet "10.244.0.0/16" specified in the flannel net config doesn\'t contain '
        '"10.99.1.0/24" PodCIDR of the "me" node'
    )
    assert api.requests_matching("PATCH") == []


def test_three_pod_cidrs_are_rejected(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidrs=["10.244.1.0/24", "fd00::/64", "10.244.2.0/24"])
    with pytest.raises(LeaseError, match='node "me" pod cidrs should be IPv4/IPv6 only or dualstack'):
        make_manager().acquire_lease(OWN_ATTRS)


def test_public_ip_overwrite_is_honoured(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24",
                 annotations={P + "public-ip-overwrite": "203.0.113.7"})
    lease = make_manager().acquire_lease(OWN_ATTRS)
    annotations = api.node("me")["metadata"]["annotations"]
    assert annotations[P + "public-ip"] == "203.0.113.7"
    assert annotations[P + "public-ip-overwrite"] == "203.0.113.7"
    assert lease.attrs.public_ip == ipaddress.IPv4Address("192.168.50.1")


def test_host_gw_writes_null_backend_data(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    make_manager().acquire_lease(LeaseAttrs(public_ip=ipaddress.IPv4Address("192.168.50.1"),
                                            backend_type="host-gw"))
    annotations = api.node("me")["metadata"]["annotations"]
    assert annotations[P + "backend-data"] == "null"
    assert annotations[P + "backend-type"] == "host-gw"


def test_dual_stack_vxlan_lease_and_annotations(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager], net_conf: Path
) -> None:
    net_conf.write_text('{"Network":"10.244.0.0/16","EnableIPv6":true,'
                        '"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')
    api.add_node("me", pod_cidrs=["10.244.7.0/24", "fd00:10:244:7::/64"])
    attrs = LeaseAttrs(public_ip=ipaddress.IPv4Address("192.168.50.1"),
                       public_ipv6=ipaddress.IPv6Address("fd99::1"), backend_type="vxlan",
                       backend_data=VXLAN_DATA, backend_v6_data='{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}')
    lease = make_manager().acquire_lease(attrs)
    assert lease.ipv6_subnet == ipaddress.IPv6Network("fd00:10:244:7::/64")
    annotations = api.node("me")["metadata"]["annotations"]
    assert annotations[P + "public-ipv6"] == "fd99::1"
    assert annotations[P + "backend-v6-data"] == '{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}'


def test_patch_is_retried_after_server_errors(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    api.fail_next(2, 500, method="PATCH")
    make_manager().acquire_lease(OWN_ATTRS)
    assert len(api.requests_matching("PATCH")) == 3
    assert api.node("me")["metadata"]["annotations"][P + "kube-subnet-manager"] == "true"


def test_patch_gives_up_after_the_retry_deadline(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    api.fail_next(1000, 503, method="PATCH")
    started = time.monotonic()
    with pytest.raises(LeaseError) as caught:
        make_manager().acquire_lease(OWN_ATTRS)
    assert str(caught.value).startswith(
        'timeout contacting kube-api, failed to patch node "me". Error: PATCH node status: 503')
    assert time.monotonic() - started < FAST.retry_deadline + 1
    assert 5 <= len(api.requests_matching("PATCH")) <= 12


def test_forbidden_patch_fails_without_retrying(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    api.fail_next(5, 403, method="PATCH")
    with pytest.raises(LeaseError, match="403"):
        make_manager().acquire_lease(OWN_ATTRS)
    assert len(api.requests_matching("PATCH")) == 1


def test_missing_node_times_out_like_upstream(
    make_manager: Callable[..., KubeSubnetManager]
) -> None:
    manager = make_manager()
    started = time.monotonic()
    with pytest.raises(LeaseError, match='^failed to get node "me": GET node: 404 nodes "me" not found$'):
        manager.acquire_lease(OWN_ATTRS)
    assert time.monotonic() - started < 10  # gives up after its 0.5 s retry deadline


# --- helpers for the daemon ---------------------------------------------------------


def test_node_public_ip_annotations_are_read(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24",
                 annotations={P + "node-public-ip": "198.51.100.4",
                              P + "node-public-ipv6": "2001:db8::4"})
    api.add_node("plain", pod_cidr="10.244.8.0/24")
    assert make_manager().node_public_ip_override() == (
        ipaddress.IPv4Address("198.51.100.4"), ipaddress.IPv6Address("2001:db8::4"))
    assert make_manager("plain").node_public_ip_override() == (None, None)
    api.annotate_node("plain", {P + "node-public-ip": "not-an-ip"})
    with pytest.raises(ConfigError, match="node-public-ip"):
        make_manager("plain").node_public_ip_override()


def test_previous_attrs_and_public_ip_override_for_the_daemon(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24",
                 annotations={P + "node-public-ip": "198.51.100.4",
                              P + "node-public-ipv6": "2001:db8::4"})
    manager: SubnetManager = make_manager()  # the daemon's view: the protocol
    assert manager.previous_attrs(None) is None
    assert manager.public_ip_override() == ipaddress.IPv4Address("198.51.100.4")
    assert manager.public_ipv6_override() == ipaddress.IPv6Address("2001:db8::4")
    manager.acquire_lease(OWN_ATTRS)
    assert manager.previous_attrs(ipaddress.IPv4Address("192.168.50.1")) == OWN_ATTRS
    api.annotate_node("me", {P + "backend-data": "{garbage", P + "public-ip": "nonsense"})
    assert manager.previous_attrs(None) == LeaseAttrs(backend_type="vxlan")


def test_daemon_flags_reach_the_kube_manager(api: KubeAPIDouble, net_conf: Path) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    flags = Flags(kube_subnet_mgr=True, kube_api_url=api.url, net_config_path=str(net_conf),
                  kube_annotation_prefix="example.org/pf", set_node_network_unavailable=False)
    env = {"NODE_NAME": "me", "EVENT_QUEUE_DEPTH": "77", "CONT_WHEN_CACHE_NOT_READY": "true"}
    manager = connect_and_sync(kube_settings(flags, env), threading.Event(), env)
    try:
        assert manager.node_name == "me"
        assert manager.settings == KubeSettings(
            api_url=api.url, annotation_prefix="example.org/pf",
            net_config_path=str(net_conf), set_node_network_unavailable=False,
            event_queue_depth=77, cont_when_cache_not_ready=True)
        manager.acquire_lease(OWN_ATTRS)
        assert api.node("me")["metadata"]["annotations"]["example.org/pf-public-ip"] == (
            "192.168.50.1")
    finally:
        manager.close()
    with pytest.raises(ConfigError, match="prefix must be in a format"):
        bad = Flags(kube_subnet_mgr=True, kube_annotation_prefix="Bad")
        connect_and_sync(kube_settings(bad, env), threading.Event(), env)


def test_previous_vtep_mac_is_read_back(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    manager = make_manager()
    assert manager.previous_vtep_mac() is None
    manager.acquire_lease(OWN_ATTRS)
    assert manager.previous_vtep_mac() == MAC
    assert manager.previous_vtep_mac(v6=True) is None
    api.annotate_node("me", {P + "backend-data": '{ "VtepMAC" : "0E:AA:BB:CC:DD:EE", "VNI": 1 }',
                             P + "backend-v6-data": '{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}'})
    assert manager.previous_vtep_mac() == "0e:aa:bb:cc:dd:ee"
    assert manager.previous_vtep_mac(v6=True) == "0e:00:00:00:00:06"
    api.annotate_node("me", {P + "backend-data": '{"VNI":1,"VtepMAC":"zz"}'})
    assert manager.previous_vtep_mac() is None


def test_network_available_keeps_other_conditions(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "ok", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
    unavailable = {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated",
                   "message": "no route", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}
    api.add_node("me", pod_cidr="10.244.7.0/24", conditions=[ready, unavailable])
    make_manager().mark_network_available()
    conditions = api.node("me")["status"]["conditions"]
    assert conditions[0] == ready
    assert len(conditions) == 2
    network = conditions[1]
    assert (network["type"], network["status"], network["reason"], network["message"]) == (
        "NetworkUnavailable", "False", "FlannelIsUp", "Flannel is running on this node")
    assert network["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert api.requests_matching("PATCH")[0].content_type == "application/strategic-merge-patch+json"


def test_network_unavailable_left_alone_when_switched_off(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    make_manager(set_node_network_unavailable=False).mark_network_available()
    assert api.requests_matching("PATCH") == []


# --- configuration and node name ----------------------------------------------------


def test_net_conf_errors_carry_upstream_prefixes(
    make_manager: Callable[..., KubeSubnetManager], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="^failed to read net conf: "):
        make_manager(net_config_path=str(tmp_path / "absent.json")).get_network_config()
    bad = tmp_path / "bad.json"
    bad.write_text('{"Network": 42}')
    with pytest.raises(ConfigError, match="^error parsing subnet config: "):
        make_manager(net_config_path=str(bad)).get_network_config()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # kube-mode start-up (issue 9)
    with pytest.raises(ConfigError, match="^error parsing subnet config: .*nested too deeply$"):
        make_manager(net_config_path=str(deep)).get_network_config()


def test_node_name_from_pod(api: KubeAPIDouble,
                            make_manager: Callable[..., KubeSubnetManager]) -> None:
    api.add_pod("kube-flannel", "kube-flannel-ds-abcde", "worker-3")
    manager = make_manager(environ={"POD_NAME": "kube-flannel-ds-abcde",
                                    "POD_NAMESPACE": "kube-flannel"})
    assert manager.node_name == "worker-3"
    assert make_manager(environ={"NODE_NAME": "explicit", "POD_NAME": "x",
                                 "POD_NAMESPACE": "y"}).node_name == "explicit"


def test_node_name_errors(api: KubeAPIDouble,
                          make_manager: Callable[..., KubeSubnetManager]) -> None:
    with pytest.raises(ConfigError, match="^env variables POD_NAME and POD_NAMESPACE must be set$"):
        make_manager(environ={"POD_NAME": "x"})
    with pytest.raises(StoreError,
                       match=r"^error retrieving pod spec for 'kube-flannel/ghost': 404 "):
        make_manager(environ={"POD_NAME": "ghost", "POD_NAMESPACE": "kube-flannel"})
    api.add_pod("kube-flannel", "unscheduled", "")
    with pytest.raises(ConfigError,
                       match="^node name not present in pod spec 'kube-flannel/unscheduled'$"):
        make_manager(environ={"POD_NAME": "unscheduled", "POD_NAMESPACE": "kube-flannel"})


def test_kubeconfig_file_and_api_url_override(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager], tmp_path: Path
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        f"clusters:\n- name: t\n  cluster:\n    server: {api.url}\n"
        "users:\n- name: t\n  user:\n    token: secret\n"
        "contexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n"
    )
    manager = make_manager(api_url="", kubeconfig_file=str(kubeconfig))
    assert manager.acquire_lease(OWN_ATTRS).subnet == ipaddress.IPv4Network("10.244.7.0/24")
    wrong = make_manager(api_url="http://127.0.0.1:1", kubeconfig_file=str(kubeconfig))
    with pytest.raises(LeaseError, match="timeout contacting kube-api"):
        wrong.acquire_lease(OWN_ATTRS)  # the URL flag overrides the file's server
    with pytest.raises(ConfigError, match="^fail to create kubernetes config: "):
        make_manager(api_url="", kubeconfig_file=str(tmp_path / "absent"))


def test_wait_for_sync(api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]) -> None:
    never = threading.Event()
    make_manager().wait_for_sync(never)
    strict = make_manager()
    lenient = make_manager(cont_when_cache_not_ready=True)
    api.stop()
    with pytest.raises(StoreError, match="error waiting for nodes to sync state"):
        strict.wait_for_sync(never)
    lenient.wait_for_sync(never)


def test_wait_for_sync_stops_at_once_when_asked(
    api: KubeAPIDouble, net_conf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = KubeSettings(api_url=api.url, net_config_path=str(net_conf))
    slow = dataclasses.replace(FAST, sync_timeout=600.0)
    manager = KubeSubnetManager.connect(settings, {"NODE_NAME": "me"}, slow)
    api.stop()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="subnet.kube"), pytest.raises(StopRequested):
        manager.wait_for_sync(stop)
    assert time.monotonic() - started < 30.0  # not the 600 s sync timeout
    assert "cannot list Nodes yet" in caplog.text
    manager.close()


# --- watch ------------------------------------------------------------------------


def test_watch_snapshot_then_changes(api: KubeAPIDouble, watch: Callable[[], Watcher]) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24", annotations=peer_annotations("192.168.50.1"))
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    api.add_node("unmanaged", pod_cidr="10.244.9.0/24")
    w = watch()
    w.wait_for_keys({"10.244.7.0-24", "10.244.1.0-24"})
    assert isinstance(w.log[0], Snapshot) and len(w.log) == 1
    assert w.peers["10.244.1.0-24"].attrs.public_ip == ipaddress.IPv4Address("192.168.50.11")
    assert w.peers["10.244.1.0-24"].attrs.backend_data == '{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:01"}'

    api.add_node("b", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    w.wait_for_keys({"10.244.7.0-24", "10.244.1.0-24", "10.244.2.0-24"})

    api.annotate_node("a", {P + "public-ip": "192.168.50.21"})
    w.wait_for(lambda: w.peers["10.244.1.0-24"].attrs.public_ip
               == ipaddress.IPv4Address("192.168.50.21"))

    count = len(w.log)
    api.annotate_node("a", {"unrelated/annotation": "1"})
    api.update_node("b", lambda n: n["metadata"]["labels"].update({"role": "x"}))
    api.annotate_node("unmanaged", {"unrelated/annotation": "1"})
    w.settle()
    assert len(w.log) == count  # nothing lease-relevant changed

    api.delete_node("b")
    w.wait_for_keys({"10.244.7.0-24", "10.244.1.0-24"})
    assert isinstance(w.log[-1], LeaseRemoved) and w.log[-1].key == "10.244.2.0-24"

    api.annotate_node("unmanaged", peer_annotations("192.168.50.19"))
    w.wait_for_keys({"10.244.7.0-24", "10.244.1.0-24", "10.244.9.0-24"})
    api.annotate_node("unmanaged", {P + "kube-subnet-manager": None})
    w.wait_for_keys({"10.244.7.0-24", "10.244.1.0-24"})
    assert w.snapshots() == 1


def test_nodes_are_listed_in_pages_and_an_expired_continue_lists_again(
    api: KubeAPIDouble, net_conf: Path
) -> None:
    for i in range(1, 6):
        api.add_node(f"n{i}", pod_cidr=f"10.244.{i}.0/24",
                     annotations=peer_annotations(f"192.168.50.{i}"))
    api.fail_next(1, 410, method="GET", query_key="continue")  # the 2nd page: token expired
    settings = KubeSettings(api_url=api.url, net_config_path=str(net_conf))
    manager = KubeSubnetManager.connect(settings, {"NODE_NAME": "me"},
                                        dataclasses.replace(FAST, list_page=2))
    w = Watcher(manager)
    try:
        w.wait_for_keys({f"10.244.{i}.0-24" for i in range(1, 6)}, timeout=30)
        assert w.snapshots() == 1  # the broken list sent nothing
        lists = [r.query for r in api.requests_matching("GET", "/api/v1/nodes")
                 if "watch" not in r.query]
        assert [q.get("limit") for q in lists] == ["2"] * 5  # 1 + the 410, then 3 pages
        assert ["continue" in q for q in lists] == [False, True, False, True, True]
    finally:
        w.close()
        manager.close()


def test_list_made_ahead_of_acquire_carries_our_own_new_lease(
    api: KubeAPIDouble, net_conf: Path
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")  # not annotated yet
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    settings = KubeSettings(api_url=api.url, net_config_path=str(net_conf))
    manager = connect_and_sync(settings, threading.Event(), {"NODE_NAME": "me"})
    try:
        deadline = time.monotonic() + 30
        while not [r for r in api.requests_matching("GET", "/api/v1/nodes")
                   if r.query.get("limit") == "500"]:
            assert time.monotonic() < deadline, "the early list was not made"
            time.sleep(0.01)
        manager.acquire_lease(OWN_ATTRS)  # annotates "me" after that list
        w = Watcher(manager)
        try:
            w.wait_for_keys({"10.244.1.0-24", "10.244.7.0-24"}, timeout=30)
            w.settle()
            assert len(w.log) == 1 and isinstance(w.log[0], Snapshot)
        finally:
            w.close()
    finally:
        manager.close()


@pytest.mark.parametrize("annotated", [False, True], ids=["first start", "restart"])
def test_start_up_reads_our_node_once(
    api: KubeAPIDouble, net_conf: Path, annotated: bool
) -> None:
    """The daemon's start-up order: public IP overrides, previous attributes, acquire, then
    the first snapshot from the early list; all from one GET of our Node (the PATCH's
    answer stands in for a read-back)."""
    api.add_node("me", pod_cidr="10.244.7.0/24")
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    if annotated:  # a restart: our annotations from the last run, another VTEP MAC
        api.annotate_node("me", peer_annotations("192.168.50.1", mac="aa:bb:cc:00:00:07"))
    settings = KubeSettings(api_url=api.url, net_config_path=str(net_conf))
    manager = connect_and_sync(settings, threading.Event(), {"NODE_NAME": "me"})
    try:
        assert manager.public_ip_override() is None
        assert manager.public_ipv6_override() is None
        previous = manager.previous_attrs(None)
        assert (previous is not None) == annotated
        assert manager.acquire_lease(OWN_ATTRS).key == "10.244.7.0-24"
        w = Watcher(manager)
        try:
            w.wait_for_keys({"10.244.1.0-24", "10.244.7.0-24"}, timeout=30)
            w.settle()
            assert isinstance(w.log[0], Snapshot)
            assert {lease.key for lease in w.log[0].leases} == {"10.244.1.0-24",
                                                                 "10.244.7.0-24"}
        finally:
            w.close()
        assert len(api.requests_matching("GET", "/api/v1/nodes/me")) == 1
        assert len(api.requests_matching("PATCH", "/api/v1/nodes/me/status")) == 1
        assert api.node("me")["metadata"]["annotations"][P + "backend-data"] == VXLAN_DATA
        # after start-up every call reads afresh
        api.annotate_node("me", {P + "node-public-ip": "198.51.100.4"})
        assert manager.public_ip_override() == ipaddress.IPv4Address("198.51.100.4")
    finally:
        manager.close()


def test_a_start_up_read_without_our_pod_cidr_is_read_again_to_acquire(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    api.add_node("me")  # registered; kube-controller-manager has not assigned a CIDR yet
    manager = make_manager()
    assert manager.previous_attrs(None) is None  # the read the start-up steps share
    api.update_node("me", lambda node: node["spec"].update(
        podCIDR="10.244.7.0/24", podCIDRs=["10.244.7.0/24"]))
    assert manager.acquire_lease(OWN_ATTRS).key == "10.244.7.0-24"
    assert len(api.requests_matching("GET", "/api/v1/nodes/me")) == 2


DUAL_NET_CONF = ('{"Network":"10.244.0.0/16","EnableIPv6":true,'
                 '"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')
V6_DATA = '{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}'


def first_snapshot(w: Watcher) -> Snapshot:
    """The watch's first message, once nothing more follows it."""
    w.wait_for(lambda: w.snapshots() == 1, timeout=30)
    w.settle()
    assert isinstance(w.log[0], Snapshot)
    return w.log[0]


@pytest.fixture
def dual_stack_start(api: KubeAPIDouble, net_conf: Path) -> Iterator[KubeSubnetManager]:
    """A first dual-stack start: our Node "me" as IPv4 runs left it (no public-ipv6), a
    dual-stack peer "a"; the manager connected and synced, its early list made."""
    net_conf.write_text(DUAL_NET_CONF)
    api.add_node("me", pod_cidrs=["10.244.7.0/24", "fd00:10:244:7::/64"],
                 annotations=peer_annotations("192.168.50.1", mac=MAC))
    api.add_node("a", pod_cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"],
                 annotations={**peer_annotations("192.168.50.11"), P + "public-ipv6": "fd99::11",
                              P + "backend-v6-data": V6_DATA})
    settings = KubeSettings(api_url=api.url, net_config_path=str(net_conf))
    manager = connect_and_sync(settings, threading.Event(), {"NODE_NAME": "me"})
    try:
        api.wait_for_lists(2, timeout=30)  # wait_for_sync's and the early one
        yield manager
    finally:
        manager.close()


def acquire_dual_stack(manager: KubeSubnetManager) -> Lease:
    lease = manager.acquire_lease(dataclasses.replace(
        OWN_ATTRS, public_ipv6=ipaddress.IPv6Address("fd99::1"), backend_v6_data=V6_DATA))
    assert lease.key == "10.244.7.0-24&fd00:10:244:7::-64"
    return lease


def test_the_first_dual_stack_start_finds_its_lease_in_the_first_snapshot(
    api: KubeAPIDouble, dual_stack_start: KubeSubnetManager
) -> None:
    """IPv4 -> dual stack: our Node's annotations from the IPv4 runs lack public-ipv6, so
    the early list keys our lease by IPv4 alone; the first snapshot holds it under the key
    acquire_lease returned, as the PATCH left it (else the daemon re-acquires at start and
    warns that its lease was deleted)."""
    manager = dual_stack_start
    assert manager.previous_attrs(None) is not None
    lease = acquire_dual_stack(manager)
    w = Watcher(manager)
    try:
        snapshot = first_snapshot(w)
    finally:
        w.close()
    assert not loses_own_lease(lease.key, snapshot)
    assert {(ls.key, ls.attrs.public_ipv6) for ls in snapshot.leases} == {
        (lease.key, ipaddress.IPv6Address("fd99::1")),
        ("10.244.1.0-24&fd00:10:244:1::-64", ipaddress.IPv6Address("fd99::11"))}
    assert len(w.log) == 1  # the watch's replay of our PATCH changes nothing
    assert len(api.requests_matching("GET", "/api/v1/nodes/me")) == 1
    assert len(api.requests_matching("PATCH", "/api/v1/nodes/me/status")) == 1


def test_the_watch_replay_of_our_node_older_than_the_snapshot_changes_nothing(
    api: KubeAPIDouble, dual_stack_start: KubeSubnetManager
) -> None:
    """As above, and our Node also changes between the early list and our PATCH (kubelet
    status, a label: likely while a node boots).  The watch, from the list's version,
    replays that older version, without public-ipv6; it must not take our lease back to
    its IPv4 key (the daemon would re-acquire at start and warn it was deleted)."""
    manager = dual_stack_start
    api.annotate_node("me", {"example.com/booting": "1"})  # after the list, before our PATCH
    lease = acquire_dual_stack(manager)
    api.annotate_node("a", {P + "public-ip": "192.168.50.12"})  # after all of ours
    w = Watcher(manager)
    try:
        assert not loses_own_lease(lease.key, first_snapshot(w))
        # the watch delivers in order: once "a" moved, every older event was handled
        w.wait_for(lambda: any(ls.attrs.public_ip == ipaddress.IPv4Address("192.168.50.12")
                               for ls in w.peers.values()), timeout=30)
    finally:
        w.close()
    assert [m for m in w.log if loses_own_lease(lease.key, m)] == []
    assert [type(m) for m in w.log] == [Snapshot, LeaseAdded]
    assert w.peers[lease.key] == lease


def test_without_an_acquire_the_replay_of_our_node_older_than_its_read_changes_nothing(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    """No acquire: our Node as read after the early list goes in the snapshot; its
    versions between that list and the read, replayed by the watch, send nothing."""
    api.add_node("me", pod_cidr="10.244.7.0/24",
                 annotations=peer_annotations("192.168.50.1", mac=MAC))
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    manager = make_manager()
    manager.prefetch_leases()
    api.wait_for_lists(1, timeout=30)
    api.annotate_node("me", {P + "kube-subnet-manager": None})  # gone for a moment
    api.annotate_node("me", {P + "kube-subnet-manager": "true"})
    api.annotate_node("a", {P + "public-ip": "192.168.50.12"})  # after all of ours
    w = Watcher(manager)
    try:
        assert {ls.key for ls in first_snapshot(w).leases} == {"10.244.1.0-24", "10.244.7.0-24"}
        w.wait_for(lambda: w.peers["10.244.1.0-24"].attrs.public_ip
                   == ipaddress.IPv4Address("192.168.50.12"), timeout=30)
        assert [type(m) for m in w.log] == [Snapshot, LeaseAdded]
        api.annotate_node("me", {P + "kube-subnet-manager": None})  # newer: it counts
        w.wait_for_keys({"10.244.1.0-24"}, timeout=30)
    finally:
        w.close()


def test_a_start_up_read_older_than_the_early_list_does_not_bring_back_a_gone_lease(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager]
) -> None:
    """Our lease is taken away after the start-up read and before the early list, and
    acquire_lease, working from that read, has nothing to patch: the first snapshot shows
    the store (no lease of ours: the daemon acquires again), not the older read, which no
    watch event would ever correct."""
    api.add_node("me", pod_cidr="10.244.7.0/24",
                 annotations=peer_annotations("192.168.50.1", mac=MAC))
    manager = make_manager()
    assert manager.previous_attrs(None) is not None  # the start-up read, our lease in it
    api.annotate_node("me", {P + "kube-subnet-manager": None})
    manager.prefetch_leases()  # made after that change
    lease = manager.acquire_lease(OWN_ATTRS)
    assert api.requests_matching("PATCH", "/api/v1/nodes/me/status") == []
    w = Watcher(manager)
    try:
        assert loses_own_lease(lease.key, first_snapshot(w))
    finally:
        w.close()


def nodes_held(manager: KubeSubnetManager) -> list[str]:
    """Names of the Node objects the manager's attributes hold (alone or in a tuple)."""
    return [item["metadata"]["name"] for value in vars(manager).values()
            for item in (value if isinstance(value, tuple) else (value,))
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict)]


def test_no_copy_of_our_node_is_kept_after_start_up(api: KubeAPIDouble, net_conf: Path) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    settings = KubeSettings(api_url=api.url, net_config_path=str(net_conf))
    manager = connect_and_sync(settings, threading.Event(), {"NODE_NAME": "me"})
    try:
        lease = manager.acquire_lease(OWN_ATTRS)
        w = Watcher(manager)
        try:
            assert not loses_own_lease(lease.key, first_snapshot(w))
        finally:
            w.close()
        assert nodes_held(manager) == []
        api.annotate_node("me", {P + "backend-data": None})  # lost: the daemon acquires again
        manager.acquire_lease(OWN_ATTRS)
        assert len(api.requests_matching("PATCH", "/api/v1/nodes/me/status")) == 2
        assert nodes_held(manager) == []
    finally:
        manager.close()


def test_pod_cidr_change_moves_the_lease(api: KubeAPIDouble,
                                         watch: Callable[[], Watcher]) -> None:
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24"})

    def move(node: dict[str, Any]) -> None:
        node["spec"] = {"podCIDR": "10.244.5.0/24", "podCIDRs": ["10.244.5.0/24"]}

    api.update_node("a", move)
    w.wait_for_keys({"10.244.5.0-24"})
    assert [type(m) for m in w.log[-2:]] == [LeaseRemoved, LeaseAdded]


def test_garbage_nodes_are_skipped_and_logged_once(
    api: KubeAPIDouble, watch: Callable[[], Watcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.kube")
    api.add_node("bad-ip", pod_cidr="10.244.3.0/24", annotations=peer_annotations("nonsense"))
    bad_data = peer_annotations("192.168.50.14")
    bad_data[P + "backend-data"] = "{not json"
    api.add_node("bad-data", pod_cidr="10.244.4.0/24", annotations=bad_data)
    api.add_node("no-cidr", annotations=peer_annotations("192.168.50.15"))
    api.add_node("good", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24"})
    api.annotate_node("bad-ip", {"unrelated/x": "1"})  # still garbage: no second log line
    api.add_node("good2", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24"})
    skipped = [r.getMessage() for r in caplog.records if "Skipping node" in r.getMessage()]
    assert sorted(m.split("'")[1] for m in skipped) == ["bad-data", "bad-ip", "no-cidr"]
    api.annotate_node("bad-ip", {P + "public-ip": "192.168.50.13"})  # repaired
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"})


def test_dual_stack_node_without_an_ipv6_pod_cidr_is_kept_for_ipv4_and_reported_once(
    api: KubeAPIDouble, watch: Callable[[], Watcher], net_conf: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.kube")
    net_conf.write_text('{"Network":"10.244.0.0/16","EnableIPv6":true,'
                        '"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')
    dual = {**peer_annotations("192.168.50.11"), P + "public-ipv6": "fd99::11",
            P + "backend-v6-data": '{"VNI":1,"VtepMAC":"aa:bb:cc:00:01:01"}'}
    api.add_node("dual", pod_cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"], annotations=dual)
    api.add_node("v4only", pod_cidrs=["10.244.2.0/24"],
                 annotations={**dual, P + "public-ip": "192.168.50.12"})
    w = watch()
    w.wait_for_keys({"10.244.1.0-24&fd00:10:244:1::-64", "10.244.2.0-24"})
    api.annotate_node("v4only", {"unrelated/x": "1"})  # the same gap: no second line
    api.add_node("later", pod_cidrs=["10.244.3.0/24", "fd00:10:244:3::/64"],
                 annotations={**dual, P + "public-ip": "192.168.50.13"})
    w.wait_for_keys({"10.244.1.0-24&fd00:10:244:1::-64", "10.244.2.0-24",
                     "10.244.3.0-24&fd00:10:244:3::-64"})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [("Node 'v4only' is reached over one address family only: no IPv6 pod "
                      "CIDR: not reached over IPv6")], lines


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
def test_gone_relists_to_the_correct_set(
    api: KubeAPIDouble, watch: Callable[[], Watcher], as_http_status: bool
) -> None:
    api.gone_as_http_status = as_http_status
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    api.add_node("b", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24"})
    api.wait_for_watches(1)
    with api.watches_paused():
        api.delete_node("b")
        api.add_node("c", pod_cidr="10.244.3.0/24", annotations=peer_annotations("192.168.50.13"))
        api.annotate_node("a", {P + "public-ip": "192.168.50.31"})
        api.compact()
        if as_http_status:
            api.drop_watches(clean=True)  # the re-watch from the old version gets HTTP 410
    w.wait_for_keys({"10.244.1.0-24", "10.244.3.0-24"})
    w.wait_for(lambda: w.peers["10.244.1.0-24"].attrs.public_ip
               == ipaddress.IPv4Address("192.168.50.31"))
    assert w.snapshots() == 2
    assert isinstance(w.log[-1], Snapshot)  # the gap was bridged by a re-list, not events


def test_api_server_restart(api: KubeAPIDouble, watch: Callable[[], Watcher]) -> None:
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    api.add_node("b", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24"})
    api.wait_for_watches(1)
    api.stop()
    api.delete_node("b")  # changed while the server is down
    w.settle(1.0)
    api.start()
    w.wait_for_keys({"10.244.1.0-24"}, timeout=20)
    api.add_node("c", pod_cidr="10.244.3.0/24", annotations=peer_annotations("192.168.50.13"))
    w.wait_for_keys({"10.244.1.0-24", "10.244.3.0-24"}, timeout=20)
    assert w.snapshots() >= 2


def test_clean_stream_end_resumes_without_relist(
    api: KubeAPIDouble, watch: Callable[[], Watcher]
) -> None:
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24"})
    api.wait_for_watches(1)
    api.drop_watches(clean=True)
    api.add_node("b", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24"})
    assert w.snapshots() == 1
    assert len(api.requests_matching("GET", "/nodes")) >= 3  # list, watch, re-watch


def test_stop_is_prompt(api: KubeAPIDouble, watch: Callable[[], Watcher]) -> None:
    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24"})
    api.wait_for_watches(1)
    assert w.close() < 4.0  # not the 5 s watch timeout
    api.stop()
    w2 = watch()  # a watcher that is backing off also stops promptly
    w2.settle(0.5)
    assert w2.close() < 4.0


def test_garbage_annotations_on_a_node_read_as_its_lease_removed_and_ours_is_rewritten(
    api: KubeAPIDouble, make_manager: Callable[..., KubeSubnetManager],
    watch: Callable[[], Watcher],
) -> None:
    api.add_node("me", pod_cidr="10.244.7.0/24")
    api.add_node("peer", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    manager = make_manager()
    manager.acquire_lease(OWN_ATTRS)
    w = watch()
    w.wait_for_keys({"10.244.1.0-24", "10.244.7.0-24"})
    api.annotate_node("peer", {P + "public-ip": "nonsense"})
    w.wait_for_keys({"10.244.7.0-24"})  # as a re-list would see it
    api.annotate_node("me", {P + "backend-data": "{garbage"})
    w.wait_for_keys(set())  # the daemon takes this as its lease lost and acquires again:
    manager.acquire_lease(OWN_ATTRS)
    assert api.node("me")["metadata"]["annotations"][P + "backend-data"] == (
        OWN_ATTRS.backend_data
    )
    w.wait_for_keys({"10.244.7.0-24"})


def test_deeply_nested_annotation_skips_its_node_and_the_watch_goes_on(
    api: KubeAPIDouble, watch: Callable[[], Watcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.kube")
    deep = peer_annotations("192.168.50.14")
    deep[P + "backend-data"] = "[" * 100_000
    api.add_node("good", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    w = watch()
    w.wait_for_keys({"10.244.1.0-24"})
    api.add_node("deep", pod_cidr="10.244.4.0/24", annotations=deep)
    api.add_node("later", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24"})
    assert any("Skipping node 'deep'" in r.getMessage() for r in caplog.records)
    assert w.thread.is_alive() and w.snapshots() == 1


# --- why the node watch does not use kubernetes.watch.Watch (subnet/kube.py) -----------


@pytest.fixture
def official(api: KubeAPIDouble) -> Iterator[Any]:
    """The official client's CoreV1Api against the double."""
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = api.url
    with client.ApiClient(cfg) as api_client:
        yield client.CoreV1Api(api_client)


def test_official_raw_watch_cannot_tell_gone_from_other_failures(
    api: KubeAPIDouble, official: Any
) -> None:
    """Reason 1: with deserialize=False an ERROR event (here 410 Gone) is a KeyError."""
    from kubernetes.client import ApiException
    from kubernetes.watch import Watch

    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    old = str(api.resource_version)
    api.annotate_node("a", {P + "public-ip": "192.168.50.21"})
    api.compact()
    with pytest.raises(KeyError, match="raw_object"):
        for _event in Watch().stream(official.list_node, resource_version=old,
                                     timeout_seconds=2, deserialize=False):
            pass
    with pytest.raises(ApiException) as gone:  # the typed path does see the 410
        for _event in Watch().stream(official.list_node, resource_version=old, timeout_seconds=2):
            pass
    assert gone.value.status == 410


def test_one_node_the_client_model_rejects_ends_the_official_typed_watch_but_not_ours(
    api: KubeAPIDouble, official: Any, watch: Callable[[], Watcher]
) -> None:
    """Reason 2: the typed path validates whole Nodes; one odd Node ends the stream."""
    from kubernetes.watch import Watch

    api.add_node("a", pod_cidr="10.244.1.0/24", annotations=peer_annotations("192.168.50.11"))
    api.add_node("odd", pod_cidr="10.244.2.0/24", annotations=peer_annotations("192.168.50.12"))
    api.update_node("odd", lambda n: n["status"].update({"nodeInfo": {"kubeletVersion": "v1"}}))
    seen = []
    with pytest.raises(ValueError, match="V1NodeSystemInfo"):  # pydantic's ValidationError
        for event in Watch().stream(official.list_node, resource_version="0", timeout_seconds=2):
            seen.append(event["raw_object"]["metadata"]["name"])
    assert seen == ["a"]
    w = watch()
    w.wait_for_keys({"10.244.1.0-24", "10.244.2.0-24"})
