"""Micro-batching of decoded messages, and the latency statistics of the stats topic.

The MQTT thread decodes each message into a `WorkItem` and puts it on a queue; the inference
thread takes batches with `MicroBatcher.next_batch`, groups their rows by adapter with
`group_rows` (one onnxruntime call per group) and records latencies in `LatencyStats`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .codec import SensorReading
from .errors import ConfigError

__all__ = ["LatencyStats", "MicroBatcher", "WorkItem", "group_rows", "row_index"]

POLL_S = 0.05  # how often a blocked batcher looks at its stop event
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class WorkItem:
    """A decoded message waiting for inference; `received` is time.monotonic() at arrival."""

    line: str
    topic: str
    reading: SensorReading
    received: float


class MicroBatcher:
    """Takes up to `max_batch` items from `source`, waiting at most `max_wait_s` after the first.

    The wait is measured from the first item's `received` time, so a backlog is batched at
    once instead of waiting again. Blocking gets with timeouts only: never a busy spin.
    """

    def __init__(self, source: queue.Queue, max_batch: int, max_wait_s: float) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not max_wait_s >= 0:  # also rejects NaN
            raise ConfigError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        self.source = source
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_s)

    def next_batch(self, stop: threading.Event) -> list[WorkItem]:
        """Block for the first item, then gather more until full or the wait is over.

        Returns [] only when `stop` is set and the queue is empty; items already queued when
        `stop` is set are still handed out, so the caller can drain before exiting.
        """
        first = self._first(stop)
        if first is None:
            return []
        now = time.monotonic()
        arrived = min(getattr(first, "received", now), now)
        deadline = arrived + self.max_wait_s  # measured from the FIRST item's arrival
        batch = [first]
        while len(batch) < self.max_batch:
            item = self._get_until(deadline, stop)
            if item is None:
                break
            batch.append(item)
        return batch

    def _first(self, stop: threading.Event) -> WorkItem | None:
        while True:
            if stop.is_set():
                try:
                    return self.source.get_nowait()
                except queue.Empty:
                    return None
            try:
                return self.source.get(timeout=POLL_S)
            except queue.Empty:
                continue

    def _get_until(self, deadline: float, stop: threading.Event) -> WorkItem | None:
        """The next item before `deadline`, or None; an item already queued always counts."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                try:
                    return self.source.get_nowait()
                except queue.Empty:
                    return None
            try:
                return self.source.get(timeout=min(remaining, POLL_S))
            except queue.Empty:
                continue


def group_rows(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[int]]:
    """Row indices of a batch grouped by `key(item)` (e.g. the adapter for its line).

    Groups appear in the order of their first row; rows keep their order within a group.
    """
    groups: dict[K, list[int]] = {}
    for row, item in enumerate(items):
        groups.setdefault(key(item), []).append(row)
    return groups


def row_index(rows: list[int]) -> slice | list[int]:
    """A group's ascending row indices (group_rows) as a numpy index: a slice when they are
    consecutive (the usual one-model batch: a view, no gather), else the list itself."""
    if rows and rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return rows


class LatencyStats:
    """Thread-safe latency percentiles for the stats topic, over the last `window` latencies
    recorded since the previous snapshot. (Message, error and batch counts come from
    `status.Counters`.) Memory is bounded: latencies go into a ring of `window` floats.
    """

    def __init__(self, window: int = 4096) -> None:
        if window < 1:
            raise ConfigError(f"latency window must be positive, got {window}")
        self._lock = threading.Lock()
        self._ring = np.zeros(window, dtype=np.float64)  # (window,) latencies in ms
        self._reset()

    def _reset(self) -> None:
        self._next = 0  # ring write position
        self._filled = 0  # valid entries in the ring
        self._messages = 0

    def record(self, ms: float) -> None:
        """One message answered, `ms` after it arrived."""
        with self._lock:
            self._ring[self._next] = ms
            self._next = (self._next + 1) % self._ring.size
            self._filled = min(self._filled + 1, self._ring.size)
            self._messages += 1

    def record_many(self, ms: list[float]) -> None:
        """A batch's messages answered, each `ms[i]` after it arrived: one lock, as many
        `record` calls would leave the ring."""
        size = self._ring.size
        with self._lock:
            for value in ms[-size:]:  # the ring keeps the last `size` only
                self._ring[self._next] = value
                self._next = (self._next + 1) % size
            self._filled = min(self._filled + len(ms), size)
            self._messages += len(ms)

    def snapshot_and_reset(self) -> dict:
        """{"messages", "p50_ms", "p99_ms"} since the last snapshot, then a new window:
        `messages` recorded in all, the percentiles over the last `window` of them (None
        when nothing was recorded)."""
        with self._lock:
            window = self._ring[: self._filled].copy()
            messages = self._messages
            self._reset()
        p50, p99 = np.percentile(window, [50, 99]) if window.size else (None, None)
        return {
            "messages": messages,
            "p50_ms": None if p50 is None else round(float(p50), 3),
            "p99_ms": None if p99 is None else round(float(p99), 3),
        }
