"""The adapter kinds, each registered once; everything that depends on the kind reads it here.

A kind is a subpackage of export/adapters/ (as PEFT's tuners are) holding:
    config  a dataclass following `AdapterConfig` below
    layer   an `AdapterLayer` subclass; its `supported` names the module types it wraps
    slots   the kind's ONNX slot code (module `<package>.slots`):
              SLOT, BANK_SLOT                   slot modules (export/onnx/slot_base.py)
              to_slot(config, path, part, a)    a file tensor in its slot layout, scaled
              slot_shape(part, shape, module, rank) -> list[int]   the slot padded to rank
              slot_activation(config) -> str | None                what the bundle's Slot records
and one `register(AdapterKind(...))` at the end of this file. Nothing here imports torch:
classes and modules are named by path and imported on first use, so `edge-export --help`
and the CLI's `--method` choices stay quick.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from edge.errors import AdapterError

if TYPE_CHECKING:
    from export.adapters.targets import TargetSpec


class AdapterConfig(Protocol):
    """What every kind's config offers (LoraConfig, BottleneckConfig)."""

    kind: ClassVar[str]  # the registry name
    target_modules: TargetSpec
    exclude_modules: TargetSpec  # never targets (PEFT's rule; export/adapters/targets.py)
    modules_to_save: list[str] | None

    def add_to(self, layer: Any, name: str, path: str) -> None:
        """Add adapter `name` to `layer` (this kind's layer class) at module `path`."""

    def to_file_dict(self) -> dict:
        """The `adapter_config.json` dict."""

    @classmethod
    def from_file_dict(cls, data: dict, *, source: str = ...) -> AdapterConfig:
        """Read an `adapter_config.json` dict; `source` names the file in errors."""

    @classmethod
    def from_train_options(cls, *, rank: int, alpha: float, target_modules: TargetSpec,
                           modules_to_save: list[str] | None,
                           exclude_modules: TargetSpec = None) -> AdapterConfig:
        """The config `edge-export train --method <kind> --rank --alpha` builds."""

    def train_options(self) -> dict[str, Any]:
        """{"rank": ..., "alpha": ... or None} as train's metrics report them."""


@dataclass(frozen=True)
class AdapterKind:
    """One adapter kind. `name` is `config.kind`, `AdapterDir.kind` and the bundle's
    `Slot.kind`/`AdapterEntry.kind`."""

    name: str
    config: str  # "module:Class" of its config
    layer: str  # "module:Class" of its layer
    slots: str  # module of its slot code
    # adapter_config.json key and value naming this kind: PEFT's ("peft_type", "LORA"), or
    # ours ("adapter_type", "bottleneck")
    file_tag: tuple[str, str]
    # file-key segments after the module path -> slot part
    # (`<path>.lora_A.weight` -> lora_A; `<path>.adapter_down.bias` -> down_b)
    key_parts: dict[str, str]
    rank_part: str  # slot part whose first axis, as stored in the file, is the rank
    folds: bool  # `merge` can fold it into the base weights (its layer has `merged_copy`)

    @property
    def config_cls(self) -> type[AdapterConfig]:
        return _load(self.config)

    @property
    def layer_cls(self) -> type:
        return _load(self.layer)

    def slot_code(self) -> ModuleType:
        return importlib.import_module(self.slots)

    def split_key(self, rest: str) -> tuple[str, str] | None:
        """(module path, slot part) of a file key without its prefix, or None when the key
        holds none of this kind's parts."""
        for segments, part in self.key_parts.items():
            marker = f".{segments}."
            if marker in rest + ".":
                return (rest + ".").split(marker)[0], part
        return None


ADAPTER_KINDS: dict[str, AdapterKind] = {}


def register(kind: AdapterKind) -> AdapterKind:
    if kind.name in ADAPTER_KINDS:
        raise AdapterError(f"adapter kind {kind.name!r} is registered twice")
    ADAPTER_KINDS[kind.name] = kind
    return kind


def adapter_kind(name: str) -> AdapterKind:
    try:
        return ADAPTER_KINDS[name]
    except KeyError:
        raise AdapterError(f"unknown adapter kind {name!r}; known: "
                           f"{', '.join(ADAPTER_KINDS)}") from None


def kind_of_file(data: dict) -> AdapterKind | None:
    """The kind an `adapter_config.json` dict names: our `adapter_type` first, else PEFT's
    `peft_type` (LORA when absent, as PEFT writes it always)."""
    for key, default in (("adapter_type", None), ("peft_type", "LORA")):
        value = data.get(key, default)
        for kind in ADAPTER_KINDS.values():
            if kind.file_tag == (key, value):
                return kind
    return None


def file_tags() -> str:
    """The tags `kind_of_file` knows, for errors: "LORA, or adapter_type 'bottleneck'"."""
    peft = [v for k, v in (kind.file_tag for kind in ADAPTER_KINDS.values()) if k == "peft_type"]
    ours = [f"{k} {v!r}" for k, v in (kind.file_tag for kind in ADAPTER_KINDS.values())
            if k != "peft_type"]
    return ", or ".join([", ".join(peft), *ours])


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


register(AdapterKind(
    name="lora",
    config="export.adapters.lora.config:LoraConfig",
    layer="export.adapters.lora.layer:LoraLayer",
    slots="export.adapters.lora.slots",
    file_tag=("peft_type", "LORA"),
    key_parts={"lora_A": "lora_A", "lora_B": "lora_B"},
    rank_part="lora_A",
    folds=True,
))
register(AdapterKind(
    name="bottleneck",
    config="export.adapters.bottleneck.config:BottleneckConfig",
    layer="export.adapters.bottleneck.layer:BottleneckLayer",
    slots="export.adapters.bottleneck.slots",
    file_tag=("adapter_type", "bottleneck"),
    key_parts={"adapter_down.weight": "down_w", "adapter_down.bias": "down_b",
               "adapter_up.weight": "up_w", "adapter_up.bias": "up_b"},
    rank_part="down_w",
    folds=False,
))
