"""The bundle format: the one contract between `edge-export attach` and `edge-runtime`.

    BUNDLE/base.onnx                   base graph; slot inputs carry zero default initializers
    BUNDLE/manifest.json               this module's `Manifest`
    BUNDLE/adapters/<name>.onnx_adapter  onnxruntime adapter files (one per adapter version)
    BUNDLE/reference_inputs.npy        a few real, normalised input windows for warm-up checks
    BUNDLE/slot_defaults.npz           bank bundles only: each slot's value with no adapter

`export/` writes manifests through this same code, so the two halves cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .card import Card
from .contract import Preprocessing  # the record lives with the rest of the wire contract
from .drift import DriftProfile
from .drift.features import FEATURES_OUTPUT
from .errors import IncompatibleBundle, validation_problem

FORMAT = "edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BASE_FILE = "base.onnx"
ADAPTER_DIR = "adapters"
REFERENCE_INPUTS = "reference_inputs.npy"
REFERENCE_ROWS = 8  # reference windows an adapter's expected outputs are recorded for
SLOT_DEFAULTS = "slot_defaults.npz"  # bank bundles: each slot's no-adapter value
INDEX_INPUT = "adapter_index"  # bank bundles: (N,) int64, the bank entry of each row
SlotKind = Literal["lora", "bottleneck", "full"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class TensorSpec(_Strict):
    """A graph input or output. Shape entries are ints or a symbolic name ("batch")."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


class Slot(_Strict):
    """One overridable graph input that adapters fill.

    lora: `A` (R, in[, k...]) and `B` (out, R[, 1...]), B pre-scaled; bottleneck: `down_w`
    (R, F), `down_b` (R,), `up_w` (F, R), `up_b` (F,); full: a module's own parameter.
    """

    name: str = Field(description="graph input name, also the adapter file's tensor name")
    module: str = Field(description="module path in the torch model")
    kind: SlotKind
    part: str
    shape: list[int]
    dtype: str = "float32"
    activation: str | None = None


class AdapterEntry(_Strict):
    name: str
    version: int = 1
    kind: Literal["lora", "bottleneck"]
    rank: int
    targets: list[str]
    file: str
    sha256: str
    base_fingerprint: str
    class_names: list[str]
    preprocessing: Preprocessing | None = None
    metrics: dict = Field(default_factory=dict)
    reference_logits: list[list[float]] | None = Field(
        None, description="logits (rows x classes) of the bundle's reference inputs with this "
        "adapter, computed at export; a gateway refuses an adapter that does not reproduce "
        "them within its precision's tolerance")
    reference_sha256: str | None = Field(None, description="sha256 of those reference rows "
                                         "(float32, C order): both sides used the same inputs")
    drift_profile: DriftProfile | None = Field(
        None, description="the reference profile of this adapter's model on its training "
        "windows (edge/drift/profile.py); the gateway compares each line's windows with it")
    card: Card | None = Field(None, description="provenance and licence (edge/card.py): who "
                              "trained it, on what data, from which base; signed with it")


class BaseInfo(_Strict):
    file: str = BASE_FILE
    sha256: str
    weights_fingerprint: str
    opset: int
    precision: Literal["fp32", "fp16"] = "fp32"
    class_names: list[str]
    preprocessing: Preprocessing | None = None
    drift_profile: DriftProfile | None = None  # the base's own, for lines it serves as it is
    card: Card | None = None  # the base's name, source, licence (adapters.policy checks it)


class Manifest(_Strict):
    """manifest.json. `adapters` lists what ships in the bundle; runtimes may hold more."""

    format: Literal["edge-bundle"] = FORMAT
    format_version: int = FORMAT_VERSION
    package_version: str = __version__
    target: str = "cpu"
    base: BaseInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool = True
    max_rank: int
    bank: int = Field(0, description="K > 0: slots hold K adapters, rows pick one through "
                      "the adapter_index input; 0: one adapter per run")
    num_classes: int = Field(description="width of the logits output (classes padded to it)")
    slots: list[Slot]
    adapters: list[AdapterEntry] = Field(default_factory=list)

    def adapter(self, name: str, version: int | None = None) -> AdapterEntry:
        found = [a for a in self.adapters if a.name == name
                 and (version is None or a.version == version)]
        if not found:
            raise IncompatibleBundle(f"bundle has no adapter {name!r}"
                                     + (f" version {version}" if version else ""))
        return max(found, key=lambda a: a.version)

    def slot_table(self) -> dict[str, Slot]:
        return {s.name: s for s in self.slots}

    @property
    def features(self) -> int | None:
        """D of the graph's penultimate-feature output (N, D); None when it has none."""
        return features_width(self.outputs)


def features_width(outputs: list[TensorSpec]) -> int | None:
    """D of the `features` output (N, D) among a graph's outputs; None when it has none."""
    for spec in outputs:
        if spec.name == FEATURES_OUTPUT and isinstance(spec.shape[-1], int):
            return int(spec.shape[-1])
    return None


def read_reference_inputs(bundle: str | Path, manifest: Manifest) -> np.ndarray | None:
    """The first REFERENCE_ROWS of BUNDLE/reference_inputs.npy (N, *input shape) float32,
    or None when the file is missing or does not fit the model's input."""
    path = Path(bundle) / REFERENCE_INPUTS
    if not path.is_file():
        return None
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    shape = tuple(manifest.inputs[0].shape[1:])
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape or not len(x):
        return None
    return np.ascontiguousarray(x[:REFERENCE_ROWS], dtype=np.float32)


def rows_sha256(x: np.ndarray) -> str:
    """What `AdapterEntry.reference_sha256` records: sha256 of float32 rows in C order."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle: str | Path) -> Manifest:
    """Load and validate BUNDLE/manifest.json; errors name the file and the key path."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise IncompatibleBundle(f"{bundle}: no {MANIFEST}; is this a bundle from "
                                 "`edge-export attach`?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IncompatibleBundle(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise IncompatibleBundle(f"{path}: format_version {data['format_version']} is newer "
                                 f"than this runtime reads ({FORMAT_VERSION}); upgrade it")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise IncompatibleBundle(f"{path}: {validation_problem(exc)}") from None


def write_manifest(bundle: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file, fsync, rename)."""
    path = Path(bundle) / MANIFEST
    atomic_write(path, manifest.model_dump_json(indent=2).encode())
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a crash leaves either the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def verify_base(bundle: str | Path, manifest: Manifest) -> Path:
    """Path of base.onnx after checking its sha256 against the manifest."""
    path = Path(bundle) / manifest.base.file
    if not path.is_file():
        raise IncompatibleBundle(f"{bundle}: {manifest.base.file} is missing")
    digest = sha256_file(path)
    if digest != manifest.base.sha256:
        raise IncompatibleBundle(f"{path}: sha256 {digest[:12]}… does not match the manifest's "
                                 f"{manifest.base.sha256[:12]}…; the file was changed")
    return path
