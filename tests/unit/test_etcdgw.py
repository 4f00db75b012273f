"""The lab's etcd JSON-gateway client against a small stand-in gateway on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flanneld.lab.etcdgw import TXN_OPS, EtcdGateway
from subnet.errors import StoreError


def _dec(text: str) -> str:
    return base64.b64decode(text).decode()


class FakeGateway(ThreadingHTTPServer):
    """Keys in a dict; answers like etcd's /v3/kv/{put,range,deleterange,txn} and /health."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.kv: dict[str, str] = {}
        self.posts: list[str] = []
        self.fail_next = 0  # answer HTTP 500 this many times
        self.close_after_reply = False  # drop the kept-alive connection after each answer

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts.append(path)
        if path == "/v3/kv/put":
            self.kv[_dec(body["key"])] = _dec(body["value"])
        elif path == "/v3/kv/deleterange":
            self.kv.pop(_dec(body["key"]), None)
        elif path == "/v3/kv/txn":
            assert len(body["success"]) <= TXN_OPS
            for op in body["success"]:
                self.kv[_dec(op["request_put"]["key"])] = _dec(op["request_put"]["value"])
        elif path == "/v3/kv/range":
            low, high = base64.b64decode(body["key"]), base64.b64decode(body["range_end"])
            found = sorted(k for k in self.kv if low <= k.encode() < high)
            if body.get("count_only"):
                return {"count": str(len(found))}
            enc = [base64.b64encode(x.encode()).decode() for k in found for x in (k, self.kv[k])]
            return {"kvs": [{"key": k, "value": v} for k, v in zip(enc[::2], enc[1::2])]}
        return {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as etcd
    server: FakeGateway

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: object) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self.close_connection = self.server.close_after_reply

    def do_GET(self) -> None:
        self._reply(200, {"health": "true"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.fail_next:
            self.server.fail_next -= 1
            self._reply(500, {"error": "boom"})
            return
        self._reply(200, self.server.answer(self.path, body))


@pytest.fixture
def fake() -> Iterator[FakeGateway]:
    server = FakeGateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def url(server: FakeGateway) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_put_list_count_and_delete_under_a_prefix(fake: FakeGateway) -> None:
    with EtcdGateway(url(fake)) as gw:
        gw.put("/net/subnets/10.5.1.0-24", '{"PublicIP":"198.18.0.2"}')
        gw.put("/net/subnets/10.5.2.0-24", "{}")
        gw.put("/net/config", "{}")
        gw.put("/net/subnets0", "outside")  # sorts right after the prefix
        assert gw.get_prefix("/net/subnets/") == {
            "/net/subnets/10.5.1.0-24": '{"PublicIP":"198.18.0.2"}',
            "/net/subnets/10.5.2.0-24": "{}",
        }
        assert gw.count_prefix("/net/subnets/") == 2
        gw.delete("/net/subnets/10.5.2.0-24")
        assert gw.count_prefix("/net/subnets/") == 1
        assert gw.healthy()


def test_put_many_splits_into_transactions_etcd_accepts(fake: FakeGateway) -> None:
    items = [(f"/k/{i:04d}", str(i)) for i in range(2 * TXN_OPS + 1)]
    with EtcdGateway(url(fake)) as gw:
        gw.put_many(items)
        assert gw.count_prefix("/k/") == len(items)
    assert fake.posts.count("/v3/kv/txn") == 3


def test_a_closed_keep_alive_connection_is_reopened(fake: FakeGateway) -> None:
    fake.close_after_reply = True
    with EtcdGateway(url(fake)) as gw:
        for i in range(3):
            gw.put(f"/k/{i}", "v")
    assert len(fake.kv) == 3


def test_http_errors_and_refused_connections_are_store_errors(fake: FakeGateway) -> None:
    fake.fail_next = 1
    with EtcdGateway(url(fake)) as gw, pytest.raises(StoreError, match="HTTP 500"):
        gw.put("/k", "v")
    port = fake.server_address[1]
    fake.shutdown()
    fake.server_close()
    with EtcdGateway(f"http://127.0.0.1:{port}", timeout=2) as gw:
        assert not gw.healthy()
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}/v3/kv/put"):
            gw.put("/k", "v")


def test_only_plain_http_urls() -> None:
    with pytest.raises(StoreError, match="not an http://host:port URL"):
        EtcdGateway("https://127.0.0.1:2379")
