"""Worker metrics: plain-int tallies on the hot path, OpenTelemetry instruments at scrape time.

An OpenTelemetry ``Counter.add`` costs microseconds per call, as much as the rest of a record's
trip through a map stage, so the loops bump dict entries and observable counters and gauges read
them when ``/metrics`` is scraped. Histograms are the exception: the SDK's ``Histogram.record``
took 12% of a map pipeline's CPU at two records per run (``bench tracing``, profiled), and the
SDK has no observable histogram, so they are bucketed here (a bisect) and exposed beside the
rest. Each worker owns its ``MeterProvider``, so several workers in one process never share one.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource

from streamflow.model import withheld

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, ...]


@dataclass
class Failure:
    """One entry of ``streamflow status``'s recent failures."""

    at_ms: int
    kind: str
    name: str
    reason: str
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "kind": self.kind, "name": self.name,
                "reason": self.reason, "run_id": self.run_id}


class Histogram:
    """Fixed-bucket histogram per label value; ``observe`` is a bisect and three adds."""

    def __init__(self, name: str, label: str, description: str,
                 bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.name, self.label, self.description, self.bounds = name, label, description, bounds
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, label: str, value: float) -> None:
        series = self.series.get(label)
        if series is None:
            series = self.series[label] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def observe_many(self, label: str, values: list[float]) -> None:
        """A batch's values at once: the series is looked up once, not per record."""
        if not values:
            return
        series = self.series.get(label)
        if series is None:
            series = self.series[label] = ([0] * (len(self.bounds) + 1), [0.0])
        counts, bounds, at = series[0], self.bounds, bisect.bisect_left
        for value in values:
            counts[at(bounds, value)] += 1
        series[1][0] += sum(values)

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.description}", f"# TYPE {self.name} histogram"]
        for label, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, n in zip(self.bounds, counts, strict=False):
                cumulative += n
                out.append(f"{self.name}_bucket{_labels({self.label: label}, le=_num(bound))} "
                           f"{cumulative}")
            cumulative += counts[-1]
            out.append(f"{self.name}_bucket{_labels({self.label: label}, le='+Inf')} "
                       f"{cumulative}")
            out.append(f"{self.name}_sum{_labels({self.label: label})} {_num(total[0])}")
            out.append(f"{self.name}_count{_labels({self.label: label})} {cumulative}")
        return out


@dataclass
class Snapshot:
    """What only an ``await`` can read (lags) or a walk over state (barriers), taken per scrape."""

    lag: dict[tuple[str, str, int], int] = field(default_factory=dict)
    open_barriers: dict[str, int] = field(default_factory=dict)
    oldest_open_s: dict[str, float] = field(default_factory=dict)


