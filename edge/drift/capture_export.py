"""What `edge-runtime capture list | export | clear` does with the capture store.

    export_npz(store, Path("captured.npz"), line="press-3", since=...)   # -> ExportSummary
    summary(store)                                                       # per line and reason

The npz is the training format `edge-export train --data` reads (docs/DATA.md):

    X (N, *sample) float32  raw samples ((N, C, L) windows ...), as they arrived
    y (N,) str            the PREDICTED class names: provisional labels, to be checked
    class_names (K,) str  the model's classes, when every exported record shares them
    line, adapter, reason, drift_state, id (N,) str; version (N,) int64 (-1: the base);
    score (N,) float32 top score; ood (N,) float32 Mahalanobis distance (NaN: not known);
    received (N,) float64 unix time                                   (the loader ignores these)
"""

from __future__ import annotations

import datetime
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import atomic_write
from ..errors import ConfigError, DataError
from .capture_store import CaptureStore, Record


@dataclass
class ExportSummary:
    windows: int
    shape: tuple[int, ...]  # the sample shape: (F,), (C, L) or (C, H, W)
    classes: int  # distinct predicted classes among them
    left_out: int  # records of another window shape


def parse_since(text: str | None) -> float | None:
    """Unix time of an ISO 8601 time (without a zone: UTC); ConfigError naming --since."""
    if text is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since: {text!r} is not an ISO 8601 time "
                          "(e.g. 2026-12-01T17:40:00+00:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def matching(store: CaptureStore, line: str | None = None,
             since: float | None = None) -> Iterator[tuple[Record, np.ndarray]]:
    """The readable records of `line` (all when None) received at or after `since`."""
    for record, x in store.read():
        if (line is None or record.line == line) and (since is None or record.received >= since):
            yield record, x


def export_npz(store: CaptureStore, out: Path, *, line: str | None = None,
               since: float | None = None) -> ExportSummary:
    """Write the matching records to `out` (atomically); DataError when there are none."""
    records = list(matching(store, line, since))
    if not records:
        raise DataError(f"no captured windows{f' of line {line}' if line else ''}"
                        f"{' since then' if since is not None else ''} in {store.folder}")
    shape = records[-1][1].shape  # the newest records' shape: older ones may be another model's
    kept = [(r, x) for r, x in records if x.shape == shape]
    recs = [r for r, _ in kept]
    arrays = {
        "X": np.stack([x for _, x in kept]).astype(np.float32),  # (N, *sample)
        "y": np.array([r.predicted for r in recs], dtype=str),
        "line": np.array([r.line for r in recs], dtype=str),
        "adapter": np.array([r.adapter for r in recs], dtype=str),
        "version": np.array([-1 if r.version is None else r.version for r in recs], np.int64),
        "score": np.array([r.top for r in recs], np.float32),
        "ood": np.array([np.nan if r.ood is None else r.ood for r in recs], np.float32),
        "reason": np.array([r.reason for r in recs], dtype=str),
        "drift_state": np.array([r.drift_state for r in recs], dtype=str),
        "received": np.array([r.received for r in recs], np.float64),
        "id": np.array([r.id for r in recs], dtype=str),
    }
    if len({tuple(r.classes) for r in recs}) == 1:
        arrays["class_names"] = np.array(recs[0].classes, dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buf.getvalue())
    return ExportSummary(windows=len(kept), shape=tuple(shape),
                         classes=len({r.predicted for r in recs}),
                         left_out=len(records) - len(kept))


def summary(store: CaptureStore) -> list[dict]:
    """One row per (line, reason): windows, first and last receive time (ISO), adapters."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for record, _ in store.read():
        groups.setdefault((record.line, record.reason), []).append(record)
    rows = []
    for (line, reason), recs in sorted(groups.items()):
        adapters = Counter(f"{r.adapter} v{r.version}" if r.version else r.adapter
                           for r in recs)
        rows.append({"line": line, "reason": reason, "windows": len(recs),
                     "first": _iso(min(r.received for r in recs)),
                     "last": _iso(max(r.received for r in recs)),
                     "adapters": ", ".join(sorted(adapters))})
    return rows


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="seconds")
