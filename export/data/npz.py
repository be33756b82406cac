"""`.npz` files: arrays `X` (N, C, L) windows, (N, F) feature vectors or (N, C, H, W) images,
`y` (N,), optional `class_names`, `channel_names` (for (N, F): the feature names)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edge.contract.shapes import MAX_RANK
from edge.errors import DataError

from .windows import RawWindows


def load_npz(path: Path) -> RawWindows:
    """An npz without pickles as raw samples (N, *sample) float64."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz without pickle ({exc})") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: npz has no array {' or '.join(missing)} "
            f"(found: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    X, y = arrays["X"], arrays["y"]
    if not 2 <= X.ndim <= MAX_RANK + 1:
        raise DataError(f"{path}: X has shape {X.shape} (rank {X.ndim}); expected (N, C, L) "
                        "windows, (N, F) feature vectors or (N, C, H, W) images")
    if 0 in X.shape:
        raise DataError(f"{path}: X has shape {X.shape}; expected no zero size")
    if X.dtype.kind not in "fiu":
        raise DataError(f"{path}: X has dtype {X.dtype}; expected numbers (float32)")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"{path}: y has shape {y.shape}; expected ({len(X)},) to match X")
    file_classes = _str_list(arrays, "class_names", path)
    labels = _npz_labels(y, file_classes, path)
    channels = _str_list(arrays, "channel_names", path) or [f"dim_{i}" for i in range(X.shape[1])]
    if len(channels) != X.shape[1]:
        raise DataError(f"{path}: {len(channels)} channel_names for {X.shape[1]} channels in X")
    return RawWindows(X.astype(np.float64), labels, channels, file_classes, detail="npz")


def _str_list(arrays: dict[str, np.ndarray], key: str, path: Path) -> list[str] | None:
    if key not in arrays:
        return None
    arr = arrays[key]
    if arr.ndim != 1:
        raise DataError(f"{path}: {key} has shape {arr.shape}; expected a 1-D list of names")
    return [str(v) for v in arr.tolist()]


def _npz_labels(y: np.ndarray, file_classes: list[str] | None, path: Path) -> np.ndarray:
    """y (N,) of ints or strings -> label strings (N,)."""
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{path}: y holds non-integer floats; expected class ids or names")
        y = y.astype(np.int64)
    if y.dtype.kind in "iu" and file_classes is not None:
        bad = y[(y < 0) | (y >= len(file_classes))]
        if bad.size:
            raise DataError(
                f"{path}: y holds class id {int(bad[0])} outside class_names "
                f"(0..{len(file_classes) - 1})"
            )
        return np.asarray(file_classes, dtype=str)[y]
    if y.dtype.kind not in "iuUSb":
        raise DataError(f"{path}: y has dtype {y.dtype}; expected class ids or names")
    return y.astype(str)

