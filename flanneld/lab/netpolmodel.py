"""The Kubernetes e2e NetworkPolicy model laid over the lab's pods (pure).

Upstream's suite (``test/e2e/network/netpol``) uses namespaces x, y, z
(labelled ``ns=<name>``) with pods a, b, c in each (labelled ``pod=<name>``),
every pod serving on ports 80 and 81 with one container per (port, protocol)
whose container port is named ``serve-<port>-<tcp|udp|sctp>``.  The lab has
no kubelet: it attaches pod namespaces with the CNI plugin, runs a small
server in each (:mod:`flanneld.lab.podserver`) and writes the Pod objects,
``status.podIP(s)`` and phase Running included, into its API double itself.

The nine model pods take the lab's pods slot by slot across the nodes
(n1p1, n2p1, n3p1, n1p2...), so consecutive pods land on different nodes.
Lab pods outside the model become Pods in ``default`` named after themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flanneld.lab.layout import LabPlan

JSON = dict[str, Any]

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
MODEL_SIZE = len(NAMESPACES) * len(PODS)
SERVE_PORTS = (80, 81)
# The development kernel cannot open SCTP sockets, so the servers speak TCP and UDP only.
SERVED_PROTOCOLS = ("TCP", "UDP")
OTHER_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class LabPod:
    """One lab pod as a Kubernetes Pod: where it runs and what it is called."""

    namespace: str
    name: str
    node: str  # the lab node, which is also its Node object's name
    lab_pod: str  # n1p1
    netns: str

    @property
    def key(self) -> str:
        """``namespace/name``, the e2e suite's way to name a pod (x/a)."""
        return f"{self.namespace}/{self.name}"

    @property
    def in_model(self) -> bool:
        return self.namespace in NAMESPACES


def pods_per_node(nodes: int) -> int:
    """Lab pods per node needed to hold the whole model."""
    return math.ceil(MODEL_SIZE / nodes)


def lab_pods(plan: LabPlan, model: bool) -> tuple[LabPod, ...]:
    """Every lab pod as a Pod; with ``model``, the first nine spread over the nodes are x/a..z/c."""
    slots = max((len(node.pods) for node in plan.nodes), default=0)
    spread = [(node, node.pods[j]) for j in range(slots) for node in plan.nodes
              if j < len(node.pods)]
    names = [(ns, pod) for ns in NAMESPACES for pod in PODS] if model else []
    found = []
    for i, (node, pod) in enumerate(spread):
        namespace, name = names[i] if i < len(names) else (OTHER_NAMESPACE, pod.name)
        found.append(LabPod(namespace, name, node.name, pod.name, pod.netns))
    return tuple(found)


def container_port_name(port: int, protocol: str) -> str:
    """The e2e suite's container port name: serve-80-tcp."""
    return f"serve-{port}-{protocol.lower()}"


def namespace_object(name: str) -> JSON:
    """A model namespace (the API server adds ``kubernetes.io/metadata.name``)."""
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"ns": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def pod_object(pod: LabPod, ip: str, host_ip: str, protocols: Sequence[str]) -> JSON:
    """The Pod as a kubelet would have reported it: Running, with its IP.

    Model pods carry one container per (port, protocol) with a named port, as
    upstream's model does; other lab pods one container without ports.
    """
    if pod.in_model:
        containers = [
            {"name": f"cont-{port}-{proto.lower()}", "image": "pyflannel-lab/podserver",
             "ports": [{"name": container_port_name(port, proto), "containerPort": port,
                        "protocol": proto}]}
            for proto in protocols for port in SERVE_PORTS
        ]
        labels = {"pod": pod.name}
    else:
        containers = [{"name": "main", "image": "pyflannel-lab/pod"}]
        labels = {"lab-pod": pod.lab_pod}
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
        "spec": {"nodeName": pod.node, "containers": containers},
        "status": {"phase": "Running", "hostIP": host_ip, "podIP": ip, "podIPs": [{"ip": ip}]},
    }
