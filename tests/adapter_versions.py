"""New versions of a bundle's trained adapter, for swap tests and benchmarks.

Version v is the real trained LoRA with its B factors scaled (what another lora_alpha
gives): a valid adapter for the same base whose outputs differ from every other version.
`Offline` computes what any version gives, from its file, with the engine alone.

    entry, path = derive_version(bundle, "line-a", 7, scale=1.3, out_dir=tmp)
    data = envelope(entry, path, key="signing.key")       # what gets pushed or dropped
    Offline(bundle).scores(path, entry, windows)           # (N, K) probabilities
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.bundle import AdapterEntry, read_manifest, sha256_file
from edge.codec import Normalizer, softmax
from edge.engine import Engine, load_adapter_file, read_adapter_arrays
from export.bundle_export import write_onnx_adapter
from export.signing import envelope_for


def scale_for(version: int) -> float:
    """A distinct B scale per version (0.5 .. 4.25), never 0: every version changes scores."""
    return 0.5 + 0.25 * (version % 16)


def derive_version(bundle: Path, name: str, version: int, out_dir: Path,
                   scale: float | None = None,
                   edit: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
                   ) -> tuple[AdapterEntry, Path]:
    """Write `<name>.v<version>.onnx_adapter` in out_dir; its manifest-style entry.
    `edit` changes the tensors further (broken adapters for the rejection tests)."""
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
    return entry.model_copy(update={"version": version, "file": path.name,
                                    "sha256": sha256_file(path)}), path


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
