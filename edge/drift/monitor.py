"""One line's drift monitor: a bounded rolling window of what its model saw, compared with
the model's DriftProfile (edge/drift/profile.py), and an ok / warn / drift state with
hysteresis.

    monitor = DriftMonitor(profile, MonitorSettings())
    mean, std = window_stats(x, rank)           # x (n, *sample) raw, before normalisation
    ood = monitor.distances(features)           # features (n, D) -> (n,), or None
    ev = monitor.observe(mean, std, top, cls, ood)  # top (n,) top softmax score, cls (n,)
    if ev is not None: ev.state, ev.changed, ev.indicators

Per window the monitor keeps 2C + 3 numbers in a ring buffer of `window` rows (no per-sample
work). Every `every` windows, once `min_windows` are in, it computes its indicators:

    input_psi   max over channels of the PSI of the window-mean and window-std histograms
    class_psi   PSI of the predicted class mix
    score_psi   PSI of the top-score histogram
    score_drop  profile's mean top score - the rolling window's (> 0: less confident)
    ood_share   share of windows whose penultimate features lie beyond the profile's
                Mahalanobis threshold (edge/drift/features.py); only when the profile has
                feature statistics and the graph outputs features

PSI here is bias corrected: both sides get half a count per bin (an empty bin of a small
window is not an infinite surprise), and the value expected when nothing changed,
(k - 1) (1/n + 1/N) for k bins, n rolling and N reference windows (the chi-square mean
of PSI's first-order expansion), is subtracted and the result floored at 0. Without it a
window of 50 reads about 0.2 per histogram with no drift at all; with it the thresholds
mean the same for any window size (measured: benchmarks/drift.py, docs/BENCHMARKS.md).

An indicator at or past its `warn` or `drift` threshold gives that level; the evaluation's
level is the highest. The state moves to a level only when the last `confirm` evaluations
all reached it (going up) or all stayed at or below it (going down), so one noisy evaluation
never flips it, and a sudden shift may go from ok to drift without stopping at warn.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..contract.shapes import per_channel
from .features import FeatureScorer
from .profile import DriftProfile, Histogram, bin_counts, psi

INDICATORS = ("input_psi", "class_psi", "score_psi", "score_drop", "ood_share")
LEVELS = ("ok", "warn", "drift")  # index = level
UNKNOWN = "unknown"  # the published state of a line whose model carries no profile
PSEUDO = 0.5  # counts added to every bin (Jeffreys): a finite PSI for empty bins


@dataclass(frozen=True)
class Threshold:
    """An indicator's thresholds: at or above `warn` -> warn, at or above `drift` -> drift."""

    warn: float
    drift: float


# Chosen by measurement (benchmarks/drift.py: false alarms on each line's own test windows,
# detection of gain, offset, noise, swapped channels and foreign windows); docs/CONFIG.md.
DEFAULT_THRESHOLDS: Mapping[str, Threshold] = {
    "input_psi": Threshold(warn=0.75, drift=1.25),
    "class_psi": Threshold(warn=0.5, drift=1.0),
    "score_psi": Threshold(warn=1.5, drift=2.5),
    "score_drop": Threshold(warn=0.2, drift=0.35),
    "ood_share": Threshold(warn=0.6, drift=0.8),
}


@dataclass(frozen=True)
class MonitorSettings:
    window: int = 50  # rolling windows kept
    every: int = 10  # windows between evaluations
    min_windows: int = 50  # windows before the first evaluation
    confirm: int = 2  # evaluations in a row before the state changes
    thresholds: Mapping[str, Threshold] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))


@dataclass(frozen=True)
class Evaluation:
    """One comparison with the profile: the state after it and the numbers behind it."""

    state: str
    previous: str
    level: str  # what this evaluation alone says
    indicators: dict[str, float]
    windows: int  # windows observed since the monitor started
    since: float  # time.time() when the state last changed

    @property
    def changed(self) -> bool:
        return self.state != self.previous


