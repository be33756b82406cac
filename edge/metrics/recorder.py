"""What the worker records per answered window for Prometheus: cheap, one lock per group.

    rec = Recorder()
    rec.answered(items, routes, inference_s)   # after each onnxruntime run (edge/service.py)
    rec.snapshot()                             # at scrape time (edge/metrics/collector.py)

Per (line, adapter, version): results and the end-to-end latency (arrival -> answered), and
per model run: the inference time. Histograms are kept as plain bucket counts (bisect into
fixed bounds) and turned into Prometheus histograms only when scraped, so the hot path pays
a dict lookup and three additions per window, not prometheus_client's lock per sample.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..contract import BASE

# Upper bounds in seconds: fine between 1 and 100 ms, where a gateway's latency lives.
BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
           0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_SERIES = 512  # (line, adapter, version) label sets; lines come from topics when the
# config lists none, so past this every new one is counted under OTHER
OTHER = ("_other", "_other", "")
BANK = (BASE + "+bank", "")  # the labels of a bank run serving several adapters at once


@dataclass
class Series:
    """One label set: `buckets[i]` counts values <= BUCKETS[i] and above the bound before;
    the last one counts those above every bound."""

    count: int = 0
    total: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1

    def copy(self) -> Series:
        return Series(self.count, self.total, list(self.buckets))


class Recorder:
    """Results and latencies since the start, written by the worker, read by scrapes."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._lock = threading.Lock()
        self._max = max_series
        self._answered: dict[tuple[str, str, str], Series] = {}  # end-to-end latency
        self._runs: dict[tuple[str, str], Series] = {}  # one onnxruntime run each

    def answered(self, items: Sequence[Any], routes: Sequence[Any], inference_s: float,
                 now: float | None = None) -> None:
        """`items` (WorkItem: .line, .received monotonic) answered by `routes` (Route: .key
        = (adapter, version)) after one run of `inference_s` seconds."""
        now = time.monotonic() if now is None else now
        first = routes[0].key
        with self._lock:
            series = self._answered
            for item, route in zip(items, routes, strict=True):
                key = route.key
                labels = (item.line, key[0], _version(key[1]))
                s = series.get(labels)
                if s is None:
                    s = self._new(labels)
                s.add(now - item.received)
                if key != first:
                    first = None
            run = (first[0], _version(first[1])) if first is not None else BANK
            s = self._runs.get(run)
            if s is None:
                s = self._runs[run] = Series()
            s.add(inference_s)

    def _new(self, labels: tuple[str, str, str]) -> Series:
        if len(self._answered) >= self._max:
            labels = OTHER
        return self._answered.setdefault(labels, Series())

    def snapshot(self) -> tuple[dict, dict]:
        """Copies of ({(line, adapter, version): Series}, {(adapter, version): Series})."""
        with self._lock:
            return ({k: s.copy() for k, s in self._answered.items()},
                    {k: s.copy() for k, s in self._runs.items()})


def _version(version: int | None) -> str:
    return "" if version is None else str(version)
