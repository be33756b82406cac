"""Bottleneck (Houlsby) adapters."""

from __future__ import annotations

from .config import BottleneckConfig
from .layer import SUPPORTED, BottleneckLayer

__all__ = ["SUPPORTED", "BottleneckConfig", "BottleneckLayer"]
