"""Sample shapes other than windows on the gateway side (no torch): the codec's JSON and
binary payloads of (F,) feature vectors and (C, H, W) images, their errors, the
preprocessing record and normalisation of each rank, and the drift statistics.

The values are real: BasicMotions rows (tests/data) summarised as a feature vector (each
channel's mean) or laid out as a 2 x 10 x 10 image; tests/test_input_shapes.py runs real
tabular and image data through training, export and a running gateway.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference_bundle import basicmotions_split

from edge.codec import InputSpec, decode_sensor
from edge.contract import Normalizer, Preprocessing
from edge.contract.shapes import describe, per_channel, sample_shape_problem
from edge.drift.monitor import window_stats
from edge.errors import BadMessage, ConfigError, DataError, IncompatibleBundle

BIN = "application/octet-stream"


@pytest.fixture(scope="module")
def motions() -> np.ndarray:
    return basicmotions_split("train").X  # (40, 6, 100) float32


@pytest.fixture(scope="module")
def vectors(motions) -> np.ndarray:
    return motions.mean(axis=2)  # (40, 6): each channel's mean, a real feature vector


@pytest.fixture(scope="module")
def images(motions) -> np.ndarray:
    return np.ascontiguousarray(motions[:, :2].reshape(40, 2, 10, 10))  # (40, 2, 10, 10)


def json_message(values, msg_id: str = "m1") -> bytes:
    return json.dumps({"id": msg_id, "values": values}).encode()


def binary(spec: InputSpec, x: np.ndarray, **props: str) -> object:
    return decode_sensor(x.astype("<f4").tobytes(), content_type=BIN,
                         user_properties={"id": "m1", **props}, spec=spec)


def test_shapes_are_checked():
    assert sample_shape_problem((30,)) is None and sample_shape_problem((1, 8, 8)) is None
    assert "1 to 3 axes" in sample_shape_problem((1, 2, 3, 4))
    assert "1 to 3 axes" in sample_shape_problem(())
    assert "positive integers" in sample_shape_problem((3, 0))
    assert describe((30,)) == "30 features"
    assert describe((1, 8, 8)) == "1 channel of 8 rows of 8 columns"
    for bad in ((), (1, 2, 3, 4), (2, -1)):
        with pytest.raises(ConfigError, match="InputSpec.shape"):
            InputSpec(shape=bad)
    with pytest.raises(ConfigError, match="not both"):
        InputSpec(6, 100, shape=(6, 100))
    spec = InputSpec(shape=(1, 8, 8))
    assert (spec.rank, spec.channels, spec.length, spec.size) == (3, 1, None, 64)
    assert InputSpec(6, 100).shape == (6, 100) and InputSpec(6, 100).length == 100


@pytest.mark.parametrize("kind", ["vectors", "images"])
def test_json_and_binary_decode_every_rank(kind, request):
    x = request.getfixturevalue(kind)[7]  # (6,) or (2, 10, 10)
    spec = InputSpec(shape=x.shape)
    reading = decode_sensor(json_message(x.tolist()), spec=spec)
    assert reading.values.dtype == np.float32 and reading.values.shape == x.shape
    np.testing.assert_array_equal(reading.values, x)
    shape = ",".join(map(str, x.shape))
    for props in ({}, {"shape": shape}, {"shape": shape.replace(",", " , ")}):
        np.testing.assert_array_equal(binary(spec, x, **props).values, x)


def _set(x: np.ndarray, index: tuple[int, ...], value: object) -> list:
    nested = x.tolist()
    inner = nested
    for i in index[:-1]:
        inner = inner[i]
    inner[index[-1]] = value
    return nested


BAD_VECTORS = [
    # (name, payload from the (6,) vector, reason)
    ("5 features", lambda v: json_message(v[:5].tolist()),
     "values: expected 6 features, got 5 features"),
    ("one nested", lambda v: json_message([v.tolist()]),
     "values: expected 6 features, got 1 feature"),
    ("too deep", lambda v: json_message(v[:, None].tolist()),
     "values: feature 0: expected a number, got list"),
    ("string", lambda v: json_message(_set(v, (2,), "1.5")),
     "values: feature 2: expected a number, got string"),
    ("NaN", lambda v: json_message(_set(v, (3,), float("nan"))),
     "values: feature 3: NaN or Infinity is not allowed"),
    ("overflow", lambda v: json_message(_set(v, (5,), 1e39)),
     "values: feature 5: 1e+39 overflows float32"),
    ("object", lambda v: json_message({"a": 1}), "values: expected a list of 6 features, "
     "got object"),
]

BAD_IMAGES = [
    ("3 channels", lambda m: json_message([*m.tolist(), m[0].tolist()]),
     "values: expected 2 channels of 10 rows of 10 columns, got 3 channels"),
    ("short row", lambda m: json_message(_set(m, (1, 4), m[1, 4, :9].tolist())),
     "values: channel 1, row 4: expected 10 columns, got 9 columns"),
    ("9 rows", lambda m: json_message([m[0].tolist(), m[1, :9].tolist()]),
     "values: channel 1: expected 10 rows of 10 columns, got 9 rows"),
    ("row a number", lambda m: json_message(_set(m, (0, 2), 1.0)),
     "values: channel 0, row 2: expected a list of 10 columns, got number"),
    ("a window", lambda m: json_message(m.reshape(2, 100).tolist()),
     "values: channel 0: expected 10 rows of 10 columns, got 100 rows"),
    ("null", lambda m: json_message(_set(m, (1, 9, 9), None)),
     "values: channel 1, row 9, column 9: expected a number, got null"),
    ("Infinity", lambda m: json_message(_set(m, (0, 3, 7), float("inf"))),
     "values: channel 0, row 3, column 7: NaN or Infinity is not allowed"),
]


@pytest.mark.parametrize("kind,name,build,reason",
                         [("vectors", *case) for case in BAD_VECTORS]
                         + [("images", *case) for case in BAD_IMAGES],
                         ids=[c[0] for c in BAD_VECTORS + BAD_IMAGES])
def test_bad_json_names_the_axis(kind, name, build, reason, request):
    x = request.getfixturevalue(kind)[7]
    with pytest.raises(BadMessage) as info:
        decode_sensor(build(x), spec=InputSpec(shape=x.shape))
    assert reason in str(info.value)
    assert len(str(info.value)) < 200


BAD_BINARY = [
    # (kind, name, bytes from the sample, user properties, reason)
    ("vectors", "shape of a window", lambda x: x, {"shape": "6,1"},
     "shape: expected 'F' like '6', got '6,1'"),
    ("vectors", "wrong size", lambda x: x, {"shape": "7"},
     "shape: 7 does not match the expected 6"),
    ("vectors", "one short", lambda x: x[:5], {},
     "expected 6 float32 values (24 bytes), got 20 bytes (5 values)"),
    ("images", "shape of a window", lambda x: x, {"shape": "2,100"},
     "shape: expected 'C,H,W' like '2,10,10', got '2,100'"),
    ("images", "transposed", lambda x: x, {"shape": "10,10,2"},
     "shape: 10,10,2 does not match the expected 2,10,10"),
    ("images", "huge dims", lambda x: x, {"shape": "9" * 30 + ",1,1"}, "shape: expected"),
    ("images", "one short", lambda x: x.reshape(-1)[:-1], {},
     "expected 2x10x10 float32 values (800 bytes), got 796 bytes (199 values)"),
    ("images", "NaN", lambda x: np.where(np.arange(200).reshape(2, 10, 10) == 105, np.nan, x),
     {}, "values: channel 1, row 0, column 5: NaN or Infinity is not allowed"),
]


@pytest.mark.parametrize("kind,name,build,props,reason", BAD_BINARY,
                         ids=[f"{c[0]}-{c[1]}" for c in BAD_BINARY])
def test_bad_binary_names_the_shape(kind, name, build, props, reason, request):
    x = request.getfixturevalue(kind)[7]
    with pytest.raises(BadMessage) as info:
        binary(InputSpec(shape=x.shape), np.asarray(build(x)), **props)
    assert reason in str(info.value)


# --------------------------------------------------------------------------------------------
# The preprocessing record and the one normalisation, per rank
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vectors", "images"])
def test_records_and_normalisation_of_every_rank(kind, request):
    X = request.getfixturevalue(kind)  # (40, 6) or (40, 2, 10, 10)
    stats = Normalizer.from_data(X)
    rank = X.ndim - 1
    assert stats.rank == rank and stats.mean.shape == (X.shape[1],)
    axes = (0,) if rank == 1 else (0, 2, 3)  # per feature; per channel over rows, columns
    np.testing.assert_allclose(stats.mean, X.astype(np.float64).mean(axis=axes), rtol=1e-6)
    names = [f"f{i}" for i in range(X.shape[1])]
    record = Preprocessing.of(stats, X.shape[1:], names)
    doc = json.loads(json.dumps(record.to_dict()))
    assert doc["shape"] == list(X.shape[1:]) and "length" not in doc
    again = Preprocessing.from_dict(doc)
    assert again == record and again.sample_shape == X.shape[1:]
    gateway = Normalizer.from_preprocessing(again, X.shape[1], rank)
    np.testing.assert_array_equal(gateway.apply(X), stats.apply(X))  # a batch, bit for bit
    np.testing.assert_array_equal(gateway.apply(X[0]), stats.apply(X)[0])  # one sample
    z = gateway.apply(X).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=axes), 0, atol=1e-4)
    with pytest.raises(IncompatibleBundle, match="expected"):
        gateway.apply(X[:, :1])  # another channel count
    with pytest.raises(IncompatibleBundle, match="samples of 2 axes"):
        Normalizer.from_preprocessing(again, X.shape[1], 2)  # a window model


def test_window_records_keep_their_format(motions):
    stats = Normalizer.from_data(motions)
    record = Preprocessing.of(stats, motions.shape[1:], [f"dim_{i}" for i in range(6)])
    assert set(record.to_dict()) == {"length", "channel_names", "mean", "std"}
    assert record == Preprocessing.of(stats, 100, record.channel_names)
    assert record.sample_shape == (6, 100) and record.rank == 2
    assert '"shape"' not in record.model_dump_json()  # manifests stay readable by older gateways


@pytest.mark.parametrize("doc,words", [
    ({"shape": [0], "mean": [0.0], "std": [1.0]}, "positive integers"),
    ({"shape": [1, 2, 3, 4], "mean": [0.0], "std": [1.0]}, "1 to 3 axes"),
    ({"shape": [2, 8], "length": 9, "mean": [0.0, 0.0], "std": [1.0, 1.0]}, "disagree"),
    ({"shape": [3], "mean": [0.0], "std": [1.0]}, "3 channels, mean 1"),
])
def test_bad_shape_records_are_refused(doc, words):
    with pytest.raises(DataError, match=words):
        Preprocessing.from_dict({"channel_names": ["a"], **doc})


def test_drift_statistics_per_channel_of_every_rank(vectors, images):
    mean, std = window_stats(vectors, 1)  # a feature is its own channel: its value, std 0
    np.testing.assert_array_equal(mean, vectors.astype(np.float64))
    assert not std.any()
    mean, std = window_stats(images, 3)  # (40, 2): over each channel's rows and columns
    np.testing.assert_allclose(mean, images.mean(axis=(2, 3), dtype=np.float64))
    np.testing.assert_allclose(std, images.std(axis=(2, 3), dtype=np.float64))
    assert per_channel(images, 3).shape == (40, 2, 100)
    assert per_channel(images[0], 3).shape == (2, 100)
