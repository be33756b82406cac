"""CSV and Parquet files as pyarrow tables whose cell problems name their row and column.

CSV is read with every column as text (so labels keep their spelling: '01' stays '01') and
converted per column; its separator is the header's most frequent of `,` `;` and tab, and
with `;` or tab a decimal comma is read as a decimal point. Parquet keeps its types. Rows
are named the way the file's reader sees them: `line N` of a CSV (the header is line 1),
`row N` of a Parquet file (1-based).
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from edge.errors import DataError

from .columns import FLAGS, INFERRED_NAMES, TableColumns

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
NULLS = ["", "NA", "N/A", "NULL", "null", "None"]  # empty cells: missing values


def is_table_file(path: Path) -> bool:
    """True for the names `open_table` reads (.csv, .csv.gz, .parquet, .pq)."""
    return path.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)


@dataclass
class Table:
    """One CSV or Parquet file's rows (R) as a pyarrow table."""

    path: Path
    data: pa.Table
    csv: bool
    delimiter: str = ","
    _lines: list[int] | None = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return list(self.data.column_names)

    def where(self, row: int) -> str:
        """`x.csv line 7` / `x.parquet row 6` for the 0-based data row `row`."""
        if not self.csv:
            return f"{self.path} row {row + 1}"
        if self._lines is None:
            self._lines = _data_line_numbers(self.path)
        line = self._lines[row] if row < len(self._lines) else row + 2
        return f"{self.path} line {line}"

    def at(self, row: int, column: str) -> str:
        return f"{self.where(row)}, column {column!r}"

    def header_at(self, column: str) -> str:
        return f"{self.path} {'line 1 (header)' if self.csv else 'schema'}, column {column!r}"

    def listing(self) -> str:
        """The column names for a message: the first eight and the count."""
        names = self.names
        more = f", ... ({len(names)} columns)" if len(names) > 8 else ""
        return ", ".join(repr(n) for n in names[:8]) + more

    def resolve(self, name: str, columns: TableColumns,
                exclude: tuple[str | None, ...] = ()) -> tuple[str | None, bool]:
        """The column for field `name` of `columns`: (column, inferred). A given name must
        exist; else the first column recognised by INFERRED_NAMES, else (None, False)."""
        given = getattr(columns, name)
        if given is not None:
            if given not in self.names:
                raise DataError(f"{self.path}: no column {given!r} ({FLAGS[name]}); "
                                f"columns: {self.listing()}")
            return given, False
        lower: dict[str, str] = {}
        for n in self.names:
            lower.setdefault(n.lower(), n)
        for candidate in INFERRED_NAMES[name]:
            found = lower.get(candidate)
            if found is not None and found not in exclude:
                return found, True
        return None, False

    def floats(self, name: str) -> np.ndarray:
        """Column `name` as (R,) float64, empty cells NaN; a non-number names its cell."""
        col = self.data.column(name)
        kind = col.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            return pc.cast(col, pa.float64()).to_numpy()
        if pa.types.is_null(kind):
            return np.full(len(col), np.nan)
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{self.header_at(name)}: holds {kind}, not numbers")
        text = pc.utf8_trim_whitespace(col)
        if self.delimiter != ",":  # '0,5' is a decimal comma when commas separate nothing
            text = pc.replace_substring(text, ",", ".")
        try:
            return pc.cast(text, pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            return self._floats_slowly(name, col.to_pylist())

    def _floats_slowly(self, name: str, cells: list[str | None]) -> np.ndarray:
        out = np.empty(len(cells))
        comma = self.delimiter != ","
        for row, cell in enumerate(cells):
            try:
                out[row] = np.nan if cell is None else float(cell.replace(",", ".") if comma
                                                               else cell)
            except ValueError:
                raise DataError(f"{self.at(row, name)}: {cell!r} is not a number") from None
        return out

    def strings(self, name: str) -> list[str | None]:
        """Column `name` as stripped text (R,); empty cells None."""
        col = self.data.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = pc.cast(col, pa.string())
        return [None if v is None or not v.strip() else v.strip() for v in col.to_pylist()]

    def codes(self, name: str, what: str) -> tuple[list[str], np.ndarray]:
        """Column `name` as (distinct values in order of first appearance, codes (R,) int64);
        an empty cell is an error naming `what` is missing."""
        values = self.strings(name)
        try:
            missing = values.index(None)
        except ValueError:
            missing = -1
        if missing >= 0:
            raise DataError(f"{self.at(missing, name)}: no {what} (empty cell)")
        encoded = pc.dictionary_encode(pa.array(values, pa.string()))
        return encoded.dictionary.to_pylist(), encoded.indices.to_numpy().astype(np.int64)

    def times(self, name: str) -> np.ndarray:
        """Column `name` as (R,) sortable float64: numbers, or ISO 8601 times (nanoseconds)."""
        col = self.data.column(name)
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            stamps = pc.cast(col, pa.timestamp("ns")) if pa.types.is_date(col.type) else col
            return pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return self._no_gaps(name, self.floats(name))
        text = pc.utf8_trim_whitespace(col)
        for kind in (pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
            try:
                cast = pc.cast(text, kind)
            except pa.ArrowInvalid:
                continue
            values = pc.cast(cast, pa.int64()) if kind != pa.float64() else cast
            return self._no_gaps(name, values.to_numpy(zero_copy_only=False).astype(np.float64))
        for row, cell in enumerate(self.strings(name)):
            if cell is not None and not _is_time(cell):
                raise DataError(f"{self.at(row, name)}: {cell!r} is neither a number nor an "
                                "ISO 8601 time")
        raise DataError(f"{self.header_at(name)}: mixes numbers and ISO 8601 times")

    def _no_gaps(self, name: str, values: np.ndarray) -> np.ndarray:
        missing = np.flatnonzero(np.isnan(values))
        if missing.size:
            raise DataError(f"{self.at(int(missing[0]), name)}: no time (empty cell)")
        return values

    def check_lengths(self, lengths: np.ndarray, rows: np.ndarray, columns: list[str],
                      length: int | None) -> None:
        """Windows of several lengths (N,) without `length`: name the first odd one (its
        row `rows[i]` and column `columns[i]`)."""
        if length is not None or len(set(lengths.tolist())) <= 1:
            return
        i = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(
            f"{self.at(int(rows[i]), columns[i])}: window of {int(lengths[i])} samples, the "
            f"first window ({self.where(int(rows[0]))}) has {int(lengths[0])}; pass --length N "
            "to resample every window to N samples"
        )


def _is_time(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        pass
    try:
        datetime.fromisoformat(cell.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Opening a file
# --------------------------------------------------------------------------------------------


def open_table(path: Path) -> Table:
    """Read a CSV or Parquet file; DataError (one line) when it is missing, empty, not of
    its kind, has a row of the wrong width or duplicate column names."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    is_csv = path.name.lower().endswith(CSV_SUFFIXES)
    delimiter = _delimiter(path) if is_csv else ","
    data = _read_csv(path, delimiter) if is_csv else _read_parquet(path)
    names = data.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: column {dupes[0]!r} appears {names.count(dupes[0])} times")
    if data.num_rows == 0:
        raise DataError(f"{path}: no rows{' after the header' if is_csv else ''}")
    return Table(path, data, is_csv, delimiter)


def _delimiter(path: Path) -> str:
    """The header line's most frequent of `,` `;` and tab (`,` on a tie)."""
    with _open_text(path) as f:
        header = next((line for line in f if line.strip()), "")
    return max(",;\t", key=header.count)


def _read_csv(path: Path, delimiter: str) -> pa.Table:
    parse = pa_csv.ParseOptions(delimiter=delimiter)
    try:
        names = pa_csv.open_csv(path, parse_options=parse).schema.names
        options = pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                        strings_can_be_null=True, null_values=NULLS)
        return pa_csv.read_csv(path, parse_options=parse, convert_options=options)
    except pa.ArrowInvalid as exc:
        raise DataError(_csv_problem(path, delimiter, str(exc))) from None


def _csv_problem(path: Path, delimiter: str, message: str) -> str:
    """One line for a CSV pyarrow cannot read: the first row of the wrong width, if any."""
    with _open_text(path) as f:
        rows = ((n, r) for n, r in enumerate(csv.reader(f, delimiter=delimiter), start=1) if r)
        try:
            _, header = next(rows)
        except StopIteration:
            return f"{path}: no header line"
        for lineno, row in rows:
            if len(row) < len(header):
                return (f"{path} line {lineno}, column {header[len(row)]!r}: the row ends "
                        f"there ({len(row)} cells for {len(header)} columns: a cell is missing)")
            if len(row) > len(header):
                return (f"{path} line {lineno}, after column {header[-1]!r}: {len(row)} cells "
                        f"for {len(header)} columns (an extra cell or separator)")
    return f"{path}: not a readable CSV file ({message.splitlines()[0][:200]})"


def _data_line_numbers(path: Path) -> list[int]:
    """1-based line numbers of the non-blank lines after the header (pyarrow skips blanks)."""
    with _open_text(path) as f:
        lines = [n for n, text in enumerate(f, start=1) if text.strip()]
    return lines[1:]


def _open_text(path: Path):  # noqa: ANN202 - a text file object, plain or gzip
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable Parquet file ({first})") from None
