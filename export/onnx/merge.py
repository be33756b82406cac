"""torch -> ONNX: export settings from a device target, the export call, file finishing,
and `edge-export merge` (one self-contained model.onnx)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edge import __version__
from edge.bundle import Manifest, TensorSpec
from edge.config import Export, load_config
from edge.contract import Preprocessing
from edge.contract.shapes import as_text, sample_shape_problem
from edge.drift import DriftProfile
from edge.engine import Engine
from edge.errors import AdapterRejected, ConfigError, ExportError
from export.adapters.model import AdaptedModel
from export.adapters.registry import adapter_kind
from export.cards import adapter_card, bundle_base_card
from export.drift_profile import profile_of
from export.features import FEATURES_OUTPUT, WithFeatures, feature_parity, head_path
from export.models import load_base, weights_fingerprint
from export.onnx.exporters import check_loads, graph_opset, rejected_path, resolve, run_export
from export.onnx.parity import ParityResult, compare, raise_on_failure
from export.outputs import check_writable, shared_mode
from export.peft_io import load_adapter

OUTPUT = "logits"
INPUT = "x"


_DEFAULTS = Export()  # the [export] section with nothing set: its defaults, defined once


@dataclass
class ExportSettings:
    """Export-side settings of a device (`[export]` of firmware_configs/<device>.toml, whose
    defaults these are) and the target's name."""

    opset: int = _DEFAULTS.opset
    precision: str = _DEFAULTS.precision
    batch: str | int = _DEFAULTS.batch
    max_rank: int = _DEFAULTS.max_rank
    atol: float | None = _DEFAULTS.atol
    exporter: str = _DEFAULTS.exporter
    target: str = Manifest.model_fields["target"].default
    exported: str = ""  # set by to_onnx: which exporter wrote the graph, at which opset

    @property
    def tolerance(self) -> float:
        # fp16 weights round to ~1e-3 relative; logits of O(10) then move by ~1e-2.
        return self.atol if self.atol is not None else (1e-4 if self.precision == "fp32" else 1e-2)

    @property
    def dynamic(self) -> bool:
        return self.batch == "dynamic"


def load_settings(target: str | Path | None, *, max_rank: int | None = None,
                  atol: float | None = None, exporter: str | None = None) -> ExportSettings:
    """Settings from `--target FILE` (or defaults), with command-line overrides on top."""
    settings = ExportSettings()
    if target is not None:
        section = load_config(target).export
        settings = ExportSettings(**section.model_dump(), target=Path(target).stem)
    if max_rank is not None:
        settings.max_rank = max_rank
    if atol is not None:
        settings.atol = atol
    if exporter is not None:
        settings.exporter = exporter
    return settings


