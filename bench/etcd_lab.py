"""The daemon benchmarks' lab: etcd and one flanneld node, and the add/delete samples.

A bench builds its own lab (names carry a unique ``pfb<6 hex>`` prefix and
are removed in a ``finally``, also on Ctrl-C)::

    <prefix>-ul  etcd on 198.18.0.1:2379, veth ``ul0``
    <prefix>-n1  flanneld with ``-iface=ul0`` (198.18.0.2), health on 127.0.0.1

The driver reaches the health port through a thread inside the node
namespace (:class:`~nsthread.NsThread`), sees the kernel through
:class:`~kernel_view.KernelMonitor`, and writes peer leases with the lab's
etcd client (:class:`flanneld.lab.etcdgw.EtcdGateway`, kept alive).
Only the processes started here are ever signalled, by PID.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from daemon_proc import Flanneld
from kernel_view import KernelMonitor
from nsthread import UNDERLAY_IP, NsThread, node_and_underlay
from peer_leases import CONFIG_KEY, NET_CONF, Peer, net_conf_dual

from flanneld.lab.etcd import EtcdProcess, EtcdSpec
from flanneld.lab.etcdgw import EtcdGateway

ETCD_IP = UNDERLAY_IP
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_URL = f"http://{ETCD_IP}:{ETCD_PORT}"


@dataclass(slots=True)
class Lab:
    prefix: str
    etcd_ns: str
    node_ns: str
    workdir: str
    etcd_thread: NsThread
    node_thread: NsThread
    etcd: EtcdProcess
    gateway: EtcdGateway

    def flanneld(self, extra: Sequence[str] = (), profile: str | None = None) -> Flanneld:
        return Flanneld(self.node_ns, self.workdir, ETCD_URL, extra=extra, profile=profile)

    def monitor(self) -> KernelMonitor:
        return KernelMonitor(self.node_thread)

    def put_peer(self, peer: Peer) -> None:
        self.gateway.put(peer.key, peer.value())

    def delete_peer(self, peer: Peer) -> None:
        self.gateway.delete(peer.key)

    def put_peers(self, peers: Sequence[Peer]) -> float:
        return put_peers(self.gateway, peers)


@contextmanager
def running_lab(dual_backend: str | None = None) -> Iterator[Lab]:
    """Namespaces, underlay and etcd with the vxlan net-conf (or the dual-stack one of
    ``dual_backend``); everything removed afterwards."""
    with node_and_underlay(dual_backend is not None) as spaces:
        etcd: EtcdProcess | None = None
        gateway: EtcdGateway | None = None
        try:
            spec = EtcdSpec(spaces.prefix, os.path.join(spaces.workdir, "etcd"), ETCD_IP,
                            ETCD_PORT, ETCD_PEER_PORT)
            etcd = EtcdProcess(spec, os.path.join(spaces.workdir, "etcd.log"))
            spaces.underlay_thread.run(etcd.start)  # forked from a thread inside the namespace
            gateway = EtcdGateway(ETCD_URL, netns=spaces.underlay_ns, timeout=30)
            conf = NET_CONF if dual_backend is None else net_conf_dual(dual_backend)
            gateway.put(CONFIG_KEY, json.dumps(conf))
            yield Lab(spaces.prefix, spaces.underlay_ns, spaces.node_ns, spaces.workdir,
                      spaces.underlay_thread, spaces.node_thread, etcd, gateway)
        finally:
            if gateway is not None:
                gateway.close()
            if etcd is not None:
                etcd.stop()


def put_peers(gateway: EtcdGateway, peers: Sequence[Peer]) -> float:
    """Write ``peers`` in transactions; seconds taken."""
    started = time.monotonic()
    gateway.put_many([(p.key, p.value()) for p in peers])
    return time.monotonic() - started


@dataclass(frozen=True, slots=True)
class Sample:
    put_ms: float  # etcd round trip of the put/delete
    latency_ms: float  # from just before the request to the kernel notification
    extra_ms: float | None = None


def add_peer_sample(lab_: Any, monitor: KernelMonitor, peer: Peer,
                    timeout: float) -> Sample | None:
    """``lab_`` is an etcd :class:`Lab` or a ``kube_lab.KubeLab`` (``put_peer``/``delete_peer``)."""
    sent = time.monotonic()
    lab_.put_peer(peer)
    acked = time.monotonic()
    at = monitor.wait_peer_added(peer, timeout)
    if at is None:
        return None
    return Sample(1000 * (acked - sent), 1000 * (at - sent))


def delete_peer_sample(lab_: Any, monitor: KernelMonitor, peer: Peer,
                       timeout: float) -> Sample | None:
    sent = time.monotonic()
    lab_.delete_peer(peer)
    acked = time.monotonic()
    times = monitor.wait_peer_removed(peer, timeout)
    if times is None:
        return None
    route_at, all_at = times
    return Sample(1000 * (acked - sent), 1000 * (route_at - sent), 1000 * (all_at - sent))


def peer_samples(
    lab: Any, monitor: Any, first: int, count: int, timeout: float, settle: float,
    budget: float, make_peer: Callable[[int], Peer] = Peer,
) -> tuple[list[Sample], list[Sample], int]:
    """Add then delete one new peer ``count`` times (within ``budget`` seconds).

    Returns the add samples, the delete samples and how many timed out.
    """
    adds: list[Sample] = []
    deletes: list[Sample] = []
    timeouts = 0
    deadline = time.monotonic() + budget
    for k in range(count):
        if time.monotonic() > deadline:
            print(f"budget of {budget}s used up after {k} samples")
            break
        peer = make_peer(first + k)
        added = add_peer_sample(lab, monitor, peer, timeout)
        time.sleep(settle)
        removed = delete_peer_sample(lab, monitor, peer, timeout)
        time.sleep(settle)
        if added is None or removed is None:
            timeouts += 1
            continue
        adds.append(added)
        deletes.append(removed)
    return adds, deletes, timeouts
