"""`edge-export`: the click group and its commands, each module registering its own."""

from __future__ import annotations

from export.cli import exporting, inspect, pilot, training  # noqa: F401  (register commands on main)
from export.cli.group import main

__all__ = ["main"]