def input_shape(model: nn.Module, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape of one sample, without the batch axis ((F,), (C, L) or (C, H, W)):
    `--input-shape`, else the reference model's config."""
    if given:
        problem = sample_shape_problem(tuple(given))
        if problem:
            raise ConfigError(f"--input-shape {as_text(given)}: {problem}")
        return tuple(given)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and {"in_channels", "length"} <= set(config):
        return (int(config["in_channels"]), int(config["length"]))
    raise ConfigError("cannot tell the model's input shape; pass --input-shape (F for "
                      "feature vectors, C,L for windows, C,H,W for images)")


def sample_inputs(shape: tuple[int, ...], settings: ExportSettings,
                  real: np.ndarray | None = None, n: int = 8, seed: int = 0) -> np.ndarray:
    """A batch for tracing and parity: real samples when given, else seeded random ones."""
    n = n if settings.dynamic else int(settings.batch)
    if real is not None and len(real):
        reps = int(np.ceil(n / len(real)))
        return np.ascontiguousarray(np.concatenate([real] * reps)[:n], dtype=np.float32)
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def to_onnx(module: nn.Module, args: tuple, input_names: list[str], path: Path,
            settings: ExportSettings, batch_inputs: int = 1) -> list[str]:
    """Export `module` with the settings' exporter (export/onnx/exporters.py), with a second
    output `features` (N, D) when it has a classification head to read them at
    (export/features.py). The first `batch_inputs` inputs and the outputs have a batch axis,
    dynamic unless the target fixes it. Returns the output names."""
    head = head_path(module.eval(), args)
    outputs = [OUTPUT] if head is None else [OUTPUT, FEATURES_OUTPUT]
    exporter = resolve(settings.exporter, module)
    if head is not None:
        module = WithFeatures(module, head)
    done = run_export(module, args, path, input_names=input_names, output_names=outputs,
                      batch_inputs=batch_inputs if settings.dynamic else None,
                      opset=settings.opset, exporter=exporter)
    settings.exporter, settings.exported = done.exporter, done.note  # what ran, for the report
    return outputs


def finish_onnx(path: Path, *, defaults: dict[str, np.ndarray] | None = None,
                metadata: dict[str, str], settings: ExportSettings,
                keep: Path) -> onnx.ModelProto:
    """Add zero/default initializers for slot inputs, metadata_props, and fp16 weights; then
    check that onnxruntime opens the graph (a refused one is copied to `keep`)."""
    model = onnx.load(str(path))
    for name, value in (defaults or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    if settings.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    check_loads(path, keep=keep, exporter=settings.exporter, opset=graph_opset(model))
    return model


def io_specs(model: onnx.ModelProto,
             exclude: set[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the graph, slot inputs excluded; symbolic dims by name."""
    def spec(value) -> TensorSpec:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return TensorSpec(name=value.name, shape=dims, dtype=str(np.dtype(dtype)))

    inputs = [spec(v) for v in model.graph.input if v.name not in exclude]
    return inputs, [spec(v) for v in model.graph.output]


@dataclass
class ExportReport:
    """What an export wrote and how its parity check went."""

    path: Path
    parity: list[ParityResult]
    sizes: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"wrote {self.path}"] + [f"  note: {n}" for n in self.notes]
        out += [f"  size {name}: {size / 1024:.1f} KiB" for name, size in self.sizes.items()]
        return out + [str(r) for r in self.parity]


def export_merged(*, base: str, weights: str | Path | None, adapter: str | Path,
                  out: str | Path, target: str | Path | None = None, atol: float | None = None,
                  data: str | Path | None = None, input_shape_: tuple[int, ...] | None = None,
                  force: bool = False, exporter: str | None = None) -> ExportReport:
    """`edge-export merge`: LoRA folded into the base (safe merge) as one ONNX file; a
    bottleneck adapter, which cannot fold, stays in the static graph. The adapter's class
    names, preprocessing, drift profile and card go into the file's `edge.*` metadata_props."""
    settings = load_settings(target, atol=atol, exporter=exporter)
    out = Path(out)
    check_output(out, force)
    model = load_base(base, weights=weights)
    fingerprint = weights_fingerprint(model)
    adapted = AdaptedModel(model)
    adapter_dir = load_adapter(adapted, adapter)
    name = adapted.active_adapter
    notes = []
    if adapter_kind(adapter_dir.kind).folds:
        plain = adapted.merged_model(name).eval()
        notes.append(f"{adapter_dir.kind} adapter folded into the base weights: zero adapter "
                     "overhead")
    else:
        plain = adapted.eval()
        notes.append(f"{adapter_dir.kind} adapter exported as part of the static graph (it "
                     "cannot fold into the weights)")
    shape = input_shape(model, input_shape_)
    x = sample_inputs(shape, settings, real_samples(data, adapter_dir.meta, shape))
    pre = Preprocessing.from_dict(adapter_dir.meta.get("preprocessing"))  # the one format
    meta = {"edge.kind": "merged", "edge.adapter": name, "edge.weights_fingerprint": fingerprint,
            "edge.package_version": __version__,
            "edge.class_names": json.dumps(adapter_dir.meta.get("class_names", [])),
            "edge.preprocessing": json.dumps(pre.to_dict() if pre else {})}
    profile = _profile(adapter_dir, shape[0])
    if profile is not None:
        meta["edge.drift_profile"] = profile.model_dump_json()
    card = adapter_card(None, adapter_dir.meta, bundle_base_card(None, weights, fingerprint),
                        fingerprint)  # provenance and licence travel with the merged file too
    meta["edge.card"] = card.model_dump_json(exclude_none=True)
    with staging_file(out) as tmp:
        to_onnx(plain, (torch.from_numpy(x),), [INPUT], tmp, settings)
        notes.append(settings.exported)
        finish_onnx(tmp, metadata=meta, settings=settings, keep=rejected_path(out))
        with torch.no_grad():
            want = plain(torch.from_numpy(x)).numpy()
        got, features = Engine(tmp).run_with_features(x)
        problem = None if profile is None or features is None else profile.problem(
            shape[0], profile.classes.names, features.shape[1])
        if problem:
            raise AdapterRejected(f"{adapter_dir.path}: adapter {problem}")
        results = [compare("merged", OUTPUT, got, want, settings.tolerance)]
        results += feature_parity("merged", plain, (torch.from_numpy(x),), features,
                                  settings.tolerance)
        raise_on_failure(results)
    return ExportReport(out, results, {out.name: out.stat().st_size}, notes)


def _profile(adapter_dir, channels: int) -> DriftProfile | None:
    """The adapter's drift profile (None when it records none), checked against the model's
    channels and the adapter's classes."""
    profile = profile_of(adapter_dir.meta, str(adapter_dir.path))
    if profile is None:
        return None
    problem = profile.problem(channels, list(adapter_dir.meta.get("class_names") or []))
    if problem:
        raise AdapterRejected(f"{adapter_dir.path}: adapter {problem}")
    return profile


def real_samples(data: str | Path | None, meta: dict, shape: tuple[int, ...],
                 n: int = 8) -> np.ndarray | None:
    """A few real samples (n, *shape) from `--data`, normalised as the adapter was trained;
    a sample shape other than the model's is an error naming --data."""
    if data is None:
        return None
    from export.data import ChannelStats, load_dataset

    ds = load_dataset(data)
    if ds.is_windows and len(shape) == 2 and ds.length != shape[1]:
        ds = load_dataset(data, length=shape[1])  # windows resampled to the model's length
    if ds.sample_shape != tuple(shape):
        raise ConfigError(f"--data {data}: samples of shape {list(ds.sample_shape)}; the "
                          f"model takes {list(shape)} (--input-shape)")
    pre = Preprocessing.from_dict(meta.get("preprocessing"))
    # stats of this data only when the adapter recorded none; apply checks the channel count
    norm = ChannelStats.from_data(ds.X) if pre is None else ChannelStats.from_preprocessing(
        pre, len(pre.mean))
    return norm.apply(ds.X[:n])


def check_output(out: Path, force: bool) -> None:
    check_writable(out, force, ExportError)


class staging_file:
    """Write to a temp file beside `out`, rename over it on success (with the umask's mode,
    not mkstemp's 0600), remove it on failure."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".tmp",
                                    dir=self.out.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.tmp.chmod(shared_mode())
            os.replace(self.tmp, self.out)
        else:
            self.tmp.unlink(missing_ok=True)
