"""Fuzz `decode_sensor`: whatever arrives, the only exception is BadMessage, and a valid
message decodes to exactly the values that were sent. Every sample rank is drawn: (F,)
feature vectors, (C, L) windows and (C, H, W) images.

Default run: ~300 examples in all (a few seconds). `pytest -m slow -s` runs ~20000 mixed
examples and prints how many inputs it tried.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge import codec
from edge.codec import InputSpec, decode_sensor
from edge.errors import BadMessage

CONTENT_TYPES = [None, "", "application/json", "APPLICATION/JSON; charset=utf-8",
                 "application/octet-stream", "application/x-float32", "text/plain", "json"]
FAST = settings(max_examples=50, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Case:
    """One input; `want` is (id, ts, values of spec.shape) when it is a valid message."""

    payload: bytes
    content_type: str | None
    props: dict | None
    spec: InputSpec
    want: tuple[str, float | None, np.ndarray] | None = None


def check(case: Case) -> bool:
    """The property under test; True when the input decoded."""
    try:
        reading = decode_sensor(case.payload, content_type=case.content_type,
                                user_properties=case.props, spec=case.spec)
    except BadMessage as exc:
        assert str(exc) and len(str(exc)) < 300, exc
        assert case.want is None, f"valid message rejected: {exc}"
        return False
    assert isinstance(reading.id, str) and 0 < len(reading.id) <= 128
    assert reading.ts is None or math.isfinite(reading.ts)
    assert reading.values.dtype == np.float32 and reading.values.shape == case.spec.shape
    assert np.isfinite(reading.values).all()
    if case.want is not None:
        want_id, want_ts, want_values = case.want
        assert (reading.id, reading.ts) == (want_id, want_ts)
        np.testing.assert_array_equal(reading.values, want_values)
    return True


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

windows = st.builds(InputSpec, channels=st.integers(1, 4), length=st.integers(1, 8))
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)  # (F,) .. (C, H, W)
specs = windows | shapes.map(lambda shape: InputSpec(shape=shape))
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # JSON-encodable
content_types = st.sampled_from(CONTENT_TYPES) | st.text(max_size=30)
props = st.none() | st.dictionaries(st.sampled_from(["id", "ts", "shape"]) | st.text(max_size=4),
                                    st.text(max_size=20) | st.sampled_from(
                                        ["1,1", "2,3", "nan", "1e309", "-0", " 7 ", "1,2,3",
                                         "4", "1,,2", "9" * 40]), max_size=4)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | text
           | st.sampled_from([10**400, 1e39, -1e39, 3.4e38]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.sampled_from(["id", "ts", "values"]) | text, inner, max_size=5),
    max_leaves=40)
ids = (st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=128)
       | st.integers(-10**40, 10**40))
stamps = st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**53, 2**53)


def finite_samples(shape: tuple[int, ...]):
    """Finite float32 arrays of `shape`, including subnormals, -0.0 and the float32
    extremes."""
    return arrays(np.float32, shape, elements=st.floats(width=32, allow_nan=False,
                                                       allow_infinity=False))


@st.composite
def arbitrary_bytes(draw) -> Case:
    return Case(draw(st.binary(max_size=3000)), draw(content_types), draw(props), draw(specs))


@st.composite
def arbitrary_json(draw) -> Case:
    """Any JSON value at the top, or a message-shaped object with arbitrary fields."""
    if draw(st.booleans()):
        doc = draw(json_values)
    else:
        doc = {k: draw(json_values) for k in ("id", "ts", "values") if draw(st.booleans())}
        doc.update(draw(st.dictionaries(text, json_values, max_size=2)))
    payload = json.dumps(doc).encode()  # NaN/Infinity literals, huge ints, escapes
    return Case(payload, draw(st.sampled_from(CONTENT_TYPES[:4])), draw(props), draw(specs))


@st.composite
def deep_nesting(draw) -> Case:
    """Bracket towers up to 1 MB, alone or where id, ts or values belong."""
    depth = draw(st.integers(1, 400_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"v":', b"}]")]))
    tower = opener * depth + (b"1" + closer * depth if draw(st.booleans()) else b"")
    where = draw(st.sampled_from(["alone", "id", "ts", "values", "string"]))
    if where == "alone":
        payload = tower
    elif where == "string":  # brackets in a string do not nest: this one must decode
        payload = b'{"id": "x", "note": "' + b"[{" * min(depth, 100_000) + b'", "values": [0.5]}'
        return Case(payload, None, None, InputSpec(1, 1),
                    want=("x", None, np.array([[0.5]], np.float32)))
    else:
        payload = b'{"id": "x", "values": [1], "' + where.encode() + b'": ' + tower + b"}"
    return Case(payload[: 1 << 20], None, None, draw(specs))


@st.composite
def wrong_shapes(draw) -> Case:
    """Valid-looking messages whose values or byte count do not fit the spec: another
    rank (1 to 4 axes) or another size along some axis, sizes 0 to 5."""
    spec = draw(specs)
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    if shape in (spec.shape, (spec.shape[-1],) if spec.shape[:1] == (1,) and spec.rank == 2
                 else None):  # the spec's own shape, or a univariate window's flat list
        shape = (*shape[:-1], shape[-1] + 1)
    values = draw(finite_samples(shape)) if 0 not in shape else np.zeros(shape, np.float32)
    if draw(st.booleans()):
        payload = values.astype("<f4").tobytes() or b"\x00"
        if values.size == spec.size:  # (3, 2) for (2, 3): the same byte count
            payload += b"\x00" * 4
        return Case(payload, "application/octet-stream", {"id": "m"}, spec)
    ragged = values.tolist()
    if len(shape) >= 2 and len(ragged) >= 2 and draw(st.booleans()):  # one longer row
        ragged[draw(st.integers(0, len(ragged) - 1))].append(1.0)
    return Case(json.dumps({"id": "m", "values": ragged}).encode(), None, None, spec)


@st.composite
def poisoned(draw) -> Case:
    """A valid message with one value replaced by NaN/Inf/overflow or a non-number."""
    spec = draw(specs)
    values = draw(finite_samples(spec.shape))
    index = tuple(draw(st.integers(0, n - 1)) for n in spec.shape)
    bad = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e39, "1.0", True, None,
                                [1.0], {"v": 1}, 10**400]))
    if draw(st.booleans()) or isinstance(bad, float):
        nested = values.tolist()
        inner = nested
        for i in index[:-1]:
            inner = inner[i]
        inner[index[-1]] = bad
        return Case(json.dumps({"id": "m", "values": nested}).encode(), None, None, spec)
    sample = np.full(spec.shape, draw(st.sampled_from([np.nan, np.inf])))
    return Case(sample.astype("<f4").tobytes(), "application/x-float32", {"id": "m"}, spec)


@st.composite
def valid_messages(draw) -> Case:
    """Well-formed JSON or binary messages; they must decode to the exact values sent."""
    spec = draw(specs)
    values = draw(finite_samples(spec.shape))  # spec.shape float32
    msg_id, ts = draw(ids), draw(stamps)
    want_ts = None if ts is None else float(ts)
    if draw(st.booleans()):
        props = {"id": str(msg_id)}
        if ts is not None:
            props["ts"] = repr(float(ts))
        if draw(st.booleans()):
            props["shape"] = ",".join(map(str, spec.shape))
        return Case(values.astype("<f4").tobytes(), draw(st.sampled_from(CONTENT_TYPES[4:6])),
                    props, spec, want=(str(msg_id), want_ts, values))
    nested = values.tolist()
    flat = spec.rank == 2 and spec.channels == 1 and draw(st.booleans())  # univariate window
    doc = {"id": msg_id, "values": nested[0] if flat else nested}
    if ts is not None:
        doc["ts"] = ts
    payload = json.dumps(doc, indent=draw(st.sampled_from([None, 1]))).encode()
    return Case(payload, draw(st.sampled_from(CONTENT_TYPES[:4])), None, spec,
                want=(str(msg_id), want_ts, values))


ANY_CASE = st.one_of(arbitrary_bytes(), arbitrary_json(), deep_nesting(), wrong_shapes(),
                     poisoned(), valid_messages())


# --------------------------------------------------------------------------------------------
# Default run: 6 x 50 examples
# --------------------------------------------------------------------------------------------


@FAST
@given(arbitrary_bytes())
def test_arbitrary_bytes(case):
    check(case)


@FAST
@given(arbitrary_json())
def test_arbitrary_json(case):
    check(case)


@FAST
@given(deep_nesting())
def test_deep_nesting(case):
    check(case)


@FAST
@given(wrong_shapes())
def test_wrong_shapes_are_rejected(case):
    with pytest.raises(BadMessage):
        decode_sensor(case.payload, content_type=case.content_type,
                      user_properties=case.props, spec=case.spec)


@FAST
@given(poisoned())
def test_poisoned_values_are_rejected(case):
    with pytest.raises(BadMessage, match="values"):
        decode_sensor(case.payload, content_type=case.content_type,
                      user_properties=case.props, spec=case.spec)


@FAST
@given(valid_messages())
def test_valid_messages_round_trip(case):
    assert case.want is not None
    check(case)


def outcome(case: Case) -> tuple:
    """("ok", id, ts, dtype, shape, value bytes) or ("bad", reason) of one decode."""
    try:
        r = decode_sensor(case.payload, content_type=case.content_type,
                          user_properties=case.props, spec=case.spec)
    except BadMessage as exc:
        return ("bad", str(exc))
    return ("ok", r.id, r.ts, r.values.dtype, r.values.shape, r.values.tobytes())


def exact_outcome(case: Case) -> tuple:
    """The same decode with the JSON fast path off: every message takes the exact path."""
    with mock.patch.object(codec, "_fast_json", lambda payload, spec: None):
        return outcome(case)


@settings(max_examples=300, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ANY_CASE)
def test_the_json_fast_path_changes_no_outcome(case):
    """Values, id, ts and every rejection reason are the exact path's, input for input."""
    assert outcome(case) == exact_outcome(case)


