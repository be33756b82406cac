"""Fuzz the adapter control plane: envelopes on adapters/put and in the watch folder,
commands on adapters/activate and adapters/rollback, a corrupt routing.json.

Whatever arrives: no exception escapes (the control thread keeps serving), each bad input
gets exactly one error with a reason (on the errors topic, or AdapterRejected / BadMessage
from the in-process API), a refusal leaves the live routing table, the line assignments,
routing.json and `<state_dir>/adapters` as they were (no temp file, no refused adapter),
and memory stays bounded. After each fuzz a valid signed adapter is still accepted and a
real BasicMotions window is still answered by it.

Signed mutations (bad headers re-signed with the trusted key, bad tensors under a valid
signed header) reach the checks behind the signature; unsigned ones stop at it.

Default run: a few hundred inputs per test, a few seconds each. The soak runs the mixed
fuzz for FUZZ_MINUTES minutes (default 2) and prints how many inputs it tried:

    FUZZ_MINUTES=10 .venv/bin/pytest -m slow -s -k soak tests/test_control_fuzz.py

The bugs this fuzz found are pinned at the bottom as regression tests, each with its
minimal input; the strategies generate those inputs too.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import os
import re
import struct
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest
from adapter_versions import derive_version, envelope
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_bundle import sample_windows
from test_runtime import WAIT_S, Collector, Publisher, wait_until

from edge.adapter_checks import MAX_VERSION
from edge.bundle import read_manifest, sha256_file
from edge.commands import MAX_COMMAND_BYTES, Command, parse_command, request_id
from edge.config import load_config
from edge.control import DONE_IDS
from edge.engine import read_adapter_arrays
from edge.envelope import MAGIC, MAX_HEADER, canonical, key_id, pack, peek_id, unpack, verify
from edge.errors import AdapterRejected, BadMessage
from edge.line_state import STATE_FILE, Assignment, LineState
from edge.service import Service
from export.demo.local_broker import write_runtime_config
from export.onnx.adapter_files import write_onnx_adapter
from export.signing import keygen, load_private_key

DEVICE = "gw-test"
ADAPTERS = f"factory/{DEVICE}/adapters"
PUT, ACTIVATE, ROLLBACK = f"{ADAPTERS}/put/", f"{ADAPTERS}/activate", f"{ADAPTERS}/rollback"
ERRORS, STATE = f"factory/{DEVICE}/errors", f"{ADAPTERS}/state"
LINES = {"line-a": {"adapter": "line-a"}, "line-b": {},
         "line-c": {"adapter": "line-a", "version": 1}}
MAX_ADAPTER = 64 * 1024  # limits.max_adapter_bytes: oversize inputs stay cheap to build
RSS_BOUND = 160 << 20  # generous: growth allowed over thousands of inputs
# docs: MQTT topics; one rule for line and adapter names (edge/contract/names.py)
LINE_NAME = ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SURROGATE = re.compile("[\ud800-\udfff]")
COMMAND_FIELDS = {"activate": {"line", "name", "version", "id"}, "rollback": {"line", "id"}}
EXPLORE = "fz-explore"  # the name of signed near-valid adapters, which may be accepted
FAST = settings(max_examples=150, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
_counter = itertools.count(1)  # fresh versions and file names across examples


# --------------------------------------------------------------------------------------------
# The kit: a valid envelope to mutate, the keys, the bundle's facts
# --------------------------------------------------------------------------------------------

class Short:
    """Hypothesis prints a dataclass field by field (megabytes of envelopes, and the kit's
    strategies, which print the kit...): it is shown by its own short repr instead."""

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass(frozen=True)
class Kit(Short):
    """What the strategies build from: line-a v2 (held before the fuzz) and v3 (valid,
    held by no one until `still_serves`), the trusted and an untrusted key."""

    held: bytes
    fresh: bytes
    header: dict  # fresh's signed header
    body: bytes  # fresh's .onnx_adapter bytes
    arrays: dict[str, np.ndarray]  # fresh's tensors
    signer: Ed25519PrivateKey
    intruder: Ed25519PrivateKey
    max_rank: int
    num_classes: int
    channels: int
    length: int
    max_put: int  # the MQTT / folder limit: max_adapter_bytes + header + framing
    scratch: Path
    strategies: dict = field(default_factory=dict, compare=False, repr=False)  # built once

    def __repr__(self) -> str:
        return f"Kit(line-a v2 + v3, {len(self.body)}-byte body)"

    def cached(self, key: tuple, build) -> st.SearchStrategy:
        """Strategies built once per kit: hypothesis validates each new one, slowly."""
        if key not in self.strategies:
            self.strategies[key] = build()
        return self.strategies[key]


def build_kit(bundle: Path, signer: Path, intruder: Path, scratch: Path, max_put: int) -> Kit:
    manifest = read_manifest(bundle)
    held = envelope(*derive_version(bundle, "line-a", 2, scratch), key=signer)
    entry, path = derive_version(bundle, "line-a", 3, scratch)
    fresh = envelope(entry, path, key=signer)
    header, body = unpack(fresh, 1 << 30)
    return Kit(held=held, fresh=fresh, header=header, body=body,
               arrays=read_adapter_arrays(path), signer=load_private_key(signer),
               intruder=load_private_key(intruder), max_rank=manifest.max_rank,
               num_classes=manifest.num_classes, channels=manifest.inputs[0].shape[1],
               length=manifest.inputs[0].shape[2], max_put=max_put, scratch=scratch)


def signed(header: dict, key: Ed25519PrivateKey) -> dict:
    """`header` with a fresh key_id and signature by `key` over everything else."""
    doc = {k: v for k, v in header.items() if k not in ("signature", "key_id")}
    doc["key_id"] = key_id(key.public_key())
    doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode()
    return doc


def frame(header: bytes, body: bytes, length: int | None = None) -> bytes:
    """magic, big-endian header length (the true one unless given), header, body."""
    size = len(header) if length is None else length
    return MAGIC + struct.pack(">I", size) + header + body


def split(data: bytes) -> tuple[object, bytes]:
    """The test's own reading of an envelope: (parsed header, body); raises on bad framing."""
    (size,) = struct.unpack(">I", data[8:12])
    if not data.startswith(MAGIC) or 12 + size > len(data):
        raise ValueError("framing")
    return json.loads(data[12:12 + size].decode("utf-8")), data[12 + size:]


def same_envelope(data: bytes, original: bytes) -> bool:
    """True when a byte edit left the same header and body (say, a space made a tab)."""
    try:
        return split(data) == split(original)
    except Exception:
        return False


