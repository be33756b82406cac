"""Sensor message <-> arrays; result and error payloads.

Sensor messages come in two formats (docs: MQTT topics):

    JSON (default)   {"id": "a1", "ts": 1718000000.5, "values": [[c0 ...], [c1 ...], ...]}
                     `values` nests like the model's sample shape: [F numbers] for
                     feature vectors, [C][L] for windows, [C][H][W] for images; a
                     univariate window (1, L) may come as a flat list "values": [...]
    binary           content_type application/octet-stream or application/x-float32:
                     prod(shape) little-endian float32 values in C order (last axis
                     fastest); MQTT v5 user properties id (required), ts (optional),
                     shape "d1,d2,..." (optional, checked against the sample shape)

`decode_sensor` raises `BadMessage` and nothing else for any payload it cannot use; the
reason names the field and goes onto the errors topic as is.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic_core import SchemaValidator, from_json
from pydantic_core import core_schema as cs

from .contract.shapes import (
    AXIS_NAMES,
    as_text,
    describe,
    plural,
    sample_shape_problem,
    where,
)
from .errors import BadMessage, ConfigError

if TYPE_CHECKING:  # the payload types (docs/schemas/); nothing of them runs per message
    from .contract.payloads import DriftChange, DriftEvent, ErrorReport, Result

__all__ = [
    "InputSpec",
    "SensorReading",
    "best_effort_id",
    "decode_sensor",
    "encode_error",
    "encode_result",
    "softmax",
]

JSON_TYPES = frozenset({"application/json"})
BINARY_TYPES = frozenset({"application/octet-stream", "application/x-float32"})
MAX_DEPTH = 8  # a sensor message needs 2 to 4 ({ -> values -> channel -> row); deeper is an attack
MAX_ID_CHARS = 128
MAX_REASON_CHARS = 500
MAX_TOPIC_CHARS = 256
_NUMBER_TYPES = frozenset({int, float})  # what json gives for numbers (bool is excluded)
_BIG = 2.0**63  # values this large (big integers), NaN and Infinity take the exact path
_ID_IN_PAYLOAD = re.compile(rb'"id"\s*:\s*(?:"((?:[^"\\]|\\.){1,128})"|(-?\d{1,40})(?![\d.eE]))')


@dataclass(frozen=True, init=False)
class InputSpec:
    """What the model takes per message: one sample of `shape` ((F,), (C, L) or (C, H, W):
    edge/contract/shapes.py), and a size cap. `InputSpec(channels, length)` is a window's."""

    shape: tuple[int, ...]
    max_payload_bytes: int

    def __init__(self, channels: int | None = None, length: int | None = None,
                 max_payload_bytes: int = 1 << 20, *, shape: tuple[int, ...] | None = None
                 ) -> None:
        if shape is None:
            for name, value in (("channels", channels), ("length", length)):
                _check_positive(f"InputSpec.{name}", value)
            shape = (channels, length)
        elif channels is not None or length is not None:
            raise ConfigError("InputSpec takes shape, or channels and length, not both")
        problem = sample_shape_problem(tuple(shape))
        if problem:
            raise ConfigError(f"InputSpec.shape: {problem}")
        _check_positive("InputSpec.max_payload_bytes", max_payload_bytes)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "max_payload_bytes", max_payload_bytes)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        """Entries of axis 0: channels, or the features of an (F,) vector."""
        return self.shape[0]

    @property
    def length(self) -> int | None:
        """L of a (C, L) window; None for other shapes."""
        return self.shape[1] if self.rank == 2 else None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class SensorReading:
    """One decoded message: `values` float32 of the sample shape ((C, L) ...), finite."""

    id: str
    ts: float | None
    values: np.ndarray


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_sensor(
    payload: bytes,
    *,
    content_type: str | None = None,
    user_properties: dict[str, str] | None = None,
    spec: InputSpec,
) -> SensorReading:
    """Decode one sensor message into a `SensorReading` with values float32 of
    `spec.shape`.

    Raises `BadMessage(reason)` for any unusable payload, and nothing else.
    """
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        raise BadMessage(f"payload must be bytes, got {type(payload).__name__}")
    if not payload:
        raise BadMessage("payload is empty")
    if len(payload) > spec.max_payload_bytes:  # before any parsing: no unbounded allocation
        raise BadMessage(f"payload is {len(payload)} bytes, larger than the limit of "
                         f"{spec.max_payload_bytes} bytes")
    kind = _media_type(content_type)
    if kind in JSON_TYPES:
        return _decode_json(payload, spec)
    if kind in BINARY_TYPES:
        return _decode_binary(payload, user_properties, spec)
    raise BadMessage(f"content_type {_short(content_type)} is not supported; use "
                     "application/json or application/octet-stream (raw float32)")


