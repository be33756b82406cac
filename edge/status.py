"""What the service says about itself: the retained status and the periodic stats.

    <prefix>/<device>/status  retained  {"state": "online", "device", "package_version",
                                         "onnxruntime_version", "provider", "providers",
                                         "adapters_on_device", "routes", ...}
                                        {"state": "offline", "device", "reason", ...}
    <prefix>/<device>/stats             {"provider", "messages_per_s", "latency_ms": {p50, ...},
                                         "errors", "queue_depth", "batch_size", "duplicates",
                                         "outbox": {depth, dropped, full, errors},
                                         "drift_changes", ...}
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

import onnxruntime as ort

from . import __version__

if TYPE_CHECKING:  # the payload types (docs/schemas/)
    from .contract.payloads import Stats


def status_payload(state: str, device: str, *, reason: str | None = None,
                   details: dict | None = None, stamp: bool = True) -> bytes:
    """The status JSON (OnlineStatus or OfflineStatus in edge/contract/payloads.py);
    `stamp=False` for the last will, whose time the broker decides."""
    doc: dict = {"state": state, "device": device}
    if stamp:
        doc["ts"] = round(time.time(), 3)
    if reason is not None:
        doc["reason"] = reason
    doc.update(details or {})
    return json.dumps(doc, separators=(",", ":")).encode()


def online_details(*, engine: dict, routes: dict, adapters: list[dict], bundle: str) -> dict:
    """The versions, where the models run, and the active adapters announced with `online`.
    `engine`: provider (the one the models run on), providers, adapters_on_device, ..."""
    return {"package_version": __version__, "onnxruntime_version": ort.__version__,
            **engine, "routes": routes, "adapters": adapters, "bundle": bundle}


# The reason kinds of error reports (Prometheus' edge_errors_total{reason}), told apart by
# how the service words them: (kind, start of the reason or a part of it). The first match
# wins; any other reason about a sensor message is one it could not decode: "bad_message".
ERROR_KINDS = (
    ("unknown_line", "unknown line "),
    ("bad_topic", "topic has no line level"),
    ("bad_topic", "(the topic level after"),
    ("too_large", "larger than the limit of"),
    ("queue_full", "queue full"),
    ("shutdown", "the service is shutting down"),
    ("shutdown", "the service stopped"),
    ("no_route", "the line lost its route"),
    ("inference_failed", "inference failed"),
    ("internal", "internal error"),
)


def error_kind(reason: str) -> str:
    """The kind of a sensor message's error reason (ERROR_KINDS), "bad_message" otherwise."""
    head = reason[:200]
    for kind, part in ERROR_KINDS:
        if part in head:
            return kind
    return "bad_message"


class Counters:
    """Counts shared by paho's network thread and the worker, reset at each stats report;
    `totals` and `error_kinds` (error reports by kind) since the start."""

    _FIELDS = ("received", "results", "errors", "queue_full", "batches", "rows", "max_batch",
               "duplicates", "outbox_dropped", "outbox_full", "outbox_errors", "deferred",
               "drift_changes", "captured", "capture_dropped", "swaps")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._now = dict.fromkeys(self._FIELDS, 0)
        self.totals = dict.fromkeys(self._FIELDS, 0)
        self.error_kinds: dict[str, int] = {}

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, n in counts.items():
                self._now[key] += n
                self.totals[key] += n
            if "errors" in counts:  # a caller that did not say which kind
                self._kind("other", counts["errors"])

    def error(self, kind: str, n: int = 1) -> None:
        """`n` error reports of one kind (a short fixed name: a Prometheus label value)."""
        with self._lock:
            self._now["errors"] += n
            self.totals["errors"] += n
            self._kind(kind, n)

    def _kind(self, kind: str, n: int) -> None:
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + n

    def since_start(self) -> tuple[dict, dict]:
        """Copies of (totals, error_kinds), read together."""
        with self._lock:
            return dict(self.totals), dict(self.error_kinds)

    def batch(self, rows: int) -> None:
        with self._lock:
            for counts in (self._now, self.totals):
                counts["batches"] += 1
                counts["rows"] += rows
                counts["max_batch"] = max(counts["max_batch"], rows)

    def snapshot_and_reset(self) -> tuple[dict, float]:
        """(counts since the last call, seconds they cover)."""
        with self._lock:
            now = time.monotonic()
            counts, elapsed = self._now, now - self._since
            self._now, self._since = dict.fromkeys(self._FIELDS, 0), now
        return counts, elapsed


def stats_payload(device: str, counts: dict, elapsed: float, latency: dict,
                  queue_depth: int, queue_bound: int, outbox_depth: int | None = None,
                  provider: str | None = None, worker: int | None = None) -> bytes:
    """One stats message over the last `elapsed` seconds; `latency` is a
    `LatencyStats.snapshot_and_reset()` (only its percentiles are used); `outbox_depth` is
    the number of messages waiting for the broker (None without an outbox); `worker`: the
    worker process's index when the gateway runs several (each sends its own)."""
    elapsed = max(elapsed, 1e-9)
    batches = counts["batches"]
    doc: Stats = {
        "device": device, "ts": round(time.time(), 3), "interval_s": round(elapsed, 3),
        "provider": provider,
        "messages_per_s": round(counts["results"] / elapsed, 2),
        "received": counts["received"], "results": counts["results"],
        "errors": counts["errors"], "queue_full": counts["queue_full"],
        "latency_ms": {"p50": latency.get("p50_ms"), "p99": latency.get("p99_ms")},
        "queue_depth": queue_depth, "queue_bound": queue_bound,
        "batches": batches,
        "batch_size": {"mean": round(counts["rows"] / batches, 2) if batches else 0.0,
                       "max": counts["max_batch"]},
        "duplicates": counts["duplicates"],
        "drift_changes": counts.get("drift_changes", 0),
        "capture": {"stored": counts.get("captured", 0),
                    "dropped": counts.get("capture_dropped", 0)},
        "outbox": {"depth": outbox_depth, "dropped": counts["outbox_dropped"],
                   "full": counts["outbox_full"], "errors": counts["outbox_errors"]},
    }
    if worker is not None:  # one stats message per worker process (edge/workers/)
        doc["worker"] = worker
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
