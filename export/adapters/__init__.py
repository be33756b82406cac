"""Adapter kinds, found through a registry (one subpackage per kind, like PEFT's tuners)."""

from __future__ import annotations

from export.adapters.bottleneck import BottleneckConfig, BottleneckLayer
from export.adapters.lora import LoraConfig, LoraLayer
from export.adapters.model import AdaptedModel, AdapterSummary, inject

AdapterConfig = LoraConfig | BottleneckConfig

# kind name -> config class; a new kind registers here and gets a subpackage of its own.
ADAPTER_KINDS: dict[str, type] = {"lora": LoraConfig, "bottleneck": BottleneckConfig}

__all__ = [
    "ADAPTER_KINDS", "AdaptedModel", "AdapterConfig", "AdapterSummary", "BottleneckConfig",
    "BottleneckLayer", "LoraConfig", "LoraLayer", "inject",
]
