"""A private etcd per test, and etcdctl as an independent client to inspect it."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flanneld.lab.etcd import EtcdProcess, EtcdSpec

ETCDCTL = shutil.which("etcdctl") or "etcdctl"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Etcd:
    """A running etcd on 127.0.0.1 that a test may stop and start again."""

    def __init__(self, process: EtcdProcess) -> None:
        self.process = process
        self.user: str | None = None  # "name:password" once auth is enabled
        self.ctl_flags: list[str] = []  # TLS flags for etcdctl

    @property
    def url(self) -> str:
        return self.process.spec.client_url

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process.start()

    def watchers(self) -> int:
        """How many watches etcd is serving now (its ``/metrics`` gauge); plain HTTP only."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("etcd_debugging_mvcc_watcher_total "):
                    return int(float(line.split()[1]))
        raise AssertionError("etcd's /metrics has no etcd_debugging_mvcc_watcher_total")

    def ctl(self, *args: str) -> str:
        """Run etcdctl (v3 API) against this etcd; its stdout."""
        auth = ["--user", self.user] if self.user else []
        done = subprocess.run(
            [ETCDCTL, "--endpoints", self.url, "--command-timeout=5s", *self.ctl_flags, *auth,
             *args],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return done.stdout

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        extra = [f"--lease={lease:x}"] if lease is not None else []
        self.ctl("put", *extra, "--", key, value)

    def delete(self, key: str) -> None:
        self.ctl("del", "--", key)

    def get(self, key: str) -> dict[str, Any] | None:
        """The key's record (value decoded to text, lease id as int), or None."""
        doc = json.loads(self.ctl("get", "-w", "json", "--", key))
        kvs = doc.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return {
            "value": _b64(kv["value"]),
            "lease": int(kv.get("lease", 0)),
            "mod_revision": int(kv["mod_revision"]),
        }

    def value(self, key: str) -> str | None:
        record = self.get(key)
        return None if record is None else str(record["value"])

    def lease_of(self, key: str) -> int | None:
        """The etcd lease id the key is attached to (0: none), None if no such key."""
        record = self.get(key)
        return None if record is None else int(record["lease"])

    def keys(self, prefix: str) -> list[str]:
        out = self.ctl("get", "--prefix", "--keys-only", "--", prefix)
        return [line for line in out.splitlines() if line]

    def revision(self) -> int:
        doc = json.loads(self.ctl("get", "-w", "json", "--", "/"))
        return int(doc["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.ctl("compaction", "--physical", str(revision))

    def enable_auth(self, user: str, password: str) -> None:
        """Create ``root`` (required by etcd) and ``user``, then turn auth on."""
        self.ctl("user", "add", "root", "--new-user-password", password)
        self.ctl("user", "grant-role", "root", "root")
        if user != "root":
            self.ctl("user", "add", user, "--new-user-password", password)
            self.ctl("role", "add", "flannel")
            self.ctl("role", "grant-permission", "flannel", "--prefix=true", "readwrite", "/")
            self.ctl("user", "grant-role", user, "flannel")
        self.ctl("auth", "enable")
        self.user = f"root:{password}"

    def grant(self, ttl: int) -> int:
        doc = json.loads(self.ctl("lease", "grant", str(ttl), "-w", "json"))
        return int(doc["ID"])

    def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL of an etcd lease; -1 once revoked or expired."""
        doc = json.loads(self.ctl("lease", "timetolive", f"{lease_id:x}", "-w", "json"))
        return int(doc["ttl"])


def _b64(text: str) -> str:
    return base64.b64decode(text).decode()


@dataclass(frozen=True, slots=True)
class _SpecWithFlags(EtcdSpec):
    extra: tuple[str, ...] = ()
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        return [*EtcdSpec.argv(self), *self.extra]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def server_flags(self) -> tuple[str, ...]:
        return (
            "--cert-file", self.server_cert, "--key-file", self.server_key,
            "--trusted-ca-file", self.ca, "--client-cert-auth",
        )

    def ctl_flags(self) -> list[str]:
        return ["--cacert", self.ca, "--cert", self.client_cert, "--key", self.client_key]


def make_tls_files(directory: Path) -> TlsFiles:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    d = directory
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=itest-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=itest-{name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return TlsFiles(
        ca=str(d / "ca.pem"),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
    )


class _TlsEtcdProcess(EtcdProcess):
    """Checks health over TLS with the test CA and client certificate."""

    def __init__(self, spec: EtcdSpec, log_path: str, tls: TlsFiles) -> None:
        super().__init__(spec, log_path)
        self._context = ssl.create_default_context(cafile=tls.ca)
        self._context.load_cert_chain(tls.client_cert, tls.client_key)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                self.spec.client_url + "/health", timeout=1, context=self._context
            ) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError):
            return False


@contextmanager
def running_etcd(
    tmp_path: Path, *extra_flags: str, tls: TlsFiles | None = None
) -> Iterator[Etcd]:
    """A fresh etcd (empty store) on free loopback ports; stopped by PID afterwards.

    With ``tls`` it serves https only and demands client certificates.
    """
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd / etcdctl not installed")
    spec = _SpecWithFlags(
        name="itest",
        data_dir=str(tmp_path / "etcd-data"),
        host="127.0.0.1",
        client_port=_free_port(),
        peer_port=_free_port(),
        extra=(*extra_flags, *(tls.server_flags() if tls else ())),
        scheme="https" if tls else "http",
    )
    log_path = str(tmp_path / "etcd.log")
    process = _TlsEtcdProcess(spec, log_path, tls) if tls else EtcdProcess(spec, log_path)
    try:
        process.start()
        server = Etcd(process)
        if tls:
            server.ctl_flags = tls.ctl_flags()
        yield server
    finally:
        process.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    with running_etcd(tmp_path) as server:
        yield server
