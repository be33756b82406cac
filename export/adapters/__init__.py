"""Adapter kinds, found through a registry (one subpackage per kind, like PEFT's tuners).

`ADAPTER_KINDS` and `adapter_kind` (registry.py) need no torch; the torch classes below are
imported on first use, so reading the kinds (the CLI's `--method` choices) stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from export.adapters.registry import ADAPTER_KINDS, AdapterConfig, AdapterKind, adapter_kind

if TYPE_CHECKING:
    from export.adapters.bottleneck import BottleneckConfig, BottleneckLayer
    from export.adapters.lora import LoraConfig, LoraLayer
    from export.adapters.model import AdaptedModel, AdapterSummary, inject

_LAZY = {
    "AdaptedModel": "export.adapters.model", "AdapterSummary": "export.adapters.model",
    "inject": "export.adapters.model",
    "LoraConfig": "export.adapters.lora", "LoraLayer": "export.adapters.lora",
    "BottleneckConfig": "export.adapters.bottleneck",
    "BottleneckLayer": "export.adapters.bottleneck",
}

__all__ = [
    "ADAPTER_KINDS", "AdaptedModel", "AdapterConfig", "AdapterKind", "AdapterSummary",
    "BottleneckConfig", "BottleneckLayer", "LoraConfig", "LoraLayer", "adapter_kind", "inject",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
