"""The health server over real HTTP on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from flanneld import health
from flanneld.health import HealthServer, HealthState, Response
from subnet.errors import ConfigError


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Content-Type", "")
    finally:
        conn.close()


@pytest.fixture
def state() -> HealthState:
    return HealthState()


@pytest.fixture
def server(state: HealthState) -> Iterator[HealthServer]:
    handle = health.start(state, "127.0.0.1", 0)
    try:
        yield handle
    finally:
        handle.stop()


def test_ephemeral_port_is_exposed(server: HealthServer) -> None:
    assert server.port > 0


def test_healthz_always_running(server: HealthServer) -> None:
    status, body, ctype = get(server.port, "/healthz")
    assert (status, body) == (200, "flanneld is running")
    assert ctype.startswith("text/plain")


def test_readyz_before_and_after_ready(server: HealthServer, state: HealthState) -> None:
    assert get(server.port, "/readyz")[:2] == (503, "flanneld is not ready yet")
    state.mark_ready()
    assert get(server.port, "/readyz")[:2] == (200, "flanneld is ready")
    assert get(server.port, "/healthz")[:2] == (200, "flanneld is running")


def test_readyz_detail_lines(server: HealthServer, state: HealthState) -> None:
    state.set_detail("subnet-file", "subnet.env written to /run/flannel/subnet.env")
    status, body, _ = get(server.port, "/readyz")
    assert status == 503
    assert body.splitlines() == ["flanneld is not ready yet",
                                 "subnet.env written to /run/flannel/subnet.env"]
    state.mark_ready()
    state.set_detail("net-conf", "net-conf.json edit rejected:\nNetwork changed")
    state.set_detail("subnet-file", "subnet.env rewritten")  # replaces, keeps its place
    status, body, _ = get(server.port, "/readyz")
    assert status == 200
    assert body.splitlines() == ["flanneld is ready", "subnet.env rewritten",
                                 "net-conf.json edit rejected: Network changed"]
    state.set_detail("net-conf", None)
    assert get(server.port, "/readyz")[1] == "flanneld is ready\nsubnet.env rewritten"


def test_query_string_ignored_and_unknown_path_404(server: HealthServer) -> None:
    assert get(server.port, "/healthz?verbose=1")[0] == 200
    assert get(server.port, "/nope")[0] == 404
    assert get(server.port, "/healthz/")[0] == 404


def test_head_has_no_body(server: HealthServer) -> None:
    status, body, _ = get(server.port, "/healthz", method="HEAD")
    assert status == 200 and body == ""


def test_extra_routes_for_metrics(state: HealthState) -> None:
    metrics = {"/metrics": lambda: Response(200, "flannel_up 1\n", "text/plain; version=0.0.4")}
    handle = health.start(state, "127.0.0.1", 0, extra_routes=metrics)
    try:
        status, body, ctype = get(handle.port, "/metrics")
        assert (status, body, ctype) == (200, "flannel_up 1\n", "text/plain; version=0.0.4")
        assert get(handle.port, "/healthz")[0] == 200
    finally:
        handle.stop()


def test_stop_closes_the_port_quickly(state: HealthState) -> None:
    handle = health.start(state, "127.0.0.1", 0)
    port = handle.port
    assert get(port, "/healthz")[0] == 200
    began = time.monotonic()
    handle.stop()
    assert time.monotonic() - began < 10.0  # generous: a server that never stops hangs here
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert not any(t.name == "flanneld-health" and t.is_alive() for t in threading.enumerate())


def test_servers_are_independent() -> None:
    a_state, b_state = HealthState(), HealthState()
    a = health.start(a_state, "127.0.0.1", 0)
    b = health.start(b_state, "127.0.0.1", 0)
    try:
        a_state.mark_ready()
        assert get(a.port, "/readyz")[0] == 200
        assert get(b.port, "/readyz")[0] == 503
    finally:
        a.stop()
        b.stop()


def test_bind_failure_is_config_error(server: HealthServer, state: HealthState) -> None:
    with pytest.raises(ConfigError, match=f"127.0.0.1:{server.port}"):
        health.start(state, "127.0.0.1", server.port)


def test_ipv6_loopback(state: HealthState) -> None:
    # No skip: a machine without ::1 cannot show that -healthz-ip=::1 works,
    # and that must be seen as a failure, not as a pass.
    assert socket.has_ipv6, "this Python was built without IPv6: the ::1 case cannot run"
    try:
        handle = health.start(state, "::1", 0)
    except ConfigError as err:
        pytest.fail(f"cannot bind ::1 ({err}): IPv6 is off on lo (net.ipv6.conf.lo.disable_ipv6)")
    try:
        conn = http.client.HTTPConnection("::1", handle.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        handle.stop()


def test_state_is_thread_safe_under_concurrent_updates() -> None:
    state = HealthState()

    def writer(n: int) -> None:
        for i in range(200):
            state.set_detail(f"t{n}", f"line {i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert state.details() == ("line 199",) * 4


# --- bounds (issue 9, item 2) -----------------------------------------------------------


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_oversized_request_head_is_431_and_closed(server: HealthServer) -> None:
    answer = raw(server.port, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * health.MAX_REQUEST)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_other_methods_and_garbage_get_an_error_not_a_crash(server: HealthServer) -> None:
    assert raw(server.port, b"POST /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(server.port, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert get(server.port, "/healthz")[0] == 200


def test_a_silent_client_is_closed_after_the_request_timeout(
    state: HealthState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "REQUEST_TIMEOUT", 0.3)
    handle = health.start(state, "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", handle.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
            assert sock.recv(100) == b""  # closed by the server, no answer
    finally:
        handle.stop()


def test_a_failing_handler_is_a_500_and_the_server_goes_on(state: HealthState) -> None:
    def broken() -> Response:
        raise RuntimeError("boom")

    handle = health.start(state, "127.0.0.1", 0, {"/metrics": broken})
    try:
        assert get(handle.port, "/metrics")[0] == 500
        assert get(handle.port, "/healthz")[0] == 200
    finally:
        handle.stop()


def test_a_blocking_detail_makes_readyz_503_until_cleared(
    server: HealthServer, state: HealthState
) -> None:
    state.mark_ready()
    state.set_detail("store", "subnet store failing for 12s: etcd down", blocking=True)
    status, body, _ = get(server.port, "/readyz")
    assert status == 503
    assert body.splitlines() == ["flanneld is not ready yet",
                                 "subnet store failing for 12s: etcd down"]
    state.set_detail("store", "subnet store failing for 1s: etcd down")  # not blocking
    assert get(server.port, "/readyz")[0] == 200
    state.set_detail("store", None)
    assert get(server.port, "/readyz")[:2] == (200, "flanneld is ready")


def test_stop_wakes_an_idle_server_at_once(state: HealthState) -> None:
    # Idle, the server waits IDLE_POLL between turns; stop() must not wait for the turn.
    handle = health.start(state, "127.0.0.1", 0)
    assert get(handle.port, "/healthz")[0] == 200  # it serves, then has nothing open
    threads = [t for t in threading.enumerate() if t.name == "flanneld-health"]
    handle.stop(timeout=health.IDLE_POLL / 2)
    assert not any(t.is_alive() for t in threads)
