"""The daemon benchmarks' kube-mode lab: the API server double and one flanneld node.

Like :mod:`etcd_lab`, with the lab's Kubernetes API server double
(:class:`flanneld.lab.apiserver.server.KubeAPIDouble`) in place of etcd::

    <prefix>-ul  the API double on 198.18.0.1:6443 (run by this process), veth ``ul0``
    <prefix>-n1  flanneld --kube-subnet-mgr, NODE_NAME=bench-node, ``-iface=ul0``

Peers are Node objects with ``spec.podCIDR`` and the annotations upstream
writes (``kube-subnet-manager``, ``backend-type``, ``backend-data``,
``public-ip``).  Everything is removed in a ``finally``.

flanneld reaches the double by ``--kube-api-url`` alone, which loads what a
pod's in-cluster configuration loads (the double speaks plain HTTP, so the
in-cluster loader itself cannot be used); ``kubeconfig=True`` makes it read a
kubeconfig file instead, which also loads the client's kubeconfig loader
(YAML, OAuth helpers, pydantic): about 0.2 s and 16 MiB more.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from daemon_proc import Flanneld
from kernel_view import KernelMonitor
from nsthread import UNDERLAY_IP, NsThread, node_and_underlay
from peer_leases import NET_CONF, Peer

from flanneld.lab.apiserver.server import KubeAPIDouble

API_PORT = 6443
API_URL = f"http://{UNDERLAY_IP}:{API_PORT}"
NODE_NAME = "bench-node"
OWN_POD_CIDR = "10.127.1.0/24"  # inside the network, outside every peer subnet
ANNOTATION = "flannel.alpha.coreos.com/"


def node_name(peer: Peer) -> str:
    return f"peer-{peer.index}"


def annotations(peer: Peer) -> dict[str, str]:
    return {
        ANNOTATION + "kube-subnet-manager": "true",
        ANNOTATION + "backend-type": "vxlan",
        ANNOTATION + "backend-data": json.dumps({"VNI": 1, "VtepMAC": peer.mac},
                                                separators=(",", ":")),
        ANNOTATION + "public-ip": peer.public_ip,
    }


@dataclass(slots=True)
class KubeLab:
    prefix: str
    api_ns: str
    node_ns: str
    workdir: str
    api_thread: NsThread
    node_thread: NsThread
    double: KubeAPIDouble
    kubeconfig: bool = False  # read a kubeconfig file rather than --kube-api-url alone

    def flanneld(self, extra: Sequence[str] = (), profile: str | None = None) -> Flanneld:
        api = (f"--kubeconfig-file={os.path.join(self.workdir, 'kubeconfig')}"
               if self.kubeconfig else f"--kube-api-url={API_URL}")
        store = [
            "--kube-subnet-mgr", api,
            f"--net-config-path={os.path.join(self.workdir, 'net-conf.json')}",
        ]
        return Flanneld(self.node_ns, self.workdir, None, extra=[*store, *extra],
                        profile=profile, env={"NODE_NAME": NODE_NAME})

    def monitor(self) -> KernelMonitor:
        return KernelMonitor(self.node_thread)

    def put_peer(self, peer: Peer) -> None:
        self.double.add_node(node_name(peer), pod_cidr=str(peer.subnet),
                             annotations=annotations(peer))

    def delete_peer(self, peer: Peer) -> None:
        self.double.delete_node(node_name(peer))

    def put_peers(self, peers: Sequence[Peer]) -> float:
        started = time.monotonic()
        for peer in peers:
            self.put_peer(peer)
        return time.monotonic() - started


@contextmanager
def running_kube_lab(kubeconfig: bool = False) -> Iterator[KubeLab]:
    """Namespaces, underlay and the API double with our own Node; everything removed afterwards."""
    with node_and_underlay() as spaces:
        double = KubeAPIDouble(host=UNDERLAY_IP, port=API_PORT, history=20000)
        try:
            # its listening socket lives in the underlay namespace
            spaces.underlay_thread.run(double.start)
            double.add_node(NODE_NAME, pod_cidr=OWN_POD_CIDR)
            _write_files(spaces.workdir)
            yield KubeLab(spaces.prefix, spaces.underlay_ns, spaces.node_ns, spaces.workdir,
                          spaces.underlay_thread, spaces.node_thread, double, kubeconfig)
        finally:
            double.stop()


def _write_files(workdir: str) -> None:
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bench", "cluster": {"server": API_URL}}],
        "users": [{"name": "flanneld", "user": {}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "flanneld"}}],
        "current-context": "bench",
    }
    for name, doc in (("kubeconfig", kubeconfig), ("net-conf.json", NET_CONF)):
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
