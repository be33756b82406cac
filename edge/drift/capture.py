"""Evidence kept on the gateway: which of a line's windows go to the capture store, and the
writer thread that stores them off the inference worker.

    capture = Capture(settings, state_dir, dropped=..., captured=...)
    rows = capture.select(line, top, mean, std, state, profile, ood)  # [(row, reason), ...]
    capture.offer(record, x)           # the worker: a put on a bounded queue, never a wait
    capture.close()                    # at stop: what is queued is written, then the thread ends

A window is kept when (in this order of reasons, the first that applies is recorded)

    ood        the Mahalanobis distance of its penultimate features exceeds the profile's
               threshold `ood_margin` times (edge/drift/features.py; when the profile and
               the graph have features)
    outlier    a channel's window mean or std lies outside the profile's decile range
               [q10 - m (q90 - q10), q90 + m (q90 - q10)], m = outlier_margin
    low_score  its top score is below low_score
    drifting   its line's drift state is warn or drift: a share `drifting_share` of those
               windows, evenly spaced (a counter, not a coin: the rate is exact)

and its line has not used up `per_minute` captures (a token bucket per line, full at start):
a sustained shift on a fast line would otherwise rewrite the whole store every few minutes
and wear the gateway's flash.

Cost on the worker: a few vectorised comparisons per batch of a watched line, and for a kept
window one record and a queue put (the window's array is not copied: the reading owns it
and nobody writes to it after decoding). The writer fsyncs each record; when it falls
behind, the queue (`queue` records) fills and further captures are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .capture_store import CaptureStore, Record
from .profile import DriftProfile

log = logging.getLogger(__name__)

FOLDER = "capture"  # under device.state_dir
REASONS = ("ood", "outlier", "low_score", "drifting")
ALARMED = ("warn", "drift")
_STOP = object()


class CaptureSettings(Protocol):
    """What capture reads of [drift.capture] (edge/config.py CaptureConfig)."""

    max_bytes: int
    low_score: float
    drifting_share: float
    outlier_margin: float
    ood_margin: float
    reasons: Sequence[str]
    queue: int
    per_minute: int


class OutlierRange:
    """Per channel, the profile's window mean and std ranges widened by `margin` times
    their interdecile width: lo, hi (2C,), means first."""

    def __init__(self, profile: DriftProfile, margin: float) -> None:
        hists = [*profile.inputs.window_mean, *profile.inputs.window_std]
        q10 = np.array([h.edges[0] for h in hists])
        q90 = np.array([h.edges[-1] for h in hists])
        # a constant training channel has one edge: allow float noise around it
        width = np.maximum(q90 - q10, 1e-6 * np.maximum(np.abs(q90), 1.0))
        self.lo, self.hi = q10 - margin * width, q90 + margin * width

    def rows(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """(n,) bool: windows with any channel's mean or std (n, C) out of range."""
        values = np.concatenate([mean, std], axis=1)  # (n, 2C)
        return ((values < self.lo) | (values > self.hi)).any(axis=1)


class Capture:
    """Selection and the writer thread over a CaptureStore in `<state_dir>/capture`."""

    def __init__(self, settings: CaptureSettings, state_dir: Path, *,
                 captured: Callable[[int], None] | None = None,
                 dropped: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.store = CaptureStore(Path(state_dir) / FOLDER, settings.max_bytes)
        self.store.tidy()
        self.captured = captured or (lambda n: None)
        self.dropped = dropped or (lambda n: None)
        self.queue: queue.Queue = queue.Queue(maxsize=settings.queue)
        self._share: dict[str, float] = {}  # line -> drifting-share counter's fraction
        self._tokens: dict[str, tuple[float, float]] = {}  # line -> (tokens, at clock())
        self.clock = clock
        self._ranges: dict[int, tuple[DriftProfile, OutlierRange]] = {}  # by id(profile)
        self._thread = threading.Thread(target=self._write_loop, name="edge-capture",
                                        daemon=True)
        self._thread.start()

    # -- the worker ------------------------------------------------------------------------
    def select(self, line: str, top: np.ndarray, mean: np.ndarray, std: np.ndarray,
               state: str, profile: DriftProfile | None, ood: np.ndarray | None = None
               ) -> list[tuple[int, str]]:
        """The rows of one line's windows to keep, with the reason: top (n,), mean, std
        (n, C) raw; `state` the line's drift state; `profile` its model's (or None); ood
        (n,) the windows' Mahalanobis distances (None: not known)."""
        s, n = self.settings, len(top)
        reason = np.full(n, "", dtype=object)
        if "drifting" in s.reasons and state in ALARMED:
            reason[self._sampled(line, n)] = "drifting"
        if "low_score" in s.reasons and s.low_score > 0:
            reason[top < s.low_score] = "low_score"
        if "outlier" in s.reasons and profile is not None:
            reason[self._range(profile).rows(mean, std)] = "outlier"
        if "ood" in s.reasons and ood is not None and profile is not None \
                and profile.features is not None:
            reason[ood > s.ood_margin * profile.features.threshold] = "ood"
        rows = np.flatnonzero(reason != "")
        return [(int(i), str(reason[i])) for i in rows[:self._allowed(line, len(rows))]]

    def _allowed(self, line: str, wanted: int) -> int:
        """How many of `wanted` captures the line's token bucket lets through now."""
        if wanted == 0:
            return 0
        cap, now = float(self.settings.per_minute), self.clock()
        tokens, at = self._tokens.get(line, (cap, now))
        tokens = min(cap, tokens + (now - at) * cap / 60.0)
        allowed = min(wanted, int(tokens))
        if len(self._tokens) > 4096:
            self._tokens.clear()
        self._tokens[line] = (tokens - allowed, now)
        return allowed

    def _sampled(self, line: str, n: int) -> np.ndarray:
        """(n,) bool: every 1/share-th window of the line, counting across batches."""
        share, start = self.settings.drifting_share, self._share.get(line, 0.0)
        if len(self._share) > 4096:  # lines come from topics: keep it bounded
            self._share.clear()
        steps = start + share * np.arange(n + 1)  # counter before each window, and after
        self._share[line] = float(steps[-1] % 1.0)
        return np.floor(steps[1:]) > np.floor(steps[:-1])

    def _range(self, profile: DriftProfile) -> OutlierRange:
        cached = self._ranges.get(id(profile))
        if cached is None or cached[0] is not profile:
            if len(self._ranges) > 256:
                self._ranges.clear()
            cached = self._ranges[id(profile)] = (
                profile, OutlierRange(profile, self.settings.outlier_margin))
        return cached[1]

    def offer(self, record: Record, x: np.ndarray) -> bool:
        """Queue one raw sample (C, L) (any sample shape) for the writer; False (counted)
        when the queue is full."""
        try:
            self.queue.put_nowait((record, x))
            return True
        except queue.Full:
            self.dropped(1)
            return False

    # -- the writer thread -----------------------------------------------------------------
    def _write_loop(self) -> None:
        failing = False
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            try:
                if self.store.write(*item) is not None:
                    self.captured(1)
                failing = False
            except OSError as exc:  # a full or read-only disk costs the evidence, not results
                self.dropped(1)
                if not failing:
                    log.warning("capture: cannot write to %s: %s", self.store.folder, exc)
                failing = True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then end the writer thread."""
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("capture: writer still busy; %d queued windows not stored",
                        self.queue.qsize())
            return
        self._thread.join(timeout)
