"""One flanneld under test: started in the node namespace, watched through /proc and
its health port, stopped by its PID only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from checkout import REPO, compile_bytecode
from nsthread import NsThread, http_get

from flanneld.lab.lab import log_tail
from flanneld.lab.procs import stop_children
from flanneld.lab.topology import netns_argv

HEALTH_PORT = 9901


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of ``pid``; empty if it is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM", "Threads"):
                    found[name] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Flanneld:
    """One flanneld child in the node namespace; stopped by its PID only."""

    def __init__(self, ns: str, workdir: str, etcd_url: str | None,
                 health_port: int = HEALTH_PORT, extra: Sequence[str] = (),
                 profile: str | None = None, env: Mapping[str, str] | None = None) -> None:
        """``etcd_url`` None: the store comes from ``extra`` (kube mode, with ``env``)."""
        self.subnet_file = os.path.join(workdir, "subnet.env")
        self.log_path = os.path.join(workdir, "flanneld.log")
        python = [sys.executable]
        if profile:  # cProfile sees the main thread: the loop that reconciles
            python += ["-m", "cProfile", "-o", profile]
        self.argv = [
            *python, "-m", "flanneld.cli",
            *([f"-etcd-endpoints={etcd_url}"] if etcd_url else []),
            "-iface=ul0",
            f"-subnet-file={self.subnet_file}",
            "-healthz-ip=127.0.0.1",
            f"-healthz-port={health_port}",
            *extra,
        ]
        self._ns = ns
        self._env = {**os.environ, **env} if env else None
        self.health_port = health_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        compile_bytecode()
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                netns_argv(self._ns, self.argv),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=REPO, start_new_session=True, env=self._env,
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("flanneld was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, thread: NsThread, timeout: float, interval: float = 0.01) -> float | None:
        """Time at which /readyz first answered 200; None on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return None
            status, _ = http_get(thread, "127.0.0.1", self.health_port, "/readyz", timeout=1)
            if status == 200:
                return time.monotonic()
            time.sleep(interval)
        return None

    def metrics(self, thread: NsThread) -> dict[str, float]:
        """The flannel_* samples of /metrics (name{labels} -> value)."""
        status, body = http_get(thread, "127.0.0.1", self.health_port, "/metrics", timeout=5)
        if status != 200:
            return {}
        samples: dict[str, float] = {}
        for line in body.splitlines():
            if line.startswith("flannel_") and " " in line:
                name, _, value = line.rpartition(" ")
                try:
                    samples[name] = float(value)
                except ValueError:
                    continue
        return samples

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean exit, so cProfile writes its stats), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        stop_children([proc], signal.SIGTERM, timeout)
        return proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


def reconcile_stats(samples: Mapping[str, float]) -> dict[str, float]:
    """Count, total and mean seconds of flannel_reconcile_duration_seconds."""
    count = sum(v for k, v in samples.items()
                if k.startswith("flannel_reconcile_duration_seconds_count"))
    total = sum(v for k, v in samples.items()
                if k.startswith("flannel_reconcile_duration_seconds_sum"))
    return {"count": count, "sum_s": round(total, 3),
            "mean_ms": round(1000 * total / count, 2) if count else 0.0}
