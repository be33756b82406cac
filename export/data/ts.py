"""UCR/UEA `.ts` files: the reader, and the datasets bundled in the sktime wheel
(`ucr:NAME:train|test`, read directly from the file: sktime is never imported)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError

from .windows import RawWindows, label_key


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


def resolve_ucr_spec(spec: str) -> Path:
    """`ucr:NAME:train|test` -> the bundled `.ts` file."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1] or parts[2].lower() not in ("train", "test"):
        raise DataError(f"bad dataset spec {spec!r}; expected ucr:NAME:train or ucr:NAME:test")
    return bundled_dataset_path(parts[1], parts[2])


def load_ts(path: Path) -> RawWindows:
    """A `.ts` file with class labels as raw windows (C, L_i) float64."""
    ts = _parse_ts(path)
    if ts.label_kind == "target":
        raise DataError(
            f"{path}: has regression targets (@targetLabel); a classifier needs @classLabel"
        )
    if ts.label_kind == "none":
        raise DataError(f"{path}: has no class labels (@classLabel false)")
    channels = [f"dim_{i}" for i in range(ts.cases[0].shape[0])]
    # The header's class list (sorted like unique labels) keeps classes absent from one split.
    declared = sorted(ts.declared_classes, key=label_key) if ts.declared_classes else None
    return RawWindows(ts.cases, np.asarray(ts.labels, dtype=str), channels, declared,
                      detail=".ts")

