"""`edge-export check-adapters`: before a new base ships, each adapter's stored validation
sample (export/check_sample.py) run through the new bundle as a gateway would run it, and
compared with the accuracy the adapter scored on it at training.

    report = check_adapters(bundle="bundle-v2", adapters=["runs/press-3", "runs/press-4"])
    report.failed      # True when one must be retrained, does not fit, or cannot be read

Each adapter is converted for the new bundle's slots (the exporter's own code, as
`add-adapter` does, but without refusing the other base fingerprint: a base update is the
point), its sample normalised with its own statistics (the gateway's Normalizer) and scored by
onnxruntime on the CPU. Verdicts:

    ok            accuracy >= recorded - tolerance
    retrain       below that
    incompatible  does not fit the new base: kind, rank, classes, input shape (the gateway's
                  own checks, edge/adapter_checks.py), a tensor whose shape differs from its
                  slot's beyond the padding a bundle allows, or onnxruntime refuses it
    unknown       no sample: trained before samples were stored
    error         the adapter directory or its sample cannot be read, or fails its sha256
"""

from __future__ import annotations

import json as jsonlib
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.adapter_checks import check_fit
from edge.bundle import (
    AdapterEntry,
    Manifest,
    atomic_write,
    read_manifest,
    sha256_file,
    verify_base,
)
from edge.contract import Normalizer
from edge.engine import Engine
from edge.errors import AdapterRejected, ConfigError, EdgeError, IncompatibleBundle
from export.adapters.registry import adapter_kind
from export.check_sample import CheckSample, read_sample
from export.onnx.adapter_files import run_adapter, write_onnx_adapter
from export.onnx.attach import adapter_entry
from export.onnx.slot_plan import adapter_tensors, module_groups, slot_kind
from export.onnx.slots import FULL
from export.outputs import shared_mode
from export.peft_io import AdapterDir, read_adapter_dir

__all__ = ["DEFAULT_TOLERANCE", "STATUSES", "AdapterCheck", "CheckReport", "check_adapters"]

DEFAULT_TOLERANCE = 0.02  # accuracy an adapter may lose on its sample and still ship
STATUSES = ("ok", "retrain", "incompatible", "unknown", "error")
FAILING = ("retrain", "incompatible", "error")
NO_SAMPLE = "no sample: retrained before this version"


@dataclass
class AdapterCheck:
    """One adapter's verdict. `recorded` / `accuracy`: on its sample at training / on the new
    base; `changed`: windows whose answer differs from the one recorded at training."""

    name: str
    path: str
    status: str
    reason: str = ""
    same_base: bool | None = None  # trained on the bundle's base weights
    windows: int | None = None
    recorded: float | None = None
    accuracy: float | None = None
    changed: int | None = None

    @property
    def drop(self) -> float | None:
        return None if self.accuracy is None else self.recorded - self.accuracy


@dataclass
class CheckReport:
    bundle: str
    tolerance: float
    adapters: list[AdapterCheck]

    @property
    def failed(self) -> bool:
        return any(a.status in FAILING for a in self.adapters)

    def counts(self) -> dict[str, int]:
        return {s: sum(a.status == s for a in self.adapters) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "tolerance": self.tolerance, "failed": self.failed,
                "counts": self.counts(),
                "adapters": [asdict(a) | {"drop": a.drop} for a in self.adapters]}

    def lines(self) -> list[str]:
        """The table, one line per adapter, then the verdict."""
        width = max([len(a.name) for a in self.adapters] + [7])
        head = (f"{'adapter':<{width}}  {'status':<12}  {'recorded':>8}  {'new':>6}  "
                f"{'changed':>9}  base")
        rows = [head] + [_row(a, width) for a in self.adapters]
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        verdict = ("do not ship this base before the adapters marked retrain, incompatible or "
                   "error are dealt with" if self.failed else "every checked adapter meets "
                   "its recorded accuracy")
        return rows + [f"{counts} (tolerance {self.tolerance:g}): {verdict}"]


def _row(a: AdapterCheck, width: int) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    changed = "-" if a.changed is None else f"{a.changed}/{a.windows}"
    base = {None: "-", True: "same", False: "new"}[a.same_base]
    line = (f"{a.name:<{width}}  {a.status:<12}  {num(a.recorded):>8}  {num(a.accuracy):>6}  "
            f"{changed:>9}  {base}")
    return f"{line}  ({a.reason})" if a.reason else line


def check_adapters(*, bundle: str | Path, adapters: list[str | Path],
                   tolerance: float = DEFAULT_TOLERANCE,
                   json: str | Path | None = None) -> CheckReport:
    """Check every adapter directory in `adapters` against the base of `bundle` (the new one);
    write the report as JSON to `json` when given. Bad options raise ConfigError naming the
    flag; a problem with one adapter is its verdict, never an exception."""
    bundle, paths = _check_options(bundle, adapters, tolerance, json)
    try:
        manifest = read_manifest(bundle)
        verify_base(bundle, manifest)
    except IncompatibleBundle as exc:
        raise IncompatibleBundle(f"--bundle {exc}") from None
    engine = Engine(bundle / manifest.base.file)  # the CPU, as add-adapter checks
    with tempfile.TemporaryDirectory(prefix="check-adapters.") as scratch:
        results = [_check_one(p, bundle, manifest, engine, tolerance,
                              Path(scratch) / f"adapter{i}.onnx_adapter")
                   for i, p in enumerate(paths)]
    report = CheckReport(str(bundle), tolerance, results)
    if json is not None:
        text = jsonlib.dumps(report.to_dict(), indent=2, allow_nan=False)
        atomic_write(Path(json), (text + "\n").encode())
        Path(json).chmod(shared_mode())  # atomic_write's temp file is 0600
    return report