def _media_type(content_type: str | None) -> str:
    """'Application/JSON; charset=utf-8' -> 'application/json'; None or '' -> JSON."""
    if content_type is None:
        return "application/json"
    if not isinstance(content_type, str):
        return f"<{type(content_type).__name__}>"
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind or "application/json"


def _decode_json(payload: bytes, spec: InputSpec) -> SensorReading:
    try:
        payload.decode("utf-8")  # validate only: the reason is clearer than the parser's
    except UnicodeDecodeError as exc:
        raise BadMessage(f"payload is not valid UTF-8 (byte {exc.start})") from None
    reading = _fast_json(payload, spec)
    if reading is not None:
        return reading
    # The exact path: every check in order, each problem named (a bad message parses twice).
    _check_depth(payload)
    try:
        # pydantic_core's parser (Rust, already a dependency through pydantic): ~7x faster
        # than json.loads on 600 floats, bounded recursion, and no quadratic big-int parsing.
        doc = from_json(payload, allow_inf_nan=True, cache_strings="keys")
    except RecursionError:  # belt and braces: _check_depth should have caught it
        raise BadMessage(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise BadMessage(f"payload is not valid JSON ({_short(str(exc), 80)})") from None
    if not isinstance(doc, dict):
        raise BadMessage(f"JSON top level must be an object with id and values, "
                         f"got {_type_name(doc)}")
    msg_id = _json_id(doc)
    ts = _json_ts(doc)
    if "values" not in doc:
        raise BadMessage("values: missing")
    values = _json_values(doc["values"], spec)
    return SensorReading(id=msg_id, ts=ts, values=values)


def _fast_json(payload: bytes, spec: InputSpec) -> SensorReading | None:
    """A well-formed message in one pass: pydantic_core parses the JSON and checks the values'
    structure and types (lists of spec.shape's lengths, numbers that are not bools) as it
    builds them, where the exact path parses, then walks 600 items in Python (~4x the time).
    None for anything else (bad JSON, structure, depth, values NaN, infinite or huge): the
    exact path then decides, so reasons and the checks' order stay what they are. id and ts
    are parsed as any value and checked by the exact path's own functions."""
    try:
        doc = _message_validator(spec.shape).validate_json(payload)
    except Exception:  # ValidationError (a ValueError), or the parser's recursion limit
        return None
    if max(_nesting(v) for k, v in doc.items() if k != "values") >= MAX_DEPTH:
        return None  # a deep id, ts or extra field (values: rank <= 3): the exact path says so
    values = np.asarray(doc["values"], dtype=np.float64)  # spec.shape, or (L,) for (1, L)
    if not (np.abs(values) < _BIG).all():  # NaN compares False too
        return None
    msg_id, ts = _json_id(doc), _json_ts(doc)  # may raise, as on the exact path
    return SensorReading(id=msg_id, ts=ts, values=values.astype(np.float32).reshape(spec.shape))


@functools.lru_cache(maxsize=8)
def _message_validator(shape: tuple[int, ...]) -> SchemaValidator:
    """{"id": any, "ts": any (optional), "values": nested lists of `shape` of numbers, other
    keys kept}. A strict float takes JSON integers and floats, never a bool or a string,
    exactly the exact path's _NUMBER_TYPES."""
    number = cs.float_schema(strict=True, allow_inf_nan=True)
    values = number
    for n in reversed(shape):  # innermost axis first: [[number] * L] * C
        values = cs.list_schema(values, min_length=n, max_length=n)
    if len(shape) == 2 and shape[0] == 1:  # a univariate window may come as a flat list
        flat = cs.list_schema(number, min_length=shape[1], max_length=shape[1])
        values = cs.union_schema([values, flat])
    return SchemaValidator(cs.typed_dict_schema({
        "id": cs.typed_dict_field(cs.any_schema()),
        "ts": cs.typed_dict_field(cs.any_schema(), required=False),
        "values": cs.typed_dict_field(values)}, extra_behavior="allow"))


def _nesting(value: object) -> int:
    """Levels of lists and objects in a parsed JSON value (a number or string: 0), the depth
    _check_depth counts in brackets; a loop, not recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _check_depth(payload: bytes) -> None:
    """Reject bracket nesting past MAX_DEPTH before parsing: vectorised, O(n), no recursion."""
    if payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH:
        return  # fast path: a 6x100 message has 8 brackets in all
    codes = np.frombuffer(payload, dtype=np.uint8)  # (n,) UTF-8 bytes; multi-byte characters
    step = ((codes == 0x5B) | (codes == 0x7B)).astype(np.int32)  # never contain [ ] { } " \
    step -= ((codes == 0x5D) | (codes == 0x7D)).astype(np.int32)
    if b'"' in payload:
        step[_inside_strings(codes)] = 0  # brackets inside string literals do not nest
    if int(np.cumsum(step).max()) > MAX_DEPTH:
        raise BadMessage(f"JSON is nested deeper than {MAX_DEPTH} levels")


def _inside_strings(codes: np.ndarray) -> np.ndarray:
    """Mask (n,) of bytes inside JSON string literals (exact for valid JSON)."""
    pos = np.arange(codes.size, dtype=np.int32)
    # A quote is escaped when an odd run of backslashes precedes it.
    last_plain = np.maximum.accumulate(np.where(codes == 0x5C, -1, pos))  # (n,)
    run = np.zeros(codes.size, dtype=np.int32)
    run[1:] = pos[:-1] - last_plain[:-1]  # backslashes right before each byte
    quotes = (codes == 0x22) & (run % 2 == 0)
    return (np.cumsum(quotes, dtype=np.int32) % 2) == 1  # odd count so far: inside


def _json_id(doc: dict) -> str:
    if "id" not in doc:
        raise BadMessage("id: missing (a string or integer is required)")
    raw = doc["id"]
    if type(raw) is int:
        raw = str(raw)
    elif not isinstance(raw, str):
        raise BadMessage(f"id: expected a string or integer, got {_type_name(raw)}")
    return _check_id(raw)


def _check_id(raw: str) -> str:
    if not raw:
        raise BadMessage("id: must not be empty")
    if len(raw) > MAX_ID_CHARS:
        raise BadMessage(f"id: {len(raw)} characters, at most {MAX_ID_CHARS} allowed")
    return raw


def _json_ts(doc: dict) -> float | None:
    raw = doc.get("ts")
    if raw is None:
        return None
    if type(raw) not in _NUMBER_TYPES:
        raise BadMessage(f"ts: expected a number, got {_type_name(raw)}")
    try:
        ts = float(raw)
    except OverflowError:
        raise BadMessage("ts: number out of range") from None
    if not math.isfinite(ts):
        raise BadMessage("ts: must be a finite number, got NaN or Infinity")
    return ts


def _json_values(raw: object, spec: InputSpec) -> np.ndarray:
    """Structure checks on the nested list (one level per axis of the sample shape), then
    one vectorised conversion -> float32 of `spec.shape`."""
    shape = spec.shape
    if not isinstance(raw, list):
        raise BadMessage(f"values: expected a list of {describe(shape)}, got {_type_name(raw)}")
    if shape[:1] == (1,) and len(shape) == 2 and raw and not isinstance(raw[0], list):
        raw = [raw]  # a univariate sensor's flat list (L,) -> (1, L)
    _check_nested(raw, shape, ())
    try:
        arr = np.asarray(raw, dtype=np.float64)  # shape
    except OverflowError:
        raise BadMessage("values: a number is too large for float32") from None
    return _finite_float32(arr)


def _check_nested(raw: list, shape: tuple[int, ...], index: tuple[int, ...]) -> None:
    """`raw` is the list at `index` (depth len(index)): its length, then its items' types.
    Depth is at most 3 (edge/contract/shapes.py MAX_RANK)."""
    depth, rank = len(index), len(shape)
    if len(raw) != shape[depth]:
        at = f"values: {where(rank, index)}: " if index else "values: "
        name = AXIS_NAMES[rank][depth]
        raise BadMessage(f"{at}expected {describe(shape, depth)}, got {len(raw)} "
                         f"{plural(name, len(raw))}")
    if depth == rank - 1:  # the innermost axis holds numbers: a C-level scan, no Python loop
        if not _NUMBER_TYPES.issuperset(map(type, raw)):
            _raise_bad_element(rank, index, raw)
        return
    for i, item in enumerate(raw):
        if not isinstance(item, list):
            raise BadMessage(f"values: {where(rank, (*index, i))}: expected a list of "
                             f"{describe(shape, depth + 1)}, got {_type_name(item)}")
        _check_nested(item, shape, (*index, i))


def _raise_bad_element(rank: int, index: tuple[int, ...], row: list) -> None:
    for i, v in enumerate(row):
        if type(v) not in _NUMBER_TYPES:
            raise BadMessage(f"values: {where(rank, (*index, i))}: expected a number, "
                             f"got {_type_name(v)}")


def _finite_float32(arr: np.ndarray) -> np.ndarray:
    """arr float64 -> float32 of the same shape; NaN, Infinity and float32 overflow are
    rejected, naming the first bad value's position."""
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if np.isfinite(out).all():  # one check on the fast path; diagnose only on failure
        return out
    index = tuple(np.argwhere(~np.isfinite(out))[0])
    at = where(arr.ndim, index)
    if not np.isfinite(arr[index]):
        raise BadMessage(f"values: {at}: NaN or Infinity is not allowed")
    raise BadMessage(f"values: {at}: {float(arr[index]):g} overflows float32")


def _decode_binary(payload: bytes, props: dict[str, str] | None, spec: InputSpec) -> SensorReading:
    """Raw little-endian float32 in C order (the last axis fastest) of `spec.shape`;
    id/ts/shape from MQTT v5 user properties."""
    props = _props_dict(props)
    raw_id = props.get("id")
    if raw_id is None:
        raise BadMessage("id: missing (binary messages carry it in the user property 'id')")
    msg_id = _check_id(raw_id if isinstance(raw_id, str) else str(raw_id))
    ts = _property_ts(props.get("ts"))
    shape = spec.shape
    if props.get("shape") is not None:
        _check_shape_property(props["shape"], shape)
    n, size = len(payload), spec.size
    if n % 4:
        raise BadMessage(f"binary payload: {n} bytes is not a multiple of 4 (float32)")
    if n != size * 4:
        dims = "x".join(map(str, shape))
        raise BadMessage(f"binary payload: expected {dims} float32 values ({size * 4} bytes), "
                         f"got {n} bytes ({n // 4} values)")
    values = np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)  # own copy
    finite = np.isfinite(values)
    if not finite.all():
        at = where(len(shape), tuple(np.argwhere(~finite)[0]))
        raise BadMessage(f"values: {at}: NaN or Infinity is not allowed")
    return SensorReading(id=msg_id, ts=ts, values=values)


