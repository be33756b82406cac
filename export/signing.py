"""`edge-export keygen` and `edge-export sign`: Ed25519 keys and signed adapter envelopes."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bundle import AdapterEntry, read_manifest, sha256_file
from edge.envelope import MAX_HEADER, canonical, key_id, pack
from edge.errors import ConfigError, ExportError


def keygen(*, out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write OUT.key (private, PKCS#8 PEM, mode 0600) and OUT.pub (public PEM)."""
    out = Path(out)
    private_path, public_path = out.with_suffix(".key"), out.with_suffix(".pub")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise ExportError(f"{path} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--key {path}: cannot read an unencrypted PEM private key "
                          f"({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key {path}: not an Ed25519 private key")
    return key


def envelope_bytes(*, bundle: str | Path, name: str, version: int | None = None,
                   key: str | Path | None = None) -> bytes:
    """The envelope for adapter `name` (newest version unless given) of a bundle, signed
    with `key` when one is given."""
    bundle = Path(bundle)
    entry = read_manifest(bundle).adapter(name, version)
    body_path = bundle / entry.file
    if sha256_file(body_path) != entry.sha256:
        raise ExportError(f"{body_path}: sha256 differs from the manifest; re-run add-adapter")
    return envelope_for(entry, body_path.read_bytes(), key=key)


def envelope_for(entry: AdapterEntry, body: bytes, *, key: str | Path | None = None) -> bytes:
    """The envelope of `.onnx_adapter` bytes described by a manifest entry (its name,
    version, base fingerprint, classes, expected outputs...), signed with `key` when one is
    given. Header keys are AdapterEntry's field names: the gateway validates them as one."""
    header = {"name": entry.name, "version": entry.version, "kind": entry.kind,
              "rank": entry.rank, "targets": entry.targets,
              "sha256": hashlib.sha256(body).hexdigest(),
              "size": len(body), "base_fingerprint": entry.base_fingerprint,
              "class_names": entry.class_names,
              "preprocessing": entry.preprocessing.model_dump() if entry.preprocessing else None,
              "metrics": entry.metrics,
              # (rows x classes) logits of the bundle's reference rows: the signature covers
              # them, so a gateway can tell tensors that do not compute what was exported
              "reference_logits": entry.reference_logits,
              "reference_sha256": entry.reference_sha256}
    if entry.drift_profile is not None:  # signed with the rest; absent: an older exporter's
        header["drift_profile"] = entry.drift_profile.model_dump()
    if entry.card is not None:  # provenance and licence, signed: it cannot be swapped
        header["card"] = entry.card.model_dump(mode="json", exclude_none=True)
    if key is not None:
        private = load_private_key(key)
        header["key_id"] = key_id(private.public_key())
        header["signature"] = base64.b64encode(private.sign(canonical(header))).decode()
    data = pack(header, body)
    if len(data) - len(body) - 12 > MAX_HEADER:  # a gateway would refuse it unread
        raise ExportError(f"adapter {entry.name} v{entry.version}: the envelope header "
                          f"(class names, expected outputs, drift profile, card) exceeds "
                          f"{MAX_HEADER} bytes")
    return data


def sign(*, bundle: str | Path, name: str, key: str | Path, out: str | Path,
         version: int | None = None, force: bool = False) -> Path:
    """Write a signed envelope file, ready to drop in a gateway's watch folder or push."""
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to overwrite it")
    data = envelope_bytes(bundle=bundle, name=name, version=version, key=key)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
