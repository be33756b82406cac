"""export/data/ on the UCR/UEA datasets bundled in the sktime wheel, and its error messages."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError, DataError
from export.data import (
    ChannelStats,
    SensorDataset,
    bundled_dataset_path,
    load_dataset,
    read_ts,
    train_val_split,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sktime") is None, reason="bundled datasets come with sktime"
)

# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------

# name, split, N, C, L (no resampling; PLAID's is the median length), classes
BUNDLED = [
    ("PLAID", "train", 537, 1, 300, 11),
    ("PLAID", "test", 537, 1, 300, 11),
    ("ACSF1", "train", 100, 1, 1460, 10),
    ("ACSF1", "test", 100, 1, 1460, 10),
    ("BasicMotions", "train", 40, 6, 100, 4),
    ("BasicMotions", "test", 40, 6, 100, 4),
]


@pytest.mark.parametrize("name, split, n, c, length, k", BUNDLED)
def test_bundled_dataset_shapes(name: str, split: str, n: int, c: int, length: int, k: int):
    ds = load_dataset(f"ucr:{name}:{split}")
    assert ds.X.shape == (n, c, length) and ds.X.dtype == np.float32
    assert ds.y.shape == (n,) and ds.y.dtype == np.int64
    assert ds.num_classes == k and set(np.unique(ds.y)) == set(range(k))
    assert len(ds.channel_names) == c
    assert np.isfinite(ds.X).all()
    assert ds.source == f"ucr:{name}:{split}"


def test_plaid_unequal_lengths_resampled_to_256():
    X, y = read_ts(bundled_dataset_path("PLAID", "train"))
    assert isinstance(X, list) and len(X) == len(y) == 537
    lengths = {x.shape[1] for x in X}
    assert min(lengths) == 100 and max(lengths) == 1344  # unequal: PLAID needs resampling
    ds = load_dataset("ucr:PLAID:train", length=256)
    assert ds.X.shape == (537, 1, 256)
    # Linear resampling keeps both end points of every series.
    for i in (0, 1, 536):
        np.testing.assert_allclose(ds.X[i, 0, [0, -1]], X[i][0, [0, -1]], rtol=1e-6)


def test_plaid_labels_sort_as_numbers():
    ds = load_dataset("ucr:PLAID:train")
    assert ds.class_names == [str(i) for i in range(11)]  # '2' before '10'
    _, raw = read_ts(bundled_dataset_path("PLAID", "train"))
    assert (np.asarray(ds.class_names)[ds.y] == raw).all()


def test_basicmotions_has_6_channels_and_named_classes():
    X, raw = read_ts(bundled_dataset_path("BasicMotions", "train"))
    assert isinstance(X, np.ndarray) and X.shape == (40, 6, 100)
    ds = load_dataset("ucr:BasicMotions:train")
    assert ds.num_channels == 6
    assert ds.class_names == ["Badminton", "Running", "Standing", "Walking"]
    assert ds.class_counts() == dict.fromkeys(ds.class_names, 10)
    assert (np.asarray(ds.class_names)[ds.y] == raw).all()


@pytest.mark.parametrize("name", ["PLAID", "ACSF1", "BasicMotions"])
def test_train_and_test_share_class_encoding(name: str):
    train = load_dataset(f"ucr:{name}:train", length=128)
    test = load_dataset(f"ucr:{name}:test", length=128, class_names=train.class_names)
    assert test.class_names == train.class_names
    _, raw = read_ts(bundled_dataset_path(name, "test"))
    assert (np.asarray(train.class_names)[test.y] == raw).all()


def test_class_names_reorder_the_encoding():
    order = ["Walking", "Standing", "Running", "Badminton"]
    ds = load_dataset("ucr:BasicMotions:test", class_names=order)
    _, raw = read_ts(bundled_dataset_path("BasicMotions", "test"))
    assert ds.class_names == order and (np.asarray(order)[ds.y] == raw).all()


def test_reader_matches_the_ts_text():
    path = bundled_dataset_path("BasicMotions", "train")
    X, y = read_ts(path)
    first = next(ln for ln in path.read_text().splitlines() if ln and ln[0] not in "#@")
    dims = first.split(":")
    assert y[0] == dims[-1]
    for c, dim in enumerate(dims[:-1]):
        np.testing.assert_array_equal(X[0, c], [float(v) for v in dim.split(",")])


def test_loading_does_not_import_sktime_or_torch():
    code = (
        "import sys; from export.data import load_dataset, ChannelStats; "
        "ds = load_dataset('ucr:BasicMotions:train'); ChannelStats.from_data(ds.X); "
        "assert 'sktime' not in sys.modules and 'torch' not in sys.modules, 'imported'"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


# --------------------------------------------------------------------------------------------
# Small synthetic files: resampling, missing values, npz
# --------------------------------------------------------------------------------------------

TS_HEADER = "@problemName T\n@timeStamps false\n@univariate true\n@classLabel true a b\n@data\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def save_npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_missing_values_are_interpolated(tmp_path: Path):
    path = write(tmp_path, "m.ts", TS_HEADER + "?,1,?,3,4,?:a\n0,0,0,0,0,0:b\n")
    X, _ = read_ts(path)
    assert np.isnan(X[0, 0, [0, 2, 5]]).all()
    ds = load_dataset(path)
    np.testing.assert_allclose(ds.X[0, 0], [1, 1, 2, 3, 4, 4])  # edges hold the nearest value


def test_unequal_lengths_default_to_median_and_resample_linearly(tmp_path: Path):
    path = write(tmp_path, "u.ts", TS_HEADER + "0,1:a\n0,1,2,3,4:b\n0,2,4,6,8,10,12,14,16:a\n")
    ds = load_dataset(path)
    assert ds.X.shape == (3, 1, 5)  # median of 2, 5, 9
    np.testing.assert_allclose(ds.X[0, 0], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(ds.X[2, 0], [0, 4, 8, 12, 16])
    assert load_dataset(path, length=9).X.shape == (3, 1, 9)


def test_npz_round_trip_with_names(tmp_path: Path):
    X = np.random.default_rng(0).normal(size=(6, 2, 16)).astype(np.float32)
    path = save_npz(
        tmp_path, X=X, y=np.array([0, 1, 2, 0, 1, 2]),
        class_names=np.array(["idle", "run", "fault"]), channel_names=np.array(["ax", "ay"]),
    )  # fmt: skip
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.X, X)
    assert ds.class_names == ["idle", "run", "fault"]  # the file's order, not sorted
    assert ds.channel_names == ["ax", "ay"] and ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    again = load_dataset(path, class_names=["fault", "idle", "run"])
    assert again.y.tolist() == [1, 2, 0, 1, 2, 0]


def test_npz_string_labels(tmp_path: Path):
    path = save_npz(tmp_path, X=np.zeros((3, 1, 4)), y=np.array(["ok", "bad", "ok"]))
    ds = load_dataset(path)
    assert ds.class_names == ["bad", "ok"] and ds.y.tolist() == [1, 0, 1]


# --------------------------------------------------------------------------------------------
# Error messages: one line, naming the file
# --------------------------------------------------------------------------------------------

X3 = np.zeros((3, 1, 8), dtype=np.float32)
Y3 = np.array([0, 1, 0])


def _nan_channel() -> np.ndarray:
    X = np.zeros((3, 2, 8), dtype=np.float32)
    X[1, 1, :] = np.nan  # a whole channel missing: nothing to interpolate from
    return X


def _inf() -> np.ndarray:
    X = X3.copy()
    X[2, 0, 3] = np.inf
    return X


# case id -> (file name, writer(path), message fragments)
ERROR_CASES = {
    "empty ts": ("e.ts", lambda p: p.write_text(""), ["empty file"]),
    "empty npz": ("e.npz", lambda p: p.write_bytes(b""), ["empty file"]),
    "corrupt npz": ("c.npz", lambda p: p.write_bytes(b"not a zip"), ["not a readable .npz"]),
    "X rank 5": ("r.npz", lambda p: np.savez(p, X=np.zeros((3, 2, 2, 2, 2)), y=Y3),
                 ["shape (3, 2, 2, 2, 2)", "rank 5", "expected (N, C, L)", "(N, F)"]),
    "len(y) != len(X)": ("l.npz", lambda p: np.savez(p, X=X3, y=np.array([0, 1])),
                         ["y has shape (2,)", "expected (3,)"]),
    "no y": ("ny.npz", lambda p: np.savez(p, X=X3), ["no array y", "found: X"]),
    "no X": ("nx.npz", lambda p: np.savez(p, y=Y3), ["no array X"]),
    "NaN left": ("n.npz", lambda p: np.savez(p, X=_nan_channel(), y=Y3),
                 ["NaN/Inf", "sample 1, channel 1"]),
    "Inf": ("i.npz", lambda p: np.savez(p, X=_inf(), y=Y3), ["NaN/Inf", "sample 2"]),
    "one class": ("o.npz", lambda p: np.savez(p, X=X3, y=np.zeros(3, dtype=int)),
                  ["1 class(es)", "at least 2"]),
    "object y": ("ob.npz", lambda p: np.savez(p, X=X3, y=np.array([0, "a", None], object)),
                 ["not a readable .npz"]),
    "non-numeric ts": ("v.ts", lambda p: p.write_text(TS_HEADER + "1,2:a\n1,abc:b\n"),
                       [":7:", "non-numeric value 'abc'", "value 2"]),
    "no @data": ("h.ts", lambda p: p.write_text("@problemName T\n"), ["no @data"]),
    "data before @data": ("d.ts", lambda p: p.write_text("1,2:a\n@data\n"), [":1:"]),
    "dimension count": ("dc.ts",
                        lambda p: p.write_text(TS_HEADER.replace("univariate true",
                                                                 "dimensions 2") + "1,2:a\n"),
                        ["1 dimension(s), expected 2"]),
    "ragged channels": ("rc.ts", lambda p: p.write_text(
        TS_HEADER.replace("univariate true", "dimensions 2") + "1,2:1:a\n"),
                        ["different lengths [2, 1]"]),  # fmt: skip
    "label not declared": ("nd.ts", lambda p: p.write_text(TS_HEADER + "1,2:a\n1,2:c\n"),
                           ["label 'c' is not in class_names"]),
    "regression ts": ("t.ts", lambda p: p.write_text(
        "@univariate true\n@targetLabel true\n@data\n1,2:0.5\n"), ["@targetLabel"]),
    "suffix": ("x.xlsx", lambda p: p.write_text("1,2\n"), ["unsupported data source"]),
    "missing file": ("gone.ts", lambda p: None, ["file not found"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_data_errors(tmp_path: Path, case: str):
    name, writer, fragments = ERROR_CASES[case]
    path = tmp_path / name
    writer(path)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message and name in message
    for fragment in fragments:
        assert fragment in message


def test_label_not_in_given_class_names_is_named(tmp_path: Path):
    with pytest.raises(DataError, match="label 'Running' is not in class_names"):
        load_dataset("ucr:BasicMotions:train", class_names=["Badminton", "Standing", "Walking"])


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("ucr:NoSuchSet:train", "available: "),
        ("ucr:BasicMotions:validation", "ucr:NAME:train"),
        ("ucr:BasicMotions", "ucr:NAME:train"),
    ],
)
def test_bad_dataset_spec(spec: str, fragment: str):
    with pytest.raises(DataError, match=fragment) as info:
        load_dataset(spec)
    if "available" in fragment:
        assert "BasicMotions" in str(info.value) and "PLAID" in str(info.value)


def test_bundled_path_without_sktime(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="needs sktime installed"):
        bundled_dataset_path("PLAID", "train")


@pytest.mark.parametrize("length", [0, -5, 2.5])
def test_bad_length(length):
    with pytest.raises(ConfigError, match="length must be a positive integer"):
        load_dataset("ucr:BasicMotions:train", length=length)


# --------------------------------------------------------------------------------------------
# ChannelStats and splitting
# --------------------------------------------------------------------------------------------


def test_channel_stats_round_trip_and_normalise():
    ds = load_dataset("ucr:BasicMotions:train")
    stats = ChannelStats.from_data(ds.X)
    assert stats.mean.shape == stats.std.shape == (6,)
    again = ChannelStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
    Z = again.apply(ds.X)
    assert Z.dtype == np.float32 and Z.shape == ds.X.shape
    np.testing.assert_allclose(Z.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(Z.std(axis=(0, 2)), 1, atol=1e-3)
    np.testing.assert_array_equal(stats.apply(ds.X[0]), Z[0])  # one window (C, L) as well


def test_channel_stats_floor_constant_channel():
    X = np.ones((4, 2, 10), dtype=np.float32)
    stats = ChannelStats.from_data(X)
    assert np.all(stats.std == np.float32(1e-6))
    assert np.isfinite(stats.apply(X)).all()


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"mean": [0.0]}, "exactly the keys"),
        ({"mean": [0.0, 1.0], "std": [1.0]}, "equal-length"),
        ({"mean": [0.0], "std": [0.0]}, "std > 0"),
        ({"mean": ["x"], "std": [1.0]}, "not lists of numbers"),
        ([1, 2], "exactly the keys"),
    ],
)
def test_channel_stats_from_dict_rejects(data, fragment: str):
    with pytest.raises(DataError, match=fragment):
        ChannelStats.from_dict(data)


def test_channel_stats_wrong_channel_count():
    stats = ChannelStats(mean=np.zeros(6, np.float32), std=np.ones(6, np.float32))
    with pytest.raises(DataError, match=r"expected \(\.\.\., 6, L\)"):
        stats.apply(np.zeros((2, 3, 10), np.float32))


def test_train_val_split_is_stratified_and_deterministic():
    ds = load_dataset("ucr:BasicMotions:train")
    train, val = train_val_split(ds, 0.3, seed=0)
    assert isinstance(train, SensorDataset) and len(train) + len(val) == len(ds)
    assert set(val.y.tolist()) == set(range(4)) and set(train.y.tolist()) == set(range(4))
    assert all(n == 3 for n in val.class_counts().values())
    train2, val2 = train_val_split(ds, 0.3, seed=0)
    np.testing.assert_array_equal(val.X, val2.X)
    _, val3 = train_val_split(ds, 0.3, seed=1)
    assert not np.array_equal(val.X, val3.X)
    assert train.class_names == val.class_names == ds.class_names
    # No sample is in both parts.
    rows = {x.tobytes() for x in train.X}
    assert not any(x.tobytes() in rows for x in val.X)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_train_val_split_bad_fraction(fraction: float):
    ds = load_dataset("ucr:BasicMotions:train")
    with pytest.raises(ConfigError, match="fraction"):
        train_val_split(ds, fraction, seed=0)


def test_train_val_split_too_small(tmp_path: Path):
    ds = load_dataset(save_npz(tmp_path, X=X3, y=Y3))
    with pytest.raises(DataError, match="validation split is empty"):
        train_val_split(ds, 0.1, seed=0)