def _props_dict(props: object) -> dict:
    """User properties as a dict; paho itself hands them over as a list of (key, value)."""
    if isinstance(props, dict):
        return props
    if isinstance(props, (list, tuple)):
        return {p[0]: p[1] for p in props
                if isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)}
    return {}


def _property_ts(raw: object) -> float | None:
    if raw is None:
        return None
    try:
        ts = float(str(raw).strip())
    except ValueError:
        raise BadMessage(f"ts: expected a number, got {_short(raw)}") from None
    if not math.isfinite(ts):
        raise BadMessage("ts: must be a finite number, got NaN or Infinity")
    return ts


_SHAPE_LETTERS = {1: "F", 2: "C,L", 3: "C,H,W"}  # the shape property's form, by rank


def _check_shape_property(raw: object, shape: tuple[int, ...]) -> None:
    """The sender's `shape` user property ("6,100") is the sample shape, axis by axis."""
    parts = [p.strip() for p in str(raw)[:64].split(",")]
    expected = as_text(shape)
    if len(parts) != len(shape) or not all(p.isascii() and p.isdigit() and len(p) < 10
                                           for p in parts):
        raise BadMessage(f"shape: expected '{_SHAPE_LETTERS[len(shape)]}' like "
                         f"'{expected}', got {_short(raw)}")
    if tuple(int(p) for p in parts) != shape:
        raise BadMessage(f"shape: {','.join(parts)} does not match the expected {expected}")


