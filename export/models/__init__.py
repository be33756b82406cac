"""Base models: build or import one (`--base`), load its weights (`--weights`), save, fingerprint.

Weights are read from safetensors, or from a torch state dict with `weights_only=True`:
pickle is never loaded otherwise.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.errors import ConfigError, ExportError
from export.models.reference import SensorTransformer, build_reference, fitting_patch

__all__ = [
    "SensorTransformer",
    "build_reference",
    "fitting_patch",
    "load_base",
    "save_base",
    "sidecar_path",
    "weights_fingerprint",
]

_SHOW = 5  # how many offending keys an error message lists


def sidecar_path(path: str | Path) -> Path:
    """The JSON file next to saved weights that holds `model.config`: `<path>.json`."""
    return Path(f"{path}.json")


def meta_beside(weights: str | Path | None) -> dict:
    """The metadata files beside base weights, merged in this order (later keys win): the
    weights' sidecar, metrics.json, and edge_model.json (`train --method full` writes it
    beside model.safetensors: class names, preprocessing, drift profile, card). {} for
    None or when there are none."""
    if weights is None:
        return {}
    meta: dict = {}
    for path in (sidecar_path(weights), Path(weights).with_name("metrics.json"),
                 Path(weights).with_name("edge_model.json")):
        if path.is_file():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ExportError(f"{path}: cannot read it beside --weights ({exc})") from None
            meta.update(doc if isinstance(doc, dict) else {})
    return meta


def load_base(
    spec: str, *, weights: str | Path | None = None, **reference_kwargs: Any
) -> nn.Module:
    """Build the base model named by `--base` and load `--weights` into it.

    `spec` is `"reference"` (a `SensorTransformer` from `reference_kwargs`; a `<weights>.json`
    sidecar written by `save_base` supplies the config, which the kwargs override) or
    `"package.module:callable"`, imported and called with no arguments, which must return an
    `nn.Module`. Kwargs whose value is None are ignored. Every failure is a `ConfigError`
    naming `--base` or `--weights` and the file; mismatched weights list the first keys.
    """
    kwargs = {k: v for k, v in reference_kwargs.items() if v is not None}
    weights_path = _existing_weights(weights) if weights is not None else None
    if spec == "reference":
        model: nn.Module = _build_reference(kwargs, weights_path)
    else:
        if kwargs:
            raise ConfigError(
                f"--base {spec!r}: options {sorted(kwargs)} apply only to --base reference"
            )
        model = _import_base(spec)
    if weights_path is not None:
        _load_weights(model, weights_path)
    return model


def _existing_weights(weights: str | Path) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"--weights {path}: file not found")
    return path


def _build_reference(kwargs: dict[str, Any], weights: Path | None) -> SensorTransformer:
    config: dict[str, Any] = {}
    sidecar = sidecar_path(weights) if weights is not None else None
    if sidecar is not None and sidecar.is_file():
        config = _read_sidecar(sidecar)
    config.update(kwargs)
    if not config:
        raise ConfigError(
            "--base reference needs in_channels and num_classes, or --weights saved by "
            "save_base with its <weights>.json sidecar"
        )
    return build_reference(config)


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--weights sidecar {sidecar}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f'--weights sidecar {sidecar}: expected {{"config": {{...}}}}')
    return dict(data["config"])


def _import_base(spec: str) -> nn.Module:
    """`package.module:callable` -> the nn.Module the callable returns."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--base {spec!r}: expected 'reference' or 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"--base {spec!r}: module {module_name!r} not found") from None
        raise ConfigError(f"--base {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(
            f"--base {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--base {spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--base {spec!r}: {attr!r} is a {type(target).__name__}, not callable")
    try:
        model = target()
    except Exception as exc:
        raise ConfigError(
            f"--base {spec!r}: calling {attr}() raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--base {spec!r}: {attr}() returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... all mean "unusable"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"--weights {path}: not a torch state dict loadable with weights_only=True "
            f"(nor a .safetensors file): {reason}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint {"state_dict": ..., ...}
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConfigError(f"--weights {path}: does not hold a state dict (name -> tensor)")
    return obj


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(
            f"--weights {path}: reading .safetensors needs the safetensors package"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError: truncated or not safetensors at all
        raise ConfigError(f"--weights {path}: not a readable safetensors file ({exc})") from None


def _load_weights(model: nn.Module, path: Path) -> None:
    state = _read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {_first(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if keys
    ]
    if problems:
        raise ConfigError(f"--weights {path}: does not fit the base model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def save_base(model: nn.Module, path: str | Path) -> Path:
    """Write the model's state dict to `path` (`.safetensors`) and, when `model.config` is a
    dict, a `<path>.json` sidecar so `load_base("reference", weights=path)` rebuilds it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: base weights are saved as .safetensors; use that suffix")
    from safetensors.torch import save_file

    # Clones: safetensors refuses tensors that share memory (tied weights, views).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    sidecar = sidecar_path(path)
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        cls = type(model)
        body = {"class": f"{cls.__module__}.{cls.__qualname__}", "config": config}
        sidecar.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    elif sidecar.exists():
        sidecar.unlink()  # a stale sidecar would describe another model
    return path


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 hex digest over the sorted (name, dtype, shape, bytes) of parameters and buffers.

    Computed on the base weights only: pass the un-adapted base model (an injected adapter adds
    parameters and renames wrapped layers, so the digest would change). An adapter records
    this value at training time and is refused by a base whose fingerprint differs.
    """
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        digest.update(f"{name}|{dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return digest.hexdigest()
