"""What `edge-export inspect` reports for each kind of file: adapter directories, weights
files, bundles, `.onnx_adapter` files and ONNX models, as plain dicts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

# --------------------------------------------------------------------------------------------
# inspect: one describe function per kind of path
# --------------------------------------------------------------------------------------------


def profile_line(profile: Any) -> str | None:
    """One line for a drift profile (a DriftProfile, its dict or JSON text; None: None):
    windows, channels, class shares, top-score mean; an invalid one says why."""
    from edge.drift import DriftProfile

    profile = _validated(DriftProfile, profile)
    if profile is None or isinstance(profile, str):
        return profile
    shares = ", ".join(f"{name} {share:.0%}" for name, share
                       in zip(profile.classes.names, profile.classes.shares, strict=True))
    features = profile.features
    ood = "" if features is None else (f", {features.dim} features (OOD threshold "
                                       f"{features.threshold:.2f})")
    return (f"{profile.n_windows} windows, {profile.channels} channel(s), classes {shares}, "
            f"top score mean {profile.top_score_mean:.3f}{ood}")


def _validated(model: type, value: Any) -> Any:
    """`value` (a `model`, its dict or JSON text) as a `model`; None for None; a string
    "invalid (why)" when it does not validate."""
    from pydantic import ValidationError

    from edge.errors import validation_problem

    if value is None or isinstance(value, model):
        return value
    try:
        if isinstance(value, str):
            return model.model_validate_json(value)
        return model.model_validate(value)
    except ValidationError as exc:
        return f"invalid ({validation_problem(exc)})"


def card_fields(card: Any) -> dict[str, Any] | str | None:
    """A card (a Card, its dict or JSON text; None: None) as its set fields, the licence
    text shortened to its size; an invalid one says why."""
    from edge.card import Card

    card = _validated(Card, card)
    if card is None or isinstance(card, str):
        return card
    doc = card.model_dump(mode="json", exclude_none=True)
    for where in (doc, doc.get("base", {})):
        if "licence_text" in where:
            where["licence_text"] = f"({len(where['licence_text'])} characters)"
    return doc


def _card_line(card: Any) -> str:
    return card.summary() if card is not None else "none"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_adapter_dir(path: Path) -> dict[str, Any]:
    """A PEFT adapter directory: config, tensors, sizes, fingerprints, our metadata."""
    from export.peft_io import CONFIG_FILE, WEIGHTS_FILE, read_adapter_dir

    adapter = read_adapter_dir(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    meta = dict(adapter.meta)
    profile = meta.pop("drift_profile", None)
    card = meta.pop("card", None)
    return {
        "path": str(path),
        "kind": adapter.kind,
        "config": config,
        "tensors": {k: [str(v.dtype).removeprefix("torch."), list(v.shape)]
                    for k, v in sorted(adapter.tensors.items())},
        "params": sum(v.numel() for v in adapter.tensors.values()),
        "tensor_bytes": adapter.nbytes,
        "file_bytes": (path / WEIGHTS_FILE).stat().st_size,
        "sha256": _sha256(path / WEIGHTS_FILE),
        "base_fingerprint": meta.pop("base_fingerprint", None),
        "drift_profile": profile_line(profile),
        "card": card_fields(card) or "none (train, pilot and attach write one)",
        "metadata": meta,
    }


def describe_model_file(path: Path) -> dict[str, Any]:
    """Base or fully trained weights (.safetensors) with its `<path>.json` sidecar."""
    from safetensors import safe_open

    from export.models import sidecar_path

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            t = f.get_slice(key)
            tensors[key] = [t.get_dtype().lower(), list(t.get_shape())]
    sidecar = sidecar_path(path)
    return {
        "path": str(path),
        "kind": "weights",
        "config": json.loads(sidecar.read_text()) if sidecar.is_file() else None,
        "tensors": tensors,
        "file_bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "drift_profile": profile_line(_train_meta(path).get("drift_profile")),
        "card": card_fields(_train_meta(path).get("card")),
    }


def _train_meta(weights: Path) -> dict[str, Any]:
    """edge_model.json beside weights written by `train` ({} when none or unreadable)."""
    path = weights.with_name("edge_model.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def describe_bundle(path: Path) -> dict[str, Any]:
    """A bundle from `edge-export attach`: base hash check, slots, adapters."""
    from edge.bundle import read_manifest, verify_base

    manifest = read_manifest(path)
    verify_base(path, manifest)
    return {
        "path": str(path), "kind": "bundle" + (f" (bank of {manifest.bank})" if manifest.bank
                                               else ""),
        "base": {"sha256": manifest.base.sha256, "weights_fingerprint":
                 manifest.base.weights_fingerprint, "opset": manifest.base.opset,
                 "precision": manifest.base.precision, "target": manifest.target,
                 "max_rank": manifest.max_rank, "classes": manifest.num_classes},
        "adapters": {f"{a.name} v{a.version}": f"{a.kind} r{a.rank}, {a.file}, "
                     f"sha256 {a.sha256[:12]}…" for a in manifest.adapters},
        "drift_profiles": {"base": profile_line(manifest.base.drift_profile) or "none"}
        | {f"{a.name} v{a.version}": profile_line(a.drift_profile) or "none"
           for a in manifest.adapters},
        "cards": {"base": _card_line(manifest.base.card)}
        | {f"{a.name} v{a.version}": _card_line(a.card) for a in manifest.adapters},
        "tensors": {s.name: [s.dtype, s.shape] for s in manifest.slots},
    }


def describe_onnx_adapter(path: Path) -> dict[str, Any]:
    """An `.onnx_adapter`: its tensors; with a bundle beside it, whether they fit its slots."""
    from edge.engine import read_adapter_arrays

    arrays = read_adapter_arrays(path)
    return {"path": str(path), "kind": "onnx_adapter", "file_bytes": path.stat().st_size,
            "sha256": _sha256(path),
            "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in sorted(arrays.items())}}


def describe_onnx(path: Path) -> dict[str, Any]:
    """An ONNX model: inputs, outputs, overridable slot inputs, metadata_props."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    def dims(v) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    return {"path": str(path), "kind": "onnx", "file_bytes": path.stat().st_size,
            "sha256": _sha256(path), "opset": model.opset_import[0].version,
            "metadata": {p.key: _onnx_meta(p.key, p.value) for p in model.metadata_props},
            "outputs": {o.name: dims(o) for o in model.graph.output},
            "tensors": {i.name: ["input" + (" (slot)" if i.name in inits else ""), dims(i)]
                        for i in model.graph.input}}