def _type_name(value: object) -> str:
    """JSON-flavoured type names for reasons: null, bool, string, number, list, object."""
    if value is None:
        return "null"
    names = {bool: "bool", str: "string", int: "integer", float: "number", list: "list",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 40) -> str:
    """repr of a value cut to `limit` characters, for echoing untrusted input in a reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, K) -> probabilities (N, K) float64, max-shifted."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)  # largest logit -> 0: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Encoding results and errors
# --------------------------------------------------------------------------------------------


def encode_result(**fields: Any) -> bytes:
    """The results-topic JSON for one message: `result_doc(**fields)` encoded."""
    return encode_doc(result_doc(**fields))


# json.dumps with any non-default argument builds a new JSONEncoder per call; these are
# built once (the same C encoder, the same bytes).
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_COMPACT_FINITE = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_doc(doc: Result) -> bytes:
    """A result document as the results topic carries it (compact JSON, no NaN)."""
    return _COMPACT_FINITE.encode(doc).encode()


def result_doc(
    *,
    id: str,
    ts: float | None,
    line: str,
    adapter: str,
    adapter_version: int | None,
    labels: Sequence[str],
    scores: np.ndarray,
    latency_ms: float,
) -> Result:
    """The result document for one message; `scores` (K,) are probabilities for `labels`.

    Slice padded logits to `len(labels)` before the softmax; a length mismatch is a bug and
    raises ValueError. Non-finite scores are written as null.
    """
    # K is a handful of classes: Python floats beat numpy's per-call overhead here.
    probs = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()  # (K,) floats
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} scores for {len(labels)} labels")
    best = None  # the first highest finite score, as np.argmax over the finite ones
    for k, p in enumerate(probs):
        if isfinite(p) and (best is None or p > probs[best]):
            best = k
    doc: Result = {
        "id": clean_text(id, MAX_ID_CHARS),
        "ts": ts,
        "line": line,
        "adapter": adapter,
        "adapter_version": adapter_version,
        "label": labels[best] if best is not None else None,
        "scores": {name: (round(p, 6) if isfinite(p) else None)
                   for name, p in zip(labels, probs, strict=True)},
        "latency_ms": round(float(latency_ms), 3),
    }
    return doc


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: object, limit: int) -> str:
    """Sender-chosen text made safe to send on: lone surrogates (an id written as
    "\\udc80" in JSON) become U+FFFD, which every strict JSON parser accepts, and the text
    is cut to `limit` characters."""
    text = str(text)[:limit]
    if text.isascii():  # the usual id: nothing to replace, no regex scan
        return text
    return _SURROGATE.sub("\ufffd", text)


def encode_error(*, id: str | None, topic: str, reason: str) -> bytes:
    """The errors-topic JSON: {"id", "topic", "reason", "ts"}; long fields are truncated and
    the reason is one line."""
    doc: ErrorReport = {
        "id": None if id is None else clean_text(id, MAX_ID_CHARS),
        "topic": clean_text(topic, MAX_TOPIC_CHARS),
        "reason": clean_text(" ".join(str(reason).split()), MAX_REASON_CHARS),
        "ts": time.time(),
    }
    return _COMPACT.encode(doc).encode()


def encode_event(doc: DriftChange) -> bytes:
    """The events-topic JSON: the event's fields (names and numbers the gateway made, not
    message content) and "ts"."""
    event: DriftEvent = {**doc, "ts": time.time()}
    return _COMPACT_FINITE.encode(event).encode()


def best_effort_id(payload: bytes, user_properties: dict[str, str] | None) -> str | None:
    """The message id for an error report, or None; never raises.

    Tries the user property `id`, then `"id": "..."` or `"id": 123` in the first 4 KB.
    """
    try:
        prop = _props_dict(user_properties).get("id")
        if isinstance(prop, str) and prop:
            return prop[:MAX_ID_CHARS]
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return None
        match = _ID_IN_PAYLOAD.search(bytes(payload[:4096]))
        if match is None:
            return None
        if match.group(2) is not None:
            return match.group(2).decode("ascii")
        raw = match.group(1).decode("utf-8", "replace")
        try:
            text = json.loads(f'"{raw}"')  # undo JSON escapes when they are valid
        except ValueError:
            text = raw
        return text[:MAX_ID_CHARS] or None
    except Exception:  # an error report must never fail on account of its id
        return None
