"""Fit the out-of-distribution statistics of a drift profile (edge/drift/features.py) on the
penultimate features of the training windows.

    profile = fit_features(features, classes, held_out)
    # training features (N, D), their predicted classes (N,), held-out features (M, D) or None

Class means of the features, the within-class covariance shrunk by Ledoit-Wolf's rule (the
optimal shrinkage towards a scaled identity: a few hundred windows cannot estimate D x D
numbers), kept as its top RANK principal directions plus the mean of the other variances.

The threshold must hold for windows of the line that neither the statistics nor the model
saw. Two corrections:
- Cross-fitting: FOLDS times, the statistics are fitted on the other folds and the held-out
  fold's distances measured (a window's own distance is smaller: it helped place the mean
  and shape the covariance). Their QUANTILE is the threshold.
- The model trained on those windows too, so a new window's features lie further out
  still (measured on BasicMotions: a median distance of 3.9 on training windows, 8.5 on
  test windows). When the training run held windows out (its validation or test split),
  the threshold is scaled by how much further out they lie: the ratio of their median
  distance to the cross-fitted median (a median: a handful of held-out windows estimate it
  well enough; a 95th percentile of eight windows would be their maximum).
"""

from __future__ import annotations

import numpy as np

from edge.drift.features import FeatureProfile, FeatureScorer

__all__ = ["FOLDS", "QUANTILE", "RANK", "fit_features", "ledoit_wolf"]

RANK = 16  # principal directions kept; D x (K + RANK) numbers in the profile
QUANTILE = 0.95  # of held-out training distances: the out-of-distribution threshold
FOLDS = 5
MIN_WINDOWS = 10  # fewer windows than this: no feature statistics


def ledoit_wolf(centered: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance (D, D) of centered rows (N, D):
    (1 - s) S + s mu I, S the sample covariance, mu = tr(S) / D, s the estimated optimal
    shrinkage (Ledoit & Wolf 2004, as scikit-learn computes it)."""
    n, d = centered.shape
    sample = centered.T @ centered / n  # (D, D)
    mu = np.trace(sample) / d
    delta = ((sample - mu * np.eye(d)) ** 2).sum() / d
    sq_norms = (centered ** 2).sum(axis=1)  # (N,)
    beta = ((sq_norms ** 2).sum() / n - (sample ** 2).sum()) / (n * d)
    shrink = 0.0 if delta <= 0 else float(np.clip(beta / delta, 0.0, 1.0))
    return (1.0 - shrink) * sample + shrink * mu * np.eye(d)


def _fit(features: np.ndarray, classes: np.ndarray, threshold: float = 1.0) -> FeatureProfile:
    """Class means and the shrunk within-class covariance in low-rank form; `threshold` as
    given (fit_features calibrates it)."""
    present = np.unique(classes)
    means = np.stack([features[classes == k].mean(axis=0) for k in present])  # (K, D)
    index = np.searchsorted(present, classes)
    cov = ledoit_wolf(features - means[index])  # (D, D)
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    d = features.shape[1]
    rank = min(RANK, d - 1, len(features) // 4) if d > 1 else 0
    floor = max(float(values[0]) * 1e-9, 1e-12)  # a constant feature: no zero variances
    residual = float(np.maximum(values[rank:], floor).mean())
    return FeatureProfile(dim=d, class_means=_rounded(means), basis=_rounded(vectors[:, :rank].T),
                          variances=_rounded(np.maximum(values[:rank], floor)),
                          residual=residual, threshold=threshold, quantile=QUANTILE)


def _rounded(a: np.ndarray) -> list:
    """`a` as nested lists of floats with 7 significant digits (float32's): the profile
    rides in the signed envelope header, whose size the gateway caps, and 17-digit reprs
    would double it for nothing."""
    return np.vectorize(lambda v: float(f"{v:.7g}"), otypes=[float])(a).tolist()


def _held_out_distances(features: np.ndarray, classes: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """Each window's distance under statistics fitted without its fold (N,)."""
    folds = rng.permutation(len(features)) % FOLDS
    out = np.empty(len(features))
    for fold in range(FOLDS):
        held = folds == fold
        stats = _fit(features[~held], classes[~held])
        out[held] = FeatureScorer(stats).distances(features[held])
    return out


def fit_features(features: np.ndarray, classes: np.ndarray, held_out: np.ndarray | None = None,
                 seed: int = 0) -> FeatureProfile | None:
    """The FeatureProfile of training features (N, D) and their predicted classes (N,),
    its threshold scaled by `held_out` features (M, D) of windows the model did not train
    on, when given; None when there are too few windows (MIN_WINDOWS) or the features are
    not finite."""
    features = np.asarray(features, np.float64)
    classes = np.asarray(classes)
    if len(features) < MIN_WINDOWS or not np.isfinite(features).all():
        return None
    crossed = _held_out_distances(features, classes, np.random.default_rng(seed))
    threshold = float(np.quantile(crossed, QUANTILE))
    stats = _fit(features, classes)
    if held_out is not None and len(held_out) and np.isfinite(held_out).all():
        unseen = FeatureScorer(stats).distances(np.asarray(held_out, np.float64))
        threshold *= max(1.0, float(np.median(unseen) / max(np.median(crossed), 1e-12)))
    return FeatureProfile.model_validate({**stats.model_dump(),
                                          "threshold": max(threshold, 1e-6)})
