"""The gateway's metrics, built when Prometheus scrapes (a prometheus_client custom collector).

Everything is read at scrape time from what the service keeps anyway (its Counters, queue,
outbox, MQTT link, routing table, drift watch) and from the Recorder the worker fills, so
the hot path pays nothing for the counters here. Names: docs/MQTT.md "Prometheus".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import onnxruntime as ort
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .. import __version__
from ..contract import BASE
from ..drift.monitor import LEVELS, UNKNOWN
from ..status import Counters
from .recorder import BUCKETS, Recorder, Series

DRIFT_STATES = (UNKNOWN, *LEVELS)
DEFAULT_LINE = "*"  # the line label of the default route (no topics.lines: every line)

# Counters.totals field -> (metric name without _total, help)
COUNTERS = (
    ("received", "edge_windows_received", "Sensor messages received on the sensor topics."),
    ("batches", "edge_batches", "Micro-batches run (one or more onnxruntime runs each)."),
    ("rows", "edge_batch_windows", "Windows in those batches (mean batch = rate of this / "
     "rate of edge_batches_total)."),
    ("duplicates", "edge_duplicates", "QoS 1 redeliveries answered before, not computed again."),
    ("outbox_dropped", "edge_outbox_dropped", "Outbox messages deleted by "
     "outbox.when_full = drop_oldest."),
    ("outbox_full", "edge_outbox_full", "Answers sent without the outbox because it was full."),
    ("outbox_errors", "edge_outbox_errors", "Outbox writes the disk refused."),
    ("swaps", "edge_adapter_swaps", "Routing changes by adapter commands (activate, rollback, "
     "put, revoke)."),
)
DRIFT_COUNTERS = (
    ("drift_changes", "edge_drift_changes", "Drift state changes of any line."),
    ("captured", "edge_capture_stored", "Windows kept as drift evidence."),
    ("capture_dropped", "edge_capture_dropped", "Windows the capture could not keep."),
)


class Source(Protocol):
    """What the collector reads of the service (edge/service.py's Service)."""

    cfg: Any
    counters: Counters
    queue: Any  # queue.Queue: qsize(), maxsize
    outbox: Any  # edge.outbox.Outbox
    link: Any  # edge.mqtt.MqttLink: connected, subscribed (threading.Event)
    engine: Any  # edge.engine.Engine: provider
    drift: Any  # edge.drift.watch.DriftWatch or None

    @property
    def routes(self) -> Any: ...


class GatewayCollector:
    """Yields every edge_* family at each scrape; `ready()` is what /healthz says."""

    def __init__(self, source: Source, recorder: Recorder, ready) -> None:
        self.source, self.recorder, self.ready = source, recorder, ready

    def collect(self) -> Iterator[Metric]:
        src = self.source
        totals, kinds = src.counters.since_start()
        yield from _counters(totals, COUNTERS)
        errors = CounterMetricFamily("edge_errors", "Error reports (on the errors topic) by "
                                     "reason kind.", labels=["reason"])
        for kind, n in sorted(kinds.items()):
            errors.add_metric([kind], n)
        yield errors
        yield from self._answers()
        yield from self._state()
        yield from self._outbox()
        yield from self._routes()
        if src.drift is not None:
            yield from _counters(totals, DRIFT_COUNTERS)
            yield self._drift()

    def _answers(self) -> Iterator[Metric]:
        answered, runs = self.recorder.snapshot()
        labels = ["line", "adapter", "version"]
        results = CounterMetricFamily("edge_results", "Results published.", labels=labels)
        latency = HistogramMetricFamily(
            "edge_latency_seconds", "End-to-end latency: sensor message received -> result "
            "published.", labels=labels)
        for key, s in sorted(answered.items()):
            results.add_metric(list(key), s.count)
            latency.add_metric(list(key), _buckets(s), s.total)
        inference = HistogramMetricFamily(
            "edge_inference_seconds", "One onnxruntime run (a batch's rows of one model, or "
            f"of every model in a bank: adapter {BASE}+bank).", labels=["adapter", "version"])
        for key, s in sorted(runs.items()):
            inference.add_metric(list(key), _buckets(s), s.total)
        yield from (results, latency, inference)

    def _state(self) -> Iterator[Metric]:
        src = self.source
        link = src.link
        for name, doc, value in (
            ("edge_mqtt_connected", "1 while connected to the broker.", link.connected.is_set()),
            ("edge_mqtt_subscribed", "1 while the broker has granted the subscriptions.",
             link.subscribed.is_set()),
            ("edge_ready", "1 when /healthz says ready: connected, subscribed, warmed up.",
             self.ready()),
            ("edge_queue_depth", "Windows waiting for the worker.", src.queue.qsize()),
            ("edge_queue_limit", "limits.queue_bound.", src.queue.maxsize),
        ):
            yield GaugeMetricFamily(name, doc, value=float(value))
        build = InfoMetricFamily("edge_build", "Package and onnxruntime versions, provider.")
        build.add_metric([], {"version": __version__, "onnxruntime_version": ort.__version__,
                              "provider": str(src.engine.provider)})
        yield build

    def _outbox(self) -> Iterator[Metric]:
        box = self.source.outbox
        age = box.oldest_age()
        for name, doc, value in (
            ("edge_outbox_messages", "Results and errors waiting for the broker's PUBACK.",
             box.count),
            ("edge_outbox_max_messages", "outbox.max_messages.", box.settings.max_messages),
            ("edge_outbox_oldest_age_seconds", "Age of the oldest waiting message (0: none).",
             0.0 if age is None else age),
            ("edge_outbox_file_bytes", "Size of the outbox file and its WAL on disk.",
             box.file_bytes()),
        ):
            yield GaugeMetricFamily(name, doc, value=float(value))

    def _routes(self) -> Iterator[Metric]:
        table = self.source.routes
        info = InfoMetricFamily("edge_line_adapter", "The adapter and version each line is "
                                "routed to (line * = every line, when topics.lines is empty).",
                                labels=["line"])
        lines = sorted(table.routes.items())
        if table.default is not None:
            lines.append((DEFAULT_LINE, table.default))
        for line, route in lines:
            adapter, version = route.key
            info.add_metric([line], {"adapter": adapter,
                                     "version": "" if version is None else str(version)})
        return iter([info])

    def _drift(self) -> Metric:
        state = GaugeMetricFamily("edge_drift_state", "1 for each watched line's drift state "
                                  f"({', '.join(DRIFT_STATES)}), 0 for the others.",
                                  labels=["line", "state"])
        for line in sorted(list(self.source.drift.lines)):  # list(): one atomic copy
            now = self.source.drift.state_of(line)
            if now is None:
                continue
            for name in DRIFT_STATES:
                state.add_metric([line, name], 1.0 if now[0] == name else 0.0)
        return state


def _counters(totals: dict, table: tuple) -> Iterator[Metric]:
    for field, name, doc in table:
        yield CounterMetricFamily(name, doc, value=totals.get(field, 0))


def _buckets(s: Series) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last."""
    out, running = [], 0
    for bound, n in zip(BUCKETS, s.buckets, strict=False):
        running += n
        out.append((repr(bound), running))
    out.append(("+Inf", s.count))
    return out
