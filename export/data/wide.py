"""The wide shape: one row per window, a label column and one column per channel and step.

Sample columns are named `<channel>_<t>` or `<channel>[<t>]` (t an integer; a bare integer
`<t>` is one channel, `dim_0`). Channels keep the order of their first column; each needs a
column for every step of one common, gap-free range. Empty cells are missing values
(interpolated like the `?` of a .ts file); trailing empty cells make a window shorter.
"""

from __future__ import annotations

import re

import numpy as np

from edge.errors import DataError

from .columns import FLAGS, TableColumns
from .table_labels import labels_from_column, labels_from_file
from .tables import Table
from .windows import RawWindows

SAMPLE = re.compile(r"^(?:(?P<ch>.+?)_(?P<t>\d+)|(?P<chb>.+?)\[(?P<tb>\d+)\]|(?P<bare>\d+))$")
BARE_CHANNEL = "dim_0"


def read_wide(table: Table, columns: TableColumns, length: int | None) -> RawWindows:
    """Windows (C, L_i) of a wide table, its labels and channel names."""
    window, window_inferred = table.resolve("window", columns, exclude=(columns.label,))
    samples = _sample_columns(table, exclude=(window, columns.label))
    label, label_inferred = _label_column(table, columns, window, samples)
    channels, grid = _grid(table, samples)  # grid: C lists of T column names
    values = np.empty((table.data.num_rows, len(channels), len(grid[0])))  # (R, C, T)
    for c, names in enumerate(grid):
        for t, name in enumerate(names):
            values[:, c, t] = table.floats(name)
    lengths = _lengths(table, values, channels, grid)  # (R,)
    rows = np.arange(len(lengths))
    table.check_lengths(lengths, rows, [grid[0][n - 1] for n in lengths], length)
    cases = [values[r, :, : lengths[r]] for r in rows]
    ids = [str(r) for r in rows] if window is None else table.codes(window, "window id")[0]
    if window is not None and len(ids) != len(rows):
        raise DataError(f"{table.header_at(window)}: window ids repeat; a wide table has one "
                        "row per window (a long table has columns window, channel, time, value)")
    if label is not None:
        labels = labels_from_column(table, label, rows, rows, ids)
        said = f"label column {label!r}{' (inferred)' if label_inferred else ''}"
    else:
        labels, said = labels_from_file(table, window, columns, ids, rows)
    ignored = [n for n in table.names if n not in (window, label) and n not in samples]
    detail = (f"wide: {said}, {len(channels)} channel{'s' * (len(channels) > 1)} "
              f"{_span(channels)} from columns "
              f"{grid[0][0]!r}..{grid[-1][-1]!r}"
              + (f", window ids {window!r}{' (inferred)' if window_inferred else ''}"
                 if window else "")
              + (f", ignored {', '.join(map(repr, ignored))}" if ignored else ""))
    return RawWindows(cases, labels, channels, detail=detail)


def _sample_columns(table: Table, exclude: tuple[str | None, ...]) -> dict[str, tuple[str, int]]:
    """Column -> (channel, step) for every column named like a sample."""
    found: dict[str, tuple[str, int]] = {}
    for name in table.names:
        m = SAMPLE.match(name)
        if m is None or name in exclude:
            continue
        if m["bare"] is not None:
            found[name] = (BARE_CHANNEL, int(m["bare"]))
        else:
            found[name] = (m["ch"] or m["chb"], int(m["t"] or m["tb"]))
    if not found:
        raise DataError(f"{table.path}: no sample columns named <channel>_<t> or "
                        f"<channel>[<t>] among {table.listing()}; a long table needs a value "
                        f"column: name it with {FLAGS['value']} (docs/DATA.md)")
    return found


def _label_column(table: Table, columns: TableColumns, window: str | None,
                  samples: dict[str, tuple[str, int]]) -> tuple[str | None, bool]:
    """The label column: given, recognised by name, or the one other column left; None when
    labels come from a labels file."""
    label, inferred = table.resolve("label", columns, exclude=(window,))
    if label is not None or columns.labels_file is not None:
        return label, inferred
    others = [n for n in table.names if n != window and n not in samples]
    if len(others) == 1:
        return others[0], True
    found = f"candidates {', '.join(map(repr, others))}" if others else "no other column"
    raise DataError(f"{table.path}: no label column ({found}): name it with {FLAGS['label']}, "
                    f"or give window labels with {FLAGS['labels_file']}")


def _grid(table: Table, samples: dict[str, tuple[str, int]]) -> tuple[list[str], list[list[str]]]:
    """Channel names (C) and their columns (C lists of T names, by step); every channel has
    the same steps, with no gap."""
    steps: dict[str, dict[int, str]] = {}
    for name, (channel, t) in samples.items():
        steps.setdefault(channel, {})[t] = name
    channels = list(steps)
    first = sorted(steps[channels[0]])
    for channel in channels:
        have = sorted(steps[channel])
        gap = next((b for a, b in zip(have, have[1:], strict=False) if b != a + 1), None)
        if gap is not None:
            raise DataError(f"{table.header_at(steps[channel][gap])}: no column for the step "
                            f"before it: channel {channel!r} skips a step")
        if have != first:
            raise DataError(
                f"{table.header_at(steps[channel][have[-1]])}: channel {channel!r} has steps "
                f"{have[0]}..{have[-1]}, channel {channels[0]!r} {first[0]}..{first[-1]}"
            )
    return channels, [[steps[ch][t] for t in first] for ch in channels]


def _lengths(table: Table, values: np.ndarray, channels: list[str],
             grid: list[list[str]]) -> np.ndarray:
    """Per row (R,): one past the last step with a value in any channel; a row without
    values, or a channel empty in its row, is an error naming the cell."""
    has = ~np.isnan(values)  # (R, C, T)
    steps = np.arange(values.shape[2])
    last = np.where(has, steps, -1).max(axis=(1, 2))  # (R,)
    empty_rows = np.flatnonzero(last < 0)
    if empty_rows.size:
        raise DataError(f"{table.at(int(empty_rows[0]), grid[0][0])}: the row has no samples")
    lengths = last + 1
    inside = steps[None, None, :] < lengths[:, None, None]
    empty = ~(has & inside).any(axis=2)  # (R, C): a channel with no value in its window
    if empty.any():
        r, c = (int(v) for v in np.argwhere(empty)[0])
        raise DataError(f"{table.at(r, grid[c][0])}: channel {channels[c]!r} has no values "
                        "in this window (a channel missing)")
    return lengths


def _span(names: list[str]) -> str:
    return repr(names[0]) if len(names) == 1 else f"{names[0]!r}..{names[-1]!r}"
