"""The metrics registry, its exposition text, and /metrics over the health server."""

from __future__ import annotations

import http.client
from datetime import UTC, datetime

from backends.base import ReconcileReport
from backends.udp_packet import Datapath, Drop, ForwardStats
from flanneld import health
from flanneld.metrics import Metrics, metrics_handler
from subnet.manager import LeaseRemoved, Snapshot


def samples(text: str) -> dict[str, float]:
    result = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            result[name] = float(value)
    return result


def test_exposition_has_every_series_and_counts() -> None:
    m = Metrics()
    m.set_peers(3)
    m.set_lease_expiry(datetime(2030, 1, 1, tzinfo=UTC))
    m.record_messages([Snapshot(()), LeaseRemoved("10.244.2.0-24"), LeaseRemoved("x")])
    m.record_reconcile(ReconcileReport(added=3, removed=1, failed=("boom",), peers=2), 0.02, False)
    m.record_reconcile(ReconcileReport(added=1, device_recreated=True), 0.5, True)
    m.record_rules_restored(2)
    m.store_errors.inc()
    got = samples(m.exposition().decode())
    assert got["flannel_known_peers"] == 3
    assert got["flannel_programmed_peers"] == 0
    assert (
        got["flannel_lease_expiry_timestamp_seconds"]
        == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    )
    assert got['flannel_lease_events_total{kind="snapshot"}'] == 1
    assert got['flannel_lease_events_total{kind="removed"}'] == 2
    assert got['flannel_lease_events_total{kind="added"}'] == 0
    assert got["flannel_kernel_objects_added_total"] == 4
    assert got["flannel_kernel_objects_removed_total"] == 1
    assert got['flannel_kernel_objects_repaired_total{kind="dataplane"}'] == 1
    assert got['flannel_kernel_objects_repaired_total{kind="device"}'] == 1
    assert got['flannel_kernel_objects_repaired_total{kind="rules"}'] == 2
    assert got["flannel_netlink_errors_total"] == 1
    assert got["flannel_store_errors_total"] == 1
    assert got["flannel_reconcile_duration_seconds_count"] == 2
    assert got['flannel_reconcile_duration_seconds_bucket{le="0.025"}'] == 1
    assert not any(name.startswith("flannel_udp") for name in got)


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()
    a.store_errors.inc()
    assert samples(b.exposition().decode())["flannel_store_errors_total"] == 0


def test_udp_counters_are_read_at_scrape_time() -> None:
    m = Metrics()
    stats = ForwardStats()
    m.track_udp(stats)
    stats.tx.packets, stats.tx.bytes = 5, 420
    stats.rx.dropped[Drop.UNKNOWN_SENDER] = 7
    got = samples(m.exposition().decode())
    assert got['flannel_udp_packets_total{direction="tun_to_udp"}'] == 5
    assert got['flannel_udp_bytes_total{direction="tun_to_udp"}'] == 420
    assert (
        got['flannel_udp_dropped_packets_total{direction="udp_to_tun",reason="unknown_sender"}']
        == 7
    )
    stats.tx.packets = 6
    assert (
        samples(m.exposition().decode())['flannel_udp_packets_total{direction="tun_to_udp"}'] == 6
    )


def test_udp_datapath_says_which_loop_runs() -> None:
    m = Metrics()
    stats = ForwardStats()
    m.track_udp(stats)
    got = samples(m.exposition().decode())
    assert got['flannel_udp_datapath{path="offload"}'] == 0
    assert got['flannel_udp_datapath{path="plain"}'] == 0  # no forwarder yet
    stats.path = Datapath.OFFLOAD
    stats.tx.batches, stats.rx.batches = 3, 4
    got = samples(m.exposition().decode())
    assert got['flannel_udp_datapath{path="offload"}'] == 1
    assert got['flannel_udp_datapath{path="plain"}'] == 0
    assert got['flannel_udp_batches_total{direction="tun_to_udp"}'] == 3
    assert got['flannel_udp_batches_total{direction="udp_to_tun"}'] == 4
    stats.path = Datapath.PLAIN
    assert samples(m.exposition().decode())['flannel_udp_datapath{path="plain"}'] == 1


def test_metrics_over_http_on_loopback() -> None:
    m = Metrics()
    m.set_peers(9)
    server = health.start(health.HealthState(), "127.0.0.1", 0, {"/metrics": metrics_handler(m)})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
    finally:
        server.stop()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    assert samples(body)["flannel_known_peers"] == 9


def test_start_phases_are_exported() -> None:
    m = Metrics()
    m.record_start({"imports": 0.25, "first pass": 0.5})
    got = samples(m.exposition().decode())
    assert got['flannel_start_phase_seconds{phase="imports"}'] == 0.25
    assert got['flannel_start_phase_seconds{phase="first pass"}'] == 0.5
