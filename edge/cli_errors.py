"""The one error handler of both command lines, `edge-runtime` and `edge-export`.

An EdgeError becomes `error: <line>` on stderr (one such line per line of its message: a
config's problems stay one per line) and the error's exit code; `--debug` re-raises it for the
traceback. A missing onnxruntime (an extra) is one line naming the wheel to install, exit 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import click

from .errors import NO_ONNXRUNTIME, EdgeError

DEBUG_KEY = "debug"


def error_lines(message: str) -> list[str]:
    """The lines printed for an error message: `error: ` before each of its lines."""
    return [f"error: {line}" for line in message.splitlines()]


class ErrorLineGroup(click.Group):
    """A click group whose commands' EdgeErrors end as lines and an exit code, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            if exc.name != "onnxruntime":
                raise
            _fail(ctx, NO_ONNXRUNTIME, 2)
        except EdgeError as exc:
            if (ctx.obj or {}).get(DEBUG_KEY):
                raise
            _fail(ctx, str(exc) or type(exc).__name__, exc.exit_code)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    for line in error_lines(message):
        click.echo(line, err=True)
    ctx.exit(code)


def _store_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.ensure_object(dict)[DEBUG_KEY] = value
    return value


# The group option that keeps tracebacks: `edge-runtime --debug run ...`.
debug_option = click.option("--debug", is_flag=True, expose_value=False, callback=_store_debug,
                            help="Show tracebacks instead of one-line errors.")
