"""Accuracy figures of a pilot and how sure they are: accuracy, macro F1, per-class recall,
confusion matrix, bootstrap 95% intervals, and the paired bootstrap difference between two
candidates on the same test set (pilot test sets are small: it says when two results are not
distinguishable).

Inputs are numpy arrays of class indices: y (N,) true, pred (N,) predicted, k classes.
Bootstrap: `n_boot` resamples of the N windows with replacement (a fixed seed, so the same
inputs give the same interval), percentile interval. Paired: both candidates are scored on the
same resampled windows, so the test set's luck is shared and only their difference varies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["N_BOOT", "accuracy", "bootstrap_ci", "confusion", "macro_f1", "paired_difference",
           "per_class_recall", "scored"]

N_BOOT = 2000
Stat = Callable[[np.ndarray, np.ndarray, int], float]


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts; rows are the true class, columns the predicted one."""
    return np.bincount(np.asarray(y) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def accuracy(y: np.ndarray, pred: np.ndarray, k: int = 0) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred))) if len(y) else float("nan")


def per_class_recall(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(k,) recall per class; NaN for a class without windows in y."""
    cm = confusion(y, pred, k)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in y (F1 = 0 for a class
    never predicted right, as scikit-learn's zero_division=0)."""
    cm = confusion(y, pred, k).astype(float)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    return float(f1[present].mean()) if present.any() else float("nan")


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, k: int, stat: Stat = accuracy, *,
                 n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of `stat` over bootstrap resamples of the windows."""
    y, pred = np.asarray(y), np.asarray(pred)
    values = [stat(y[idx], pred[idx], k) for idx in _resamples(len(y), n_boot, seed)]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def scored(y: np.ndarray, pred: np.ndarray, k: int, stat: Stat) -> dict:
    """{"value", "ci95"} of one statistic."""
    return {"value": stat(y, pred, k), "ci95": list(bootstrap_ci(y, pred, k, stat))}


def paired_difference(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, k: int,
                      stat: Stat = accuracy, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """stat(a) - stat(b) on the same windows, its paired bootstrap 95% interval, and whether
    the interval excludes 0 ("distinguishable")."""
    y, pred_a, pred_b = np.asarray(y), np.asarray(pred_a), np.asarray(pred_b)
    diffs = [stat(y[idx], pred_a[idx], k) - stat(y[idx], pred_b[idx], k)
             for idx in _resamples(len(y), n_boot, seed)]
    low, high = (float(v) for v in np.nanpercentile(diffs, [2.5, 97.5]))
    return {"difference": stat(y, pred_a, k) - stat(y, pred_b, k), "ci95": [low, high],
            "distinguishable": bool(low > 0 or high < 0)}
