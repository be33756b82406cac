"""`edge-export`: the click group and its commands, each module registering its own."""

from __future__ import annotations

from export.cli import (  # noqa: F401  (register commands on main)
    checking,
    exporting,
    inspect,
    pilot,
    training,
)
from export.cli.group import main

__all__ = ["main"]
