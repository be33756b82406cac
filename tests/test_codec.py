"""edge.codec: sensor messages in, result and error payloads out, on real BasicMotions rows."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
from reference_bundle import basicmotions_split

from edge.bundle import Preprocessing
from edge.codec import (
    InputSpec,
    best_effort_id,
    decode_sensor,
    encode_error,
    encode_result,
    softmax,
)
from edge.contract import Normalizer
from edge.errors import BadMessage, ConfigError, IncompatibleBundle

SPEC = InputSpec(channels=6, length=100)  # BasicMotions: 3-axis accelerometer + gyroscope, 10 s
BIN = "application/octet-stream"


@pytest.fixture(scope="module")
def motions():
    """The BasicMotions training set (tests/data, as the sktime wheel has it): X float32
    (40, 6, 100)."""
    return basicmotions_split("train")


@pytest.fixture(scope="module")
def row(motions) -> np.ndarray:
    return motions.X[3]  # (6, 100) float32


def message(row: np.ndarray, **fields) -> bytes:
    """A JSON sensor message for `row`; `fields` override or add keys (None-valued: drop)."""
    doc = {"id": "press-7/000123", "ts": 1718000000.25, "values": row.tolist()}
    doc.update(fields)
    doc = {k: v for k, v in doc.items() if v is not _DROP}
    return json.dumps(doc).encode()  # allow_nan: NaN/Infinity become JSON literals


_DROP = object()


def with_value(row: np.ndarray, c: int, i: int, value: object) -> list:
    values = row.tolist()
    values[c][i] = value
    return values


# --------------------------------------------------------------------------------------------
# Good payloads
# --------------------------------------------------------------------------------------------


GOOD = [
    # (name, payload builder (row -> bytes), content_type, expected id, expected ts)
    ("string id", lambda r: message(r), None, "press-7/000123", 1718000000.25),
    ("integer id", lambda r: message(r, id=42), None, "42", 1718000000.25),
    ("negative id", lambda r: message(r, id=-7), None, "-7", 1718000000.25),
    ("no ts", lambda r: message(r, ts=_DROP), None, "press-7/000123", None),
    ("null ts", lambda r: message(r, ts=None), None, "press-7/000123", None),
    ("integer ts", lambda r: message(r, ts=1718000000), None, "press-7/000123", 1718000000.0),
    ("extra keys", lambda r: message(r, unit="g", meta={"fw": [1, 2]}), None, "press-7/000123",
     1718000000.25),
    ("json type", lambda r: message(r), "application/json", "press-7/000123", 1718000000.25),
    ("json charset", lambda r: message(r), "Application/JSON; charset=utf-8", "press-7/000123",
     1718000000.25),
    ("empty type", lambda r: message(r), "", "press-7/000123", 1718000000.25),
    ("pretty", lambda r: json.dumps({"id": "a", "ts": 1.5, "values": r.tolist()},
                                    indent=2).encode(), None, "a", 1.5),
    ("128-char id", lambda r: message(r, id="x" * 128), None, "x" * 128, 1718000000.25),
    ("unicode id", lambda r: message(r, id="Presse-Ü/线7"), None, "Presse-Ü/线7", 1718000000.25),
]


@pytest.mark.parametrize("name,build,content_type,want_id,want_ts", GOOD,
                         ids=[g[0] for g in GOOD])
def test_good_json(row, name, build, content_type, want_id, want_ts):
    reading = decode_sensor(build(row), content_type=content_type, spec=SPEC)
    assert reading.id == want_id
    assert reading.ts == want_ts
    assert reading.values.dtype == np.float32 and reading.values.shape == (6, 100)
    np.testing.assert_array_equal(reading.values, row)  # float32 -> JSON -> float32 is exact


def test_integer_values(row):
    ints = np.round(row * 100).astype(int)
    reading = decode_sensor(message(row, values=ints.tolist()), spec=SPEC)
    np.testing.assert_array_equal(reading.values, ints.astype(np.float32))


@pytest.mark.parametrize("nested", [False, True])
def test_univariate_flat_or_nested(row, nested):
    spec = InputSpec(channels=1, length=100)
    series = row[0].tolist()  # accelerometer x only
    payload = message(row, values=[series] if nested else series)
    reading = decode_sensor(payload, spec=spec)
    assert reading.values.shape == (1, 100)
    np.testing.assert_array_equal(reading.values[0], row[0])


def test_flat_list_needs_one_channel(row):
    with pytest.raises(BadMessage, match="expected 6 channels of 100 samples, got 100 channels"):
        decode_sensor(message(row, values=row[0].tolist()), spec=SPEC)


# --------------------------------------------------------------------------------------------
# Bad payloads: each is a BadMessage whose reason names the problem
# --------------------------------------------------------------------------------------------


BAD_JSON = [
    # (name, payload builder (row -> bytes), expected substring of the reason)
    ("empty", lambda r: b"", "payload is empty"),
    ("invalid utf-8", lambda r: b'{"id": "\xff\xfe", "values": []}', "not valid UTF-8"),
    ("invalid json", lambda r: b'{"id": "a", "values": [1, 2', "not valid JSON"),
    ("trailing garbage", lambda r: message(r) + b"}", "not valid JSON"),
    ("deep brackets 1 MB", lambda r: b"[" * 1_000_000, "nested deeper than 8"),
    ("deep objects", lambda r: b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested deeper than 8"),
    ("deep inside message", lambda r: message(r, meta=json.loads("[" * 20 + "]" * 20)),
     "nested deeper than 8"),
    ("top-level list", lambda r: json.dumps(r.tolist()).encode(), "top level must be an object"),
    ("top-level string", lambda r: b'"hello"', "got string"),
    ("top-level number", lambda r: b"3.5", "got number"),
    ("missing id", lambda r: message(r, id=_DROP), "id: missing"),
    ("null id", lambda r: message(r, id=None), "id: expected a string or integer, got null"),
    ("float id", lambda r: message(r, id=1.5), "id: expected a string or integer, got number"),
    ("bool id", lambda r: message(r, id=True), "id: expected a string or integer, got bool"),
    ("list id", lambda r: message(r, id=["a"]), "id: expected a string or integer, got list"),
    ("empty id", lambda r: message(r, id=""), "id: must not be empty"),
    ("long id", lambda r: message(r, id="x" * 129), "id: 129 characters, at most 128"),
    ("string ts", lambda r: message(r, ts="2024-06-10T12:00:00"), "ts: expected a number"),
    ("bool ts", lambda r: message(r, ts=False), "ts: expected a number, got bool"),
    ("NaN ts", lambda r: message(r, ts=math.nan), "ts: must be a finite number"),
    ("Infinity ts", lambda r: message(r, ts=math.inf), "ts: must be a finite number"),
    ("missing values", lambda r: message(r, values=_DROP), "values: missing"),
    ("object values", lambda r: message(r, values={"x": [1]}), "values: expected a list of 6"),
    ("string values", lambda r: message(r, values="1,2,3"), "got string"),
    ("5 channels", lambda r: message(r, values=r[:5].tolist()),
     "values: expected 6 channels of 100 samples, got 5 channels"),
    ("7 channels", lambda r: message(r, values=r.tolist() + [r[0].tolist()]), "got 7 channels"),
    ("short channel", lambda r: message(r, values=[*r[:2].tolist(), r[2, :99].tolist(),
                                                   *r[3:].tolist()]),
     "values: channel 2: expected 100 samples, got 99"),
    ("channel not a list", lambda r: message(r, values=[*r[:3].tolist(), 1.0, *r[4:].tolist()]),
     "values: channel 3: expected a list of 100 samples, got number"),
    ("string number", lambda r: message(r, values=with_value(r, 1, 7, "1.5")),
     "values: channel 1, sample 7: expected a number, got string"),
    ("bool number", lambda r: message(r, values=with_value(r, 0, 0, True)),
     "channel 0, sample 0: expected a number, got bool"),
    ("null number", lambda r: message(r, values=with_value(r, 5, 99, None)),
     "channel 5, sample 99: expected a number, got null"),
    ("list number", lambda r: message(r, values=with_value(r, 4, 2, [1.0])),
     "channel 4, sample 2: expected a number, got list"),
    ("NaN literal", lambda r: message(r, values=with_value(r, 2, 50, math.nan)),
     "values: channel 2, sample 50: NaN or Infinity is not allowed"),
    ("Infinity literal", lambda r: message(r, values=with_value(r, 3, 1, math.inf)),
     "NaN or Infinity"),
    ("-Infinity literal", lambda r: message(r, values=with_value(r, 3, 1, -math.inf)),
     "NaN or Infinity"),
    ("float32 overflow", lambda r: message(r, values=with_value(r, 1, 3, 1e39)),
     "values: channel 1, sample 3: 1e+39 overflows float32"),
    ("huge integer", lambda r: message(r, values=with_value(r, 0, 9, 10**400)),
     "values: a number is too large"),
]


@pytest.mark.parametrize("name,build,reason", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json(row, name, build, reason):
    with pytest.raises(BadMessage) as info:
        decode_sensor(build(row), spec=SPEC)
    assert reason in str(info.value)
    assert len(str(info.value)) < 200  # reasons go onto the errors topic as they are


def test_1e400_parses_as_infinity(row):
    values = with_value(row, 0, 0, 0.0)
    payload = message(row, values=values).replace(b"[[0.0,", b"[[1e400,", 1)
    with pytest.raises(BadMessage, match="channel 0, sample 0: NaN or Infinity"):
        decode_sensor(payload, spec=SPEC)


def test_too_large_is_rejected_before_parsing(row):
    spec = InputSpec(channels=6, length=100, max_payload_bytes=1000)
    with pytest.raises(BadMessage, match=r"payload is \d+ bytes, larger than the limit of 1000"):
        decode_sensor(message(row), spec=spec)
    # a 1 MB + 1 payload of garbage: rejected by size, not by the parser
    with pytest.raises(BadMessage, match="larger than the limit"):
        decode_sensor(b"[" * ((1 << 20) + 1), spec=SPEC)


def test_unknown_content_type(row):
    with pytest.raises(BadMessage, match="content_type 'text/csv' is not supported"):
        decode_sensor(message(row), content_type="text/csv", spec=SPEC)


def test_payload_must_be_bytes(row):
    with pytest.raises(BadMessage, match="payload must be bytes, got str"):
        decode_sensor(message(row).decode(), spec=SPEC)
    reading = decode_sensor(bytearray(message(row)), spec=SPEC)  # bytearray/memoryview are fine
    np.testing.assert_array_equal(reading.values, row)


def test_brackets_inside_strings_do_not_count(row):
    payload = message(row, id="[[[[[[[[[[[[ {{{{{{{{{{ \\\" [[[[[[[[[")
    assert decode_sensor(payload, spec=SPEC).id.startswith("[[[[")


def test_deep_nesting_is_fast():
    started = time.perf_counter()
    for payload in (b"[" * 1_000_000, b"[" * 500_000 + b"]" * 500_000,
                    b'{"id":"' + b'\\"[' * 330_000 + b'"}'):
        with pytest.raises(BadMessage):
            decode_sensor(payload, spec=SPEC)
    assert time.perf_counter() - started < 2.0


def test_spec_is_validated():
    with pytest.raises(ConfigError, match="channels"):
        InputSpec(channels=0, length=100)


# --------------------------------------------------------------------------------------------
# Binary messages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/x-float32"])
def test_binary_with_user_properties(row, content_type):
    props = {"id": "press-7/000124", "ts": "1718000000.5", "shape": "6,100"}
    reading = decode_sensor(row.astype("<f4").tobytes(), content_type=content_type,
                            user_properties=props, spec=SPEC)
    assert (reading.id, reading.ts) == ("press-7/000124", 1718000000.5)
    assert reading.values.dtype == np.float32 and reading.values.flags.writeable
    np.testing.assert_array_equal(reading.values, row)


def test_binary_minimal_and_paho_style_properties(row):
    payload = row.astype("<f4").tobytes()
    reading = decode_sensor(payload, content_type=BIN, user_properties={"id": "m"}, spec=SPEC)
    assert reading.ts is None
    # paho hands user properties over as a list of (key, value) pairs
    reading = decode_sensor(payload, content_type=BIN, user_properties=[("id", "m"), ("ts", "3")],
                            spec=SPEC)
    assert (reading.id, reading.ts) == ("m", 3.0)


def test_binary_is_little_endian():
    counts = np.arange(600, dtype=np.float32).reshape(6, 100)  # byte-swapped: tiny, finite
    little = decode_sensor(counts.astype("<f4").tobytes(), content_type=BIN,
                           user_properties={"id": "m"}, spec=SPEC)
    big = decode_sensor(counts.astype(">f4").tobytes(), content_type=BIN,
                        user_properties={"id": "m"}, spec=SPEC)
    np.testing.assert_array_equal(little.values, counts)
    assert not np.array_equal(big.values, counts)


BAD_BINARY = [
    # (name, payload builder, user properties, expected substring of the reason)
    ("no id", lambda r: r.tobytes(), {"ts": "1"}, "id: missing"),
    ("no properties", lambda r: r.tobytes(), None, "id: missing"),
    ("empty id", lambda r: r.tobytes(), {"id": ""}, "id: must not be empty"),
    ("long id", lambda r: r.tobytes(), {"id": "i" * 200}, "id: 200 characters"),
    ("bad ts", lambda r: r.tobytes(), {"id": "m", "ts": "yesterday"}, "ts: expected a number"),
    ("nan ts", lambda r: r.tobytes(), {"id": "m", "ts": "nan"}, "ts: must be a finite"),
    ("wrong shape", lambda r: r.tobytes(), {"id": "m", "shape": "5,100"},
     "shape: 5,100 does not match the expected 6,100"),
    ("garbage shape", lambda r: r.tobytes(), {"id": "m", "shape": "six by 100"},
     "shape: expected 'C,L'"),
    ("3-d shape", lambda r: r.tobytes(), {"id": "m", "shape": "1,6,100"}, "shape: expected"),
    ("not a multiple of 4", lambda r: r.tobytes()[:-1], {"id": "m"},
     "2399 bytes is not a multiple of 4"),
    ("one value short", lambda r: r.tobytes()[:-4], {"id": "m"},
     "expected 6x100 float32 values (2400 bytes), got 2396 bytes (599 values)"),
    ("one channel short", lambda r: r[:5].tobytes(), {"id": "m"}, "got 2000 bytes"),
    ("NaN", lambda r: np.where(np.arange(600).reshape(6, 100) == 250, np.nan, r)
     .astype("<f4").tobytes(), {"id": "m"}, "values: channel 2, sample 50: NaN or Infinity"),
    ("Inf", lambda r: np.full((6, 100), np.inf, "<f4").tobytes(), {"id": "m"}, "NaN or Infinity"),
]


@pytest.mark.parametrize("name,build,props,reason", BAD_BINARY, ids=[b[0] for b in BAD_BINARY])
def test_bad_binary(row, name, build, props, reason):
    with pytest.raises(BadMessage) as info:
        decode_sensor(build(row.astype("<f4")), content_type=BIN, user_properties=props,
                      spec=SPEC)
    assert reason in str(info.value)


def test_decode_is_fast(row):
    """A 6x100 JSON message decodes in well under 1 ms (best of 5 rounds, so load can't flake)."""
    payload = message(row)
    binary = row.astype("<f4").tobytes()
    props = {"id": "m", "ts": "1.5"}

    def per_call(fn, n=100):
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t) / n)
        return best

    json_s = per_call(lambda: decode_sensor(payload, spec=SPEC))
    bin_s = per_call(lambda: decode_sensor(binary, content_type=BIN, user_properties=props,
                                           spec=SPEC))
    print(f"decode 6x100: JSON {json_s * 1e6:.0f} us ({len(payload)} B), "
          f"binary {bin_s * 1e6:.0f} us ({len(binary)} B)")
    assert json_s < 1e-3 and bin_s < 0.2e-3


