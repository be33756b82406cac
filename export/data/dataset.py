"""`SensorDataset` and `load_dataset`: any supported file as validated (N, C, L) windows,
or, from `.npz` files, (N, F) feature vectors and (N, C, H, W) images.

Sources: `.npz` (export/data/npz.py), UCR/UEA `.ts` and `ucr:NAME:train|test` (ts.py), CSV
and Parquet tables in the wide or the long shape (tables.py, wide.py, long.py; pyarrow is
imported only for those). What was read, and how, is logged on the `export.data` logger (the
command line shows it on stderr) and kept in `SensorDataset.description`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract.shapes import describe
from edge.errors import ConfigError, DataError

from .columns import TableColumns
from .npz import load_npz
from .ts import load_ts, resolve_ucr_spec
from .windows import RawWindows, check_finite, encode_labels, to_fixed_length

log = logging.getLogger("export.data")

SUPPORTED = ".npz, .ts, .csv, .csv.gz, .parquet or .pq file or ucr:NAME:train|test"


@dataclass
class SensorDataset:
    """Validated samples `X` float32 (N, *sample) with labels `y` int64 (N,) in [0, K): windows
    (N, C, L), feature vectors (N, F) or images (N, C, H, W); `channel_names` name axis 0 of
    a sample (the features of (N, F))."""

    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    channel_names: list[str]
    source: str
    description: str = ""  # what was read and how: "read 40 windows x 6 channels x ..."

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        return int(self.X.shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.X.shape[1:])

    @property
    def is_windows(self) -> bool:
        return self.X.ndim == 3

    @property
    def length(self) -> int | None:
        """L of (N, C, L) windows; None for other samples."""
        return int(self.X.shape[2]) if self.is_windows else None

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
    columns: TableColumns | None = None,
) -> SensorDataset:
    """Load a `.npz`, `.ts`, CSV or Parquet file or `ucr:NAME:train|test` into a validated
    `SensorDataset`.

    Missing values inside a series are linearly interpolated. `length` resamples every series
    to that many steps by linear interpolation; with unequal lengths and `length=None` a
    `.ts` file takes the median length, while a table is refused (DataError naming the first
    window of another length). Tables are read in the wide or long shape of docs/DATA.md with
    the column names of `columns`, each one not given inferred. Labels map to ints in the
    order of `class_names` when given (so a test set shares the training encoding), else of
    the npz's own `class_names`, else of the sorted label strings (numbers sort as numbers:
    '2' < '10'); for `.ts` files those are the `@classLabel` header's labels, so a class
    absent from one split keeps its index. Without `class_names` at least 2 classes must be
    present (training).
    """
    if length is not None and (not isinstance(length, int) or length < 1):
        raise ConfigError(f"length must be a positive integer, got {length!r}")
    source = str(path_or_spec)
    raw = _read(source, length, columns or TableColumns())
    X = _fixed(raw, length, source)  # (N, C, L) float32, or (N, F) / (N, C, H, W)
    check_finite(X, source)
    names, y = encode_labels(raw.labels, class_names, raw.file_classes, source)
    description = _describe(X, raw, source)
    log.info(description)
    return SensorDataset(X=X, y=y, class_names=names, channel_names=list(raw.channels),
                         source=source, description=description)


def _fixed(raw: RawWindows, length: int | None, source: str) -> np.ndarray:
    """Windows resampled to one length; other samples (an npz's (N, F) or (N, C, H, W)) as
    they are: `length` applies to windows only."""
    if isinstance(raw.cases, np.ndarray) and raw.cases.ndim != 3:
        if length is not None:  # asked by --length, or by a base that takes windows
            raise DataError(f"{source}: X has shape {raw.cases.shape} (rank {raw.cases.ndim}), "
                            f"not (N, C, L) windows: a length ({length}) applies to windows "
                            "only")
        return raw.cases.astype(np.float32)
    return to_fixed_length(raw.cases, length)


def _read(source: str, length: int | None, columns: TableColumns) -> RawWindows:
    path = resolve_ucr_spec(source) if source.startswith("ucr:") else Path(source)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".ts":
        return load_ts(path)
    from .tables import is_table_file  # pyarrow: only for tables

    if is_table_file(path):
        return _read_table(path, length, columns)
    raise DataError(f"{source}: unsupported data source; expected a {SUPPORTED}")


def _read_table(path: Path, length: int | None, columns: TableColumns) -> RawWindows:
    from .long import is_long, read_long
    from .tables import open_table
    from .wide import read_wide

    table = open_table(path)
    read = read_long if is_long(table, columns) else read_wide
    return read(table, columns, length)


def _describe(X: np.ndarray, raw: RawWindows, source: str) -> str:
    """`read 40 windows x 6 channels x 100 samples from X (how)`, resampling said."""
    if X.ndim != 3:  # feature vectors or images: never resampled
        return (f"read {len(X)} sample{'s' * (len(X) != 1)} of {describe(X.shape[1:])} from "
                f"{source} ({raw.detail})")
    n, c, length = X.shape
    lengths = sorted({case.shape[-1] for case in raw.cases})
    resampled = "" if lengths == [length] else (
        f", resampled from {lengths[0]}" + (f"..{lengths[-1]}" if len(lengths) > 1 else ""))
    return (f"read {n} window{'s' * (n != 1)} x {c} channel{'s' * (c != 1)} x {length} "
            f"samples from {source} ({raw.detail}{resampled})")
