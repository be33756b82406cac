"""CSV and Parquet data as plants export it (export/data/tables.py, wide.py, long.py): real
BasicMotions windows written in both shapes read back equal to the .ts read; columns inferred
or named, and echoed; every bad file is one line naming its row and column."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from edge.errors import DataError  # noqa: E402
from export.data import (  # noqa: E402
    SensorDataset,
    TableColumns,
    bundled_dataset_path,
    load_dataset,
    read_ts,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sktime") is None, reason="BasicMotions comes with sktime"
)

ROOT = Path(__file__).resolve().parents[1]
Rows = list[list]  # one list per table row, the header apart


@pytest.fixture(scope="module")
def motions() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """BasicMotions as read from its .ts files: X (40, 6, 100) float64, y (40,) str."""
    return {split: read_ts(bundled_dataset_path("BasicMotions", split))
            for split in ("train", "test")}


@pytest.fixture(scope="module")
def reference() -> dict[str, SensorDataset]:
    train = load_dataset("ucr:BasicMotions:train")
    return {"train": train,
            "test": load_dataset("ucr:BasicMotions:test", class_names=train.class_names)}


# --------------------------------------------------------------------------------------------
# Writing tables as a historian export would
# --------------------------------------------------------------------------------------------


def wide(X: np.ndarray, y: np.ndarray,
         name: Callable[[int, int], str] = lambda c, t: f"dim_{c}_{t}") -> tuple[list, Rows]:
    """One row per window: label, then channel 0's samples, channel 1's..."""
    N, C, L = X.shape
    header = ["label"] + [name(c, t) for c in range(C) for t in range(L)]
    return header, [[str(y[n]), *X[n].ravel().tolist()] for n in range(N)]


def long(X: np.ndarray, y: np.ndarray, label: bool = True) -> tuple[list, Rows]:
    """One row per sample: window, channel, time, value (, label); window-major."""
    N, C, L = X.shape
    header = ["window", "channel", "time", "value"] + (["label"] if label else [])
    rows = [[f"w{n}", f"dim_{c}", t, float(X[n, c, t])] + ([str(y[n])] if label else [])
            for n in range(N) for c in range(C) for t in range(L)]
    return header, rows


def write(path: Path, header: list, rows: Rows) -> Path:
    """CSV through the csv module (numbers as Python prints them), Parquet with the types
    pyarrow infers per column."""
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    else:
        columns = {h: [r[i] for r in rows] for i, h in enumerate(header)}
        pq.write_table(pa.table(columns), path)
    return path


def assert_same(ds: SensorDataset, ref: SensorDataset) -> None:
    np.testing.assert_array_equal(ds.X, ref.X)
    np.testing.assert_array_equal(ds.y, ref.y)
    assert ds.class_names == ref.class_names and ds.channel_names == ref.channel_names


# --------------------------------------------------------------------------------------------
# Both shapes, both formats: equal to the .ts read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["wide", "long"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tables_read_back_equal_to_the_ts_file(tmp_path, motions, reference, shape, suffix):
    X, y = motions["train"]
    path = write(tmp_path / f"line{suffix}", *(wide if shape == "wide" else long)(X, y))
    ds = load_dataset(path)
    assert_same(ds, reference["train"])
    assert ds.description.startswith(
        f"read 40 windows x 6 channels x 100 samples from {path} ({shape}: ")


def test_a_test_split_keeps_the_training_classes(tmp_path, motions, reference):
    X, y = motions["test"]
    path = write(tmp_path / "test.parquet", *long(X, y))
    ds = load_dataset(path, class_names=reference["train"].class_names)
    assert_same(ds, reference["test"])


def test_long_rows_in_any_order_with_iso_times(tmp_path, motions, reference):
    X, y = motions["train"]
    header, rows = long(X, y)
    start = datetime(2026, 3, 1, 6, 0, 0)
    for row in rows:  # a historian's timestamps, one sample every 100 ms
        row[2] = (start + timedelta(milliseconds=100 * row[2])).isoformat()
    order = np.random.default_rng(0).permutation(len(rows))
    first_seen = [rows[i] for i in order]
    path = write(tmp_path / "shuffled.csv", header, first_seen)
    ds = load_dataset(path)
    # windows and channels come in order of first appearance: map back before comparing
    windows = list(dict.fromkeys(r[0] for r in first_seen))
    channels = list(dict.fromkeys(r[1] for r in first_seen))
    back = [windows.index(f"w{n}") for n in range(len(X))]
    chans = [channels.index(f"dim_{c}") for c in range(X.shape[1])]
    np.testing.assert_array_equal(ds.X[back][:, chans], reference["train"].X)
    assert [ds.class_names[k] for k in ds.y[back]] == y.tolist()


def test_long_without_a_time_column_keeps_row_order(tmp_path, motions, reference):
    X, y = motions["train"]
    header, rows = long(X, y)
    path = write(tmp_path / "no_time.csv", [h for h in header if h != "time"],
                 [[v for i, v in enumerate(r) if i != 2] for r in rows])
    ds = load_dataset(path)
    assert_same(ds, reference["train"])
    assert "samples in row order" in ds.description


def test_bracket_names_window_ids_and_a_labels_file(tmp_path, motions, reference):
    X, y = motions["train"]
    header, rows = wide(X, y, name=lambda c, t: f"dim_{c}[{t}]")
    header[0] = "window_id"
    for n, row in enumerate(rows):
        row[0] = f"press-{n:03d}"
    labels = write(tmp_path / "labels.csv", ["window_id", "state"],
                   [[f"press-{n:03d}", str(y[n])] for n in reversed(range(len(y)))])
    path = write(tmp_path / "wide.parquet", header, rows)
    ds = load_dataset(path, columns=TableColumns(labels_file=labels))
    assert_same(ds, reference["train"])
    assert f"labels from {labels} (window 'window_id' -> label 'state')" in ds.description


def test_long_with_labels_in_a_second_file(tmp_path, motions, reference):
    X, y = motions["train"]
    labels = write(tmp_path / "labels.parquet", ["window", "label"],
                   [[f"w{n}", str(y[n])] for n in range(len(y))])
    path = write(tmp_path / "long.csv", *long(X, y, label=False))
    assert_same(load_dataset(path, columns=TableColumns(labels_file=labels)), reference["train"])


def test_columns_named_by_options_are_echoed_as_given(tmp_path, motions, reference):
    X, y = motions["train"]
    _, rows = long(X, y)
    path = write(tmp_path / "historian.csv", ["machine", "sensor", "ts", "reading", "state"], rows)
    names = TableColumns(window="machine", channel="sensor", time="ts", value="reading",
                         label="state")
    ds = load_dataset(path, columns=names)
    assert_same(ds, reference["train"])
    assert ("long: columns window 'machine', channel 'sensor', time 'ts', value 'reading', "
            "label 'state')") in ds.description
    inferred = load_dataset(path, columns=TableColumns(window="machine", label="state"))
    assert "channel 'sensor', time 'ts', value 'reading', label 'state' (inferred: channel, " \
        "time, value)" in inferred.description
    assert_same(inferred, reference["train"])


def test_semicolons_and_decimal_commas(tmp_path, motions, reference):
    """A European historian's export: `;` between cells, `,` before the decimals."""
    X, y = motions["train"]
    header, rows = wide(X, y)
    path = tmp_path / "line.csv"
    path.write_text("\n".join(";".join(str(v).replace(".", ",") for v in row)
                              for row in [header, *rows]) + "\n")
    assert_same(load_dataset(path), reference["train"])