# --------------------------------------------------------------------------------------------
# Normalizer and softmax
# --------------------------------------------------------------------------------------------


def test_normalizer_identity_when_no_preprocessing(row):
    norm = Normalizer.from_preprocessing(None, channels=6)
    out = norm.apply(row)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, row)


def test_normalizer_from_manifest_preprocessing(motions, row):
    X = motions.X.astype(np.float64)  # (40, 6, 100)
    mean, std = X.mean(axis=(0, 2)), X.std(axis=(0, 2))  # (6,)
    pre = Preprocessing(length=100, channel_names=[f"dim_{i}" for i in range(6)],
                        mean=mean.tolist(), std=std.tolist())
    norm = Normalizer.from_preprocessing(pre, channels=6)
    one = norm.apply(row)  # (6, 100)
    batch = norm.apply(motions.X[:4])  # (4, 6, 100)
    assert one.dtype == batch.dtype == np.float32 and batch.shape == (4, 6, 100)
    np.testing.assert_allclose(one, (row - mean[:, None]) / std[:, None], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch[3], one)
    whole = norm.apply(motions.X)
    np.testing.assert_allclose(whole.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(whole.std(axis=(0, 2)), 1, atol=1e-4)


def test_normalizer_rejects_mismatches(row):
    pre = Preprocessing(length=100, channel_names=["a", "b"], mean=[0.0, 0.0], std=[1.0, 1.0])
    with pytest.raises(IncompatibleBundle, match="2 means and 2 stds; the model takes 6"):
        Normalizer.from_preprocessing(pre, channels=6)
    zero = Preprocessing(length=100, channel_names=["a"], mean=[0.0], std=[0.0])
    with pytest.raises(IncompatibleBundle, match="std > 0"):
        Normalizer.from_preprocessing(zero, channels=1)
    with pytest.raises(IncompatibleBundle, match="expected"):
        Normalizer.from_preprocessing(None, channels=3).apply(row)


def test_softmax():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 1001.0, -1000.0]], np.float32)
    probs = softmax(logits)
    assert probs.shape == (3, 3) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(probs[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(probs[1], 1 / 3)
    np.testing.assert_allclose(probs[2], softmax(np.array([[0.0, 1.0, -2000.0]]))[0], rtol=1e-6)
    np.testing.assert_allclose(softmax(logits + 50.0), probs, rtol=1e-5)  # shift invariant


# --------------------------------------------------------------------------------------------
# Result and error payloads
# --------------------------------------------------------------------------------------------


def test_encode_result_round_trip():
    labels = ["Badminton", "Running", "Standing", "Walking"]
    scores = softmax(np.array([[0.1, 3.2, -1.0, 0.7]]))[0]
    payload = encode_result(id="press-7/000123", ts=1718000000.25, line="line7",
                            adapter="line7-lora", adapter_version=3, labels=labels,
                            scores=scores, latency_ms=2.3456789)
    doc = json.loads(payload)
    assert set(doc) == {"id", "ts", "line", "adapter", "adapter_version", "label", "scores",
                        "latency_ms"}
    assert doc["label"] == "Running"
    assert list(doc["scores"]) == labels
    assert doc["scores"]["Running"] == round(float(scores[1]), 6)
    assert abs(sum(doc["scores"].values()) - 1) < 1e-5
    assert doc["latency_ms"] == 2.346
    assert (doc["id"], doc["ts"], doc["line"], doc["adapter"], doc["adapter_version"]) == (
        "press-7/000123", 1718000000.25, "line7", "line7-lora", 3)


def test_encode_result_edge_cases():
    doc = json.loads(encode_result(id="a", ts=None, line="l", adapter="base",
                                   adapter_version=None, labels=["x", "y"],
                                   scores=np.array([np.nan, 0.4]), latency_ms=1))
    assert doc["ts"] is None and doc["adapter_version"] is None
    assert doc["scores"] == {"x": None, "y": 0.4} and doc["label"] == "y"
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        encode_result(id="a", ts=None, line="l", adapter="b", adapter_version=1,
                      labels=["x", "y"], scores=np.ones(3) / 3, latency_ms=1)


def test_encode_error_round_trip():
    before = time.time()
    doc = json.loads(encode_error(id="m1", topic="sensors/line7/press", reason="values: bad"))
    assert set(doc) == {"id", "topic", "reason", "ts"}
    assert (doc["id"], doc["topic"], doc["reason"]) == ("m1", "sensors/line7/press",
                                                       "values: bad")
    assert before <= doc["ts"] <= time.time()
    doc = json.loads(encode_error(id=None, topic="t" * 1000, reason="r" * 10_000))
    assert doc["id"] is None and len(doc["topic"]) == 256 and len(doc["reason"]) == 500


def test_error_payload_for_a_real_bad_message(row):
    payload = message(row, values=row[:5].tolist())
    with pytest.raises(BadMessage) as info:
        decode_sensor(payload, spec=SPEC)
    doc = json.loads(encode_error(id=best_effort_id(payload, None), topic="sensors/line7/press",
                                  reason=str(info.value)))
    assert doc["id"] == "press-7/000123"
    assert doc["reason"] == "values: expected 6 channels of 100 samples, got 5 channels"


BEST_EFFORT = [
    # (payload, user properties, expected id)
    (b'{"id": "abc", "values": [[1, 2', None, "abc"),
    (b'{"values": [], "id":42}', None, "42"),
    (b'{"id": -3.5}', None, None),  # a float id is not an id
    (b'{"id": "esc\\"aped"', None, 'esc"aped'),
    (b'{"id": "bad \\x escape"}', None, "bad \\x escape"),
    (b'{"id": "' + b"x" * 300 + b'"}', None, None),
    (b" " * 5000 + b'{"id": "late"}', None, None),  # only the first 4 KB are searched
    (b"\xff\xfe\x00garbage", None, None),
    (b"", None, None),
    (b"\x00" * 2400, {"id": "bin-1"}, "bin-1"),
    (b"\x00" * 2400, [("id", "bin-2")], "bin-2"),
    (b'{"id": "json"}', {"id": ""}, "json"),
    (b'{"id": "json"}', {"id": 5}, "json"),
    (b'{"id": "json"}', "not properties", "json"),
    (None, None, None),
    ("a str", None, None),
]


@pytest.mark.parametrize("payload,props,want", BEST_EFFORT)
def test_best_effort_id(payload, props, want):
    assert best_effort_id(payload, props) == want


def test_best_effort_id_never_raises_on_random_bytes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        payload = os.urandom(int(rng.integers(0, 5000)))
        result = best_effort_id(b'{"id": ' + payload, {"x": "y"})
        assert result is None or isinstance(result, str)