class Metrics:
    def __init__(self, pipeline: str) -> None:
        self.arrivals_in: dict[Labels, int] = {}   # (asset, consumer)
        self.arrivals_out: dict[Labels, int] = {}  # (asset,)
        self.runs: dict[Labels, int] = {}          # (stage, status)
        self.retries: dict[Labels, int] = {}       # (stage,)
        self.dead_letters: dict[Labels, int] = {}  # (kind, name)
        self.sink_writes: dict[Labels, int] = {}   # (sink,)
        self.barrier_deadlines: dict[Labels, int] = {}  # (stage, outcome)
        self.gate_checks: dict[Labels, int] = {}  # (stage, check, outcome)
        self.held: dict[str, float] = {}  # stage -> partition keys a gate holds
        self.ledger_loaded: dict[str, float] = {}  # part ("open", "done") -> runs read
        self.recent: deque[Failure] = deque(maxlen=50)
        self.snapshot = Snapshot()
        self._reader = InMemoryMetricReader()
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            resource=Resource.create({"service.name": f"streamflow-{pipeline}"}),
        )
        meter = self._provider.get_meter("streamflow")
        counters: dict[str, tuple[dict[Labels, int], tuple[str, ...], str]] = {
            "streamflow_arrivals_in": (self.arrivals_in, ("asset", "consumer"),
                                       "arrivals consumed by a stage or sink"),
            "streamflow_arrivals_out": (self.arrivals_out, ("asset",),
                                        "arrivals published by a source or stage"),
            "streamflow_runs": (self.runs, ("stage", "status"), "stage runs by final status"),
            "streamflow_retries": (self.retries, ("stage",), "failed attempts parked for retry"),
            "streamflow_dead_letters": (self.dead_letters, ("kind", "name"),
                                        "records sent to the dead-letter topic"),
            "streamflow_sink_records": (self.sink_writes, ("sink",), "records a sink wrote"),
            "streamflow_barrier_deadlines": (self.barrier_deadlines, ("stage", "outcome"),
                                             "barriers whose deadline passed, by policy applied"),
            "streamflow_gate_checks": (self.gate_checks, ("stage", "check", "outcome"),
                                       "quality-gate check results: passed, failed, warned"),
        }
        for name, (tally, keys, doc) in counters.items():
            meter.create_observable_counter(name, [_observe(tally, keys)], description=doc)
        meter.create_observable_gauge(
            "streamflow_consumer_lag", [self._observe_lag], unit="{message}",
            description="messages not yet committed, per consumer group and input partition")
        meter.create_observable_gauge(
            "streamflow_open_barriers",
            [_observe_floats(lambda: self.snapshot.open_barriers, "stage")],
            description="partition keys waiting for inputs")
        meter.create_observable_gauge(
            "streamflow_oldest_open_barrier_age", [_observe_floats(
                lambda: self.snapshot.oldest_open_s, "stage")],
            unit="s", description="age of the oldest open barrier")
        meter.create_observable_gauge(
            "streamflow_held_partitions", [_observe_floats(lambda: self.held, "stage")],
            description="partition keys a failing quality gate holds")
        meter.create_observable_gauge(
            "streamflow_ledger_entries_loaded",
            [_observe_floats(lambda: self.ledger_loaded, "part")],
            description="run-ledger entries read at start: open runs and the dedupe window's "
                        "settled ones")
        self.stage_duration = Histogram(
            "streamflow_stage_duration_seconds", "stage", "stage function duration per run")
        self.fire_latency = Histogram(
            "streamflow_fire_latency_seconds", "stage",
            "from the arrival that satisfied a run's trigger to the run starting")

    def add(self, tally: dict[Labels, int], labels: Labels, n: int = 1) -> None:
        tally[labels] = tally.get(labels, 0) + n

    def failed(self, kind: str, name: str, reason: str, run_id: str | None = None) -> None:
        self.recent.append(Failure(int(time.time() * 1000), kind, name, withheld(reason),
                                   run_id))

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (group, topic, partition), lag in self.snapshot.lag.items():
            yield Observation(lag, {"group": group, "topic": topic, "partition": str(partition)})

    def collect(self) -> list[Metric]:
        data = self._reader.get_metrics_data()
        if data is None:
            return []
        return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]

    def prometheus(self) -> str:
        """The Prometheus text exposition (version 0.0.4) of everything collected now."""
        lines: list[str] = []
        for m in self.collect():
            name = m.name + _unit_suffix(m.unit)
            data = m.data
            if isinstance(data, Sum):
                name += "_total" if data.is_monotonic else ""
                kind = "counter" if data.is_monotonic else "gauge"
            elif isinstance(data, Gauge):
                kind = "gauge"
            else:
                continue
            lines.append(f"# HELP {name} {m.description}")
            lines.append(f"# TYPE {name} {kind}")
            for p in data.data_points:
                assert isinstance(p, NumberDataPoint)
                lines.append(f"{name}{_labels(dict(p.attributes or {}))} {_num(p.value)}")
        lines += self.stage_duration.lines() + self.fire_latency.lines()
        return "\n".join(lines) + "\n"

    def shutdown(self) -> None:
        self._provider.shutdown()


def _observe(tally: dict[Labels, int], keys: tuple[str, ...]
             ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        for labels, n in list(tally.items()):
            yield Observation(n, dict(zip(keys, labels, strict=True)))
    return callback


def _observe_floats(values: Callable[[], Mapping[str, float]], key: str
                    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        for label, v in values().items():
            yield Observation(v, {key: label})
    return callback


def _unit_suffix(unit: str | None) -> str:
    return "_seconds" if unit == "s" else ""


def _num(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v) if isinstance(v, float) else str(v)


def _labels(attrs: Mapping[str, Any], **extra: str) -> str:
    items = {**{k: str(v) for k, v in attrs.items()}, **extra}
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(items.items()))
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