def test_parquet_categorical_labels_and_ids(tmp_path, motions, reference):
    X, y = motions["train"]
    header, rows = long(X, y)
    columns = {h: pa.array([r[i] for r in rows]) for i, h in enumerate(header)}
    for name in ("window", "channel", "label"):  # how pandas writes a category column
        columns[name] = columns[name].dictionary_encode()
    pq.write_table(pa.table(columns), tmp_path / "long.parquet")
    assert_same(load_dataset(tmp_path / "long.parquet"), reference["train"])


def test_mixed_lengths_resample_with_length(tmp_path, motions):
    X, y = motions["train"]
    header, rows = long(X, y)
    rows = [r for r in rows if not (r[0] == "w10" and r[2] >= 95)]
    ds = load_dataset(write(tmp_path / "mixed.csv", header, rows), length=100)
    assert ds.X.shape == (40, 6, 100) and "resampled from 95..100" in ds.description
    np.testing.assert_array_equal(ds.X[11], X[11].astype(np.float32))
    np.testing.assert_allclose(ds.X[10][:, [0, -1]], X[10][:, [0, 94]], rtol=1e-6)
    header, rows = wide(X, y)  # the same window, short in a wide file: trailing empty cells
    wide_ds = load_dataset(write(tmp_path / "mixed_wide.csv", header,
                                 _blank_all_channels(10, 95)(header, rows)), length=100)
    np.testing.assert_array_equal(wide_ds.X, ds.X)


def test_an_empty_cell_inside_a_window_is_interpolated(tmp_path, motions, reference):
    X, y = motions["train"]
    header, rows = wide(X, y)
    ds = load_dataset(write(tmp_path / "gap.csv", header, _set(3, "dim_2_50", "")(header, rows)))
    assert ds.X[3, 2, 50] == np.float32((X[3, 2, 49] + X[3, 2, 51]) / 2)
    ds.X[3, 2, 50] = reference["train"].X[3, 2, 50]
    assert_same(ds, reference["train"])


def test_tables_need_no_pyarrow_for_ts_and_echo_nothing_by_default():
    code = ("import sys; from export.data import load_dataset; "
            "load_dataset('ucr:BasicMotions:train'); assert 'pyarrow' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr


# --------------------------------------------------------------------------------------------
# Bad files: one line naming the row and the column
# --------------------------------------------------------------------------------------------


def _set(row_index: int, column: str, value):
    def corrupt(header: list, rows: Rows) -> Rows:
        rows[row_index][header.index(column)] = value
        return rows
    return corrupt


def _drop_cell(row_index: int, column: str):
    def corrupt(header: list, rows: Rows) -> Rows:
        del rows[row_index][header.index(column)]
        return rows
    return corrupt


def _blank_wide(row_index: int, channel: int, from_step: int):
    def corrupt(header: list, rows: Rows) -> Rows:
        for t in range(from_step, 100):
            rows[row_index][header.index(f"dim_{channel}_{t}")] = ""
        return rows
    return corrupt


def _blank_all_channels(row_index: int, from_step: int):
    def corrupt(header: list, rows: Rows) -> Rows:
        for c in range(6):
            rows = _blank_wide(row_index, c, from_step)(header, rows)
        return rows
    return corrupt


def _drop_rows(test: Callable[[list], bool]):
    def corrupt(header: list, rows: Rows) -> Rows:
        return [r for r in rows if not test(r)]
    return corrupt


# wide CSV: window n on line n + 2; long CSV: window n, channel c, step t on line 600n+100c+t+2
BAD = {
    "wide dropped cell": ("wide", _drop_cell(3, "dim_2_10"),
                          ["line 5, column 'dim_5_99'", "a cell is missing"]),
    "wide text in a cell": ("wide", _set(5, "dim_3_42", "abc"),
                            ["line 7, column 'dim_3_42'", "'abc' is not a number"]),
    "wide missing label": ("wide", _set(7, "label", ""), ["line 9, column 'label'", "no label"]),
    "wide channel missing": ("wide", _blank_wide(2, 4, 0),
                             ["line 4, column 'dim_4_0'", "channel 'dim_4'", "missing"]),
    "wide mixed lengths": ("wide", _blank_all_channels(4, 90),
                           ["line 6, column 'dim_0_89'", "90 samples", "--length"]),
    "long channel missing": ("long", _drop_rows(lambda r: r[0] == "w3" and r[1] == "dim_2"),
                             ["line 1802, column 'channel'", "window 'w3'",
                              "no rows for channel 'dim_2'"]),
    "long mixed lengths": ("long", _drop_rows(lambda r: r[0] == "w10" and r[2] >= 95),
                           ["line 6002, column 'time'", "95 samples", "--length"]),
    "long uneven channel": ("long", _drop_rows(lambda r: r[:3] == ["w2", "dim_1", 50]),
                            ["line 1302, column 'channel'", "99 samples of channel 'dim_1'"]),
    "long text value": ("long", _set(1234, "value", "12,5"),
                        ["line 1236, column 'value'", "'12,5' is not a number"]),
    "long missing label": ("long", _set(4321, "label", ""),
                           ["line 4323, column 'label'", "no label"]),
    "long label changes": ("long", _set(650, "label", "Running"),
                           ["line 652, column 'label'", "window 'w1' began with 'Standing'"]),
    "long repeated time": ("long", _set(101, "time", 0),
                           ["line 103, column 'time'", "second sample at this time"]),
    "long missing window id": ("long", _set(77, "window", ""),
                               ["line 79, column 'window'", "no window id"]),
    "long bad time": ("long", _set(9, "time", "soon"),
                      ["line 11, column 'time'", "'soon' is neither a number nor"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csv_is_one_line_naming_row_and_column(tmp_path, motions, case):
    shape, corrupt, fragments = BAD[case]
    X, y = motions["train"]
    header, rows = (wide if shape == "wide" else long)(X, y)
    path = write(tmp_path / "bad.csv", header, corrupt(header, rows))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path} line ")
    for fragment in fragments:
        assert fragment in message, message


def test_bad_parquet_names_the_row(tmp_path, motions):
    X, y = motions["train"]
    header, rows = long(X, y)
    for row in rows:
        row[3] = str(row[3])  # values exported as text, one of them not a number
    rows[499][3] = "n/a?"
    path = write(tmp_path / "bad.parquet", header, rows)
    with pytest.raises(DataError, match=r"bad\.parquet row 500, column 'value': 'n/a\?' is not"):
        load_dataset(path)


def test_a_window_missing_from_the_labels_file(tmp_path, motions):
    X, y = motions["train"]
    labels = write(tmp_path / "labels.csv", ["window", "label"],
                   [[f"w{n}", str(y[n])] for n in range(len(y)) if n != 5])
    path = write(tmp_path / "long.csv", *long(X, y, label=False))
    with pytest.raises(DataError) as info:
        load_dataset(path, columns=TableColumns(labels_file=labels))
    assert str(info.value) == (f"{path} line 3002, column 'window': window 'w5' has no label in "
                               f"{labels} (--labels; 1 window(s) without one)")


@pytest.mark.parametrize("columns, flag", [
    (TableColumns(label="state"), "--label-column"),
    (TableColumns(time="clock"), "--time-column"),
    (TableColumns(value="reading"), "--value-column"),
])  # fmt: skip
def test_unknown_columns_named_by_options(tmp_path, motions, columns, flag):
    X, y = motions["train"]
    path = write(tmp_path / "long.csv", *long(X, y))
    missing = next(iter(columns.given().values()))
    with pytest.raises(DataError, match=rf"no column '{missing}' \({flag}\); columns: 'window'"):
        load_dataset(path, columns=columns)


@pytest.mark.parametrize("text, phrase", [
    ("", "empty file"),
    ("label,dim_0_0,dim_0_1\n", "no rows after the header"),
    ("label,a,b\nx,1,2\ny,3,4\n", "no sample columns named <channel>_<t>"),
    ("w,v,x_0\n1,2,3\n", "no label column (candidates 'w', 'v')"),
    ("label,a_0,a_1,b_0\nx,1,2,3\ny,1,2,3\n", "channel 'b' has steps 0..0, channel 'a' 0..1"),
    ("label,a_0,a_2\nx,1,2\ny,1,2\n", "column 'a_2': no column for the step before it"),
])  # fmt: skip
def test_files_without_usable_columns(tmp_path, text, phrase):
    path = tmp_path / "small.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert phrase in str(info.value)


# --------------------------------------------------------------------------------------------
# edge-export train on tables
# --------------------------------------------------------------------------------------------

TINY = ["--model-config", "d_model=16", "--model-config", "depth=1", "--model-config",
        "heads=2", "--length", "64", "--epochs", "2", "--batch-size", "16", "--no-progress"]


def test_train_on_csv_and_parquet_end_to_end(tmp_path, motions):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from export.cli import main

    (Xtr, ytr), (Xte, yte) = motions["train"], motions["test"]
    header, rows = wide(Xtr, ytr)  # with window ids: the options hold for both files
    train = write(tmp_path / "line.csv", ["machine", *header],
                  [[f"w{n}", *row] for n, row in enumerate(rows)])
    header, rows = long(Xte, yte, label=False)
    test = write(tmp_path / "test.parquet", ["machine", *header[1:]],
                 [[f"t{r[0]}", *r[1:]] for r in rows])
    labels = write(tmp_path / "labels.csv", ["window", "label"],
                   [[f"tw{n}", str(yte[n])] for n in range(len(yte))])
    result = CliRunner().invoke(main, [
        "train", "--method", "full", "--data", str(train), "--test-data", str(test),
        "--window-column", "machine", "--labels", str(labels), "--out", str(tmp_path / "run"),
        *TINY])
    assert result.exit_code == 0, result.output
    echoed = result.stderr.splitlines()
    assert echoed[0].startswith(f"read 40 windows x 6 channels x 64 samples from {train} "
                                "(wide: label column 'label' (inferred)")
    assert echoed[1].startswith(f"read 40 windows x 6 channels x 64 samples from {test} (long")
    assert "window 'machine', channel 'channel'" in echoed[1] and "resampled from 100" in echoed[1]
    assert f"labels from {labels} (window 'window' -> label 'label')" in echoed[1]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["n_train"] == 40 and metrics["n_eval"] == 40


def test_train_on_a_bad_table_is_one_error_line(tmp_path, motions):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from export.cli import main

    X, y = motions["train"]
    header, rows = wide(X, y)
    rows[3][header.index("dim_1_7")] = "abc"
    path = write(tmp_path / "line.csv", header, rows)
    result = CliRunner().invoke(main, ["train", "--data", str(path), "--out",
                                       str(tmp_path / "run"), *TINY])
    assert result.exit_code == DataError.exit_code
    assert result.stderr.strip().splitlines() == [
        f"error: {path} line 5, column 'dim_1_7': 'abc' is not a number"]
    missing = CliRunner().invoke(main, ["train", "--data", str(path), "--label-column", "state",
                                        "--out", str(tmp_path / "run"), *TINY])
    assert missing.exit_code == DataError.exit_code and "(--label-column)" in missing.stderr
    assert not (tmp_path / "run").exists()
