"""New versions of a bundle's trained adapter, for swap tests and benchmarks.

Version v is the real trained LoRA with its B factors scaled (what another lora_alpha
gives): a valid adapter for the same base whose outputs differ from every other version,
and whose entry records the outputs it gives on the bundle's reference rows, as
`edge-export add-adapter` would. `Offline` computes what any version gives, from its file,
with the engine alone.

    entry, path = derive_version(bundle, "line-a", 7, scale=1.3, out_dir=tmp)
    # a signed adapter whose tensors do not reproduce its recorded outputs:
    derive_version(bundle, "line-a", 8, tmp, edit=huge, keep_original_reference=True)
    data = envelope(entry, path, key="signing.key")       # what gets pushed or dropped
    Offline(bundle).scores(path, entry, windows)           # (N, K) probabilities

Torch-free (the gateway run uses it): the adapter file and its recorded outputs come from
export/onnx/adapter_files.py, the exporter's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge.bundle import (
    AdapterEntry,
    Manifest,
    read_manifest,
    sha256_file,
)
from edge.codec import softmax
from edge.contract import Normalizer
from edge.engine import Engine, load_adapter_file, read_adapter_arrays
from edge.errors import AdapterError
from export.onnx.adapter_files import reference_fields, write_onnx_adapter
from export.signing import envelope_for


def scale_for(version: int) -> float:
    """A distinct B scale per version (0.5 .. 4.25), never 0: every version changes scores."""
    return 0.5 + 0.25 * (version % 16)


def derive_version(bundle: Path, name: str, version: int, out_dir: Path,
                   scale: float | None = None,
                   edit: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                   *, keep_original_reference: bool = False) -> tuple[AdapterEntry, Path]:
    """Write `<name>.v<version>.onnx_adapter` in out_dir; its manifest-style entry, with the
    reference logits its own tensors give (as a bank entry on a bank bundle).
    `edit` changes the tensors further (broken adapters for the rejection tests).
    `keep_original_reference`: keep version 1's recorded outputs instead, so the tensors do
    not reproduce what the (signable) entry claims. Tensors that cannot run, or give NaN or
    Inf, keep them too: no exporter would record outputs for those."""
    manifest = read_manifest(bundle)
    entry = manifest.adapter(name, 1)
    slots = manifest.slot_table()
    scale = scale_for(version) if scale is None else scale
    arrays = read_adapter_arrays(Path(bundle) / entry.file)
    scaled = {k: (v * np.float32(scale) if slots[k].part == "lora_B" else v)
              for k, v in arrays.items()}
    if edit is not None:
        scaled = edit(scaled)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.v{version}.onnx_adapter"
    write_onnx_adapter(path, scaled, version)
    update = {"version": version, "file": path.name, "sha256": sha256_file(path)}
    if not keep_original_reference:
        update.update(_own_reference(Path(bundle), manifest, path, len(entry.class_names)))
    return entry.model_copy(update=update), path


def _own_reference(bundle: Path, manifest: Manifest, path: Path, classes: int) -> dict:
    """The reference fields the adapter at `path` computes, as `edge-export add-adapter`
    records them; {} when it cannot (no reference rows, a shape onnxruntime refuses,
    non-finite outputs): no exporter records outputs for those."""
    try:
        engine = _engine(bundle / manifest.base.file, manifest.base.sha256)
        return reference_fields(bundle, manifest, path, classes, engine=engine)
    except AdapterError:
        return {}


@lru_cache(maxsize=4)
def _engine(base: Path, sha256: str) -> Engine:
    """One CPU session per base file (and content): benchmarks derive hundreds of versions."""
    return Engine(base)


def envelope(entry: AdapterEntry, path: Path, key: Path | None = None) -> bytes:
    return envelope_for(entry, path.read_bytes(), key=key)


class Offline:
    """Probabilities from base.onnx plus an adapter file, normalised as the entry says."""

    def __init__(self, bundle: Path) -> None:
        self.manifest = read_manifest(bundle)
        self.engine = Engine(Path(bundle) / self.manifest.base.file)
        self._adapters: dict[Path, object] = {}

    def scores(self, path: Path | None, entry: AdapterEntry | None,
               x: np.ndarray) -> np.ndarray:
        """x (N, C, L) raw windows -> (N, K) probabilities; path None = the base model."""
        channels = x.shape[1]
        pre = (entry.preprocessing if entry else None) or self.manifest.base.preprocessing
        labels = entry.class_names if entry else self.manifest.base.class_names
        lora = None
        if path is not None:
            lora = self._adapters.get(path) or load_adapter_file(path)
            self._adapters[path] = lora
        logits = self.engine.run(Normalizer.from_preprocessing(pre, channels).apply(x), lora)
        return softmax(logits[:, : len(labels)])
