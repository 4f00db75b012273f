"""Counters, gauges and histograms, written in Prometheus's text format 0.0.4.

The daemon exports a few dozen series; this module is all it needs of a
metrics library (the ``prometheus_client`` package cost 0.05-0.15 s and
about 4 MiB of every start for the same).  A :class:`Registry` holds metrics
in the order they were made, plus collectors that produce :class:`Family`
values at scrape time.  A counter named ``x`` is exposed as ``x_total``; a
histogram as ``x_bucket{le=...}`` (cumulative, ``+Inf`` last), ``x_sum``
and ``x_count``.  Unlike ``prometheus_client`` there are no ``x_created``
series (the time each series was made).  Values are updated under one lock per metric, so threads
may update and scrape at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a metric family: a name suffix, its labels and its value."""

    suffix: str  # appended to the family's name: "", "_total", "_bucket", ...
    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric's help, type and samples, as a scrape sees them."""

    name: str
    help: str
    kind: str  # counter, gauge or histogram
    samples: Sequence[Sample] = field(default_factory=tuple)


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The metrics of one daemon (never shared between daemons or tests)."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> Iterator[Family]:
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            yield from collector.collect()

    def sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of the exposed sample ``name`` (with ``labels``); None when absent."""
        wanted = tuple(sorted((labels or {}).items()))
        for family in self.collect():
            for sample in family.samples:
                if family.name + sample.suffix == name and tuple(sorted(sample.labels)) == wanted:
                    return sample.value
        return None

    def exposition(self) -> bytes:
        """Every family in the text format (``text/plain; version=0.0.4``)."""
        lines: list[str] = []
        for family in self.collect():
            exposed = family.name + ("_total" if family.kind == "counter" else "")
            lines.append(f"# HELP {exposed} {_escape_help(family.help)}")
            lines.append(f"# TYPE {exposed} {family.kind}")
            for sample in family.samples:
                lines.append(f"{family.name}{sample.suffix}{_labels(sample.labels)} "
                             f"{_number(sample.value)}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


class _Metric:
    """A metric with zero or more label names; each combination of values is a child."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 *, registry: Registry) -> None:
        self.name = name
        self.help = documentation
        self._labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], list[float]] = {}
        if not self._labelnames:
            self._children[()] = self._zero()
        registry.register(self)

    def _zero(self) -> list[float]:
        return [0.0]

    def _key(self, values: Sequence[str], named: dict[str, str]) -> tuple[str, ...]:
        if named:
            if values:
                raise ValueError(f"{self.name}: labels by position or by name, not both")
            if set(named) != set(self._labelnames):
                raise ValueError(f"{self.name}: labels {sorted(named)} are not "
                                 f"{list(self._labelnames)}")
            values = [named[n] for n in self._labelnames]
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self.name}: {len(values)} label values for "
                             f"{list(self._labelnames)}")
        return tuple(str(v) for v in values)

    def _cell(self, key: tuple[str, ...]) -> list[float]:
        cell = self._children.get(key)
        if cell is None:
            with self._lock:
                cell = self._children.setdefault(key, self._zero())
        return cell

    def _own_cell(self) -> list[float]:
        if self._labelnames:
            raise ValueError(f"{self.name} has labels {list(self._labelnames)}: use labels()")
        return self._children[()]

    def _add(self, cell: list[float], index: int, amount: float) -> None:
        with self._lock:
            cell[index] += amount

    def collect(self) -> Iterator[Family]:
        with self._lock:
            cells = [(key, list(cell)) for key, cell in self._children.items()]
        samples: list[Sample] = []
        for key, cell in cells:
            samples += self._samples(tuple(zip(self._labelnames, key, strict=True)), cell)
        yield Family(self.name, self.help, self.kind, tuple(samples))

    def _samples(self, labels: Labels, cell: list[float]) -> list[Sample]:
        raise NotImplementedError


class _CounterChild:
    __slots__ = ("_cell", "_metric")

    def __init__(self, metric: Counter, cell: list[float]) -> None:
        self._metric = metric
        self._cell = cell

    def inc(self, amount: float = 1.0) -> None:
        self._metric.add_to(self._cell, amount)


class Counter(_Metric):
    """Only goes up (exposed as ``<name>_total``)."""

    kind = "counter"

    def labels(self, *values: str, **named: str) -> _CounterChild:
        return _CounterChild(self, self._cell(self._key(values, named)))

    def inc(self, amount: float = 1.0) -> None:
        self.add_to(self._own_cell(), amount)

    def add_to(self, cell: list[float], amount: float) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down ({amount})")
        self._add(cell, 0, amount)

    def _samples(self, labels: Labels, cell: list[float]) -> list[Sample]:
        return [Sample("_total", labels, cell[0])]


class _GaugeChild:
    __slots__ = ("_cell", "_metric")

    def __init__(self, metric: Gauge, cell: list[float]) -> None:
        self._metric = metric
        self._cell = cell

    def set(self, value: float) -> None:
        self._metric.set_cell(self._cell, value)


class Gauge(_Metric):
    """A value that is set."""

    kind = "gauge"

    def labels(self, *values: str, **named: str) -> _GaugeChild:
        return _GaugeChild(self, self._cell(self._key(values, named)))

    def set(self, value: float) -> None:
        self.set_cell(self._own_cell(), value)

    def set_cell(self, cell: list[float], value: float) -> None:
        with self._lock:
            cell[0] = float(value)

    def _samples(self, labels: Labels, cell: list[float]) -> list[Sample]:
        return [Sample("", labels, cell[0])]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, *, registry: Registry,
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        """No label names: each histogram here is one series."""
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        self._bounds = (*bounds, math.inf)
        super().__init__(name, documentation, registry=registry)

    def _zero(self) -> list[float]:
        return [0.0] * (len(self._bounds) + 1)  # per bucket (not cumulative), then the sum

    def observe(self, value: float) -> None:
        cell = self._own_cell()
        # NaN is above no bound: it counts in +Inf only
        index = next((i for i, bound in enumerate(self._bounds) if value <= bound),
                     len(self._bounds) - 1)
        with self._lock:
            cell[index] += 1
            cell[-1] += value

    def _samples(self, labels: Labels, cell: list[float]) -> list[Sample]:
        samples = []
        running = 0.0
        for bound, count in zip(self._bounds, cell, strict=False):
            running += count
            samples.append(Sample("_bucket", (*labels, ("le", _number(bound))), running))
        samples.append(Sample("_count", labels, running))
        samples.append(Sample("_sum", labels, cell[-1]))
        return samples


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_value(value)}"' for name, value in labels) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