def adapter_body(arrays: dict[str, np.ndarray], scratch: Path) -> bytes:
    """The .onnx_adapter bytes of `arrays`, through the exporter's own writer."""
    fd, name = tempfile.mkstemp(suffix=".onnx_adapter", dir=scratch)
    os.close(fd)
    path = Path(name)
    try:
        write_onnx_adapter(path, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, 3)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def over_body(kit: Kit, body: bytes, **changes) -> bytes:
    """A trusted-signed envelope of `body` whose header is fresh's plus `changes`."""
    header = {**kit.header, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    return pack(signed({**header, **changes}, kit.signer), body)


# --------------------------------------------------------------------------------------------
# Strategies: envelopes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class Drop(Short):
    """One envelope; `must_refuse` is False only where a valid adapter may result."""

    data: bytes
    label: str
    must_refuse: bool = True

    def __repr__(self) -> str:
        return f"Drop({self.label!r}, {len(self.data)} bytes: {preview(self.data)})"


def preview(data: bytes) -> str:
    return repr(data[:300]) + ("..." if len(data) > 300 else "")


any_text = st.text(max_size=12)  # lone surrogates too: json.dumps escapes them
scalars = (st.none() | st.booleans() | st.integers(-10**40, 10**40) | st.floats() | any_text
           | st.sampled_from([10**30, 10**400, -1, 0, math.nan, math.inf, "", "\x00", "\ud800"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)


def nested(depth: int, kind: int) -> bytes:
    opener, closer = [(b"[", b"]"), (b'{"a":', b"}"), (b'[{"v":', b"}]")][kind]
    return opener * depth + b"1" + closer * depth


@st.composite
def raw_bytes(draw) -> Drop:
    data = draw(st.binary(max_size=4096))
    if draw(st.booleans()):
        data = MAGIC + data
    return Drop(data, "bytes")


@st.composite
def byte_edits(draw, kit: Kit) -> Drop:
    """1-8 bytes of the held v2 envelope replaced, inserted or deleted, or it is cut."""
    data = bytearray(kit.held)
    header_end = 12 + struct.unpack(">I", kit.held[8:12])[0]
    for _ in range(draw(st.integers(1, 8))):
        hi = draw(st.sampled_from([12, header_end, len(data)])) - 1
        pos = draw(st.integers(0, min(hi, len(data) - 1)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "delete":
            del data[pos]
        else:
            data[pos:pos + (op == "replace")] = bytes([draw(st.integers(0, 255))])
    if draw(st.integers(0, 9)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    data = bytes(data)
    return Drop(data, "byte-edit", must_refuse=not same_envelope(data, kit.held))


@st.composite
def framing(draw, kit: Kit) -> Drop:
    """Bad magic, header length out of bounds, truncated or padded bodies, non-UTF-8."""
    header = kit.fresh[12:12 + struct.unpack(">I", kit.fresh[8:12])[0]]
    how = draw(st.sampled_from(["magic", "length", "cut", "pad", "utf16", "latin"]))
    if how == "magic":
        magic = draw(st.binary(min_size=8, max_size=8).filter(lambda m: m != MAGIC))
        return Drop(magic + kit.fresh[8:], "framing-magic")
    if how == "length":
        bad = draw(st.integers(0, 2**32 - 1).filter(lambda n: n != len(header))
                   | st.sampled_from([MAX_HEADER + 1, 2**32 - 1, len(header) + len(kit.body) + 1]))
        return Drop(frame(header, kit.body, bad), "framing-length")
    if how == "cut":
        return Drop(kit.fresh[:draw(st.integers(0, len(kit.fresh) - 1))], "framing-cut")
    if how == "pad":
        return Drop(kit.fresh + draw(st.binary(min_size=1, max_size=64)), "framing-pad")
    text = header.decode()
    raw = text.encode("utf-16") if how == "utf16" else text.replace("lora", "l\xf6ra").encode(
        "latin-1")
    return Drop(frame(raw, kit.body), f"framing-{how}")


@st.composite
def json_headers(draw, kit: Kit) -> Drop:
    """A header that is any JSON value, a deep tower (to past MAX_HEADER), a huge string,
    NaN / Infinity where numbers belong; unsigned, framed over fresh's body."""
    how = draw(st.sampled_from(["any", "tower", "huge", "numbers"]))
    if how == "any":
        raw = json.dumps(draw(junk)).encode()
    elif how == "tower":
        raw = nested(draw(st.integers(1, MAX_HEADER // 2 + 10)), draw(st.integers(0, 2)))
    elif how == "huge":
        raw = json.dumps({**kit.header, "name": "x" * draw(st.integers(100, MAX_HEADER))}).encode()
    else:
        key = draw(st.sampled_from(["version", "size", "rank"]))
        raw = json.dumps({**kit.header, key: draw(st.sampled_from([math.nan, math.inf]))}).encode()
    return Drop(frame(raw, kit.body), f"json-{how}")


def bad_fields(kit: Kit) -> dict[str, st.SearchStrategy]:
    """Per header field, values that must be refused whatever else the header holds.

    Left out because the gateway accepts them: rank True / "2" / 2.0 (pydantic's lax ints),
    falsy targets (read as []), other valid names, versions 3..MAX_VERSION (a new adapter).
    """
    body_len, fingerprint = len(kit.body), kit.header["base_fingerprint"]
    pre = kit.header["preprocessing"]
    C, L, R, K = kit.channels, kit.length, kit.max_rank, kit.num_classes
    not_int = junk.filter(lambda v: type(v) is not int)
    return {
        "name": (junk.filter(lambda v: not (isinstance(v, str) and ADAPTER_NAME.fullmatch(v)))
                 | st.sampled_from(["", "base", "a/b", "x" * 65, "line a", "l\xefne", "a\n",
                                    "+", "#", "\ud800"])),
        "version": (not_int | st.integers(-10**20, 2) | st.just(True)
                    | st.integers(MAX_VERSION + 1, 10**300)),
        "kind": junk.filter(lambda v: v != "lora") | st.sampled_from(["bottleneck", "full"]),
        "rank": (st.integers(-10**30, 10**30).filter(lambda v: not 1 <= v <= R)
                 | st.sampled_from([False, 1.5, math.nan, math.inf, "x", "", [], {}, [1], None])),
        "sha256": junk.filter(lambda v: v != kit.header["sha256"]),
        "size": junk.filter(lambda v: not (type(v) is int and v == body_len)),
        "base_fingerprint": junk.filter(lambda v: v != fingerprint)
        | st.just(fingerprint[:-1] + "0" if fingerprint[-1] != "0" else fingerprint[:-1] + "1"),
        "class_names": (st.lists(st.text(max_size=4), min_size=K + 1, max_size=K + 3)
                        | st.sampled_from([[], None, "abc", 5, [1, 2], [None], [["a"]], {"a": 1}])),
        "preprocessing": (junk.filter(lambda v: v is not None and not isinstance(v, dict))
                          | preprocessing_edits(pre, C, L)),
        "targets": (st.sampled_from(["abc", 5, True, {"a": 1}, 1.5, math.nan, [1], [None], [[]]])
                    | st.lists(junk.filter(lambda v: not isinstance(v, str)), min_size=1,
                               max_size=3)),
        "metrics": junk.filter(lambda v: v is not None and not isinstance(v, dict)),
    }


@st.composite
def preprocessing_edits(draw, pre: dict, C: int, L: int) -> dict:
    """The adapter's preprocessing with a key missing or extra, a list of the wrong length,
    the wrong window length, a non-number among the means, or statistics no window can
    be normalised with (NaN / Inf, a std <= 0)."""
    doc = json.loads(json.dumps(pre))
    how = draw(st.sampled_from(["missing", "extra", "mean", "std", "length", "type",
                                "nonfinite", "nonfinite"]))
    if how == "missing":
        doc.pop(draw(st.sampled_from(sorted(doc))))
    elif how == "extra":
        doc[draw(any_text.filter(lambda k: k not in doc))] = draw(junk)
    elif how in ("mean", "std"):
        n = draw(st.integers(0, C + 2).filter(lambda n: n != C))
        doc[how] = (doc[how] * 3)[:n]
    elif how == "length":
        doc["length"] = draw(st.integers(-10**6, 10**6).filter(lambda n: n != L)
                             | st.sampled_from(["x", None, [], math.nan]))
    elif how == "type":
        doc["mean"][draw(st.integers(0, C - 1))] = draw(st.sampled_from(["a", None, [], {}]))
    else:
        key = draw(st.sampled_from(["mean", "std"]))
        bad = [math.nan, math.inf, -math.inf] + ([0.0, -0.0, -1.0, -1e-30] if key == "std" else [])
        doc[key][draw(st.integers(0, C - 1))] = draw(st.sampled_from(bad))
    return doc


@st.composite
def header_fields(draw, kit: Kit) -> Drop:
    """fresh's header with 1-3 fields made bad (and maybe harmless extra keys), then
    re-signed with the trusted key (deep checks), the intruder's key, a garbage signature,
    an unknown key id, or no signature. Unsigned variants may keep every field good."""
    header = dict(kit.header)
    how = draw(st.sampled_from(["trusted", "trusted", "trusted", "intruder", "garbage",
                                "unknown-key", "unsigned"]))
    table = kit.cached(("fields",), lambda: bad_fields(kit))
    fields = draw(st.lists(st.sampled_from(sorted(table)), unique=True,
                           min_size=1 if how == "trusted" else 0, max_size=3))
    for key in fields:
        header[key] = draw(table[key])
    for _ in range(draw(st.integers(0, 2))):  # unknown keys are ignored: noise only
        header[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in kit.header))] = (
            draw(junk))
    return Drop(pack(sign_as(draw, how, header, kit), kit.body), f"fields-{how}")


def sign_as(draw, how: str, header: dict, kit: Kit) -> dict:
    if how == "trusted":
        return signed(header, kit.signer)
    if how == "intruder":
        return signed(header, kit.intruder)
    doc = {k: v for k, v in header.items() if k not in ("signature", "key_id")}
    if how == "garbage":  # not base64, the wrong length, another header's signature...
        doc["key_id"] = kit.header["key_id"]
        doc["signature"] = draw(st.sampled_from(["", "!!!", "AAAA", kit.header["signature"] + "=",
                                                 base64.b64encode(b"\0" * 64).decode(), 5,
                                                 1.5, True, [], {}, math.nan])
                                | any_text | st.binary(max_size=80).map(
                                    lambda b: base64.b64encode(b).decode()))
    elif how == "unknown-key":
        doc["key_id"] = draw(junk.filter(lambda k: k != kit.header["key_id"]))
        doc["signature"] = kit.header["signature"]
    return doc


@st.composite
def bad_tensors(draw, kit: Kit) -> Drop:
    """A valid trusted-signed header over tensors that must be refused: NaN / Inf values,
    wrong dtypes (bfloat16 too, which numpy lacks) or shapes, unknown names, none at all,
    or bytes that are no adapter."""
    how = draw(st.sampled_from(["nan", "dtype", "shape", "rename", "extra", "empty", "garbage",
                                "bfloat16"]))
    if how == "garbage":
        return Drop(over_body(kit, draw(st.binary(max_size=3000))), "tensors-garbage")
    if how == "bfloat16":
        return Drop(over_body(kit, bfloat16_body(kit)), "tensors-bfloat16")
    arrays = dict(kit.arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    value = arrays[name]
    if how == "nan":
        value = value.copy()
        flat = value.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(
            [math.nan, math.inf, -math.inf]))
        arrays[name] = value
    elif how == "dtype":
        arrays[name] = value.astype(draw(st.sampled_from(
            [np.float16, np.float64, np.int32, np.int64, np.int8, np.uint8])))
    elif how == "shape":
        arrays[name] = draw(st.sampled_from(reshapes(value)))
    elif how == "rename":
        arrays[draw(slotless(kit.arrays))] = arrays.pop(name)
    elif how == "extra":
        arrays[draw(slotless(kit.arrays))] = value
    else:
        arrays = {}
    return Drop(over_body(kit, adapter_body(arrays, kit.scratch)), f"tensors-{how}")


def slotless(arrays: dict) -> st.SearchStrategy[str]:
    """Tensor names that fill no slot (no lone surrogates: the writer needs UTF-8)."""
    names = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    return (names | st.sampled_from([f"{n}x" for n in arrays])).filter(
        lambda n: n not in arrays)


def reshapes(value: np.ndarray) -> list[np.ndarray]:
    """Arrays holding `value`'s numbers in every other shape we can think of."""
    out = [value[None], value.reshape(-1), np.concatenate([value, value[:1]])]
    if value.shape[0] > 1:
        out.append(value[:-1])
    if value.ndim > 1 and value.shape[-1] > 1:
        out.append(value[..., :-1])
    if value.ndim == 2 and value.shape[0] != value.shape[1]:
        out.append(value.T)
    return [a for a in out if a.shape != value.shape]


@st.composite
def near_valid_bodies(draw, kit: Kit) -> Drop:
    """fresh's body with 1-8 bytes edited under a valid signature, as a new version of
    EXPLORE: ONNX Runtime may still read it (new values), so it may be accepted."""
    body = bytearray(kit.body)
    for _ in range(draw(st.integers(1, 8))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    data = over_body(kit, bytes(body), name=EXPLORE, version=next(_counter))
    return Drop(data, "body-edit", must_refuse=False)


@st.composite
def oversize(draw, kit: Kit) -> Drop:
    """A trusted-signed adapter body past limits.max_adapter_bytes (its envelope within the
    MQTT / folder limit), or any envelope past that limit."""
    extra = draw(st.integers(1, 4096))
    if draw(st.booleans()):
        body = kit.body + b"\0" * (MAX_ADAPTER + extra - len(kit.body))
        return Drop(over_body(kit, body), "oversize-body")
    return Drop(kit.fresh + b"\0" * (kit.max_put + extra - len(kit.fresh)), "oversize-envelope")


def envelopes(kit: Kit, *, explore: bool = True, cheap: bool = False
              ) -> st.SearchStrategy[Drop]:
    """Every kind of bad envelope; `explore` adds near-valid bodies (which may be
    accepted); `cheap` leaves out those that write and load adapter files."""
    def build() -> st.SearchStrategy[Drop]:
        cases = [raw_bytes(), byte_edits(kit), framing(kit), json_headers(kit),
                 header_fields(kit), header_fields(kit), oversize(kit)]
        if not cheap:
            cases += [bad_tensors(kit), *([near_valid_bodies(kit)] if explore else [])]
        return st.one_of(*cases)

    return kit.cached(("envelopes", explore, cheap), build)


# --------------------------------------------------------------------------------------------
# Strategies: commands
# --------------------------------------------------------------------------------------------

line_values = (st.sampled_from(["line-a", "line-b", "line-c"])
               | st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
               | st.sampled_from(["", "a/b", "x" * 129, "line a", "l\xefne", "line-a\n", "+"])
               | junk)
name_values = (st.sampled_from(["base", "line-a", "nope", EXPLORE])
               | st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)
               | st.sampled_from(["", "a/b", "x" * 65, "BASE", "line-a "]) | junk)
version_values = (st.none() | st.integers(-2, 4)
                  | st.sampled_from([True, False, 1.0, 2.0, "1", 10**30, math.nan, math.inf])
                  | junk)
KINDS = st.sampled_from(["activate", "rollback"])
REPEAT = "repeat"


@st.composite
def command_docs(draw) -> bytes:
    """A command-shaped object: each field present or not, good or bad, plus extras."""
    doc = {}
    for key, values in (("line", line_values), ("name", name_values),
                        ("version", version_values), ("id", junk)):
        if draw(st.integers(0, 4)):
            doc[key] = draw(values)
    doc.update(draw(st.dictionaries(st.text(max_size=6), junk, max_size=2)))
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 1])))
    return text.encode("utf-16" if draw(st.integers(0, 19)) == 0 else "utf-8")


@st.composite
def good_commands(draw) -> bytes:
    """Well-formed commands on the configured lines, mostly for held adapters, their ids
    from a small pool: activations, rollbacks to them, and repeated ids get exercised."""
    doc = {"line": draw(st.sampled_from(["line-a", "line-b", "line-c"])),
           "id": draw(st.none() | st.sampled_from(["c1", "c2", "c3", 7]))}
    if draw(st.integers(0, 3)) == 0:  # a rollback's fields only
        return json.dumps(doc).encode()
    doc["name"] = draw(st.sampled_from(["base", "line-a", "line-a", "nope"]))
    if doc["name"] != "base":
        doc["version"] = draw(st.sampled_from([None, 1, 2, 3]))
    return json.dumps(doc).encode()


@st.composite
def command_payloads(draw, max_bytes: int = 1 << 20) -> bytes:
    """Command docs, good commands, any JSON, any bytes, deep towers, oversize objects."""
    how = draw(st.sampled_from(["doc", "doc", "doc", "good", "good", "json", "bytes", "tower",
                                "oversize"]))
    if how == "good":
        return draw(good_commands())
    if how == "doc":
        return draw(command_docs())
    if how == "json":
        return json.dumps(draw(junk)).encode()
    if how == "bytes":
        return draw(st.binary(max_size=512))
    if how == "tower":
        return nested(draw(st.integers(1, max_bytes // 6)), draw(st.integers(0, 2)))[:max_bytes]
    pad = "x" * (MAX_COMMAND_BYTES + draw(st.integers(0, 2048)))
    return json.dumps({"line": "line-b", "name": "base", "pad": pad}).encode()


def read_command(kind: str, payload: bytes) -> dict | None:
    """The test's reading of a command (docs: MQTT topics): its fields, or None when it is
    malformed."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or set(doc) - COMMAND_FIELDS[kind]:
        return None  # an unknown field is refused, never ignored
    line = doc.get("line")
    if not isinstance(line, str) or not LINE_NAME.fullmatch(line):
        return None
    if kind == "rollback":
        return {"line": line}
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        return None
    if version is not None and (type(version) is not int or not 1 <= version <= MAX_VERSION):
        return None
    if name == "base" and version is not None:
        return None
    return {"line": line, "name": None if name == "base" else name, "version": version}


def expected_command(kind: str, payload: bytes, lines: LineState, held: set,
                     applied: deque) -> tuple[str, dict] | str | None:
    """(line, its new route) after the command, REPEAT when its id was applied before (a
    QoS 1 redelivery: answered, not applied again), or None when it must be refused.
    `lines`, `held` and the `applied` ids are the gateway's state before it."""
    doc = read_command(kind, payload)
    if doc is None:
        return None
    if request_id(payload) in applied:
        return REPEAT
    line = doc["line"]
    if kind == "activate":
        return routed(line, doc["name"], doc["version"], held)
    earlier = lines.history.get(line, ())
    return routed(line, earlier[-1].adapter, earlier[-1].version, held) if earlier else None


def routed(line: str, name: str | None, version: int | None, held: set) -> tuple | None:
    """(line, route) when (name, version) resolves among the held adapters."""
    if name is None:
        return (line, {"adapter": "base", "version": None})
    versions = [v for n, v in held if n == name and version in (None, v)]
    return (line, {"adapter": name, "version": max(versions)}) if versions else None


# --------------------------------------------------------------------------------------------
# The gateway under test
# --------------------------------------------------------------------------------------------

class Answer:
    """A control-thread `done` callback: the refusal's reason, or None once accepted."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None

    def __call__(self, reason: str | None) -> None:
        self.reason = reason
        self.event.set()

    def wait(self) -> str | None:
        assert self.event.wait(WAIT_S), "the control thread did not answer"
        return self.reason


@dataclass
class Gateway(Short):
    svc: Service
    kit: Kit
    collector: Collector
    pub: Publisher
    inbox: Path
    tally: Counter = field(default_factory=Counter)
    applied: deque = field(default_factory=lambda: deque(maxlen=DONE_IDS))  # command ids

    def __repr__(self) -> str:
        return f"Gateway({self.svc.cfg.device.id})"

    def files(self) -> set[str]:
        return set(os.listdir(self.svc.store.dir))

    def held(self) -> set[tuple[str, int]]:
        return set(self.svc.store.held)

    def routing_json(self) -> bytes | None:
        path = self.svc.cfg.device.state_dir / STATE_FILE
        return path.read_bytes() if path.exists() else None

    def put(self, data: bytes, source: str = "folder:fuzz") -> str | None:
        """An envelope through the control thread, as the watch folder hands it over."""
        answer = Answer()
        self.svc.control.submit_file(data, source, answer)
        return answer.wait()

    def command(self, kind: str, payload: bytes) -> str | None:
        """An activate / rollback through the control thread, as paho's handler queues it."""
        answer = Answer()
        self.svc.control.submit(Command(kind, payload, f"{ADAPTERS}/{kind}", "fuzz",
                                         time.monotonic(), None, answer))
        return answer.wait()


@pytest.fixture
def gateway(runtime_config, basicmotions_bundle, mosquitto, tmp_path):
    """A started Service that requires signatures, watches tmp_path/inbox, and holds line-a
    v2 (accepted through the control thread: line-a follows it, line-c is pinned to v1)."""
    signer, public = keygen(out=tmp_path / "keys" / "plant")
    intruder, _ = keygen(out=tmp_path / "keys" / "intruder")
    inbox = tmp_path / "inbox"
    config = runtime_config(lines=LINES, limits={"max_adapter_bytes": MAX_ADAPTER},
                            adapters={"require_signed": True, "trusted_keys": [str(public)],
                                      "watch_dir": str(inbox), "watch_interval_s": 0.05})
    collector = Collector(mosquitto.port, (f"factory/{DEVICE}/#", "factory/+/inference"))
    svc = Service(config)
    pub = Publisher(mosquitto.port)
    try:
        assert svc.start(), "service did not connect"
        scratch = tmp_path / "scratch"
        kit = build_kit(basicmotions_bundle, signer, intruder, scratch, svc.control.max_put)
        gw = Gateway(svc, kit, collector, pub, inbox)
        assert gw.put(kit.held) is None, "valid signed v2 refused"
        assert svc.routes.describe()["line-a"] == {"adapter": "line-a", "version": 2}
        assert collector.wait(lambda c: any(  # the fuzz counts state messages from here
            d["lines"]["line-a"]["version"] == 2 for d in c.docs("/adapters/state")))
        yield gw
    finally:
        pub.close()
        collector.close()
        svc.stop(5)


def still_serves(gw: Gateway) -> None:
    """The control thread is alive, takes the valid line-a v3, and routes real windows."""
    assert gw.svc.control.alive(), "the control thread died"
    assert gw.put(gw.kit.fresh) is None, "the valid signed line-a v3 was refused"
    for line, name in (("line-a", "line-a"), ("line-b", "base")):
        doc = {"line": line, "name": name, "version": 3 if name == "line-a" else None}
        assert gw.command("activate", json.dumps(doc).encode()) is None
    x, _, _ = sample_windows(2)
    ids = {"fz-probe-a": "line-a", "fz-probe-b": "line-b"}
    for (msg_id, line), window in zip(ids.items(), x, strict=True):
        gw.pub.json(f"factory/{line}/sensors/s1", msg_id, window)
    assert gw.collector.wait(lambda c: set(ids) <= {d["id"] for d in c.docs("/inference")})
    results = {d["id"]: d for d in gw.collector.docs("/inference")}
    assert (results["fz-probe-a"]["adapter"], results["fz-probe-a"]["adapter_version"]) == (
        "line-a", 3)
    assert results["fz-probe-b"]["adapter"] == "base"
    assert_store_clean(gw)


def count(collector: Collector, topic: str) -> int:
    return sum(1 for t, _, _ in list(collector.messages) if t == topic)


# --------------------------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------------------------

def check_put(gw: Gateway, drop: Drop) -> None:
    """store.accept on one envelope: AdapterRejected / BadMessage with a reason and no
    trace, or (only for a near-valid body or an unchanged v2) a real, complete adapter."""
    held, files, routes = gw.held(), gw.files(), gw.svc.routes
    try:
        got, new = gw.svc.store.accept(drop.data, "fuzz")
    except (AdapterRejected, BadMessage) as exc:
        assert str(exc).strip(), drop
        assert (gw.held(), gw.files()) == (held, files), f"refused {drop.label} left a trace"
        gw.tally[f"{drop.label}: refused"] += 1
    else:
        assert not drop.must_refuse or (not new and got.key in held), (
            f"{drop.label} accepted as {got.key}")
        stem = f"{got.entry.name}.v{got.entry.version}"
        added = {f"{stem}.json", f"{stem}.onnx_adapter"} if new else set()
        assert (gw.held(), gw.files()) == (held | {got.key}, files | added)
        assert sha256_file(got.path) == got.entry.sha256
        gw.tally[f"{drop.label}: {'accepted' if new else 'already held'}"] += 1
    assert gw.svc.routes is routes


def check_command(gw: Gateway, kind: str, payload: bytes) -> None:
    """One command through the control thread: refused with a reason and nothing changed,
    or done exactly as `expected_command` says, every other line as it was."""
    lines, routes, saved = gw.svc.control.lines, gw.svc.routes, gw.routing_json()
    want = expected_command(kind, payload, lines, gw.held(), gw.applied)
    reason = gw.command(kind, payload)
    if reason is not None or want == REPEAT:
        assert reason is None or (reason.strip() and want is None), (
            f"valid {kind} {payload[:200]!r} refused: {reason}")
        assert gw.svc.routes is routes and gw.svc.control.lines is lines
        assert gw.routing_json() == saved
        gw.tally[f"{kind}: {'refused' if reason else 'repeat, not applied'}"] += 1
        return
    assert want is not None, f"{kind} {payload[:200]!r} was not refused"
    if request_id(payload) is not None:
        gw.applied.append(request_id(payload))
    line, route = want
    now, held = gw.svc.control.lines.lines, gw.held()
    assert {k: a for k, a in now.items() if k != line} == {
        k: a for k, a in lines.lines.items() if k != line}, "another line was reassigned"
    table = gw.svc.routes.describe()
    assert table.pop(line) == route
    for other, got in table.items():  # as assigned (a line may follow a newer version)
        assert (other, got) == routed(other, now[other].adapter, now[other].version, held)
    gw.tally[f"{kind}: done"] += 1


@dataclass(frozen=True, repr=False)
class MqttCase(Short):
    topic: str
    payload: bytes
    label: str
    retain: bool = False  # refused (it would run again at each reconnect), then cleared

    def __repr__(self) -> str:
        return (f"MqttCase({self.topic!r}, {self.label!r}, retain={self.retain}, "
                f"{len(self.payload)} bytes: {preview(self.payload)})")

    @property
    def answered(self) -> bool:
        return bool(self.payload)  # an empty payload clears a retained one: no answer


@st.composite
def mqtt_cases(draw, gw: Gateway) -> MqttCase:
    """A command or an envelope that must be refused (valid commands are checked in
    process, one by one: over the broker inputs go in batches), maybe retained, or an
    empty payload, which gets no answer."""
    case = draw(refused_over_mqtt(gw))
    how = draw(st.integers(0, 19))
    return MqttCase(case.topic, b"" if how == 0 else case.payload, case.label, how == 1)


@st.composite
def refused_over_mqtt(draw, gw: Gateway) -> MqttCase:
    if draw(st.booleans()):
        kind = draw(KINDS)
        payload = draw(command_payloads(max_bytes=gw.kit.max_put))
        assume(len(payload) > MAX_COMMAND_BYTES or expected_command(
            kind, payload, gw.svc.control.lines, gw.held(), gw.applied) is None)
        return MqttCase(f"{ADAPTERS}/{kind}", payload, kind)
    drop = draw(envelopes(gw.kit, explore=False))
    assume(drop.must_refuse)  # an unchanged v2 would answer on the state topic
    level = draw(st.sampled_from(["line-a", "line-a", "line-b"])
                 | st.text(st.characters(categories=["L", "N"], include_characters="-_. "),
                           min_size=1, max_size=16))
    return MqttCase(PUT + level, drop.data, drop.label)


def errors_since(gw: Gateway, start: int) -> list[dict]:
    return [json.loads(p) for t, p, _ in list(gw.collector.messages)[start:] if t == ERRORS]


def check_mqtt(gw: Gateway, cases: list[MqttCase]) -> None:
    """Publish a batch (at most half the control queue); one error per input comes back,
    for its topic, with a reason; no state change. (The run's total is checked at the
    end, after a sentinel: a late second answer would show there.)"""
    routes, lines = gw.svc.routes, gw.svc.control.lines
    start, states = len(gw.collector.messages), count(gw.collector, STATE)
    for case in cases:
        publish = gw.pub.client.publish
        gw.pub.pending.append(publish(case.topic, case.payload, qos=1, retain=case.retain))
        if case.retain:
            gw.pub.pending.append(publish(case.topic, b"", qos=1, retain=True))
    gw.pub.flush()
    want = Counter(c.topic for c in cases if c.answered)
    assert gw.collector.wait(lambda c: len(errors_since(gw, start)) >= want.total())
    errors = errors_since(gw, start)
    assert Counter(e["topic"] for e in errors) == want, errors
    assert all(e["reason"].strip() for e in errors), errors
    assert gw.svc.routes is routes and gw.svc.control.lines is lines
    assert count(gw.collector, STATE) == states
    for case in cases:
        outcome = "refused" if case.answered else "ignored (empty)"
        gw.tally[f"mqtt {case.label}{' retained' if case.retain else ''}: {outcome}"] += 1


def sentinel(gw: Gateway) -> None:
    """A last bad command: every earlier answer came before its error."""
    gw.pub.raw(ROLLBACK, b'{"line": "!", "id": "fz-sentinel"}')
    gw.pub.flush()
    assert gw.collector.wait(lambda c: any(d["id"] == "fz-sentinel" for d in c.docs("/errors")))


# --------------------------------------------------------------------------------------------
# Default run
# --------------------------------------------------------------------------------------------

@FAST
@given(KINDS, command_payloads())
def test_parse_command(kind, payload):
    """`parse_command` returns exactly the fields the docs give a command, or raises
    BadMessage with a reason; `request_id` never raises."""
    msg_id = request_id(payload)
    assert msg_id is None or (isinstance(msg_id, str) and len(msg_id) <= 128)
    want = read_command(kind, payload)
    try:
        doc = parse_command(payload, kind)
    except BadMessage as exc:
        assert str(exc).strip()
        assert want is None, f"valid {kind} {payload[:200]!r} refused: {exc}"
        return
    assert doc == {**(want or {}), "id": msg_id}, payload[:200]


@FAST
@given(st.binary(max_size=256) | junk.map(lambda h: frame(json.dumps(h).encode(), b"")))
def test_peek_id(data):
    """peek_id (which names a refusal) never raises: "<name>.v<version>" or None."""
    got = peek_id(MAGIC + data[8:] if data[:1] == b"E" else data)
    assert got is None or (isinstance(got, str) and ".v" in got)


@st.composite
def assignment_docs(draw) -> dict:
    doc = draw(st.dictionaries(st.sampled_from(["adapter", "version"]) | any_text, junk,
                               max_size=3))
    if draw(st.booleans()):
        doc["adapter"] = draw(st.sampled_from([None, "base", "line-a"]) | junk)
    if draw(st.booleans()):
        doc["version"] = draw(version_values)
    return doc


@FAST
@given(assignment_docs())
def test_assignment_parse(doc):
    """An assignment, or ValueError; a parsed one survives describe() and parse() again."""
    try:
        got = Assignment.parse(doc)
    except ValueError as exc:
        assert str(exc)
        return
    assert got.adapter is None or isinstance(got.adapter, str)
    assert got.version is None or type(got.version) is int
    assert got.adapter is not None or got.version is None
    if got.adapter != "":  # "" parses as an adapter name but describes itself as "base"
        assert Assignment.parse(json.loads(json.dumps(got.describe()))) == got


@pytest.fixture(scope="module")
def line_config(tmp_path_factory):
    """A config with LINES and its saved routing.json after a few real changes."""
    root = tmp_path_factory.mktemp("routing")
    cfg = load_config(write_runtime_config(root, port=1, bundle=None, lines=LINES))
    cfg.device.state_dir.mkdir(parents=True, exist_ok=True)
    state = LineState.load(cfg).activate("line-b", "line-a", 2).activate("line-a", None, None)
    state = state.rollback("line-a").activate("line-c", "line-a", None)
    state.save()
    return cfg, (cfg.device.state_dir / STATE_FILE).read_bytes()


def mutate_tree(draw, doc):
    """`doc` with one subtree (maybe the root) replaced by junk, or one key dropped."""
    if not isinstance(doc, (dict, list)) or not doc or draw(st.integers(0, 3)) == 0:
        return draw(junk)
    keys = sorted(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = draw(st.sampled_from(keys))
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    if isinstance(out, dict) and draw(st.integers(0, 4)) == 0:
        del out[key]
    else:
        out[key] = mutate_tree(draw, out[key])
    return out


@st.composite
def routing_files(draw, valid: bytes) -> bytes:
    """Corrupt routing.json: any bytes, the valid file cut or with a subtree replaced
    (huge numbers too), nesting past the recursion limit, not UTF-8."""
    how = draw(st.sampled_from(["bytes", "cut", "tree", "tree", "tree", "nesting", "utf16"]))
    if how == "bytes":
        return draw(st.binary(max_size=512))
    if how == "cut":
        return valid[:draw(st.integers(0, len(valid)))]
    if how == "nesting":
        return nested(draw(st.integers(1, 100_000)), draw(st.integers(0, 2)))
    if how == "utf16":
        return valid.decode().encode("utf-16")
    return json.dumps(mutate_tree(draw, json.loads(valid))).encode()


@FAST
@given(st.data())
def test_line_state_load_survives_a_corrupt_file(line_config, data):
    """LineState.load never raises: it returns topics.lines or a state that saves and
    loads back the same."""
    cfg, valid = line_config
    raw = data.draw(routing_files(valid))
    path = cfg.device.state_dir / STATE_FILE
    path.write_bytes(raw)
    state = LineState.load(cfg)
    for line, assignment in state.lines.items():
        assert isinstance(line, str) and isinstance(assignment, Assignment)
        assert assignment.adapter is None or isinstance(assignment.adapter, str)
        assert assignment.version is None or type(assignment.version) is int
    if raw == valid:
        assert state.lines["line-b"] == Assignment("line-a", 2)
    state.save()
    again = LineState.load(cfg)
    assert (again.lines, again.history) == (state.lines, state.history)
    path.write_bytes(valid)


def test_puts_in_process(gateway):
    """store.accept on every kind of bad envelope, then the valid v3 over the control
    thread and a real window answered by it."""

    @FAST
    @given(envelopes(gateway.kit))
    def run(drop: Drop) -> None:
        check_put(gateway, drop)

    run()
    still_serves(gateway)
    print(f"\nin-process puts: {sorted(gateway.tally.items())}")


def test_commands_in_process(gateway):
    """activate / rollback commands through the control thread: each refused with one
    reason and nothing changed, or done exactly as the docs say."""

    @FAST
    @given(KINDS, command_payloads())
    def run(kind: str, payload: bytes) -> None:
        check_command(gateway, kind, payload)

    run()
    still_serves(gateway)
    print(f"\nin-process commands: {sorted(gateway.tally.items())}")


def test_restart_holds_what_the_fuzz_left(gateway):
    """After puts (some near-valid bodies accepted) and commands, a new Service on the same
    state_dir holds the same adapters, assignments and routes."""
    gw = gateway
    puts_round(gw, 60)
    commands_round(gw, 60)
    held, lines, routes = gw.held(), gw.svc.control.lines.lines, gw.svc.routes.describe()
    gw.svc.stop(5)
    again = Service(gw.svc.cfg)
    try:
        assert set(again.store.held) == held
        assert again.control.lines.lines == lines
        assert again.routes.describe() == routes
    finally:
        again.stop(1)


def test_mqtt_control_topics(gateway):
    """A smaller sample over the broker: one answer per input, errors name the topic."""
    mqtt_round(gateway, 12)
    still_serves(gateway)
    print(f"\nmqtt: {sorted(gateway.tally.items())}")


def mqtt_round(gw: Gateway, batches: int) -> None:
    """Batches of up to 16 MQTT inputs, then a sentinel: exactly one error per input."""
    errors, states = count(gw.collector, ERRORS), count(gw.collector, STATE)
    tried = []

    @settings(FAST, max_examples=batches)
    @given(st.data())
    def run(data) -> None:
        cases = data.draw(st.lists(mqtt_cases(gw), min_size=1, max_size=16))
        tried.extend(c for c in cases if c.answered)
        check_mqtt(gw, cases)

    run()
    sentinel(gw)
    assert count(gw.collector, ERRORS) - errors == len(tried) + 1
    assert count(gw.collector, STATE) == states


@dataclass(frozen=True, repr=False)
class FolderEntry(Short):
    name: str
    kind: str  # "drop" (a bad envelope), "ignored" (a file), "dir", "link"
    data: bytes = b""
    label: str = ""

    def __repr__(self) -> str:
        return f"FolderEntry({self.name!r}, {self.kind!r}, {preview(self.data)})"

    @property
    def taken(self) -> bool:
        return self.kind == "drop"


@st.composite
def folder_entries(draw, kit: Kit) -> FolderEntry:
    """A bad drop under a fresh name (maybe non-ASCII, maybe not UTF-8), or an entry the
    watcher must leave alone: a dot-file, *.tmp / *.part / *.reason, a symlink, a folder.
    Left out: names past ~230 bytes (refused once, but they cannot be moved out under a
    timestamp prefix: they stay in the folder, without a reason file)."""
    name = f"fz{next(_counter):05d}-" + draw(st.text(
        st.characters(categories=["L", "N"], include_characters="-_. \n'\"*?\\#+"),
        max_size=12))
    if draw(st.integers(0, 9)) == 0:
        name += os.fsdecode(b"\xff\xfe")  # not UTF-8: os.listdir gives surrogate escapes
    kind = draw(st.sampled_from(["drop"] * 8 + ["dot", ".tmp", ".part", ".reason", "dir",
                                                 "link"]))
    if kind == "drop":
        drop = draw(kit.cached(("folder",), lambda: envelopes(kit, explore=False).filter(
            lambda d: d.must_refuse)))
        return FolderEntry(name, "drop", drop.data, drop.label)
    if kind in ("dir", "link"):
        return FolderEntry(name, kind, label=kind)
    return FolderEntry("." + name if kind == "dot" else name + kind, "ignored", b"junk", kind)


def place(inbox: Path, entry: FolderEntry) -> None:
    """Written aside and renamed in, as the docs ask of writers."""
    path = inbox / entry.name
    if entry.kind == "dir":
        path.mkdir()
    elif entry.kind == "link":
        path.symlink_to(inbox.parent / "keys" / "plant.pub")
    else:
        tmp = inbox / f".{next(_counter)}.part"
        tmp.write_bytes(entry.data)
        os.replace(tmp, path)


def rejected_as(inbox: Path, name: str) -> tuple[list[str], list[str]]:
    """Entries of rejected/ for `name` (`<timestamp>-<name>`) and the texts of its reasons."""
    entries = os.listdir(inbox / "rejected")
    moved = [e for e in entries if e[16:] == name]
    reasons = [(inbox / "rejected" / e).read_text() for e in entries if e[16:] == name + ".reason"]
    return moved, reasons


def error_topics(c: Collector) -> Counter:
    return Counter(json.loads(p)["topic"] for t, p, _ in list(c.messages) if t == ERRORS)


def decided(gw: Gateway, names: list[str]) -> bool:
    """Each name left the inbox for rejected/, beside a complete reason, and has an error."""
    topics = error_topics(gw.collector)
    for name in names:
        moved, reasons = rejected_as(gw.inbox, name)
        if len(moved) != 1 or len(reasons) != 1 or not reasons[0].endswith("\n"):
            return False
        if not topics[_SURROGATE.sub("\ufffd", f"file:{name}")]:  # reports are valid UTF-8
            return False
    return True


def test_watch_folder(gateway):
    """Bad drops in the watch folder: each moved to rejected/ beside a non-empty reason and
    refused once on the errors topic; ignored entries stay untouched and unanswered."""
    folder_round(gateway, 8)
    still_serves(gateway)
    print(f"\nwatch folder: {sorted(gateway.tally.items())}")


def folder_round(gw: Gateway, batches: int) -> None:
    """Batches of up to 6 entries dropped at once, then a sentinel: one error per drop."""
    held, files, routes = gw.held(), gw.files(), gw.svc.routes
    placed: list[FolderEntry] = []

    @settings(FAST, max_examples=batches)
    @given(st.lists(folder_entries(gw.kit), min_size=1, max_size=6))
    def run(batch: list[FolderEntry]) -> None:
        for entry in batch:
            place(gw.inbox, entry)
        placed.extend(batch)
        taken = [e.name for e in batch if e.taken]
        assert wait_until(lambda: decided(gw, taken)), taken
        assert all(rejected_as(gw.inbox, n)[1][0].strip() for n in taken)
        assert gw.svc.routes is routes and (gw.held(), gw.files()) == (held, files)

    run()
    last = f"zz-sentinel-{next(_counter)}"
    place(gw.inbox, FolderEntry(last, "drop", b"junk"))
    assert wait_until(lambda: decided(gw, [last]))
    topics = error_topics(gw.collector)
    for entry in placed:
        assert topics[_SURROGATE.sub("\ufffd", f"file:{entry.name}")] == entry.taken, entry
        assert os.path.lexists(gw.inbox / entry.name) != entry.taken, entry
        gw.tally[f"folder {entry.label}: {'refused' if entry.taken else 'left alone'}"] += 1
    assert not os.listdir(gw.inbox / "accepted")


def test_memory_stays_bounded(gateway):
    """Thousands of in-process envelopes (those that stop before the tensor checks: the
    soak runs them all) and some commands: RSS grows by less than RSS_BOUND after the
    first round, and the adapters folder holds only the accepted adapters."""
    stats = fuzz_for(gateway, rounds=2, puts=500, commands=30, cheap=True)
    still_serves(gateway)
    print(f"\nmemory: {sum(gateway.tally.values())} inputs, {stats}")


def fuzz_for(gw: Gateway, *, rounds: int = 0, minutes: float = 0.0, puts: int, commands: int,
             cheap: bool = False) -> dict:
    """Rounds of in-process puts (all refused, or an unchanged v2) and commands (`rounds`
    of them, or until `minutes` passed); the RSS after the first round is the baseline the
    later ones are held to. Near-valid bodies stay out: each accepted one is held for good."""
    baseline, deadline, done = None, time.monotonic() + minutes * 60, 0
    rss = psutil.Process().memory_info().rss
    while done < rounds or time.monotonic() < deadline:
        puts_round(gw, puts, cheap=cheap, explore=False)
        commands_round(gw, commands)
        done += 1
        with gw.collector._cond:  # the test's copy of every answer is not the gateway's RSS
            gw.collector.messages.clear()
        rss = psutil.Process().memory_info().rss
        baseline = rss if baseline is None else baseline
        assert rss - baseline < RSS_BOUND, f"RSS grew {(rss - baseline) >> 20} MiB"
        assert_store_clean(gw)
    return {"rounds": done, "rss_growth_mib": (rss - baseline) >> 20}


def assert_store_clean(gw: Gateway) -> None:
    """<state_dir>/adapters holds the file and header of each accepted adapter, no more."""
    want = set()
    for held in gw.svc.store.held.values():
        if held.source != "bundle":
            want |= {held.path.name, f"{held.entry.name}.v{held.entry.version}.json"}
    assert gw.files() == want


def puts_round(gw: Gateway, n: int, *, cheap: bool = False, explore: bool = True) -> None:
    @settings(FAST, max_examples=n)
    @given(envelopes(gw.kit, cheap=cheap, explore=explore))
    def run(drop: Drop) -> None:
        check_put(gw, drop)

    run()


def commands_round(gw: Gateway, n: int) -> None:
    @settings(FAST, max_examples=n)
    @given(KINDS, command_payloads())
    def run(kind: str, payload: bytes) -> None:
        check_command(gw, kind, payload)

    run()


# --------------------------------------------------------------------------------------------
# The soak
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(0)
def test_control_fuzz_soak(gateway):
    """FUZZ_MINUTES (default 2) of in-process puts and commands with the RSS held to
    RSS_BOUND, then near-valid bodies, an MQTT sample and folder drops: prints how many
    inputs were tried and what became of them."""
    minutes = float(os.environ.get("FUZZ_MINUTES", "2"))
    stats = fuzz_for(gateway, minutes=minutes, puts=500, commands=200)
    rss = psutil.Process().memory_info().rss
    puts_round(gateway, 300)  # near-valid bodies too: the accepted ones stay held
    accepted = sum(n for k, n in gateway.tally.items() if k.endswith(": accepted"))
    grown = (psutil.Process().memory_info().rss - rss) >> 20
    mqtt_round(gateway, 60)
    folder_round(gateway, 10)
    still_serves(gateway)
    total = sum(gateway.tally.values())
    print(f"\ncontrol fuzz soak: {total} inputs ({minutes:g} min in process, then the rest); "
          f"{stats['rounds']} rounds, RSS growth {stats['rss_growth_mib']} MiB after the "
          f"first; {accepted} near-valid bodies accepted (RSS +{grown} MiB), "
          f"{len(gateway.held())} adapters held")
    for outcome, n in sorted(gateway.tally.items()):
        print(f"  {n:7d}  {outcome}")
    assert total >= 1000


# --------------------------------------------------------------------------------------------
# Regressions: the bugs this fuzz found, each as its minimal input
# --------------------------------------------------------------------------------------------

def test_header_with_a_5000_digit_number_is_refused():
    """Was: json.loads raises a plain ValueError past Python's 4300-digit int limit, which
    unpack did not catch (store.accept raised ValueError; unsigned, so anyone)."""
    with pytest.raises(AdapterRejected):
        unpack(frame(b'{"version": ' + b"1" * 5000 + b"}", b""), 1 << 20)


@pytest.mark.parametrize("kid", [[], {}])
def test_key_id_that_is_not_a_string_is_refused(kid):
    """Was: `kid not in trusted` raised TypeError (unhashable) for a list or object."""
    with pytest.raises(AdapterRejected):
        verify({"signature": "AAAA", "key_id": kid}, {}, require_signed=True)


@pytest.mark.parametrize("version", [2**31, 2**64, 10**300])
def test_huge_version_is_refused(gateway, version):
    """Was: 2**64 and 10**30 were accepted and held; 10**300 made mkstemp fail with
    ENAMETOOLONG outside its try (store.accept raised OSError). Needs a trusted key."""
    kit = gateway.kit
    with pytest.raises(AdapterRejected, match="version"):
        gateway.svc.store.accept(pack(signed({**kit.header, "version": version}, kit.signer),
                                      kit.body), "fuzz")
    assert gateway.files() == {"line-a.v2.json", "line-a.v2.onnx_adapter"}


def test_bfloat16_tensor_is_refused(gateway):
    """Was: OrtValue.numpy() raised RuntimeError for a bfloat16 tensor, outside the
    wrapped read_adapter call (store.accept raised RuntimeError). Needs a trusted key."""
    kit = gateway.kit
    data = over_body(kit, bfloat16_body(kit))
    with pytest.raises(AdapterRejected):
        gateway.svc.store.accept(data, "fuzz")


def bfloat16_body(kit: Kit) -> bytes:
    """fresh's first tensor as bfloat16 zeros: a type numpy does not have."""
    name = sorted(kit.arrays)[0]
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(3)
    fmt.set_model_version(1)
    bits = np.zeros(kit.arrays[name].shape, np.uint16)
    fmt.set_parameters({name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, 16)})
    fd, path = tempfile.mkstemp(suffix=".onnx_adapter", dir=kit.scratch)
    os.close(fd)
    try:
        fmt.export_adapter(path)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


@pytest.mark.parametrize("key, value", [("std", 0.0), ("mean", math.nan)])
def test_preprocessing_that_cannot_normalise_is_refused(gateway, key, value):
    """Was: only the lengths were checked. The adapter was accepted and persisted, the put
    answered as refused (the routing table's Normalizer raised), every later activate
    refused the same way, and the Service could not start again. Needs a trusted key."""
    kit = gateway.kit
    pre = {**kit.header["preprocessing"], key: [value] * kit.channels}
    reason = gateway.put(over_body(kit, kit.body, preprocessing=pre))
    assert reason is not None and "preprocessing" in reason
    assert ("line-a", 3) not in gateway.held()
    doc = {"line": "line-b", "name": "line-a", "version": 2}
    assert gateway.command("activate", json.dumps(doc).encode()) is None


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '{"config_lines": {}, "lines": {}, "since": {"line-a": 1' + "0" * 400 + "}}",
], ids=["deep", "huge-since"])
def test_corrupt_routing_json_falls_back(line_config, text):
    """Was: RecursionError (deep nesting) and OverflowError (float() of a huge int) left
    LineState.load, so the Service could not start on a corrupt routing.json."""
    cfg, valid = line_config
    path = cfg.device.state_dir / STATE_FILE
    path.write_text(text)
    try:
        state = LineState.load(cfg)
    finally:
        path.write_bytes(valid)
    assert state.lines == LineState.from_config(cfg).lines


def test_oversize_folder_drop_is_reported(gateway):
    """Was: a file over the limit went to rejected/ with its reason file but was never
    reported on the errors topic, unlike every other refused drop."""
    gw = gateway
    place(gw.inbox, FolderEntry("fz-big", "drop", b"\0" * (gw.kit.max_put + 1)))
    assert wait_until(lambda: decided(gw, ["fz-big"]))
    place(gw.inbox, FolderEntry("zz-sentinel", "drop", b"junk"))
    assert wait_until(lambda: decided(gw, ["zz-sentinel"]))
    assert error_topics(gw.collector)["file:fz-big"] == 1


def test_lone_surrogate_in_a_refusal_keeps_the_control_thread(gateway):
    """Was a crash: a trusted-signed drop whose base_fingerprint is a lone surrogate
    ('\\ud800', a valid JSON escape) is refused with it in the reason; writing the reason
    file raised UnicodeEncodeError in the control thread's done callback and ended it."""
    gw = gateway
    data = pack(signed({**gw.kit.header, "base_fingerprint": "\ud800"}, gw.kit.signer),
                gw.kit.body)
    place(gw.inbox, FolderEntry("fz-surrogate", "drop", data))
    assert wait_until(lambda: decided(gw, ["fz-surrogate"]))
    assert "trained on base" in rejected_as(gw.inbox, "fz-surrogate")[1][0]
    still_serves(gw)
