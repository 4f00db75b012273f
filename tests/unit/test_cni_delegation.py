"""ADD/DEL/CHECK against a fake ``bridge`` found in CNI_PATH: caching and pass-through."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from cni import errors
from cni.plugin import run

FAKE_DELEGATE = """#!{python}
import json, os, sys
stdin = sys.stdin.buffer.read()
cache_dir = os.environ["FAKE_CACHE_DIR"]
record = {{
    "command": os.environ["CNI_COMMAND"],
    "stdin": stdin.decode(),
    "cached_at_call": {{
        name: open(os.path.join(cache_dir, name)).read()
        for name in (os.listdir(cache_dir) if os.path.isdir(cache_dir) else [])
    }},
    "containerid": os.environ.get("CNI_CONTAINERID"),
}}
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
sys.stdout.write(os.environ.get("FAKE_STDOUT_" + os.environ["CNI_COMMAND"], ""))
sys.exit(int(os.environ.get("FAKE_RC_" + os.environ["CNI_COMMAND"], "0")))
"""

# Deliberately odd formatting: it must reach the runtime byte for byte.
ADD_RESULT = '{ "cniVersion":"1.0.0",  "ips":[{"address":"10.1.17.2/24"}] }\n'
BRIDGE_ERROR = '{"code": 11, "msg": "bridge busy", "details": "try later"}'


class Node:
    """A temp CNI_PATH with the fake delegate, a subnet.env and a cache dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        delegate = self.bin / "bridge"
        delegate.write_text(FAKE_DELEGATE.format(python=sys.executable))
        delegate.chmod(0o755)
        self.cache = root / "cache"
        self.log = root / "calls.jsonl"
        self.subnet_env = root / "subnet.env"
        self.subnet_env.write_text(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
            "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
        )
        self.conf: dict[str, object] = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(self.subnet_env),
            "dataDir": str(self.cache),
        }

    def env(self, command: str, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "ctr1",
            "CNI_NETNS": "/var/run/netns/pod",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"/nonexistent:{self.bin}",
            "FAKE_CACHE_DIR": str(self.cache),
            "FAKE_LOG": str(self.log),
            "FAKE_STDOUT_ADD": ADD_RESULT,
            **extra,
        }

    def call(
        self, command: str, conf: Mapping[str, object] | None = None, **extra: str
    ) -> tuple[int, bytes]:
        stdout = io.BytesIO()
        stdin = io.BytesIO(json.dumps(self.conf if conf is None else conf).encode())
        code = run(self.env(command, **extra), stdin, stdout, io.StringIO())
        return code, stdout.getvalue()

    def calls(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def cached(self) -> Path:
        return self.cache / "ctr1"


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_add_caches_before_delegating_and_passes_stdout_through(node: Node) -> None:
    code, out = node.call("ADD")
    assert (code, out) == (0, ADD_RESULT.encode())
    [call] = node.calls()
    assert call["command"] == "ADD"
    # The delegate got the rendered config, and it was on disk when it ran.
    assert call["cached_at_call"] == {"ctr1": call["stdin"]}
    assert json.loads(str(call["stdin"]))["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}]]
    assert node.cached().read_text() == call["stdin"]
    assert stat.S_IMODE(node.cached().stat().st_mode) == 0o600
    assert stat.S_IMODE(node.cache.stat().st_mode) == 0o700
    assert os.listdir(node.cache) == ["ctr1"]  # no temp files left behind


def test_del_replays_the_cache_and_then_removes_it(node: Node) -> None:
    node.call("ADD")
    rendered = node.cached().read_text()
    node.subnet_env.unlink()  # DEL must not need subnet.env any more
    code, out = node.call("DEL")
    assert (code, out) == (0, b"")
    assert [call["command"] for call in node.calls()] == ["ADD", "DEL"]
    assert node.calls()[1]["stdin"] == rendered
    assert not node.cached().exists()


def test_second_del_succeeds_without_calling_the_delegate(node: Node) -> None:
    node.call("ADD")
    assert node.call("DEL")[0] == 0
    assert node.call("DEL") == (0, b"")
    assert [call["command"] for call in node.calls()] == ["ADD", "DEL"]


def test_failed_delegate_del_keeps_the_cache_and_passes_the_error_through(node: Node) -> None:
    node.call("ADD")
    code, out = node.call("DEL", FAKE_RC_DEL="3", FAKE_STDOUT_DEL=BRIDGE_ERROR)
    assert (code, out) == (3, BRIDGE_ERROR.encode())
    assert node.cached().exists()
    assert node.call("DEL")[0] == 0  # the retry replays it and cleans up
    assert not node.cached().exists()


def test_delegate_add_error_passes_through_unchanged(node: Node) -> None:
    code, out = node.call("ADD", FAKE_RC_ADD="1", FAKE_STDOUT_ADD=BRIDGE_ERROR)
    assert (code, out) == (1, BRIDGE_ERROR.encode())
    assert node.cached().exists()  # the runtime's DEL will use it to clean up


def test_delegate_failure_without_error_json_is_wrapped(node: Node) -> None:
    code, out = node.call("ADD", FAKE_RC_ADD="2", FAKE_STDOUT_ADD="panic: oops")
    body = json.loads(out)
    assert code == 1
    assert body["code"] == errors.INTERNAL
    assert "exit status 2" in body["msg"]
    assert body["details"] == "panic: oops"


def test_missing_subnet_env_writes_nothing_and_calls_nothing(node: Node) -> None:
    node.subnet_env.unlink()
    code, out = node.call("ADD")
    body = json.loads(out)
    assert code == 1
    assert body["code"] == errors.TRY_AGAIN_LATER
    assert str(node.subnet_env) in body["msg"]
    assert not node.cache.exists()
    assert node.calls() == []


def test_delegate_not_in_cni_path(node: Node) -> None:
    conf = {**node.conf, "delegate": {"type": "macvlan"}}
    body = json.loads(node.call("ADD", conf)[1])
    assert body["code"] == errors.INTERNAL
    assert body["msg"] == f'failed to find plugin "macvlan" in path [/nonexistent {node.bin}]'


def test_delegate_type_with_a_slash_is_refused(node: Node) -> None:
    conf = {**node.conf, "delegate": {"type": "../bin/bridge"}}
    body = json.loads(node.call("ADD", conf)[1])
    assert body["code"] == errors.INVALID_NETWORK_CONFIG
    assert node.calls() == []


@pytest.mark.parametrize("prev_result", [None, json.loads(ADD_RESULT)])
def test_check_succeeds_without_asking_the_delegate(node: Node, prev_result: object) -> None:
    # Upstream's CHECK is a no-op; bridge < 1.3 would fail CHECK on flannel's gateway-less routes.
    node.call("ADD")
    conf = node.conf if prev_result is None else {**node.conf, "prevResult": prev_result}
    assert node.call("CHECK", conf) == (0, b"")
    assert [call["command"] for call in node.calls()] == ["ADD"]


# An empty or cut-off file is what a power loss can leave (the cache is not fsynced).
@pytest.mark.parametrize("content", ["{garbage", "", '{"cniVersion":"1.0.0","ty'])
def test_unreadable_cache_on_del_is_left_alone_and_del_succeeds(node: Node, content: str) -> None:
    node.cache.mkdir(mode=0o700)
    node.cached().write_text(content)
    assert node.call("DEL")[0] == 0
    assert node.calls() == []
    assert node.cached().read_text() == content