def window_stats(x: np.ndarray, rank: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (n, C) of raw samples x (n, *sample) of `rank` axes, in
    float64, over every axis but the channel axis. For feature vectors (F,) the "channels"
    are the features: the mean is each feature's value and the std is 0 (only the
    window_mean histograms then carry information)."""
    flat = per_channel(x, rank)  # (n, C, M)
    return flat.mean(axis=2, dtype=np.float64), flat.std(axis=2, dtype=np.float64)


def corrected_psi(hist: Histogram | list[float], n_ref: int, values: np.ndarray | None = None,
                  counts: np.ndarray | None = None) -> float:
    """Bias-corrected PSI of `values` binned by `hist` (or of `counts` against reference
    shares `hist`), `n_ref` reference windows; 0 when no more different than chance."""
    if counts is None:
        counts = bin_counts(hist.edges, values)
    shares = np.asarray(hist.shares if isinstance(hist, Histogram) else hist, np.float64)
    k, n = len(shares), float(counts.sum())
    if n <= 0 or k < 2:
        return 0.0
    reference = (shares * n_ref + PSEUDO) / (n_ref + PSEUDO * k)  # smoothed like the window
    raw = psi(reference, counts + PSEUDO)
    return max(raw - (k - 1) * (1.0 / n + 1.0 / n_ref), 0.0)


class HistogramSet:
    """H reference histograms evaluated together: edges padded with +inf to a common bin
    count, so binning the n x H values and every PSI is one vectorised step."""

    def __init__(self, hists: list[Histogram], n_ref: int) -> None:
        k = np.array([len(h.shares) for h in hists])  # (H,) bins of each
        width = int(k.max())
        self.edges = np.full((len(hists), width - 1), np.inf)  # (H, width - 1)
        self.valid = np.arange(width)[None, :] < k[:, None]  # (H, width)
        shares = np.zeros((len(hists), width))
        for i, h in enumerate(hists):
            self.edges[i, :k[i] - 1] = h.edges
            shares[i, :k[i]] = h.shares
        self.k, self.n_ref, self.width = k, n_ref, width
        # smoothed like the window's counts, so an empty bin on either side stays finite
        self.reference = (shares * n_ref + PSEUDO) / (n_ref + PSEUDO * k[:, None])

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Counts (H, width) of values (n, H): bin i holds edges[i-1] < v <= edges[i]."""
        index = (values[:, :, None] > self.edges[None]).sum(axis=2)  # (n, H)
        flat = index + np.arange(len(self.k))[None, :] * self.width
        return np.bincount(flat.ravel(), minlength=self.edges.shape[0] * self.width
                           ).reshape(-1, self.width).astype(np.float64)

    def psi(self, counts: np.ndarray) -> np.ndarray:
        """Bias-corrected PSI (H,) of counts (H, width); 0 = no more different than chance."""
        n = counts.sum(axis=1)  # (H,)
        a = (counts + PSEUDO) / (n + PSEUDO * self.k)[:, None]
        terms = np.where(self.valid, (a - self.reference) * np.log(a / self.reference), 0.0)
        bias = (self.k - 1) * (1.0 / np.maximum(n, 1.0) + 1.0 / self.n_ref)
        return np.where((n > 0) & (self.k > 1), np.maximum(terms.sum(axis=1) - bias, 0.0), 0.0)


class _Ring:
    """The last `size` windows' statistics; filled from row 0, so rows [:count] are valid."""

    def __init__(self, size: int, channels: int) -> None:
        self.mean = np.zeros((size, channels))
        self.std = np.zeros((size, channels))
        self.top = np.zeros(size)
        self.cls = np.zeros(size, np.int64)
        self.ood = np.full(size, np.nan)  # Mahalanobis distance; NaN: no features came
        self.size, self.head, self.count = size, 0, 0

    def push(self, mean: np.ndarray, std: np.ndarray, top: np.ndarray, cls: np.ndarray,
             ood: np.ndarray) -> None:
        n = len(top)
        if n > self.size:  # only the newest `size` rows can stay
            mean, std, top, cls, ood, n = mean[-self.size:], std[-self.size:], \
                top[-self.size:], cls[-self.size:], ood[-self.size:], self.size
        rows = (self.head + np.arange(n)) % self.size
        self.mean[rows], self.std[rows], self.top[rows], self.cls[rows] = mean, std, top, cls
        self.ood[rows] = ood
        self.head = (self.head + n) % self.size
        self.count = min(self.count + n, self.size)


