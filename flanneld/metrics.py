"""Prometheus metrics of one flanneld (upstream has none; names are ours).

Everything lives in a private :class:`~flanneld.exposition.Registry` held
by :class:`Metrics`, so tests and several daemons in one process do not
share counters.  The udp forwarder's
per-packet counters stay plain ints in its threads; a custom collector
reads them at scrape time, so forwarding pays no lock per packet.

Serve them by adding ``{"/metrics": metrics_handler(metrics)}`` to the
health server's ``extra_routes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

from backends.base import ReconcileReport
from backends.udp_packet import Datapath, Drop, ForwardStats
from flanneld.exposition import Counter, Family, Gauge, Histogram, Registry, Sample
from flanneld.health import Handler, Response
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot

# The classic text format; every scraper understands it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_EVENT_KINDS: dict[type, str] = {LeaseAdded: "added", LeaseRemoved: "removed", Snapshot: "snapshot"}


class Metrics:
    """The daemon's counters and gauges, and the hooks that feed them."""

    def __init__(self) -> None:
        self.registry = Registry()
        reg = self.registry
        self.known_peers = Gauge(
            "flannel_known_peers", "Peer leases known (all backends, ours excluded).", registry=reg
        )
        self.usable_peers = Gauge(
            "flannel_programmed_peers",
            "Peers the backend programmed in the last pass.",
            registry=reg,
        )
        self.lease_expiry = Gauge(
            "flannel_lease_expiry_timestamp_seconds",
            "When our lease expires (Unix time; 0 when it does not expire).",
            registry=reg,
        )
        self.events = Counter(
            "flannel_lease_events", "Lease watch messages handled, by kind.", ["kind"], registry=reg
        )
        self.reconcile_duration = Histogram(
            "flannel_reconcile_duration_seconds",
            "Duration of a reconcile pass.",
            buckets=RECONCILE_BUCKETS,
            registry=reg,
        )
        self.resync_duration = Gauge(
            "flannel_resync_duration_seconds",
            "Duration of the last periodic full pass (the kernel re-read, no lease news).",
            registry=reg,
        )
        self.resync_seconds = Counter(
            "flannel_resync_seconds",
            "Time spent in full passes without lease news (their share of the time is the "
            "idle cost of the safety net).",
            registry=reg,
        )
        self.kernel_added = Counter(
            "flannel_kernel_objects_added",
            "Routes, neighbours and FDB entries written.",
            registry=reg,
        )
        self.kernel_removed = Counter(
            "flannel_kernel_objects_removed",
            "Routes, neighbours and FDB entries removed.",
            registry=reg,
        )
        self.repaired = Counter(
            "flannel_kernel_objects_repaired",
            "Kernel state found altered and put back, by kind (dataplane, rules, device).",
            ["kind"],
            registry=reg,
        )
        self.netlink_errors = Counter(
            "flannel_netlink_errors", "Kernel writes that failed.", registry=reg
        )
        self.store_errors = Counter(
            "flannel_store_errors", "Subnet store (etcd, Kubernetes API) failures.", registry=reg
        )
        self.start_phases = Gauge(
            "flannel_start_phase_seconds",
            "Seconds each start-up phase took, up to the first pass that programmed the peers.",
            ["phase"],
            registry=reg,
        )
        for kind in _EVENT_KINDS.values():
            self.events.labels(kind)
        for kind in ("dataplane", "rules", "device"):
            self.repaired.labels(kind)
        self._udp = _UdpCollector()
        reg.register(self._udp)

    # --- hooks the daemon calls -------------------------------------------------------

    def record_messages(self, batch: Iterable[LeaseMessage]) -> None:
        for message in batch:
            self.events.labels(_EVENT_KINDS[type(message)]).inc()

    def record_reconcile(self, report: ReconcileReport, seconds: float, resync_only: bool) -> None:
        """Account one pass; on a resync tick without news every change was a repair."""
        self.reconcile_duration.observe(seconds)
        self.kernel_added.inc(report.added)
        self.kernel_removed.inc(report.removed)
        self.netlink_errors.inc(len(report.failed))
        self.usable_peers.set(report.peers)
        if resync_only:
            self.resync_duration.set(seconds)
            self.resync_seconds.inc(seconds)
            self.repaired.labels("dataplane").inc(report.added + report.removed)
        if report.device_recreated:
            self.repaired.labels("device").inc()

    def record_start(self, seconds: Mapping[str, float]) -> None:
        """How long each start-up phase took (:class:`flanneld.startphases.StartPhases`)."""
        for phase, secs in seconds.items():
            self.start_phases.labels(phase).set(secs)

    def record_rules_restored(self, count: int) -> None:
        """What ``TrafficManager.resync()`` returned."""
        self.repaired.labels("rules").inc(count)

    def record_store_error(self, error: Exception | None = None) -> None:
        """A call to etcd or the Kubernetes API failed with ``error`` (it is being retried)."""
        self.store_errors.inc()

    def set_peers(self, count: int) -> None:
        self.known_peers.set(count)

    def set_lease_expiry(self, expiration: datetime | None) -> None:
        self.lease_expiry.set(0 if expiration is None else expiration.timestamp())

    def track_udp(self, stats: ForwardStats | None) -> None:
        """Export the udp forwarder's counters (None stops exporting them)."""
        self._udp.stats = stats

    # --- exposition -------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return self.registry.exposition()


class _UdpCollector:
    """Reads the forwarder's plain-int counters at scrape time."""

    def __init__(self) -> None:
        self.stats: ForwardStats | None = None

    def collect(self) -> Iterator[Family]:
        stats = self.stats
        if stats is None:
            return
        packets: list[Sample] = []
        octets: list[Sample] = []
        dropped: list[Sample] = []
        batches: list[Sample] = []
        for direction, counts in (("tun_to_udp", stats.tx), ("udp_to_tun", stats.rx)):
            labels = (("direction", direction),)
            packets.append(Sample("_total", labels, counts.packets))
            octets.append(Sample("_total", labels, counts.bytes))
            batches.append(Sample("_total", labels, counts.batches))
            dropped += [Sample("_total", (*labels, ("reason", reason.value)),
                               counts.dropped[reason]) for reason in Drop]
        path = [Sample("", (("path", kind.value),), 1 if stats.path is kind else 0)
                for kind in Datapath]
        yield Family("flannel_udp_packets", "Packets forwarded by the udp backend.", "counter",
                     packets)
        yield Family("flannel_udp_bytes", "Bytes forwarded by the udp backend.", "counter",
                     octets)
        yield Family("flannel_udp_dropped_packets",
                     "Packets the udp backend dropped, by direction and reason.", "counter",
                     dropped)
        yield Family("flannel_udp_batches",
                     "Offload path: UDP GSO sends (tun_to_udp) and TCP super-frames written to"
                     " the TUN (udp_to_tun).", "counter", batches)
        yield Family("flannel_udp_datapath",
                     "1 for the packet loop the udp forwarder runs: offload (UDP GSO and GRO,"
                     " merged TUN writes) or plain (one system call per packet).", "gauge", path)


def metrics_handler(metrics: Metrics) -> Handler:
    """A ``/metrics`` handler for :func:`flanneld.health.start`'s ``extra_routes``."""

    def handle() -> Response:
        return Response(200, metrics.exposition().decode(), CONTENT_TYPE)

    return handle
