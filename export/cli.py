"""`edge-export`: thin click commands over the library functions of `export/`.

Each command parses its options and calls one public function whose keyword names match
them. `Group.invoke` below is the one place that turns an EdgeError into `error: ...` on
stderr and the error's exit code; `edge-export --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edge import __version__
from edge.errors import NO_ONNXRUNTIME, ConfigError, EdgeError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            if exc.name != "onnxruntime":
                raise
            click.echo(f"error: {NO_ONNXRUNTIME}", err=True)
            ctx.exit(2)
        except EdgeError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            message = " ".join(str(exc).split("\n")) or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edge-export")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Workstation tools: train adapters, inspect them, export them for the gateway."""
    ctx.ensure_object(dict)["debug"] = debug


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def _model_config(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """`--model-config d_model=128` (repeatable) -> {"d_model": 128}; values parse as JSON."""
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-config {pair!r}: expected KEY=VALUE, like d_model=128")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config or None


@main.command("train")
@click.option("--base", default="reference", show_default=True,
              help="'reference' (the bundled SensorTransformer) or 'package.module:callable'.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Base weights (.safetensors).")
@click.option("--data", required=True, help="Training data: .npz, .ts or ucr:NAME:train.")
@click.option("--test-data", help="Test data (same forms); without it 20% of --data is held out.")
@click.option("--method", type=click.Choice(["lora", "bottleneck", "head", "full"]),
              default="lora", show_default=True,
              help="lora/bottleneck: an adapter directory; head: linear probe; full: every "
              "weight (also how a base is pretrained).")
@click.option("--rank", type=int, default=8, show_default=True,
              help="LoRA rank, or the bottleneck width.")
@click.option("--alpha", type=float, help="LoRA alpha  [default: 2 * rank]")
@click.option("--targets", help="Modules to adapt: comma list of name suffixes (q,v) or a regex.")
@click.option("--train-head/--freeze-head", default=True, show_default=True,
              help="Train the head with the adapter (always, when the class count changes).")
@click.option("--train-norms/--freeze-norms", default=True, show_default=True,
              help="Train the LayerNorms with the adapter.")
@click.option("--modules-to-save", help="Other modules to train in full with the adapter "
              "(comma list), stored in it.")
@click.option("--epochs", type=int, default=100, show_default=True)
@click.option("--lr", type=float, help="Learning rate  [default: per method]")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--length", type=int, help="Resample windows to this length [default: the base's].")
@click.option("--model-config", multiple=True, metavar="KEY=VALUE",
              help="Reference model argument for a new base (d_model=128); repeatable.")
@click.option("--out", required=True, type=click.Path(), help="Output directory.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train_command(model_config: tuple[str, ...], **options: Any) -> None:
    """Train an adapter (lora, bottleneck), a head, or the whole model (full)."""
    from .train import train

    result = train(model_config=_model_config(model_config), **options)
    m = result.metrics
    click.echo(f"wrote {result.out}")
    click.echo(f"  {m['eval_split']} accuracy {100 * m['accuracy']:.1f}% "
               f"({m['n_eval']} windows), train {m['train_seconds']:.1f} s")
    click.echo(f"  trainable {m['trainable_params']:,} params ({m['trainable_pct']:.2f}% of "
               f"the base), {m['adapter_bytes'] / 1024:.1f} KiB ({m['adapter_base_pct']:.2f}% "
               f"of the base's {m['base_bytes'] / 1024:.1f} KiB)")


# --------------------------------------------------------------------------------------------
# inspect: one describe function per kind of path
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_adapter_dir(path: Path) -> dict[str, Any]:
    """A PEFT adapter directory: config, tensors, sizes, fingerprints, our metadata."""
    from .peft_io import CONFIG_FILE, WEIGHTS_FILE, read_adapter_dir

    adapter = read_adapter_dir(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    meta = dict(adapter.meta)
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
        "metadata": meta,
    }


def describe_model_file(path: Path) -> dict[str, Any]:
    """Base or fully trained weights (.safetensors) with its `<path>.json` sidecar."""
    from safetensors import safe_open

    from .models import sidecar_path

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
    }


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
            "metadata": {p.key: p.value for p in model.metadata_props},
            "outputs": {o.name: dims(o) for o in model.graph.output},
            "tensors": {i.name: ["input" + (" (slot)" if i.name in inits else ""), dims(i)]
                        for i in model.graph.input}}


def _describer(path: Path) -> Callable[[Path], dict[str, Any]]:
    """Which describe function handles `path`. New kinds (ONNX, bundles) add a line here."""
    from .peft_io import CONFIG_FILE
    from .train import MODEL_FILE

    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return describe_adapter_dir
    if path.is_dir() and (path / "manifest.json").is_file():
        return describe_bundle
    if path.is_file() and path.suffix == ".onnx_adapter":
        return describe_onnx_adapter
    if path.is_file() and path.suffix == ".onnx":
        return describe_onnx
    if path.is_dir() and (path / MODEL_FILE).is_file():  # a `train --method full|head` output
        return lambda p: describe_model_file(p / MODEL_FILE)
    if path.is_file() and path.suffix == ".safetensors":
        return describe_model_file
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    raise ConfigError(f"{path}: not something inspect knows (a PEFT adapter directory, a "
                      "bundle, an .onnx, an .onnx_adapter or a .safetensors weights file)")


def _render(info: dict[str, Any]) -> list[str]:
    lines = [f"{info['path']}: {info['kind']}"]
    for key, value in info.items():
        if key in ("path", "kind", "tensors"):
            continue
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    lines.append(f"tensors ({len(info['tensors'])}):")
    lines += [f"  {k}  {dtype} {tuple(shape)}" for k, (dtype, shape) in info["tensors"].items()]
    return lines


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Show what PATH holds: kind, config, tensors and shapes, bytes, fingerprint, metadata."""
    info = _describer(path)(path)
    if as_json:
        # UTF-8 as a person reads it: "…" and class names like "Ölpumpe", not \u escapes
        click.echo(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        click.echo("\n".join(_render(info)))


if __name__ == "__main__":  # pragma: no cover
    main()
from . import cli_export  # noqa: E402,F401  (registers merge, attach, add-adapter, ...)
