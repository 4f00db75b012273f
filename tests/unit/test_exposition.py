"""The metrics primitives and their text format (Prometheus exposition 0.0.4)."""

from __future__ import annotations

import pytest

from flanneld.exposition import Counter, Gauge, Histogram, Registry


def test_counter_gauge_and_labels_in_registration_order() -> None:
    reg = Registry()
    events = Counter("x_events", "Events, by kind.", ["kind"], registry=reg)
    peers = Gauge("x_peers", "Peers.", registry=reg)
    events.labels("added").inc()
    events.labels(kind="added").inc(2)
    events.labels("removed")
    peers.set(7)
    assert reg.exposition().decode() == (
        "# HELP x_events_total Events, by kind.\n"
        "# TYPE x_events_total counter\n"
        'x_events_total{kind="added"} 3.0\n'
        'x_events_total{kind="removed"} 0.0\n'
        "# HELP x_peers Peers.\n"
        "# TYPE x_peers gauge\n"
        "x_peers 7.0\n"
    )
    assert reg.sample_value("x_events_total", {"kind": "added"}) == 3
    assert reg.sample_value("x_peers") == 7
    assert reg.sample_value("x_peers", {"kind": "added"}) is None


def test_histogram_buckets_are_cumulative_with_inf_count_and_sum() -> None:
    reg = Registry()
    h = Histogram("x_seconds", "Durations.", registry=reg, buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    lines = reg.exposition().decode().splitlines()
    assert lines[2:] == [
        'x_seconds_bucket{le="0.1"} 2.0',
        'x_seconds_bucket{le="1.0"} 3.0',
        'x_seconds_bucket{le="+Inf"} 4.0',
        "x_seconds_count 4.0",
        "x_seconds_sum 3.65",
    ]


def test_a_nan_observation_counts_in_inf_only() -> None:
    reg = Registry()
    h = Histogram("x_seconds", "Durations.", registry=reg, buckets=(1.0,))
    h.observe(float("nan"))
    assert reg.sample_value("x_seconds_bucket", {"le": "1.0"}) == 0
    assert reg.sample_value("x_seconds_bucket", {"le": "+Inf"}) == 1
    assert reg.sample_value("x_seconds_count") == 1


def test_label_values_and_help_are_escaped() -> None:
    reg = Registry()
    g = Gauge("x_drops", 'Drops\\by "policy"\nper table.', ["policy"], registry=reg)
    g.labels(policy='ns/a"b\\c\nd').set(1)
    text = reg.exposition().decode()
    assert '# HELP x_drops Drops\\\\by "policy"\\nper table.\n' in text
    assert 'x_drops{policy="ns/a\\"b\\\\c\\nd"} 1.0\n' in text


def test_misuse_is_refused() -> None:
    reg = Registry()
    c = Counter("x_c", "C.", ["kind"], registry=reg)
    with pytest.raises(ValueError, match="cannot go down"):
        c.labels("a").inc(-1)
    with pytest.raises(ValueError, match="use labels"):
        c.inc()
    with pytest.raises(ValueError, match="label values"):
        c.labels("a", "b")
    with pytest.raises(ValueError, match="are not"):
        c.labels(other="a")


def test_an_empty_registry_writes_nothing() -> None:
    assert Registry().exposition() == b""