class DriftMonitor:
    """One line's rolling window and state. Not thread-safe: one worker feeds it."""

    def __init__(self, profile: DriftProfile, settings: MonitorSettings | None = None, *,
                 state: str = "ok", since: float | None = None,
                 indicators: dict[str, float] | None = None) -> None:
        self.profile = profile
        self.settings = settings or MonitorSettings()
        self.ring = _Ring(self.settings.window, profile.channels)
        self.state = state if state in LEVELS else "ok"
        self.since = time.time() if since is None else since
        self.indicators = dict(indicators or {})
        self.seen = 0  # windows observed
        self._evaluated_at = 0  # `seen` at the last evaluation
        self._up = [0] * len(LEVELS)  # evaluations in a row at or above each level
        self._down = [0] * len(LEVELS)  # ... at or below each level
        self._classes = len(profile.classes.shares)
        class_hist = Histogram(edges=list(np.arange(self._classes - 1) + 0.5),
                               shares=list(profile.classes.shares)) if self._classes > 1 else None
        # Every reference histogram in one set, binned and compared in one step per
        # evaluation: 2C inputs (window mean, std per channel), the top score, the class.
        self._n_inputs = 2 * profile.channels
        self._hists = HistogramSet([*profile.inputs.window_mean, *profile.inputs.window_std,
                                    profile.top_score, *([class_hist] if class_hist else [])],
                                   profile.n_windows)
        self.scorer = None if profile.features is None else FeatureScorer(profile.features)

    def distances(self, features: np.ndarray | None) -> np.ndarray | None:
        """Mahalanobis distances (n,) of penultimate features (n, D) from the profile's;
        None when the profile has no feature statistics, no features came, or their width
        is not the profile's (a graph from another export: nothing to compare)."""
        if self.scorer is None or features is None or features.ndim != 2 \
                or features.shape[1] != self.scorer.dim:
            return None
        return self.scorer.distances(features)

    def observe(self, mean: np.ndarray, std: np.ndarray, top: np.ndarray,
                cls: np.ndarray, ood: np.ndarray | None = None) -> Evaluation | None:
        """Add n windows: mean, std (n, C) raw per channel, top (n,) top score, cls (n,)
        predicted class index, ood (n,) their `distances` (None: not known). An Evaluation
        when this call was due for one, else None."""
        self.ring.push(mean, std, top, cls, np.full(len(top), np.nan) if ood is None else ood)
        self.seen += len(top)
        s = self.settings
        if self.seen < s.min_windows or self.seen - self._evaluated_at < s.every:
            return None
        self._evaluated_at = self.seen
        return self.evaluate()

    def indicators_now(self) -> dict[str, float]:
        """The indicators of the rolling window as it is (ood_share only when at least half
        of its windows came with features)."""
        r, count, c2 = self.ring, self.ring.count, self._n_inputs
        top = r.top[:count]
        values = np.concatenate([r.mean[:count], r.std[:count], top[:, None],
                                 r.cls[:count, None]], axis=1)  # (n, 2C + 2)
        psi = self._hists.psi(self._hists.counts(values[:, :len(self._hists.k)]))
        out = {
            "input_psi": float(psi[:c2].max()),
            "class_psi": float(psi[c2 + 1]) if len(psi) > c2 + 1 else 0.0,
            "score_psi": float(psi[c2]),
            "score_drop": float(self.profile.top_score_mean - top.mean()),
        }
        ood = r.ood[:count]
        known = ood[np.isfinite(ood)]
        if self.scorer is not None and 2 * len(known) >= count:
            out["ood_share"] = float((known > self.profile.features.threshold).mean())
        return out

    def level(self, indicators: Mapping[str, float]) -> int:
        """0 ok, 1 warn, 2 drift: the highest level any indicator reaches."""
        worst = 0
        for name, limits in self.settings.thresholds.items():
            value = indicators.get(name, 0.0)
            worst = max(worst, 2 if value >= limits.drift else 1 if value >= limits.warn else 0)
        return worst

    def evaluate(self) -> Evaluation:
        """Compare the rolling window with the profile now and update the state."""
        self.indicators = {k: round(v, 4) for k, v in self.indicators_now().items()}
        level = self.level(self.indicators)
        previous = self.state
        new = self._hysteresis(level)
        if new != self.state:
            self.state, self.since = new, time.time()
        return Evaluation(state=self.state, previous=previous, level=LEVELS[level],
                          indicators=dict(self.indicators), windows=self.seen,
                          since=self.since)

    def _hysteresis(self, level: int) -> str:
        """The state after an evaluation at `level`: the highest level above the state that
        the last `confirm` evaluations all reached, else the lowest below it that none of
        them exceeded, else the state as it is."""
        for lv in range(len(LEVELS)):  # evaluations in a row at or above / at or below lv
            self._up[lv] = self._up[lv] + 1 if level >= lv else 0
            self._down[lv] = self._down[lv] + 1 if level <= lv else 0
        current, confirm = LEVELS.index(self.state), self.settings.confirm
        up = [lv for lv in range(current + 1, len(LEVELS)) if self._up[lv] >= confirm]
        down = [lv for lv in range(current) if self._down[lv] >= confirm]
        return LEVELS[max(up)] if up else LEVELS[min(down)] if down else self.state
