"""Checks before writing an output, shared by training, adapter saving and exports."""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import EdgeError


def check_writable(out: Path, force: bool, error: type[EdgeError]) -> None:
    """Fail early, naming the flag, when `out` exists without --force or cannot be written."""
    if out.exists() and not force:
        raise error(f"{out} exists; pass --force to overwrite it (--out)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create {out.parent}: {exc.strerror} (--out)") from None
    if not os.access(out.parent, os.W_OK):
        raise error(f"{out.parent} is not writable (--out)")
