"""Window labels of a table: from a label column of the data (one value per window) or from
a second file mapping window ids to labels (`--labels`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import DataError

from .columns import FLAGS, TableColumns
from .tables import Table, open_table


def labels_from_column(table: Table, column: str, codes: np.ndarray, first_rows: np.ndarray,
                       ids: list[str]) -> np.ndarray:
    """Label strings (N,) of windows `codes` (R,) from `column`; every row of a window must
    carry the same label, and none may be empty."""
    values = np.asarray(table.strings(column), dtype=object)  # (R,)
    empty = np.flatnonzero(values == None)  # noqa: E711 - elementwise on an object array
    if empty.size:
        raise DataError(f"{table.at(int(empty[0]), column)}: no label (empty cell)")
    labels = values[first_rows]  # (N,) the label on each window's first row
    differs = np.flatnonzero(values != labels[codes])
    if differs.size:
        row = int(differs[0])
        raise DataError(f"{table.at(row, column)}: label {values[row]!r}, but window "
                        f"{ids[codes[row]]!r} began with {labels[codes[row]]!r}")
    return labels.astype(str)


def labels_from_file(table: Table, window: str | None, columns: TableColumns,
                     ids: list[str], first_rows: np.ndarray) -> tuple[np.ndarray, str]:
    """Label strings (N,) of windows `ids` from `columns.labels_file`, and a few words for
    the echo. The file's window column: the data's window column name, else inferred, else
    the first of two columns; its label column: --label-column, else inferred, else the
    other one."""
    if window is None:
        raise DataError(f"{table.path}: {FLAGS['labels_file']} maps window ids to labels, but "
                        f"no window id column was found: name it with {FLAGS['window']}")
    lab = open_table(Path(str(columns.labels_file)))
    id_col, label_col = _label_file_columns(lab, window, columns)
    mapping = _mapping(lab, id_col, label_col)
    missing = [i for i, w in enumerate(ids) if w not in mapping]
    if missing:
        i = missing[0]
        raise DataError(f"{table.at(int(first_rows[i]), window)}: window {ids[i]!r} has no "
                        f"label in {lab.path} ({FLAGS['labels_file']}; {len(missing)} "
                        "window(s) without one)")
    labels = np.asarray([mapping[w] for w in ids], dtype=str)
    return labels, f"labels from {lab.path} (window {id_col!r} -> label {label_col!r})"


def _label_file_columns(lab: Table, window: str, columns: TableColumns) -> tuple[str, str]:
    id_col = window if window in lab.names else lab.resolve("window", TableColumns())[0]
    label_col = lab.resolve("label", columns, exclude=(id_col,))[0]
    if id_col is None and len(lab.names) == 2:
        id_col = lab.names[0] if label_col != lab.names[0] else lab.names[1]
    if label_col is None and id_col is not None and len(lab.names) == 2:
        label_col = next(n for n in lab.names if n != id_col)
    if id_col is None or label_col is None:
        missing = ("window id", FLAGS["window"]) if id_col is None else ("label", FLAGS["label"])
        raise DataError(f"{lab.path}: no {missing[0]} column found among {lab.listing()}: "
                        f"name it with {missing[1]} (or keep two columns: id, label)")
    return id_col, label_col


def _mapping(lab: Table, id_col: str, label_col: str) -> dict[str, str]:
    """Window id -> label; an empty cell or an id with two labels names its row."""
    ids, labels = lab.strings(id_col), lab.strings(label_col)
    mapping: dict[str, str] = {}
    for row, (w, label) in enumerate(zip(ids, labels, strict=True)):
        if w is None:
            raise DataError(f"{lab.at(row, id_col)}: no window id (empty cell)")
        if label is None:
            raise DataError(f"{lab.at(row, label_col)}: no label for window {w!r} (empty cell)")
        if mapping.setdefault(w, label) != label:
            raise DataError(f"{lab.at(row, label_col)}: window {w!r} has label {label!r} here "
                            f"and {mapping[w]!r} on an earlier row")
    return mapping