def _check_options(bundle: Any, adapters: Any, tolerance: Any,
                   json: Any) -> tuple[Path, list[Path]]:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ConfigError(f"--bundle {bundle}: not a directory")
    if not adapters:
        raise ConfigError("--adapters: give at least one adapter directory")
    paths = [Path(a) for a in adapters]
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"--adapters {path}: not a directory")
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not (math.isfinite(tolerance) and 0 <= tolerance < 1)):
        raise ConfigError(f"--tolerance must be a number in [0, 1), got {tolerance!r}")
    if json is not None and not Path(json).parent.is_dir():
        raise ConfigError(f"--json {json}: its directory does not exist")
    return bundle, paths


def _check_one(path: Path, bundle: Path, manifest: Manifest, engine: Engine,
               tolerance: float, file: Path) -> AdapterCheck:
    """The verdict on the adapter directory at `path`; `file`: where its converted form goes."""
    try:
        source = read_adapter_dir(path)
    except EdgeError as exc:
        return _with(AdapterCheck(path.name, str(path), "error"), "error", str(exc))
    name = str(source.meta.get("name") or path.resolve().name)
    same = source.meta.get("base_fingerprint") == manifest.base.weights_fingerprint
    result = AdapterCheck(name, str(path), "error", same_base=same)
    try:
        entry = _convert(source, name, manifest, file)
        sample = read_sample(path, source.meta)
    except AdapterRejected as exc:
        return _with(result, "incompatible", str(exc))
    except EdgeError as exc:  # a damaged sample or metadata (profile, preprocessing)
        return _with(result, "error", str(exc))
    if sample is None:
        return _with(result, "unknown", NO_SAMPLE)
    return _score(result, sample, entry, file, bundle, manifest, engine, tolerance)


def _with(result: AdapterCheck, status: str, reason: str) -> AdapterCheck:
    result.status, result.reason = status, reason.splitlines()[0] if reason else ""
    return result


def _convert(source: AdapterDir, name: str, manifest: Manifest, file: Path) -> AdapterEntry:
    """The adapter written to `file` as an `.onnx_adapter` for the new bundle's slots, and
    its manifest entry; refuses (AdapterRejected) what a gateway running that bundle would
    refuse, and tensors shaped for another architecture."""
    tensors = adapter_tensors(source, manifest.slots)  # no slot, wrong kind, too large
    problem = _architecture_problem(source, manifest)
    if problem:
        raise AdapterRejected(problem)
    write_onnx_adapter(file, tensors, 1)
    channels = int(manifest.inputs[0].shape[1])
    entry = adapter_entry(source, name, 1, file.name, sha256_file(file),
                          manifest.base.weights_fingerprint, manifest.num_classes, channels,
                          manifest.features)
    check_fit(entry, manifest)  # kind, rank, classes, input shape, drift profile
    return entry


def _architecture_problem(source: AdapterDir, manifest: Manifest) -> str | None:
    """A tensor that `adapter_tensors` would zero-pad across an axis a bundle never pads:
    the new base's module has another shape (another width, another input). Allowed: an
    adapter slot's rank axes (size max_rank) and a full slot's first axis (a head's classes)."""
    table = {(s.module, s.part): s for s in manifest.slots}
    for path, parts in module_groups(source).items():
        kind = slot_kind(parts)
        code = None if kind == FULL else adapter_kind(kind).slot_code()
        for part, array in parts.items():
            slot = table[(path, part)]  # adapter_tensors found every one
            shape = code.to_slot(source.config, path, part, array).shape if code else array.shape
            free = {0} if kind == FULL else {i for i, n in enumerate(slot.shape)
                                             if n == manifest.max_rank}
            if len(shape) != len(slot.shape) or any(
                    n != m and i not in free
                    for i, (n, m) in enumerate(zip(shape, slot.shape, strict=True))):
                return (f"{path} {part} has shape {list(shape)} in the bundle's layout; the new "
                        f"base's slot is {slot.shape}: the base is another architecture")
    return None


def _score(result: AdapterCheck, sample: CheckSample, entry: AdapterEntry, file: Path,
           bundle: Path, manifest: Manifest, engine: Engine, tolerance: float) -> AdapterCheck:
    """The sample through the new bundle as the gateway runs it: the adapter's own
    normalisation (else the base's), logits of its classes, argmax."""
    shape = tuple(manifest.inputs[0].shape[1:])  # the sample: (F,), (C, L) or (C, H, W)
    if sample.X.shape[1:] != shape:
        return _with(result, "error", f"{result.path}: its check sample holds samples of "
                     f"{list(sample.X.shape[1:])}; the model takes {list(shape)}")
    pre = entry.preprocessing or manifest.base.preprocessing
    x = Normalizer.from_preprocessing(pre, shape[0], len(shape)).apply(sample.X)  # (N, *shape)
    try:
        logits = run_adapter(engine, bundle, manifest, file, x)  # (N, num_classes)
    except AdapterRejected as exc:
        return _with(result, "incompatible", str(exc))
    classes = len(sample.class_names)
    if not np.isfinite(logits[:, :classes]).all():
        return _with(result, "incompatible", "gives non-finite outputs on its sample")
    pred = logits[:, :classes].argmax(axis=1)
    result.windows, result.recorded = len(pred), sample.accuracy
    result.accuracy = float(np.mean(pred == sample.y))
    result.changed = int(np.sum(pred != sample.pred))
    # a float's last bit must not turn an unchanged answer into a retrain
    ok = result.accuracy >= result.recorded - tolerance - 1e-9
    return _with(result, "ok" if ok else "retrain",
                 "" if ok else f"{result.drop:.3f} below its recorded accuracy")

