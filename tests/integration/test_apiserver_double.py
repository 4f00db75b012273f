"""The API server double itself, exercised with the official kubernetes client."""

# The kubernetes client's watch module and ApiClient.close carry no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from flanneld.lab.apiserver import KubeAPIDouble
from flanneld.lab.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from flanneld.lab.tls import make_server_cert

pytestmark = pytest.mark.integration


@pytest.fixture
def double() -> Iterator[KubeAPIDouble]:
    with KubeAPIDouble() as api:
        yield api


@pytest.fixture
def api_client(double: KubeAPIDouble) -> Iterator[Any]:
    cfg = client.Configuration()
    cfg.host = double.url
    cfg.retries = False
    made = client.ApiClient(cfg)
    yield made
    made.close()


@pytest.fixture
def core(api_client: Any) -> Any:
    return client.CoreV1Api(api_client)


def raw_watch(double: KubeAPIDouble, query: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """GET a watch URL with urllib3 and return its events (the stream must end)."""
    http = urllib3.PoolManager(retries=False)
    resp = http.request("GET", f"{double.url}/api/v1/nodes?{query}", preload_content=False,
                        timeout=urllib3.Timeout(connect=2, read=timeout))
    assert resp.status == 200
    assert resp.headers["Transfer-Encoding"] == "chunked"
    body = b"".join(resp.stream(4096))
    resp.release_conn()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def status_of(err: client.ApiException) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(err.body or "")
    assert doc["kind"] == "Status" and doc["status"] == "Failure"
    assert doc["code"] == err.status
    return doc


# --- list / get ----------------------------------------------------------------------


def test_list_carries_resource_version_and_deserialises(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("b", pod_cidr="10.1.2.0/24")
    double.add_node("a", pod_cidrs=["10.1.1.0/24", "fd00:1::/64"])
    nodes = core.list_node()
    assert nodes.metadata.resource_version == str(double.resource_version)
    assert [n.metadata.name for n in nodes.items] == ["a", "b"]
    assert nodes.items[0].spec.pod_cidrs == ["10.1.1.0/24", "fd00:1::/64"]
    assert nodes.items[0].spec.pod_cidr == "10.1.1.0/24"
    assert nodes.items[1].status.conditions[0].type == "Ready"


def test_paginated_list_pages_come_from_one_snapshot(double: KubeAPIDouble, core: Any) -> None:
    for name in "abcde":
        double.add_node(name, pod_cidr="10.1.1.0/24")
    first = core.list_node(limit=2)
    assert [n.metadata.name for n in first.items] == ["a", "b"]
    assert first.metadata.remaining_item_count == 3
    rv = first.metadata.resource_version
    double.delete_node("c")  # written between pages: not seen by this list
    double.add_node("bb", pod_cidr="10.1.2.0/24")
    second = core.list_node(limit=2, _continue=first.metadata._continue)
    third = core.list_node(limit=2, _continue=second.metadata._continue)
    assert [n.metadata.name for n in second.items + third.items] == ["c", "d", "e"]
    assert second.metadata.resource_version == third.metadata.resource_version == rv
    assert not third.metadata._continue
    assert [n.metadata.name for n in core.list_node(limit=10).items] == ["a", "b", "bb", "d", "e"]
    assert not core.list_node(limit=10).metadata._continue


def test_continue_token_errors(double: KubeAPIDouble, core: Any) -> None:
    for name in "abc":
        double.add_node(name, pod_cidr="10.1.1.0/24")
    with pytest.raises(client.ApiException) as bad:
        core.list_node(limit=1, _continue="made-up")
    assert bad.value.status == 400 and status_of(bad.value)["reason"] == "BadRequest"
    token = core.list_node(limit=1).metadata._continue
    with pytest.raises(client.ApiException) as other_kind:  # a token is for its own list
        core.list_namespace(limit=1, _continue=token)
    assert other_kind.value.status == 400
    token = core.list_node(limit=1).metadata._continue
    double.annotate_node("a", {"x": "1"})
    double.compact()
    with pytest.raises(client.ApiException) as gone:
        core.list_node(limit=1, _continue=token)
    assert gone.value.status == 410 and status_of(gone.value)["reason"] == "Expired"


def test_get_missing_node_is_a_not_found_status(core: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core.read_node("nope")
    assert caught.value.status == 404
    doc = status_of(caught.value)
    assert doc["reason"] == "NotFound"
    assert doc["message"] == 'nodes "nope" not found'


def test_each_write_bumps_the_resource_version(double: KubeAPIDouble) -> None:
    first = double.add_node("a")
    second = double.annotate_node("a", {"x/y": "1"})
    assert int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
    assert double.resource_version == int(second["metadata"]["resourceVersion"])


def test_connections_send_without_waiting_for_delayed_acks(double: KubeAPIDouble) -> None:
    """Headers and body go out in two writes: with Nagle's algorithm on, the body of a
    response on a kept-alive connection waited for the client's delayed ACK (40 ms each,
    where kube-apiserver, like every Go server, sets TCP_NODELAY)."""
    double.add_node("a")
    http = urllib3.PoolManager(retries=False)
    try:
        for _ in range(3):  # one kept-alive connection
            assert http.request("GET", f"{double.url}/api/v1/nodes/a").status == 200
        conns = list(double._conns)
        assert conns
        for conn in conns:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        http.clear()


def test_a_list_is_encoded_at_each_request_not_when_written(
    double: KubeAPIDouble, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kube-apiserver encodes a list's items for every LIST (its watch cache keeps an
    encoding for the watchers of one event, not for lists): the double charges each list
    its encoding, the first list after the writes included."""
    encoded: list[str] = []  # the Nodes the double's JSON encoder was given, in order
    real_encode = json.JSONEncoder.encode

    def encode(self: json.JSONEncoder, o: Any) -> str:
        for obj in o.get("items", [o]) if isinstance(o, dict) else ():
            if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
                encoded.append(obj["metadata"].get("name", ""))
        return real_encode(self, o)

    monkeypatch.setattr(json.JSONEncoder, "encode", encode)
    double.add_node("a")
    double.add_node("b")
    for n in range(50):
        double.annotate_node("a", {"x/n": str(n)})
    double.delete_node("b")
    assert encoded == []  # writing encodes nothing for lists
    http = urllib3.PoolManager(retries=False)
    try:
        bodies = [http.request("GET", f"{double.url}/api/v1/nodes").data for _ in range(2)]
    finally:
        http.clear()
    assert encoded == ["a", "a"]  # each list encoded its one item
    for body in bodies:
        doc = json.loads(body)
        assert [item["metadata"]["annotations"]["x/n"] for item in doc["items"]] == ["49"]
        assert "kind" not in doc["items"][0]
        assert body.startswith(b'{"kind":"NodeList","apiVersion":"v1","metadata":')  # compact


# --- watch -------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["true", "True", "1"])
def test_watch_flag_spellings(double: KubeAPIDouble, flag: str) -> None:
    double.add_node("a")
    events = raw_watch(double, f"watch={flag}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a")]


def test_watch_from_version_replays_later_changes_only(double: KubeAPIDouble) -> None:
    double.add_node("a")
    rv = double.resource_version
    double.add_node("b")
    double.annotate_node("a", {"k/x": "1"})
    double.delete_node("b")
    events = raw_watch(double, f"watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > rv


def test_watch_times_out_with_a_bookmark(double: KubeAPIDouble) -> None:
    double.add_node("a")
    rv = double.resource_version
    started = time.monotonic()
    events = raw_watch(double, f"watch=true&resourceVersion={rv}&timeoutSeconds=1"
                               "&allowWatchBookmarks=true")
    assert 0.9 < time.monotonic() - started < 4.5  # timeoutSeconds=1 (the reader gives up at 5)
    assert events == [{"type": "BOOKMARK", "object": {
        "kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}}]


def test_official_watch_streams_live_events(double: KubeAPIDouble, core: Any) -> None:
    rv = core.list_node().metadata.resource_version
    timer = threading.Timer(0.2, lambda: double.add_node("late", pod_cidr="10.9.0.0/24"))
    timer.start()
    seen = []
    w = watch.Watch()
    for event in w.stream(core.list_node, resource_version=rv, timeout_seconds=3):
        seen.append((event["type"], event["object"].metadata.name, event["object"].spec.pod_cidr))
        w.stop()
    timer.join()
    assert seen == [("ADDED", "late", "10.9.0.0/24")]


def test_watch_from_compacted_version_gets_410_error_event(double: KubeAPIDouble) -> None:
    double.add_node("a")
    old = double.resource_version
    double.add_node("b")
    double.compact()
    events = raw_watch(double, f"watch=true&resourceVersion={old}")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] == "Expired"
    assert "too old resource version" in events[0]["object"]["message"]


def test_history_window_expires_old_versions(core: Any) -> None:
    with KubeAPIDouble(history=2) as small:
        cfg = client.Configuration()
        cfg.host = small.url
        api = client.CoreV1Api(client.ApiClient(cfg))
        small.add_node("a")
        old = small.resource_version
        for i in range(3):
            small.annotate_node("a", {"k/n": str(i)})
        recent = small.resource_version - 2
        assert len(raw_watch(small, f"watch=true&resourceVersion={recent}&timeoutSeconds=1")) == 2
        with pytest.raises(client.ApiException) as caught:
            for _ in watch.Watch().stream(api.list_node, resource_version=str(old)):
                pass
        assert caught.value.status == 410
        api.api_client.close()


def test_gone_as_http_status(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a")
    old = double.resource_version
    double.add_node("b")
    double.compact()
    double.gone_as_http_status = True
    with pytest.raises(client.ApiException) as caught:
        core.list_node(watch=True, resource_version=str(old), _preload_content=False)
    assert caught.value.status == 410
    assert status_of(caught.value)["reason"] == "Expired"


def test_paused_watch_that_falls_behind_compaction_expires(double: KubeAPIDouble) -> None:
    double.add_node("a")
    rv = double.resource_version
    result: list[list[dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: result.append(
        raw_watch(double, f"watch=true&resourceVersion={rv}&timeoutSeconds=5")))
    with double.watches_paused():
        reader.start()
        double.wait_for_watches(1)
        double.add_node("b")
        double.compact()
    reader.join(timeout=5)
    assert [(e["type"], e["object"].get("code")) for e in result[0]] == [("ERROR", 410)]


def test_drop_watches_cleanly_ends_the_stream(double: KubeAPIDouble) -> None:
    result: list[list[dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: result.append(
        raw_watch(double, "watch=true&resourceVersion=1000&timeoutSeconds=30")))
    reader.start()
    double.wait_for_watches(1)
    started = time.monotonic()
    double.drop_watches(clean=True)
    reader.join(timeout=15)
    assert time.monotonic() - started < 15  # not the watch's timeoutSeconds=30
    assert result == [[]]


def test_stop_cuts_watches_and_start_reuses_the_port(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a")
    port = double.port
    errors: list[Exception] = []

    def read() -> None:
        try:
            raw_watch(double, "watch=true&resourceVersion=1001&timeoutSeconds=30")
        except Exception as err:  # noqa: BLE001 - the test inspects it
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    double.wait_for_watches(1)
    double.stop()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert errors and isinstance(errors[0], urllib3.exceptions.HTTPError)
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.read_node("a", _request_timeout=(1, 1))
    double.start()
    assert double.port == port
    assert core.read_node("a").metadata.name == "a"


# --- writes ------------------------------------------------------------------------


def test_put_with_stale_resource_version_conflicts(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a")
    node = core.read_node("a")
    double.annotate_node("a", {"k/other": "x"})
    node.metadata.annotations = {"k/mine": "y"}
    with pytest.raises(client.ApiException) as caught:
        core.replace_node("a", node)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"
    fresh = core.read_node("a")
    fresh.metadata.annotations["k/mine"] = "y"
    stored = core.replace_node("a", fresh)
    assert stored.metadata.annotations == {"k/other": "x", "k/mine": "y"}


def test_strategic_patch_merges_conditions_on_type(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a", annotations={"k/keep": "1", "k/drop": "2"})
    patched = core.patch_node_status("a", {
        "metadata": {"annotations": {"k/new": "3", "k/drop": None}},
        "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False",
                                   "reason": "FlannelIsUp"}]},
    })
    assert [c.type for c in patched.status.conditions] == ["Ready", "NetworkUnavailable"]
    assert patched.metadata.annotations == {"k/keep": "1", "k/new": "3"}
    again = core.patch_node_status("a", {"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "True", "reason": "Other"}]}})
    assert [(c.type, c.status) for c in again.status.conditions] == [
        ("Ready", "True"), ("NetworkUnavailable", "True")]
    assert double.requests[-1].content_type == "application/strategic-merge-patch+json"


def test_merge_patch_replaces_lists(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a")
    patched = core.patch_node_status(
        "a", {"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}},
        _content_type="application/merge-patch+json")
    assert [c.type for c in patched.status.conditions] == ["NetworkUnavailable"]


def test_json_patch_and_failed_test_operation(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a", annotations={"k/a": "1"})
    patched = core.patch_node("a", [{"op": "add", "path": "/metadata/annotations/k~1b",
                                     "value": "2"}])
    assert patched.metadata.annotations == {"k/a": "1", "k/b": "2"}
    assert double.requests[-1].content_type == "application/json-patch+json"
    with pytest.raises(client.ApiException) as caught:
        core.patch_node("a", [{"op": "test", "path": "/metadata/annotations/k~1a", "value": "9"}])
    assert caught.value.status == 422


def test_unknown_patch_type_is_415(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a")
    with pytest.raises(client.ApiException) as caught:
        core.patch_node("a", {"metadata": {}}, _content_type="application/apply-patch+yaml")
    assert caught.value.status == 415


def test_status_subresource_keeps_spec_and_main_keeps_status(double: KubeAPIDouble,
                                                               core: Any) -> None:
    double.add_node("a", pod_cidr="10.0.1.0/24")
    core.patch_node_status("a", {"spec": {"podCIDR": "10.0.9.0/24"}, "status": {"conditions": []}},
                           _content_type="application/merge-patch+json")
    assert double.node("a")["spec"]["podCIDR"] == "10.0.1.0/24"
    assert double.node("a")["status"]["conditions"] == []
    core.patch_node("a", {"spec": {"unschedulable": True}, "status": {"conditions": [
        {"type": "X", "status": "True"}]}})
    assert double.node("a")["spec"]["unschedulable"] is True
    assert double.node("a")["status"]["conditions"] == []


def test_noop_patch_changes_nothing(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a", annotations={"k/a": "1"})
    rv = double.resource_version
    core.patch_node_status("a", {"metadata": {"annotations": {"k/a": "1"}}})
    assert double.resource_version == rv


def test_pods_and_configmaps(double: KubeAPIDouble, core: Any) -> None:
    double.add_pod("kube-flannel", "flannel-x", "node-7")
    assert core.read_namespaced_pod("flannel-x", "kube-flannel").spec.node_name == "node-7"
    double.put_configmap("kube-flannel", "cfg", {"k": "v"})
    cm = core.read_namespaced_config_map("cfg", "kube-flannel")
    cm.data = {"k": "w"}
    assert core.replace_namespaced_config_map("cfg", "kube-flannel", cm).data == {"k": "w"}
    cm.data = {"k": "stale"}
    with pytest.raises(client.ApiException) as caught:
        core.replace_namespaced_config_map("cfg", "kube-flannel", cm)
    assert caught.value.status == 409
    assert double.configmap("kube-flannel", "cfg")["data"] == {"k": "w"}


def test_fail_next_injects_errors(double: KubeAPIDouble, core: Any) -> None:
    double.add_node("a")
    double.fail_next(1, 503, method="GET", path_suffix="/nodes/a")
    with pytest.raises(client.ApiException) as caught:
        core.read_node("a")
    assert caught.value.status == 503
    assert core.read_node("a").metadata.name == "a"


# --- the patch functions (pure) ---------------------------------------------------


def test_patch_functions_do_not_mutate_inputs() -> None:
    node = {"metadata": {"annotations": {"a": "1"}}, "status": {"conditions": [{"type": "R"}]}}
    frozen = json.dumps(node, sort_keys=True)
    strategic_merge_patch(node, {"status": {"conditions": [{"type": "R", "status": "x"}]}})
    merge_patch(node, {"metadata": {"annotations": None}})
    json_patch(node, [{"op": "remove", "path": "/metadata/annotations/a"}])
    assert json.dumps(node, sort_keys=True) == frozen


def test_strategic_delete_directive_and_primitive_set() -> None:
    node = {"spec": {"podCIDRs": ["10.0.0.0/24"]},
            "status": {"conditions": [{"type": "A"}, {"type": "B"}]}}
    out = strategic_merge_patch(node, {
        "spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]},
        "status": {"conditions": [{"type": "A", "$patch": "delete"}],
                   "$setElementOrder/conditions": [{"type": "B"}]},
    })
    assert out == {"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]},
                   "status": {"conditions": [{"type": "B"}]}}
    with pytest.raises(PatchError):
        strategic_merge_patch(node, {"status": {"conditions": [{"status": "no key"}]}})


def test_https_and_service_account_tokens_as_a_pod_sees_them(tmp_path: Path) -> None:
    """The in-cluster path: HTTPS verified against the lab's ca.crt, bearer tokens enforced
    once one was issued (the image mode of the lab)."""
    cert = make_server_cert(str(tmp_path), ipaddress.IPv4Address("127.0.0.1"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert.cert, cert.key)
    with KubeAPIDouble(tls=tls) as api:
        api.add_node("n1", pod_cidr="10.244.1.0/24")
        assert api.url.startswith("https://127.0.0.1:")

        def nodes(token: str | None) -> list[str]:
            cfg = client.Configuration()
            cfg.host, cfg.ssl_ca_cert, cfg.retries = api.url, cert.cert, False
            if token is not None:
                cfg.api_key = {"authorization": f"Bearer {token}"}
            with client.ApiClient(cfg) as api_client:
                items = client.CoreV1Api(api_client).list_node().items
            return [n.metadata.name for n in items]

        assert nodes(None) == ["n1"]  # no token issued yet: nobody is asked for one
        token = api.issue_token("kube-flannel", "flannel")
        assert nodes(token) == ["n1"]
        for wrong in (None, token + "x"):
            with pytest.raises(client.ApiException) as refused:
                nodes(wrong)
            assert refused.value.status == 401


# --- namespaces, pods and network policies through the official client ---------------


@pytest.fixture
def netv1(api_client: Any) -> Any:
    return client.NetworkingV1Api(api_client)


def deny_ingress(name: str, pod_labels: dict[str, str] | None = None) -> Any:
    return client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name=name, labels={"case": name}),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=pod_labels),
            policy_types=["Ingress"]))


def test_namespaces_carry_the_name_label_and_select_by_labels(core: Any) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name="x", labels={"ns": "x"})))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name="y", labels={"ns": "y"})))
    made = core.read_namespace("x")
    assert made.metadata.labels == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    assert made.status.phase == "Active"
    names = [n.metadata.name for n in core.list_namespace().items]
    assert names == ["default", "kube-system", "x", "y"]
    assert [n.metadata.name for n in core.list_namespace(label_selector="ns in (y,z)").items] \
        == ["y"]
    assert [n.metadata.name for n in core.list_namespace(
        label_selector="kubernetes.io/metadata.name!=x,ns").items] == ["y"]
    # a merge patch may change labels but never the automatic one
    core.patch_namespace("y", {"metadata": {"labels": {
        "ns2": "updated", "kubernetes.io/metadata.name": None}}})
    assert core.read_namespace("y").metadata.labels == {
        "ns": "y", "ns2": "updated", "kubernetes.io/metadata.name": "y"}
    with pytest.raises(client.ApiException) as caught:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="x")))
    assert caught.value.status == 409 and status_of(caught.value)["reason"] == "AlreadyExists"


def test_network_policy_crud_with_the_official_client(core: Any, netv1: Any) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="x")))
    made = netv1.create_namespaced_network_policy("x", deny_ingress("deny", {"pod": "a"}))
    assert made.metadata.namespace == "x" and made.metadata.uid
    assert made.spec.pod_selector.match_labels == {"pod": "a"}
    assert made.spec.policy_types == ["Ingress"]
    got = netv1.read_namespaced_network_policy("deny", "x")
    got.spec.ingress = [client.V1NetworkPolicyIngressRule(
        _from=[client.V1NetworkPolicyPeer(namespace_selector=client.V1LabelSelector(
            match_expressions=[client.V1LabelSelectorRequirement(
                key="ns", operator="In", values=["y"])]))],
        ports=[client.V1NetworkPolicyPort(port="serve-81-tcp", protocol="TCP"),
               client.V1NetworkPolicyPort(port=80, end_port=90, protocol="UDP")])]
    replaced = netv1.replace_namespaced_network_policy("deny", "x", got)
    rule = replaced.spec.ingress[0]
    assert rule._from[0].namespace_selector.match_expressions[0].values == ["y"]
    assert [(p.port, p.end_port, p.protocol) for p in rule.ports] == [
        ("serve-81-tcp", None, "TCP"), (80, 90, "UDP")]
    with pytest.raises(client.ApiException) as caught:  # the version read before is stale
        netv1.replace_namespaced_network_policy("deny", "x", got)
    assert caught.value.status == 409
    netv1.patch_namespaced_network_policy("deny", "x", {"metadata": {"labels": {"v": "2"}}})
    assert netv1.read_namespaced_network_policy("deny", "x").metadata.labels == {
        "case": "deny", "v": "2"}
    with pytest.raises(client.ApiException) as caught:
        netv1.create_namespaced_network_policy("nope", deny_ingress("deny"))
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "nope" not found'
    everywhere = netv1.list_network_policy_for_all_namespaces()
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [("x", "deny")]
    assert everywhere.metadata.resource_version == str(rv_of(core))
    netv1.delete_namespaced_network_policy("deny", "x")
    assert netv1.list_namespaced_network_policy("x").items == []
    with pytest.raises(client.ApiException) as caught:
        netv1.delete_namespaced_network_policy("deny", "x")
    assert caught.value.status == 404


def rv_of(core: Any) -> int:
    return int(core.list_namespace().metadata.resource_version)


def test_policy_watch_with_label_selector_sees_objects_enter_and_leave(
        double: KubeAPIDouble, core: Any, netv1: Any) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="x")))
    netv1.create_namespaced_network_policy("x", deny_ingress("one"))
    rv = rv_of(core)
    netv1.create_namespaced_network_policy("x", deny_ingress("two"))
    netv1.patch_namespaced_network_policy("one", "x", {"metadata": {"labels": {"case": "two"}}})
    netv1.patch_namespaced_network_policy("one", "x", {"metadata": {"labels": {"case": "one"}}})
    core.delete_namespace("x")  # takes the policies with it
    seen = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        netv1.list_network_policy_for_all_namespaces, label_selector="case=two",
        resource_version=str(rv), timeout_seconds=1)]
    assert seen == [("ADDED", "two"), ("ADDED", "one"), ("DELETED", "one"), ("DELETED", "two")]
    assert netv1.list_network_policy_for_all_namespaces().items == []


def test_pods_status_is_written_through_the_status_subresource(core: Any) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="x")))
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="a", labels={"pod": "a"}),
        spec=client.V1PodSpec(node_name="n1", containers=[client.V1Container(
            name="c", image="i", ports=[client.V1ContainerPort(
                name="serve-80-tcp", container_port=80, protocol="TCP")])]),
        status=client.V1PodStatus(phase="Running", pod_ip="10.0.0.9"))
    made = core.create_namespaced_pod("x", pod)
    assert made.status.phase == "Pending" and made.status.pod_ip is None
    core.patch_namespaced_pod_status("a", "x", {"status": {
        "phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]}})
    core.patch_namespaced_pod("a", "x", {"metadata": {"labels": {"pod2": "updated"}},
                                         "status": {"phase": "Failed"}})
    got = core.read_namespaced_pod("a", "x")
    assert got.status.phase == "Running" and got.status.pod_ips[0].ip == "10.0.0.9"
    assert got.metadata.labels == {"pod": "a", "pod2": "updated"}
    assert got.spec.containers[0].ports[0].name == "serve-80-tcp"
    on_n1 = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert [p.metadata.name for p in on_n1.items] == ["a"]
    assert core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n2").items == []
    core.delete_collection_namespaced_pod("x", label_selector="pod=a")
    assert core.list_namespaced_pod("x").items == []


def test_bad_selector_is_a_bad_request(core: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core.list_namespace(label_selector="a b c")
    assert caught.value.status == 400 and status_of(caught.value)["reason"] == "BadRequest"


def test_namespaced_watch_and_generate_name(core: Any) -> None:
    for name in ("x", "y"):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    rv = rv_of(core)
    for ns in ("x", "y"):
        core.create_namespaced_pod(ns, client.V1Pod(
            metadata=client.V1ObjectMeta(generate_name="p-", labels={"app": "s"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="i")])))
    seen = [(e["type"], e["object"].metadata.namespace) for e in watch.Watch().stream(
        core.list_namespaced_pod, "y", resource_version=str(rv), timeout_seconds=1)]
    assert seen == [("ADDED", "y")]
    names = [p.metadata.name for p in core.list_pod_for_all_namespaces(
        label_selector="app=s").items]
    assert len(names) == 2 and all(n.startswith("p-") and len(n) > 2 for n in names)
