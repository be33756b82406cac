"""`edge-export inspect`: what a file or directory holds, as text or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from export.cli.describe import describer
from export.cli.group import main


def _render(info: dict[str, Any]) -> list[str]:
    lines = [f"{info['path']}: {info['kind']}"]
    for key, value in info.items():
        if key in ("path", "kind", "tensors"):
            continue
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    tensors = info.get("tensors") or {}
    if tensors:
        lines.append(f"tensors ({len(tensors)}):")
        lines += [f"  {k}  {dtype} {tuple(shape)}" for k, (dtype, shape) in tensors.items()]
    return lines


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Show what PATH holds: kind, config, tensors and shapes, bytes, fingerprint, metadata."""
    info = describer(path)(path)
    if as_json:
        # UTF-8 as a person reads it: "…" and class names like "Ölpumpe", not \u escapes
        click.echo(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        click.echo("\n".join(_render(info)))
