"""The adapter bank of a `--bank K` bundle: K adapters' slot tensors, fed with each run.

Entry k of every slot holds adapter k's tensor (or the slot's no-adapter default), so one
onnxruntime run serves a batch whose rows belong to different lines: row i uses entry
`adapter_index[i]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import INDEX_INPUT, SLOT_DEFAULTS, Manifest
from .errors import AdapterRejected, IncompatibleBundle


class AdapterBank:
    """Bank tensors (K, *slot shape) per slot name, filled entry by entry."""

    def __init__(self, defaults: dict[str, np.ndarray], size: int) -> None:
        self.defaults = defaults
        self.size = size
        self.tensors = {name: np.repeat(value[None], size, axis=0)
                        for name, value in defaults.items()}

    @classmethod
    def for_bundle(cls, bundle: str | Path, manifest: Manifest) -> AdapterBank:
        if not manifest.bank:
            raise IncompatibleBundle(f"{bundle}: not a bank bundle (export with --bank K)")
        with np.load(Path(bundle) / SLOT_DEFAULTS) as data:
            defaults = {name: data[name] for name in data.files}
        missing = {s.name for s in manifest.slots} - set(defaults)
        if missing:
            raise IncompatibleBundle(f"{bundle}: {SLOT_DEFAULTS} lacks {sorted(missing)[0]}")
        return cls(defaults, manifest.bank)

    def load(self, entry: int, arrays: dict[str, np.ndarray] | None) -> None:
        """Put one adapter's tensors (from its `.onnx_adapter`) at `entry`; None: the base."""
        arrays = arrays or {}
        unknown = set(arrays) - set(self.tensors)
        if unknown:
            raise AdapterRejected(f"adapter tensor {sorted(unknown)[0]} has no slot in the bank")
        for name, bank in self.tensors.items():
            value = arrays.get(name, self.defaults[name])
            if value.shape != bank.shape[1:]:
                raise AdapterRejected(f"adapter tensor {name} has shape {list(value.shape)}, "
                                      f"the slot holds {list(bank.shape[1:])}")
            bank[entry] = value

    def feeds(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Inputs of one run: every bank plus the row -> entry index (N,) int64."""
        return {INDEX_INPUT: np.ascontiguousarray(index, dtype=np.int64), **self.tensors}