FAST_PATH_EDGES = [  # (payload, spec shape): where a one-pass decode could differ
    b'{"id": "a", "values": [[1, 2.5], [3, 4]]}',  # integers and floats mixed
    b'{"id": "a", "values": [1, 2]}',  # a univariate window's flat list (1, 2)
    b'{"id": "a", "values": [[1, true], [3, 4]]}',  # a bool is not a number
    b'{"id": "a", "values": [[1, "2"], [3, 4]]}',
    b'{"id": "a", "values": [[1, NaN], [3, 4]]}',
    b'{"id": "a", "values": [[1, 1e39], [3, 4]]}',  # overflows float32
    b'{"id": "a", "values": [[1, 1' + b"0" * 400 + b'], [3, 4]]}',  # too large for float64
    b'{"id": "a", "values": [[1, 12345678901234567890123], [3, 4]]}',  # a big integer
    b'{"id": "", "values": [[1, NaN], [3, 4]]}',  # two problems: the id is named first
    b'{"id": [[[[[[[[["x"]]]]]]]]], "values": [[1, 2], [3, 4]]}',  # depth before id
    b'{"id": "a", "x": [[[[[[[[1]]]]]]]], "values": [[1, 2], [3, 4]]}',  # a deep extra field
    b'{"id": "a", "x": [[[[[[[1]]]]]]], "values": [[1, 2], [3, 4]]}',  # exactly 8 levels
    b'{"id": "a", "ts": 1' + b"0" * 400 + b', "values": [[1, 2], [3, 4]]}',  # ts out of range
    b'{"id": "a", "ts": true, "values": [[1, 2], [3, 4]]}',
    b'{"id": 7, "id": "b", "values": [[9, 9]], "values": [[1, 2], [3, 4]]}',  # last one wins
    b'{"id": "\\udc80", "values": [[1, 2], [3, 4]]}',  # a lone surrogate escape
]


@pytest.mark.parametrize("payload", FAST_PATH_EDGES)
@pytest.mark.parametrize("shape", [(2, 2), (1, 2)])
def test_the_json_fast_path_edges(payload, shape):
    case = Case(payload, None, None, InputSpec(shape=shape))
    assert outcome(case) == exact_outcome(case)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_soak():
    """~20000 mixed inputs; prints how many it tried and how many decoded."""
    tried = {"inputs": 0, "decoded": 0, "exact": 0}

    @settings(max_examples=20_000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(ANY_CASE)
    def run(case: Case) -> None:
        tried["inputs"] += 1
        tried["decoded"] += check(case)
        tried["exact"] += case.want is not None

    run()
    print(f"\nfuzz soak: tried {tried['inputs']} inputs: {tried['decoded']} decoded "
          f"({tried['exact']} valid messages checked value for value), "
          f"{tried['inputs'] - tried['decoded']} rejected with BadMessage, nothing else raised")
    assert tried["inputs"] >= 10_000


@pytest.mark.parametrize(("payload", "shape"), [
    (b'{"id": "a", "ts": 1.5, "values": [[1, 2.5], [3, 4]]}', (2, 2)),
    (b'{"id": 3, "values": [1, 2], "note": {"k": [1]}}', (1, 2)),
    (b'{"id": "a", "values": [[[0.5]], [[1]]]}', (2, 1, 1)),
])
def test_well_formed_messages_take_the_fast_path(payload, shape):
    """The fast path is not dead code: a well-formed message decodes there."""
    reading = codec._fast_json(payload, InputSpec(shape=shape))
    assert reading is not None and reading.values.shape == shape
    assert reading.values.dtype == np.float32
