"""CPU per Node watch event: pyflannel's stream parser against ``kubernetes.watch.Watch``.

    python3 bench/kube_watch_parse.py [--events 1000] [--repeat 5] [--out kube_watch_parse.json]

Feeds the same chunked stream of MODIFIED events (a Node the size of a real
one: labels, conditions, 30 images, about 7.5 kB a line) to
``subnet.kube._events`` and to the official client's two paths: the typed
default (each event becomes a ``V1Node``; ``raw_object`` keeps the dict) and
``deserialize=False`` (plain ``json.loads``).  Reports the best of
``--repeat`` runs in process CPU time per event.  No network, no root.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import watch

from subnet.kube import _events

RESULTS = Path(__file__).resolve().parent / "results"


def node(i: int) -> dict[str, Any]:
    stamp = "2026-12-06T20:00:00Z"
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {
            "name": f"node-{i}", "uid": f"0b6a1c2e-7f0e-4b8e-9a55-{i:012d}",
            "resourceVersion": str(1000 + i), "creationTimestamp": stamp,
            "labels": {"kubernetes.io/hostname": f"node-{i}", "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "zone-a"},
            "annotations": {
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"0e:1a:2b:3c:4d:5e"}',
                "flannel.alpha.coreos.com/public-ip": f"192.168.{i // 250}.{i % 250 + 1}",
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"podCIDR": f"10.{i // 250}.{i % 250}.0/24",
                 "podCIDRs": [f"10.{i // 250}.{i % 250}.0/24"]},
        "status": {
            "capacity": {"cpu": "2", "memory": "8012345Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "7909945Ki", "pods": "110"},
            "conditions": [
                {"type": kind, "status": "False", "lastHeartbeatTime": stamp,
                 "lastTransitionTime": stamp, "reason": f"KubeletHasNo{kind}",
                 "message": f"kubelet has no {kind}"}
                for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
            ],
            "addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                          {"type": "Hostname", "address": f"node-{i}"}],
            "nodeInfo": {"machineID": "a" * 32, "systemUUID": f"{i:036d}", "bootID": "b" * 36,
                         "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12",
                         "containerRuntimeVersion": "containerd://1.7.2",
                         "kubeletVersion": "v1.30.1", "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": [f"registry.example/img{j}@sha256:{'d' * 64}",
                                  f"registry.example/img{j}:v1"], "sizeBytes": 12345678 + j}
                       for j in range(30)],
        },
    }


class Stream:
    """Enough of a urllib3 response for both parsers: the stream in 64 KiB chunks."""

    status = 200

    def __init__(self, blob: bytes) -> None:
        self._blob = blob

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        for start in range(0, len(self._blob), 65536):
            yield self._blob[start:start + 65536]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def best_cpu_per_event(parse: Callable[[], int], events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        assert parse() == events
        best = min(best, time.process_time() - started)
    return best / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="kube_watch_parse.json")
    args = parser.parse_args()
    lines = [json.dumps({"type": "MODIFIED", "object": node(i)}) for i in range(args.events)]
    blob = "".join(line + "\n" for line in lines).encode()

    def ours() -> int:
        return sum(1 for _ in _events(Stream(blob)))

    def client(deserialize: bool) -> Callable[[], int]:
        def run() -> int:
            stream = watch.Watch(return_type="V1Node").stream(
                lambda **_kw: Stream(blob), timeout_seconds=1, deserialize=deserialize)
            return sum(1 for _ in stream)
        return run

    figures = {
        "event_bytes": len(lines[0]),
        "us_per_event": {
            name: round(best_cpu_per_event(parse, args.events, args.repeat) * 1e6, 1)
            for name, parse in (("pyflannel_events", ours),
                                ("watch_typed_V1Node", client(True)),
                                ("watch_deserialize_false", client(False)))
        },
    }
    print(json.dumps(figures, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
