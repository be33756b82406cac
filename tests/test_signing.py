"""Signed adapter envelopes: keygen, sign, unpack, verify, and every way to get refused."""

from __future__ import annotations

import base64
import json

import pytest

from edge.bundle import AdapterEntry, read_manifest
from edge.envelope import load_public_keys, pack, unpack, verify
from edge.errors import AdapterRejected, ConfigError, ExportError
from export.signing import envelope_bytes, keygen, sign


@pytest.fixture(scope="module")
def bundle(signing_bundle):
    """A tiny base with one LoRA adapter "line7" (tests/adapter_factory.py signing_bundle)."""
    return signing_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return keygen(out=root / "plant"), keygen(out=root / "intruder")


def test_signed_envelope_verifies(bundle, keys, tmp_path):
    (private, public), _ = keys
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    path = sign(bundle=bundle, name="line7", key=private, out=tmp_path / "line7.edgeadp")
    header, body = unpack(path.read_bytes(), max_bytes=1 << 20)
    assert header["name"] == "line7" and header["version"] == 1 and len(body) == header["size"]
    trusted = load_public_keys([public])
    assert verify(header, trusted, require_signed=True) == header["key_id"]
    with pytest.raises(ExportError, match="--force"):
        sign(bundle=bundle, name="line7", key=private, out=path)


def _tamper(data: bytes, **changes) -> bytes:
    header, body = unpack(data, max_bytes=1 << 20)
    header.update(changes)
    return pack(header, body)


@pytest.mark.parametrize("case, mutate, match", [
    ("body flipped", lambda d: d[:-1] + bytes([d[-1] ^ 1]), "sha256"),
    ("truncated", lambda d: d[:-10], "body has"),
    ("bad magic", lambda d: b"XXXXXXXX" + d[8:], "bad magic"),
    ("header length", lambda d: d[:8] + b"\xff\xff\xff\xff" + d[12:], "out of bounds"),
    ("garbage", lambda d: b"\x00" * 3, "bad magic"),
    ("oversize", lambda d: d + b"\x00" * (1 << 20), "exceeds the limit"),
])
def test_malformed_envelopes(bundle, keys, case, mutate, match):
    (private, _), _ = keys
    data = envelope_bytes(bundle=bundle, name="line7", key=private)
    with pytest.raises(AdapterRejected, match=match):
        unpack(mutate(data), max_bytes=1 << 20)


def test_signature_refusals(bundle, keys):
    (private, public), (other_private, _) = keys
    trusted = load_public_keys([public])
    signed = envelope_bytes(bundle=bundle, name="line7", key=private)
    # A changed header field (here: the version) breaks the signature.
    header, _ = unpack(_tamper(signed, version=99), max_bytes=1 << 20)
    with pytest.raises(AdapterRejected, match="signature is invalid"):
        verify(header, trusted, require_signed=True)
    header, _ = unpack(envelope_bytes(bundle=bundle, name="line7", key=other_private), 1 << 20)
    with pytest.raises(AdapterRejected, match="not among the trusted keys"):
        verify(header, trusted, require_signed=True)
    header, _ = unpack(envelope_bytes(bundle=bundle, name="line7"), 1 << 20)
    with pytest.raises(AdapterRejected, match="not signed"):
        verify(header, trusted, require_signed=True)
    assert verify(header, trusted, require_signed=False) == "unsigned"
    header, _ = unpack(signed, 1 << 20)
    header["signature"] = base64.b64encode(b"short").decode()
    with pytest.raises(AdapterRejected, match="invalid"):
        verify(header, trusted, require_signed=True)


@pytest.mark.parametrize("field, forged", [
    ("reference_logits", [[0.0, 0.0, 0.0]]),
    ("reference_sha256", "0" * 64),
])
def test_expected_outputs_travel_signed(bundle, keys, field, forged):
    """The adapter's expected outputs are in the signed header, under AdapterEntry's names:
    the gateway rebuilds the entry from them, and a changed value breaks the signature."""
    (private, public), _ = keys
    entry = read_manifest(bundle).adapter("line7")
    assert getattr(entry, field) is not None
    signed = envelope_bytes(bundle=bundle, name="line7", key=private)
    header, _ = unpack(signed, 1 << 20)
    assert header[field] == getattr(entry, field)
    fields = {k: header[k] for k in AdapterEntry.model_fields if header.get(k) is not None}
    assert AdapterEntry.model_validate({**fields, "file": entry.file}) == entry
    trusted = load_public_keys([public])
    header, _ = unpack(_tamper(signed, **{field: forged}), 1 << 20)
    with pytest.raises(AdapterRejected, match="signature is invalid"):
        verify(header, trusted, require_signed=True)


def test_bad_key_files(tmp_path, keys):
    (private, _), _ = keys
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="trusted_keys"):
        load_public_keys([bad])
    with pytest.raises(ConfigError, match="not an Ed25519 public key|cannot read"):
        load_public_keys([private])


def test_header_types_checked(bundle):
    data = envelope_bytes(bundle=bundle, name="line7")
    header, body = unpack(data, 1 << 20)
    header["version"] = "1"
    with pytest.raises(AdapterRejected, match="version"):
        unpack(pack(header, body), 1 << 20)
    raw = b"EDGEADP1" + len(b"[1]").to_bytes(4, "big") + b"[1]"
    with pytest.raises(AdapterRejected, match="not a JSON object"):
        unpack(raw, 1 << 20)
    assert json.loads(data[12:12 + int.from_bytes(data[8:12], "big")])["name"] == "line7"
