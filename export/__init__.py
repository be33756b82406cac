"""Workstation tools: inject and train adapters, read/write PEFT directories, export ONNX."""

from __future__ import annotations

from edge import __version__

__all__ = ["__version__"]
