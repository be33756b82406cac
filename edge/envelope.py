"""The signed adapter envelope: one file format for MQTT pushes and folder drops.

    b"EDGEADP1"                  magic, 8 bytes
    header length                 4 bytes, big-endian unsigned
    header                        UTF-8 JSON: name, version, kind, rank, sha256, size,
                                  base_fingerprint, class_names, preprocessing, targets,
                                  metrics, reference_logits, reference_sha256,
                                  drift_profile, card (optional: older envelopes have
                                  none),
                                  key_id, signature
    body                          the `.onnx_adapter` bytes

`signature` is Ed25519 (base64) over `SIGNING_CONTEXT + canonical JSON of the header without
"signature"`; since the header holds the body's sha256 and size, it covers the body too,
the drift profile (edge/drift/profile.py) the gateway monitors the line with, and the card
(edge/card.py: licence, author, data fingerprint) the gateway's policy checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import AdapterRejected, ConfigError

MAGIC = b"EDGEADP1"
SIGNING_CONTEXT = b"edge-adapter-signature-v1\n"
REVOKE_CONTEXT = b"edge-adapter-revoke-v1\n"  # what a signed `revoke` command covers
MAX_HEADER = 512 * 1024  # room for the expected logits of 8 rows x a few thousand classes
REQUIRED = {"name": str, "version": int, "kind": str, "sha256": str, "size": int,
            "base_fingerprint": str}


def canonical(header: dict, context: bytes = SIGNING_CONTEXT) -> bytes:
    """The bytes a signature covers: the header minus `signature`, keys sorted, compact,
    after a context that keeps a signed adapter from passing for a signed command."""
    unsigned = {k: v for k, v in header.items() if k != "signature"}
    return context + json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def pack(header: dict, body: bytes) -> bytes:
    data = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(data)) + data + body


def peek_id(data: bytes) -> str | None:
    """"<name>.v<version>" from an envelope's header without checking anything else (for
    naming a refusal); None when the header does not say."""
    try:
        (size,) = struct.unpack(">I", data[8:12])
        header = json.loads(data[12:12 + min(size, MAX_HEADER)].decode("utf-8"))
        name, version = header["name"], header["version"]
    except (struct.error, ValueError, RecursionError, TypeError, KeyError):
        return None
    if isinstance(name, str) and type(version) is int and data.startswith(MAGIC):
        return f"{name[:64]}.v{version}"
    return None


def unpack(data: bytes, max_bytes: int) -> tuple[dict, bytes]:
    """Split an envelope, checking size, framing, header types and the body's sha256."""
    if len(data) > max_bytes:
        raise AdapterRejected(f"envelope of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        raise AdapterRejected("not an adapter envelope (bad magic)")
    (size,) = struct.unpack(">I", data[8:12])
    if size > MAX_HEADER or 12 + size > len(data):
        raise AdapterRejected("envelope header length is out of bounds")
    try:
        header = json.loads(data[12:12 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: 5000-digit ints
        raise AdapterRejected("envelope header is not valid JSON") from None
    if not isinstance(header, dict):
        raise AdapterRejected("envelope header is not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise AdapterRejected(f"envelope header: {key} missing or not a {kind.__name__}")
    body = data[12 + size:]
    if len(body) != header["size"]:
        raise AdapterRejected(f"envelope body has {len(body)} bytes, header says "
                              f"{header['size']}")
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise AdapterRejected("sha256 of the adapter bytes does not match the envelope")
    return header, body


def verify(header: dict, trusted: dict[str, Ed25519PublicKey], require_signed: bool, *,
           context: bytes = SIGNING_CONTEXT, what: str = "adapter") -> str:
    """Check the signature against the trusted keys; returns the signer's key id, or
    "unsigned" when signatures are not required and none is given. `what` names the
    signed thing in a refusal ("adapter", "revoke command")."""
    signature = header.get("signature")
    if signature is None:
        if require_signed:
            raise AdapterRejected(f"{what} is not signed and require_signed = true")
        return "unsigned"
    kid = header.get("key_id")
    if not isinstance(kid, str) or kid not in trusted:
        raise AdapterRejected(f"{what} signed by key {str(kid)[:32]!r}, which is not among "
                              "the trusted keys")
    try:
        trusted[kid].verify(base64.b64decode(signature, validate=True),
                            canonical(header, context))
    except (InvalidSignature, ValueError, TypeError):
        raise AdapterRejected(f"{what} signature is invalid") from None
    return kid


def load_public_keys(paths: list[str | Path]) -> dict[str, Ed25519PublicKey]:
    """{key id: key} from PEM public key files (`edge-export keygen` writes them)."""
    keys = {}
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"adapters.trusted_keys: {path}: cannot read a PEM public key "
                              f"({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"adapters.trusted_keys: {path}: not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys
