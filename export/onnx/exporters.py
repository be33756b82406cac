"""The two torch -> ONNX exporters (`--exporter`, `[export] exporter`), and the check that
onnxruntime accepts what they wrote.

    done = run_export(module, args, path, exporter="auto", ...)  # Exported: which, opset, note
    check_loads(path, keep=rejected_path(out), ...)  # refused: ExportError naming the node

- "dynamo": `torch.export` then onnxscript (torch's default). Needed by current Hugging Face
  models: TorchScript writes a wrong layout for PatchTST's `unfold(dimension=-2)`. Its
  operator set starts at opset 18; a lower `opset` is raised to 18, and the caller records
  the opset the graph has (graph_opset).
- "torchscript": the tracing exporter (`dynamo=False`), deprecated by torch but faster
  (about 1 s against 3-10 s for the reference model on 2 cores) and it writes any opset
  from 13 up, e.g. 17 for TensorRT 8.6.
- "auto" (the default): torchscript for the bundled reference model, which it exports
  exactly at any opset, fast; for every other (`--base package.module:callable`) model
  dynamo, falling back to torchscript when dynamo cannot export the model at all (Hugging
  Face's Informer with distilling convs). docs/MODELS.md says which model takes which.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge.errors import ExportError

EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_MIN_OPSET = 18  # the dynamo exporter's own operator set; lower requests are raised
# Loggers that narrate a dynamo export (steps, constant folding it skips, torchvision ops it
# cannot register, torch.export's own errors): quiet during the export; failures raise.
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


def resolve(exporter: str, module: nn.Module) -> str:
    """The exporter for `module`: `auto` is torchscript for the reference model (exact, fast,
    any opset) and stays `auto` (dynamo, then torchscript) for any other model."""
    if exporter not in EXPORTERS:
        raise ExportError(f"--exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    from export.models.reference import SensorTransformer

    reference = any(isinstance(m, SensorTransformer) for m in module.modules())
    return "torchscript" if exporter == "auto" and reference else exporter


@dataclass
class Exported:
    """Which exporter wrote the graph, at which opset, and a line for the export report."""

    exporter: str
    opset: int
    note: str


def run_export(module: nn.Module, args: tuple, path: Path, *, input_names: list[str],
               output_names: list[str], batch_inputs: int | None, opset: int,
               exporter: str) -> Exported:
    """torch.onnx.export with `exporter` (`auto`: dynamo, then torchscript if dynamo fails).
    The first `batch_inputs` inputs and every output have a dynamic axis 0, "batch"
    (None: all static)."""
    names = (input_names, output_names, batch_inputs)
    if exporter != "auto":
        used = _export(module, args, path, names, opset, exporter)
        return Exported(exporter, used, f"exported with {exporter} (opset {used})")
    try:
        used = _export(module, args, path, names, opset, "dynamo")
        return Exported("dynamo", used, f"exported with dynamo (opset {used}; --exporter auto)")
    except ExportError as dynamo_failed:
        try:
            used = _export(module, args, path, names, opset, "torchscript")
        except ExportError as exc:
            raise ExportError(f"{dynamo_failed}; then {exc}") from exc
        why = str(dynamo_failed).split("; try --exporter")[0]
        return Exported("torchscript", used, f"exported with torchscript (opset {used}): "
                        f"--exporter auto fell back to it, {why}")


def _export(module: nn.Module, args: tuple, path: Path, names: tuple, opset: int,
            exporter: str) -> int:
    """One torch.onnx.export call; returns the opset asked of it."""
    input_names, output_names, batch_inputs = names
    if exporter == "dynamo":
        options = _dynamo_options(args, batch_inputs)
        opset = max(opset, DYNAMO_MIN_OPSET)
    else:
        axes = None if batch_inputs is None else {
            name: {0: "batch"} for name in [*input_names[:batch_inputs], *output_names]}
        options = {"dynamo": False, "dynamic_axes": axes}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # The fused Transformer fast path (aten::_native_multi_head_attention) has no ONNX form.
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings(), torch.no_grad(), _quiet():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module.eval(), args, str(path), input_names=input_names,
                              output_names=output_names, opset_version=opset, **options)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export ({exporter} exporter) failed: "
                              f"{_reason(exc)}; try --exporter {_other(exporter)}") from exc
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    if exporter == "dynamo" and batch_inputs is not None:
        _name_batch(path, input_names[0])
    return opset


@contextmanager
def _quiet():
    loggers = [logging.getLogger(name) for name in _CHATTY]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _dynamo_options(args: tuple, batch_inputs: int | None) -> dict:
    """torch.export's dynamic shapes by tensor (a ShapesCollection: dynamo cannot convert
    dynamic_axes for a `forward(x, *slots)`); weights inside the file, no `<path>.data`."""
    shapes = None
    if batch_inputs is not None:
        shapes = torch.export.ShapesCollection()
        batch = torch.export.Dim("batch")  # one symbol: x and adapter_index share it
        for tensor in args[:batch_inputs]:
            shapes[tensor] = {0: batch}
    return {"dynamo": True, "dynamic_shapes": shapes, "external_data": False,
            "optimize": True, "verbose": False}


def _name_batch(path: Path, first_input: str) -> None:
    """dynamo names the batch symbol s0, s33, ...: call it "batch", as torchscript does."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    symbol = next(v for v in graph.input if v.name == first_input)
    symbol = symbol.type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"
    onnx.save(model, str(path))


def _other(exporter: str) -> str:
    return "torchscript" if exporter == "dynamo" else "dynamo"


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip("# ")]
    return lines[0].strip() if lines else type(exc).__name__


def _reason(exc: Exception) -> str:
    """The first line of the innermost cause: torch.export wraps the model's own error
    (a shape mismatch, an unsupported op) in a generic "Failed to export" message."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {_first_line(exc)}"


def graph_opset(model) -> int:
    """The default-domain opset an onnx.ModelProto imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def rejected_path(out: Path) -> Path:
    """Where a graph onnxruntime refused is kept: beside --out, `model.rejected.onnx` for
    `model.onnx`, `bundle.rejected.onnx` for a bundle folder `bundle`."""
    stem = out.stem if out.suffix == ".onnx" else out.name
    return out.parent / f"{stem}.rejected.onnx"


_NODE = [re.compile(p) for p in (
    r"Node \((?P<name>[^)]*)\) Op \((?P<op>[^)]*)\)",  # shape/type inference at load
    r"implementation for (?P<op>\w+)\(\d+\) node with name '(?P<name>[^']*)'",  # no kernel
    r"running (?P<op>\w+) node\. Name:'(?P<name>[^']*)'",  # a kernel failed while running
)]


def node_of(message: str) -> str | None:
    """'node NAME (op OP)' from an onnxruntime error message, or None."""
    for pattern in _NODE:
        found = pattern.search(message)
        if found:
            return f"node {found['name'] or '<unnamed>'} (op {found['op']})"
    return None


def check_loads(path: Path, *, keep: Path, exporter: str, opset: int) -> None:
    """Open `path` in onnxruntime; when it refuses the graph, keep a copy at `keep` and
    raise an ExportError that says the export produced it, which node, and what to try."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # slot inputs with initializers warn once per tensor
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        shutil.copyfile(path, keep)
        reason = _first_line(exc).replace(str(path), str(keep))
        where = node_of(reason) or "a node it did not name"
        raise ExportError(
            f"onnxruntime refuses the graph the {exporter} exporter produced, at {where}: "
            f"{reason} (graph kept at {keep}); try --exporter {_other(exporter)}, or another opset "
            f"with --target (this graph: opset {opset})") from None
