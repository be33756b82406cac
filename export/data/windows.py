"""Windows as arrays, whatever file they came from: the raw windows a reader returns, gaps
filled and resampled to one length, checked finite, and labels encoded as class ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.contract.shapes import where
from edge.errors import DataError


@dataclass
class RawWindows:
    """What a reader found: N windows (C, L_i) float64 (NaN = missing), or an npz's samples
    (N, F) / (N, C, H, W) as one array, their label strings (N,), the names along axis 0 of a
    sample (C channels, F features), the file's own class list if it declares one, and a few
    words on how the file was read (echoed after loading)."""

    cases: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    channels: list[str]
    file_classes: list[str] | None = None
    detail: str = ""


def to_fixed_length(cases: np.ndarray | list[np.ndarray], length: int | None) -> np.ndarray:
    """Cases (C, L_i) -> (N, C, length) float32: interpolate NaN gaps, then resample."""
    lengths = [c.shape[-1] for c in cases]
    if length is None:
        length = lengths[0] if len(set(lengths)) == 1 else int(round(float(np.median(lengths))))
    out = np.empty((len(cases), cases[0].shape[0], length), dtype=np.float32)
    for i, case in enumerate(cases):
        out[i] = _resample(_fill_gaps(case), length)
    return out


def _fill_gaps(series: np.ndarray) -> np.ndarray:
    """(C, L): linear interpolation over NaN inside each channel; all-NaN channels stay NaN."""
    nan = np.isnan(series)
    if not nan.any():
        return series
    series = series.copy()
    steps = np.arange(series.shape[-1])
    for c in np.flatnonzero(nan.any(axis=-1)):
        good = ~nan[c]
        if good.any():  # ends take the nearest known value (np.interp holds the edges)
            series[c, ~good] = np.interp(steps[~good], steps[good], series[c, good])
    return series


def _resample(series: np.ndarray, length: int) -> np.ndarray:
    """(C, L) -> (C, length) by linear interpolation, keeping both end points."""
    n = series.shape[-1]
    if n == length:
        return series
    if n == 1:
        return np.repeat(series, length, axis=-1)
    pos = np.linspace(0.0, n - 1, length)  # (length,) positions in the old time axis
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    frac = pos - lo
    return series[:, lo] * (1.0 - frac) + series[:, lo + 1] * frac


def check_finite(X: np.ndarray, source: str) -> None:
    """Raise DataError on NaN/Inf left in X (N, *sample), naming the first one."""
    bad = ~np.isfinite(X)
    if bad.any():
        first = np.argwhere(bad)[0]
        if X.ndim == 3:  # windows: missing values were interpolated, what is left is not
            n, c, t = (int(v) for v in first)
            raise DataError(
                f"{source}: X holds {int(bad.sum())} NaN/Inf value(s) left after interpolating "
                f"missing values (first: sample {n}, channel {c}, step {t})"
            )
        raise DataError(f"{source}: X holds {int(bad.sum())} NaN/Inf value(s) (first: sample "
                        f"{int(first[0])}, {where(X.ndim - 1, first[1:])}); only windows "
                        "(N, C, L) have missing values interpolated")


def label_key(label: str) -> tuple[int, float, str]:
    """Sort numbers as numbers ('2' < '10'), then everything else as text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def encode_labels(
    labels: np.ndarray,
    class_names: list[str] | None,
    file_classes: list[str] | None,
    source: str,
) -> tuple[list[str], np.ndarray]:
    """Label strings (N,) -> (class names, ids (N,) int64), in the order `load_dataset`
    documents; at least 2 classes without `class_names`."""
    present = sorted({str(v) for v in labels.tolist()}, key=label_key)
    if class_names is None:
        if len(present) < 2:
            raise DataError(
                f"{source}: {len(present)} class(es) present ({present}); training needs at least 2"
            )
        names = file_classes if file_classes is not None else present
    else:
        names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise DataError(f"{source}: class_names has duplicates: {names}")
    index = {n: i for i, n in enumerate(names)}
    unknown = [lab for lab in present if lab not in index]
    if unknown:
        raise DataError(
            f"{source}: label {unknown[0]!r} is not in class_names {names}"
            + (f" ({len(unknown)} unknown labels)" if len(unknown) > 1 else "")
        )
    y = np.fromiter((index[str(v)] for v in labels.tolist()), dtype=np.int64, count=len(labels))
    return list(names), y

