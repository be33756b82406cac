"""The long shape: one row per sample, columns window id, channel, time and value; labels in
a column (the same on every row of a window) or in a labels file.

Windows and channels keep the order of their first row; samples are ordered by time (numbers
or ISO 8601 times; without a time column, by row). Every window needs every channel, with as
many samples in each.
"""

from __future__ import annotations

import numpy as np

from edge.errors import DataError

from .columns import FLAGS, TableColumns
from .table_labels import labels_from_column, labels_from_file
from .tables import Table
from .windows import RawWindows


def is_long(table: Table, columns: TableColumns) -> bool:
    """Long when an option only long tables have is given, or the file has columns
    recognised as window id and value."""
    if columns.names_long_shape:
        return True
    value = table.resolve("value", columns)[0]
    return value is not None and table.resolve("window", columns, exclude=(value,))[0] is not None


def read_long(table: Table, columns: TableColumns, length: int | None) -> RawWindows:
    """Windows (C, L_i) of a long table, its labels and channel names."""
    found = _columns(table, columns)
    window, channel, time, value, label = (found[k][0] for k in
                                           ("window", "channel", "time", "value", "label"))
    ids, w_codes = table.codes(window, "window id")
    if channel is None:
        channels, c_codes = [value], np.zeros(table.data.num_rows, dtype=np.int64)
    else:
        channels, c_codes = table.codes(channel, "channel")
    times = np.arange(table.data.num_rows, dtype=np.float64) if time is None else table.times(time)
    order = np.lexsort((times, c_codes, w_codes))  # (R,) rows by window, channel, time
    _check_no_repeats(table, order, w_codes, c_codes, times, time or value, ids, channels)
    first_rows = _first_rows(w_codes, len(ids))  # (N,)
    lengths = _window_lengths(table, w_codes, c_codes, ids, channels, first_rows, channel)
    table.check_lengths(lengths, first_rows, [time or value] * len(ids), length)
    values = table.floats(value)[order]  # grouped by window, then channel, in time order
    bounds = np.concatenate([[0], np.cumsum(lengths * len(channels))])
    cases = [values[bounds[n]:bounds[n + 1]].reshape(len(channels), -1) for n in range(len(ids))]
    if label is not None:
        labels = labels_from_column(table, label, w_codes, first_rows, ids)
    else:
        labels, said = labels_from_file(table, window, columns, ids, first_rows)
    detail = (f"long: columns {_said(found)}" + ("" if label else f", {said}")
              + ("" if time else ", samples in row order")
              + ("" if channel else f", one channel {value!r}"))
    return RawWindows(cases, labels, channels, detail=detail)


def _said(found: dict[str, tuple[str | None, bool]]) -> str:
    """"window 'w', value 'v' (inferred: window)": the columns used, and which were inferred."""
    order = ("window", "channel", "time", "value", "label")
    used = {k: found[k] for k in order if found[k][0] is not None}
    inferred = [k for k, (_, guessed) in used.items() if guessed]
    note = "" if not inferred else (
        " (all inferred)" if len(inferred) == len(used) else f" (inferred: {', '.join(inferred)})")
    return ", ".join(f"{k} {c!r}" for k, (c, _) in used.items()) + note


def _columns(table: Table, columns: TableColumns) -> dict[str, tuple[str | None, bool]]:
    """Field -> (column or None, inferred); window and value are required, the
    label column unless a labels file is given; no column serves two fields."""
    found: dict[str, tuple[str | None, bool]] = {}
    taken: list[str | None] = []
    for name in ("window", "value", "channel", "time", "label"):
        column, inferred = table.resolve(name, columns, exclude=tuple(taken))
        if column is not None and column in taken:
            raise DataError(f"{table.header_at(column)}: named for two fields ({FLAGS[name]})")
        if column is None and (name in ("window", "value")
                               or (name == "label" and columns.labels_file is None)):
            extra = f", or give labels with {FLAGS['labels_file']}" if name == "label" else ""
            raise DataError(f"{table.path}: no {name} column among {table.listing()}: name it "
                            f"with {FLAGS[name]}{extra}")
        found[name] = (column, inferred)
        taken.append(column)
    return found


def _check_no_repeats(table: Table, order: np.ndarray, w: np.ndarray, c: np.ndarray,
                      t: np.ndarray, column: str, ids: list[str], channels: list[str]) -> None:
    """Two rows with the same window, channel and time are an error naming the second."""
    same = (w[order][1:] == w[order][:-1]) & (c[order][1:] == c[order][:-1]) \
        & (t[order][1:] == t[order][:-1])
    if same.any():
        row = int(order[1:][same][0])
        raise DataError(f"{table.at(row, column)}: a second sample at this time for window "
                        f"{ids[w[row]]!r}, channel {channels[c[row]]!r}")


def _first_rows(codes: np.ndarray, n: int) -> np.ndarray:
    """(N,) the first row of each code 0..n-1 (codes are in order of first appearance)."""
    first = np.full(n, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return first


def _window_lengths(table: Table, w: np.ndarray, c: np.ndarray, ids: list[str],
                    channels: list[str], first_rows: np.ndarray, channel: str | None) -> np.ndarray:
    """(N,) samples per window; every channel of a window has rows, as many as the others."""
    counts = np.bincount(w * len(channels) + c, minlength=len(ids) * len(channels))
    counts = counts.reshape(len(ids), len(channels))  # (N, C)
    if (counts == 0).any():
        n, k = (int(v) for v in np.argwhere(counts == 0)[0])
        raise DataError(f"{table.at(int(first_rows[n]), str(channel))}: window {ids[n]!r} has "
                        f"no rows for channel {channels[k]!r} (a channel missing)")
    uneven = np.flatnonzero((counts != counts[:, :1]).any(axis=1))
    if uneven.size:
        n = int(uneven[0])
        k = int(np.flatnonzero(counts[n] != counts[n, 0])[0])
        row = int(np.flatnonzero((w == n) & (c == k))[0])
        raise DataError(f"{table.at(row, str(channel))}: window {ids[n]!r} has {counts[n, k]} "
                        f"samples of channel {channels[k]!r}, {counts[n, 0]} of "
                        f"{channels[0]!r}")
    return counts[:, 0]
