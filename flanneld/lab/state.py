"""The lab's state file: what it made, so another process (or a later
``lab down`` after a crash) can find and remove exactly that.

It is rewritten atomically after every namespace or process the lab
creates, before the lab waits on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from flanneld.lab.layout import LabPlan, make_plan
from subnet.errors import ConfigError

STATE_FILE = "lab.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process the lab started: its PID and a string its cmdline must contain."""

    pid: int
    marker: str


@dataclass(frozen=True, slots=True)
class LabState:
    prefix: str
    nodes: int
    pods_per_node: int
    backend: str
    namespaces: tuple[str, ...] = ()
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    subnet_mgr: str = "etcd"
    image: str | None = None  # image mode: the image and the manifest whose pod runs it
    manifest: str | None = None
    flanneld: dict[str, str] = field(default_factory=dict)  # node -> another flanneld binary
    network_policy: bool = False
    netpol_model: bool = False
    ip_family: str = "ipv4"

    def plan(self) -> LabPlan:
        return make_plan(
            self.prefix, self.nodes, self.pods_per_node, self.backend, subnet_mgr=self.subnet_mgr,
            image=self.image, network_policy=self.network_policy, netpol_model=self.netpol_model,
            flanneld=self.flanneld, ip_family=self.ip_family,
        )

    def with_namespace(self, name: str) -> LabState:
        return replace(self, namespaces=(*self.namespaces, name))

    def with_process(self, role: str, record: ProcessRecord) -> LabState:
        return replace(self, processes={**self.processes, role: record})

    def without_process(self, role: str) -> LabState:
        return replace(
            self, processes={k: v for k, v in self.processes.items() if k != role}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "prefix": self.prefix,
            "nodes": self.nodes,
            "pods_per_node": self.pods_per_node,
            "backend": self.backend,
            "subnet_mgr": self.subnet_mgr,
            "image": self.image,
            "manifest": self.manifest,
            "flanneld": dict(self.flanneld),
            "network_policy": self.network_policy,
            "netpol_model": self.netpol_model,
            "ip_family": self.ip_family,
            "namespaces": list(self.namespaces),
            "processes": {
                role: {"pid": rec.pid, "marker": rec.marker}
                for role, rec in self.processes.items()
            },
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabState:
        try:
            if doc["version"] != FORMAT_VERSION:
                raise ConfigError(f"unknown lab state version {doc['version']!r}")
            return cls(
                prefix=str(doc["prefix"]),
                nodes=int(doc["nodes"]),
                pods_per_node=int(doc["pods_per_node"]),
                backend=str(doc["backend"]),
                namespaces=tuple(str(n) for n in doc["namespaces"]),
                processes={
                    str(role): ProcessRecord(int(rec["pid"]), str(rec["marker"]))
                    for role, rec in doc["processes"].items()
                },
                subnet_mgr=str(doc.get("subnet_mgr", "etcd")),
                image=_optional(doc.get("image")),
                manifest=_optional(doc.get("manifest")),
                flanneld={str(k): str(v) for k, v in doc.get("flanneld", {}).items()},
                network_policy=bool(doc.get("network_policy", False)),
                netpol_model=bool(doc.get("netpol_model", False)),
                ip_family=str(doc.get("ip_family", "ipv4")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"malformed lab state: {err}") from err


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def save(state_dir: str, state: LabState) -> None:
    """Write the state file atomically (temp file, fsync, rename)."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    path = state_path(state_dir)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state.to_json(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(state_dir: str) -> LabState | None:
    """The recorded state, or None if there is no state file."""
    try:
        with open(state_path(state_dir), encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise ConfigError(f"unreadable lab state in {state_dir}: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"unreadable lab state in {state_dir}: not an object")
    return LabState.from_json(doc)
