"""Kube mode of the lab: the Kubernetes API double as a lab process, and its control socket.

The double ships with the lab (:mod:`flanneld.lab.apiserver`): kube mode
runs ``python -m flanneld.lab.apiserver.serve`` as a child process, so it
works from an installed wheel as well as from a checkout.  The double listens
on the underlay gateway inside the underlay namespace, so every node
namespace reaches it; the lab steers it (Nodes, compaction, restarts)
over a Unix socket in the lab's state dir, one JSON line each way.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from flanneld.lab.layout import KUBE_API_PORT, LabPlan, kubeconfig, node_paths, node_pod_cidrs
from flanneld.lab.tls import ServerCert
from subnet.errors import FlannelError

KUBEAPI_ROLE = "kubeapi"
DOOR_ROLE = "kubeapi-door"
DOUBLE_MODULE = "flanneld.lab.apiserver.serve"
DOOR_MODULE = "flanneld.lab.apidoor"
CONTROL_TIMEOUT = 30.0

JSON = dict[str, Any]


def double_argv(python: str, plan: LabPlan, tls: ServerCert | None = None) -> list[str]:
    """The API double's command line (it contains the state dir: the process marker)."""
    served = [f"--tls-cert={tls.cert}", f"--tls-key={tls.key}"] if tls else []
    return [
        python, "-m", DOUBLE_MODULE,
        f"--host={plan.gateway.ip}",
        f"--port={KUBE_API_PORT}",
        f"--control={plan.kube_control}",
        *served,
    ]


def door_port_file(plan: LabPlan) -> str:
    """Where the loopback door writes its port."""
    return os.path.join(plan.state_dir, "kubeapi.port")


def door_argv(python: str, plan: LabPlan) -> list[str]:
    """The loopback door's command line (started in the root namespace)."""
    return [
        python, "-m", DOOR_MODULE,
        f"--netns={plan.underlay_netns}",
        f"--to={plan.gateway.ip}:{KUBE_API_PORT}",
        f"--port-file={door_port_file(plan)}",
    ]


def door_port(plan: LabPlan) -> int | None:
    """The door's loopback port, or None before it has written it."""
    try:
        with open(door_port_file(plan), encoding="utf-8") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def loopback_kubeconfig(plan: LabPlan, port: int, ca_file: str | None = None,
                        token: str | None = None) -> dict[str, object]:
    """A kubeconfig for clients in the root namespace, through the loopback door.

    With TLS (image mode) the server certificate names the underlay gateway,
    so the config pins ``tls-server-name`` to it.
    """
    config = kubeconfig(plan)
    scheme = "https" if ca_file else "http"
    cluster: dict[str, object] = {"server": f"{scheme}://127.0.0.1:{port}"}
    if ca_file:
        cluster["certificate-authority"] = ca_file
        cluster["tls-server-name"] = str(plan.gateway.ip)
    config["clusters"] = [{"name": plan.prefix, "cluster": cluster}]
    config["users"] = [{"name": "flanneld", "user": {"token": token} if token else {}}]
    return config


def write_node_files(plan: LabPlan, net_conf: str) -> None:
    """Each node's net-conf.json (as a ConfigMap mount would hold it) and kubeconfig."""
    config = json.dumps(kubeconfig(plan), indent=1)
    for node in plan.nodes:
        paths = node_paths(plan, node)
        for path, text in ((paths.net_conf, net_conf), (paths.kubeconfig, config)):
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)


class KubeApiControl:
    """A client of the double's control socket; every call is one short connection."""

    def __init__(self, path: str, timeout: float = CONTROL_TIMEOUT) -> None:
        self._path = path
        self._timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Run ``op`` in the double; FlannelError if it is unreachable or the op failed."""
        request = json.dumps({"op": op, "args": args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(self._path)
                sock.sendall(request)
                with sock.makefile("rb") as reader:
                    line = reader.readline()
        except OSError as err:
            raise FlannelError(f"API double control {self._path}: {err}") from err
        try:
            reply = json.loads(line)
        except ValueError as err:
            raise FlannelError(f"API double control {op}: bad reply {line[:200]!r}") from err
        if "error" in reply:
            raise FlannelError(f"API double {op}: {reply['error']}")
        return reply.get("result")

    def wait_up(self, timeout: float, alive: Callable[[], bool]) -> None:
        """Wait until the control socket answers; ``alive()`` False means the process died."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("ping")
                return
            except FlannelError as err:
                if not alive():
                    raise FlannelError("the API double exited") from err
                if time.monotonic() > deadline:
                    raise FlannelError(f"API double not up after {timeout:g}s: {err}") from err
            time.sleep(0.05)

    def add_node(
        self, name: str, pod_cidr: str | None = None, annotations: dict[str, str] | None = None,
        pod_cidrs: list[str] | None = None,
    ) -> JSON:
        """A Node with ``spec.podCIDR`` (and ``spec.podCIDRs``, by default ``[pod_cidr]``)."""
        result: JSON = self.call("add_node", name=name, pod_cidr=pod_cidr,
                                 pod_cidrs=pod_cidrs, annotations=annotations)
        return result

    def node(self, name: str) -> JSON:
        result: JSON = self.call("node", name=name)
        return result

    def annotate_node(self, name: str, annotations: dict[str, str | None]) -> JSON:
        result: JSON = self.call("annotate_node", name=name, annotations=annotations)
        return result

    def set_pod_cidr(self, name: str, pod_cidr: str | None) -> JSON:
        result: JSON = self.call("set_pod_cidr", name=name, pod_cidr=pod_cidr)
        return result

    def add_pod(self, namespace: str, name: str, node_name: str) -> JSON:
        result: JSON = self.call("add_pod", namespace=namespace, name=name, node_name=node_name)
        return result

    def issue_token(self, namespace: str, service_account: str) -> str:
        """A service-account token (the TokenRequest a kubelet makes for a pod's volume)."""
        return str(self.call("issue_token", namespace=namespace, service_account=service_account))

    def put_object(self, obj: JSON) -> JSON:
        """Create or replace any object as given, status included (the kubelet's part)."""
        result: JSON = self.call("put_object", obj=obj)
        return result

    def delete_node(self, name: str) -> None:
        self.call("delete_node", name=name)

    def compact(self) -> int:
        return int(self.call("compact"))

    def stop(self) -> None:
        """Stop the API listener (every open connection is cut); the state is kept."""
        self.call("stop")

    def start(self) -> None:
        """Listen again on the same address."""
        self.call("start")

    def drop_watches(self, clean: bool = False) -> None:
        self.call("drop_watches", clean=clean)

    def pause_watches(self) -> None:
        self.call("pause_watches")

    def resume_watches(self) -> None:
        self.call("resume_watches")

    def wait_for_watches(self, count: int, timeout: float) -> bool:
        """Whether at least ``count`` watches were open within ``timeout`` seconds."""
        patient = KubeApiControl(self._path, self._timeout + timeout)
        return bool(patient.call("wait_for_watches", count=count, timeout=timeout))


def add_lab_nodes(plan: LabPlan, control: KubeApiControl) -> None:
    """One Node per lab node, each with its ``spec.podCIDR`` (dual stack: and an IPv6
    one in ``spec.podCIDRs``, as kubeadm's two ``--pod-network-cidr`` ranges give)."""
    for node in plan.nodes:
        cidrs = [str(c) for c in node_pod_cidrs(plan, node)]
        control.add_node(node.name, pod_cidr=cidrs[0], pod_cidrs=cidrs)