def _onnx_meta(key: str, value: str) -> Any:
    if key == "edge.drift_profile":
        return profile_line(value)
    return card_fields(value) if key == "edge.card" else value


def describe_envelope(path: Path) -> dict[str, Any]:
    """A signed adapter envelope (`edge-export sign`): its header, card included; the
    signature is shown, not checked (the gateway checks it against its trusted keys)."""
    from edge.envelope import MAX_HEADER, unpack

    header, body = unpack(path.read_bytes(), max_bytes=1 << 62)
    return {"path": str(path), "kind": "adapter envelope", "file_bytes": path.stat().st_size,
            "adapter": f"{header['name']} v{header['version']} ({header['kind']} "
                       f"r{header.get('rank')})",
            "sha256": header["sha256"], "base_fingerprint": header["base_fingerprint"],
            "signed": f"by key {header['key_id']}" if header.get("signature") else "no",
            "header_bytes": f"{len(path.read_bytes()) - len(body) - 12} of at most "
                            f"{MAX_HEADER}",
            "drift_profile": profile_line(header.get("drift_profile")),
            "card": card_fields(header.get("card")) or "none"}


def describer(path: Path) -> Callable[[Path], dict[str, Any]]:
    """Which describe function handles `path`. New kinds (ONNX, bundles) add a line here."""
    from export.peft_io import CONFIG_FILE
    from export.train import HEAD_FILE, MODEL_FILE

    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return describe_adapter_dir
    if path.is_dir() and (path / "manifest.json").is_file():
        return describe_bundle
    if path.is_file() and path.suffix == ".onnx_adapter":
        return describe_onnx_adapter
    if path.is_file() and path.suffix == ".onnx":
        return describe_onnx
    if path.is_file() and _is_envelope(path):
        return describe_envelope
    if path.is_dir() and (path / MODEL_FILE).is_file():  # a `train --method full` output
        return lambda p: describe_model_file(p / MODEL_FILE)
    if path.is_dir() and (path / HEAD_FILE).is_file():  # a `train --method head` output
        return lambda p: describe_model_file(p / HEAD_FILE)
    if path.is_file() and path.suffix == ".safetensors":
        return describe_model_file
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    raise ConfigError(f"{path}: not something inspect knows (a PEFT adapter directory, a "
                      "bundle, an .onnx, an .onnx_adapter, a .safetensors weights file or a "
                      "signed adapter envelope)")


def _is_envelope(path: Path) -> bool:
    from edge.envelope import MAGIC

    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC
