"""Shared by the benchmarks: machine description, the training benchmarks' common options and
docs/BENCHMARKS.md sections."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nRatios against a baseline run side by side in the same process. "
          "Each section is rewritten by the script named in its heading.\n")


def training_options(parser: argparse.ArgumentParser, base_dir: str, *,
                     progress: bool = True) -> None:
    """The options every training benchmark takes: --base-dir (what it caches there:
    `base_dir`), --threads (torch), --no-write, and --progress."""
    parser.add_argument("--base-dir", type=Path, help=f"keep (or reuse) {base_dir} here, not "
                        "in a temp dir")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    if progress:
        parser.add_argument("--progress", action="store_true", help="show progress bars")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(packages: tuple[str, ...] = ("numpy", "onnxruntime")) -> str:
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return (f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, " + ", ".join(versions))


def write_section(title: str, body: str, doc: Path = DOC) -> Path:
    """Replace (or append) the `## title` section of docs/BENCHMARKS.md."""
    text = doc.read_text() if doc.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc
