"""Sensor data loading: turning files into validated (N, C, L) float32 arrays.

Sources: `.npz` files (arrays `X` (N, C, L), `y` (N,), optional `class_names`, `channel_names`),
UCR/UEA `.ts` files, and `ucr:NAME:train|test` for the datasets bundled in the sktime wheel
(read directly from the file: sktime is never imported).

This module imports only numpy, the standard library and edge/: `ChannelStats` is the
gateway's normalisation (edge/contract/preprocessing.py), so it has to stay torch-free.
"""

from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.contract import Normalizer
from edge.errors import ConfigError, DataError

__all__ = [
    "ChannelStats",
    "SensorDataset",
    "bundled_dataset_path",
    "load_dataset",
    "read_ts",
    "train_val_split",
]


# --------------------------------------------------------------------------------------------
# The .ts reader
# --------------------------------------------------------------------------------------------


@dataclass
class _TsFile:
    """What `_parse_ts` found: per-case arrays (C, L_i) float64, raw labels, header fields."""

    cases: list[np.ndarray]
    labels: list[str]
    header: dict[str, str] = field(default_factory=dict)
    declared_classes: list[str] | None = None  # from `@classLabel true a b c`
    label_kind: str = "none"  # "class", "target" or "none"


def read_ts(path: str | Path) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """Read a UCR/UEA `.ts` file (timestamps false).

    Returns `(X, y)`. `X` is a float64 array (N, C, L) when every series has the same length,
    else a list of N arrays (C, L_i). Missing values (`?`) are NaN. `y` holds the label strings
    (N,) for `@classLabel true`, float targets (N,) for `@targetLabel true`, and is empty (0,)
    when the file has no labels. Raises `DataError` naming the file (and line) on bad input.
    """
    ts = _parse_ts(Path(path))
    if ts.label_kind == "class":
        y = np.asarray(ts.labels, dtype=str)
    elif ts.label_kind == "target":
        y = np.asarray([float(v) for v in ts.labels], dtype=np.float64)
    else:
        y = np.empty((0,), dtype=str)
    lengths = {c.shape[1] for c in ts.cases}
    if len(lengths) == 1:
        return np.stack(ts.cases), y  # (N, C, L)
    return ts.cases, y


def _parse_ts(path: Path) -> _TsFile:
    text = _read_text(path)
    ts = _TsFile(cases=[], labels=[])
    in_data = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "%")):  # '%' comments appear in some UCR files
            continue
        if in_data:
            series, label = _parse_ts_line(path, lineno, line, ts)
            ts.cases.append(series)
            if label is not None:
                ts.labels.append(label)
        elif line.startswith("@"):
            in_data = _parse_ts_header_line(path, lineno, line, ts)
        else:
            raise DataError(f"{path}:{lineno}: data before the @data line")
    if not in_data:
        raise DataError(f"{path}: no @data line: not a .ts file")
    if not ts.cases:
        raise DataError(f"{path}: no series after @data")
    return ts


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        return path.read_text(encoding="utf-8-sig")  # some UCR files start with a BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _parse_ts_header_line(path: Path, lineno: int, line: str, ts: _TsFile) -> bool:
    """Record one `@key value` line; return True when it is `@data`."""
    key, _, value = line[1:].partition(" ")
    key, value = key.lower(), value.strip()
    if key == "data":
        return True
    ts.header[key] = value
    words = value.split()
    flag = words[0].lower() if words else ""
    if key == "timestamps" and flag == "true":
        raise DataError(f"{path}:{lineno}: @timeStamps true is not supported")
    if key == "classlabel" and flag == "true":
        ts.label_kind, ts.declared_classes = "class", words[1:] or None
    elif key == "targetlabel" and flag == "true":
        ts.label_kind = "target"
    return False


def _parse_ts_line(
    path: Path, lineno: int, line: str, ts: _TsFile
) -> tuple[np.ndarray, str | None]:
    """One case: `v,v,...:v,v,...:label` -> ((C, L) float64, label or None)."""
    parts = line.split(":")
    label = parts.pop().strip() if ts.label_kind != "none" else None
    if label == "":
        raise DataError(f"{path}:{lineno}: missing label after the last ':'")
    expected_dims = _expected_dims(path, ts, default=len(parts))
    if len(parts) != expected_dims:
        raise DataError(
            f"{path}:{lineno}: {len(parts)} dimension(s), expected {expected_dims} "
            "(from @univariate/@dimensions)"
        )
    channels = [_parse_values(path, lineno, d, p) for d, p in enumerate(parts)]
    if len({len(c) for c in channels}) != 1:
        got = [len(c) for c in channels]
        raise DataError(f"{path}:{lineno}: dimensions have different lengths {got}")
    declared = ts.header.get("serieslength")
    if ts.header.get("equallength", "").lower() == "true" and declared and declared.isdigit():
        if len(channels[0]) != int(declared):
            raise DataError(
                f"{path}:{lineno}: {len(channels[0])} values, expected {declared} (@seriesLength)"
            )
    return np.asarray(channels, dtype=np.float64), label


def _expected_dims(path: Path, ts: _TsFile, default: int) -> int:
    """Channels per case: @univariate true -> 1, else @dimensions, else the first case's."""
    if ts.header.get("univariate", "").lower() == "true":
        return 1
    declared = ts.header.get("dimensions")
    if declared is None:
        return ts.cases[0].shape[0] if ts.cases else default
    if not declared.isdigit() or int(declared) < 1:
        raise DataError(f"{path}: @dimensions {declared!r} is not a positive integer")
    return int(declared)


def _parse_values(path: Path, lineno: int, dim: int, text: str) -> list[float]:
    tokens = text.split(",")
    try:
        return [float("nan") if t.strip() == "?" else float(t) for t in tokens]
    except ValueError:
        pass
    for col, tok in enumerate(tokens, start=1):  # slow path: find the culprit for the message
        try:
            float(tok) if tok.strip() != "?" else None
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: non-numeric value {tok.strip()!r} (dimension {dim}, value {col})"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Bundled datasets
# --------------------------------------------------------------------------------------------


def bundled_dataset_path(name: str, split: str) -> Path:
    """Path of `sktime/datasets/data/<name>/<name>_<SPLIT>.ts` in the installed sktime wheel.

    sktime is located with `importlib.util.find_spec`, never imported. Raises `DataError` when
    sktime is not installed, the split is not train/test, or the dataset is missing (the
    message lists the available names).
    """
    split_upper = split.upper()
    if split_upper not in ("TRAIN", "TEST"):
        raise DataError(f"dataset split must be 'train' or 'test', got {split!r}")
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"bundled dataset {name!r} needs sktime installed (pip install sktime); "
            "or pass a .ts / .npz file"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    path = data_dir / name / f"{name}_{split_upper}.ts"
    if not path.is_file():
        available = sorted(p.parent.name for p in data_dir.glob(f"*/*_{split_upper}.ts"))
        raise DataError(
            f"no bundled dataset {name!r} ({split_upper}) in {data_dir}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return path


# --------------------------------------------------------------------------------------------
# SensorDataset and load_dataset
# --------------------------------------------------------------------------------------------


@dataclass
class SensorDataset:
    """Validated windows `X` float32 (N, C, L) with labels `y` int64 (N,) in [0, K)."""

    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    channel_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        return int(self.X.shape[1])

    @property
    def length(self) -> int:
        return int(self.X.shape[2])

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name, in class index order."""
        counts = np.bincount(self.y, minlength=self.num_classes)
        return {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}


def load_dataset(
    path_or_spec: str | Path,
    *,
    length: int | None = None,
    class_names: list[str] | None = None,
) -> SensorDataset:
    """Load a `.npz`, a `.ts` file or `ucr:NAME:train|test` into a validated `SensorDataset`.

    Missing values inside a series are linearly interpolated. `length` resamples every series
    to that many steps by linear interpolation; with unequal lengths and `length=None` the
    median length is used. Labels map to ints in the order of `class_names` when given (so a
    test set shares the training encoding), else of the npz's own `class_names`, else of the
    sorted label strings (numbers sort as numbers: '2' < '10'); for `.ts` files those are the
    `@classLabel` header's labels, so a class absent from one split keeps its index. Without
    `class_names` at least 2 classes must be present (training).
    """
    if length is not None and (not isinstance(length, int) or length < 1):
        raise ConfigError(f"length must be a positive integer, got {length!r}")
    source = str(path_or_spec)
    if source.startswith("ucr:"):
        path = _resolve_ucr_spec(source)
    else:
        path = Path(path_or_spec)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        cases, labels, file_classes, channels = _load_npz(path)
    elif suffix == ".ts":
        cases, labels, file_classes, channels = _load_ts(path)
    else:
        raise DataError(
            f"{source}: unsupported data source; expected a .npz or .ts file or ucr:NAME:train|test"
        )
    X = _to_fixed_length(cases, length)  # (N, C, L) float32
    _check_finite(X, source)
    names, y = _encode_labels(labels, class_names, file_classes, source)
    return SensorDataset(X=X, y=y, class_names=names, channel_names=channels, source=source)


def _resolve_ucr_spec(spec: str) -> Path:
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1] or parts[2].lower() not in ("train", "test"):
        raise DataError(f"bad dataset spec {spec!r}; expected ucr:NAME:train or ucr:NAME:test")
    return bundled_dataset_path(parts[1], parts[2])


def _load_ts(path: Path) -> tuple[list[np.ndarray], np.ndarray, list[str] | None, list[str]]:
    ts = _parse_ts(path)
    if ts.label_kind == "target":
        raise DataError(
            f"{path}: has regression targets (@targetLabel); a classifier needs @classLabel"
        )
    if ts.label_kind == "none":
        raise DataError(f"{path}: has no class labels (@classLabel false)")
    channels = [f"dim_{i}" for i in range(ts.cases[0].shape[0])]
    # The header's class list (sorted like unique labels) keeps classes absent from one split.
    declared = sorted(ts.declared_classes, key=_label_key) if ts.declared_classes else None
    return ts.cases, np.asarray(ts.labels, dtype=str), declared, channels


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None, list[str]]:
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
    if X.ndim != 3:
        raise DataError(f"{path}: X has shape {X.shape} (rank {X.ndim}); expected (N, C, L)")
    if X.shape[0] == 0 or X.shape[1] == 0 or X.shape[2] == 0:
        raise DataError(f"{path}: X has shape {X.shape}; expected (N, C, L) with no zero size")
    if X.dtype.kind not in "fiu":
        raise DataError(f"{path}: X has dtype {X.dtype}; expected numbers (float32)")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"{path}: y has shape {y.shape}; expected ({len(X)},) to match X")
    file_classes = _str_list(arrays, "class_names", path)
    labels = _npz_labels(y, file_classes, path)
    channels = _str_list(arrays, "channel_names", path) or [f"dim_{i}" for i in range(X.shape[1])]
    if len(channels) != X.shape[1]:
        raise DataError(f"{path}: {len(channels)} channel_names for {X.shape[1]} channels in X")
    return X.astype(np.float64), labels, file_classes, channels


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


def _to_fixed_length(cases: np.ndarray | list[np.ndarray], length: int | None) -> np.ndarray:
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


def _check_finite(X: np.ndarray, source: str) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        n, c, t = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{source}: X holds {int(bad.sum())} NaN/Inf value(s) left after interpolating "
            f"missing values (first: sample {n}, channel {c}, step {t})"
        )


def _label_key(label: str) -> tuple[int, float, str]:
    """Sort numbers as numbers ('2' < '10'), then everything else as text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _encode_labels(
    labels: np.ndarray,
    class_names: list[str] | None,
    file_classes: list[str] | None,
    source: str,
) -> tuple[list[str], np.ndarray]:
    present = sorted({str(v) for v in labels.tolist()}, key=_label_key)
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


# --------------------------------------------------------------------------------------------
# Normalisation and splitting
# --------------------------------------------------------------------------------------------


class ChannelStats(Normalizer):
    """Per-channel mean and std (C,) of training windows: the gateway's own `Normalizer`
    (edge/contract), so training and the gateway normalise with the same code. `from_data`
    computes them over (N, C, L); its problems here are DataError."""

    error = DataError


def train_val_split(
    ds: SensorDataset, fraction: float, seed: int
) -> tuple[SensorDataset, SensorDataset]:
    """Deterministic per-class split: about `fraction` of each class goes to validation.

    Each class keeps at least one training sample; sample order is preserved in both parts.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.y == c)
        n_val = min(int(round(len(idx) * fraction)), max(len(idx) - 1, 0))
        val_idx.append(rng.permutation(idx)[:n_val])
    val = np.sort(np.concatenate(val_idx)) if val_idx else np.empty(0, dtype=np.int64)
    if val.size == 0:
        raise DataError(
            f"{ds.source}: validation split is empty ({len(ds)} samples, "
            f"fraction {fraction}); use a larger fraction"
        )
    train = np.setdiff1d(np.arange(len(ds)), val)
    return _subset(ds, train, "train"), _subset(ds, val, "val")


def _subset(ds: SensorDataset, idx: np.ndarray, part: str) -> SensorDataset:
    return SensorDataset(
        X=ds.X[idx],
        y=ds.y[idx],
        class_names=list(ds.class_names),
        channel_names=list(ds.channel_names),
        source=f"{ds.source}#{part}",
    )
