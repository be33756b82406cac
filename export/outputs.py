"""Checks before writing an output, and the modes it is written with, shared by training,
adapter saving and exports."""

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


def umask() -> int:
    """The process umask; os.umask can only read it by setting it, so set it back."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shared_mode(*, directory: bool = False) -> int:
    """What open() and mkdir() give under the umask (0666 / 0777 & ~umask). mkstemp and
    mkdtemp give 0600 / 0700 whatever the umask: a gateway running as another user could
    not read a copied bundle."""
    return (0o777 if directory else 0o666) & ~umask()


def share_tree(root: Path) -> None:
    """chmod `root` and everything under it to the umask's modes."""
    files, dirs = shared_mode(), shared_mode(directory=True)
    root.chmod(dirs)
    for path in root.rglob("*"):
        path.chmod(dirs if path.is_dir() else files)
