"""LoRA adapters (PEFT-compatible)."""

from __future__ import annotations

from .config import LoraConfig
from .layer import SUPPORTED, LoraLayer

__all__ = ["SUPPORTED", "LoraConfig", "LoraLayer"]
