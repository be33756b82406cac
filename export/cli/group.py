"""`edge-export`: thin click commands over the library functions of `export/`.

Each command parses its options and calls one public function whose keyword names match
them. `Group.invoke` below is the one place that turns an EdgeError into `error: ...` on
stderr and the error's exit code; `edge-export --debug ...` shows the traceback instead.
"""

from __future__ import annotations

from typing import Any

import click

from edge import __version__
from edge.errors import NO_ONNXRUNTIME, EdgeError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            if exc.name != "onnxruntime":
                raise
            click.echo(f"error: {NO_ONNXRUNTIME}", err=True)
            ctx.exit(2)
        except EdgeError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            message = " ".join(str(exc).split("\n")) or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edge-export")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Workstation tools: train adapters, inspect them, export them for the gateway."""
    ctx.ensure_object(dict)["debug"] = debug
