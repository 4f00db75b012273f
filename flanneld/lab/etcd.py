"""Start and stop a private etcd (Debian's etcd-server) for the lab and tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from flanneld.lab.etcdgw import EtcdGateway
from flanneld.lab.procs import stop_children
from subnet.errors import FlannelError

ETCD_BINARY = "etcd"


@dataclass(frozen=True, slots=True)
class EtcdSpec:
    """Where a private etcd keeps its data and listens."""

    name: str
    data_dir: str
    host: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def argv(self) -> list[str]:
        # Fast elections: a restart costs one election timeout (0.1 s here).
        return [
            shutil.which(ETCD_BINARY) or ETCD_BINARY,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--log-level", "error",
        ]


class EtcdProcess:
    """One etcd child process; :meth:`stop` ends exactly the PID we started."""

    def __init__(
        self,
        spec: EtcdSpec,
        log_path: str,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._log_path = log_path
        self._preexec_fn = preexec_fn
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> None:
        os.makedirs(self.spec.data_dir, mode=0o700, exist_ok=True)
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.spec.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=self._preexec_fn,  # noqa: PLW1509 - opt-in, e.g. a setns() only
                start_new_session=True,
            )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise FlannelError(
                    f"etcd exited with code {self._proc.returncode}; see {self._log_path}"
                )
            if self._healthy():
                return
            time.sleep(0.05)
        raise FlannelError(f"etcd at {self.spec.client_url} not healthy after {timeout}s")

    def _healthy(self) -> bool:
        with EtcdGateway(self.spec.client_url, timeout=1.0) as gateway:
            return gateway.healthy()

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_children([proc], signal.SIGKILL if kill else signal.SIGTERM, timeout)
