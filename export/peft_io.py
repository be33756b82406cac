"""Adapter directories in Hugging Face PEFT's layout, read and written with safetensors only.

    <dir>/adapter_config.json        the kind's config (PEFT's LoraConfig dict, our bottleneck's)
    <dir>/adapter_model.safetensors  keys `base_model.model.<module>.lora_A.weight`, ...
    <dir>/edge_adapter.json          ours, optional: base fingerprint, preprocessing, labels,
                                     metrics (PEFT ignores files it does not know)

Pickle is never loaded: an adapter may arrive over the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edge.errors import AdapterError
from export.adapters.model import AdaptedModel
from export.adapters.registry import AdapterConfig, file_tags, kind_of_file
from export.outputs import check_writable, shared_mode

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "edge_adapter.json"
META_FORMAT = "edge-adapter/1"


@dataclass
class AdapterDir:
    """What an adapter directory holds, read and checked but not yet applied to a model."""

    path: Path
    config: AdapterConfig
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def read_config(path: Path) -> AdapterConfig:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise AdapterError(f"{path}: no {CONFIG_FILE}; is this an adapter directory?")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{file}: expected a JSON object")
    kind = kind_of_file(data)
    if kind is None:
        raise AdapterError(f"{file}: peft_type {data.get('peft_type')!r} is not supported "
                           f"({file_tags()})")
    try:
        return kind.config_cls.from_file_dict(data, source=str(file))
    except TypeError as exc:  # a value of the wrong type (r: "8")
        raise AdapterError(f"{file}: {exc}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = (f"; found {pickled[0]}, but pickle files are never loaded: re-save with "
                "safetensors") if pickled else ""
        raise AdapterError(f"{path}: no {WEIGHTS_FILE}{hint}")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"{file}: corrupted or truncated safetensors file ({exc})") from None
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise AdapterError(f"{file}: tensor {key} holds NaN or Inf values")
    return tensors


def read_adapter_dir(path: str | Path) -> AdapterDir:
    """Read config, tensors and our metadata; every problem names the file and tensor."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist")
    meta_file = path / META_FILE
    meta = {}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterError(f"{meta_file}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise AdapterError(f"{meta_file}: expected a JSON object")
    return AdapterDir(path, read_config(path), read_tensors(path), meta)


def load_adapter(model: AdaptedModel, path: str | Path, *, name: str | None = None) -> AdapterDir:
    """Add the adapter stored at `path` to `model` under `name` (default: the directory's
    name) and activate it."""
    adapter = read_adapter_dir(path)
    name = name or adapter.meta.get("name") or Path(path).resolve().name
    previous = model.active_adapter
    model.add_adapter(name, adapter.config, option=f"{adapter.path / CONFIG_FILE}: target_modules")
    source = str(adapter.path / WEIGHTS_FILE)
    try:
        model.load_adapter_state_dict(name, adapter.tensors, source=source)
    except AdapterError:
        model.delete_adapter(name)
        model.set_adapter(previous)
        raise
    return adapter


def save_adapter(model: AdaptedModel, out: str | Path, *, name: str | None = None,
                 meta: dict | None = None, force: bool = False) -> Path:
    """Write adapter `name` as a PEFT directory, atomically (temp dir, then rename)."""
    name = name or model.active_adapter
    if name not in model.configs:
        raise AdapterError(f"no adapter named {name!r} to save; adapters: {sorted(model.configs)}")
    config = model.configs[name]
    out = Path(out)
    _check_target(out, force)
    config_dict = config.to_file_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.adapter_state_dict(name).items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(shared_mode(directory=True))  # mkdtemp makes it 0700: owner only
        (tmp / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2, sort_keys=True))
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        full_meta = {"format": META_FORMAT, "name": name, "kind": config.kind, **(meta or {})}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, force: bool) -> None:
    check_writable(out, force, AdapterError)
