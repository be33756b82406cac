"""`edge-export`: the click group and its error handling; the commands register on it from
the other modules of export/cli/ (a thin command over one library function each).

Each command parses its options and calls one public function whose keyword names match
them. Errors end as `edge-runtime`'s do, through the one handler in edge/cli_errors.py: an
EdgeError is `error: ...` on stderr and the error's exit code; `edge-export --debug ...` shows
the traceback instead.
"""

from __future__ import annotations

import click

from edge import __version__
from edge.cli_errors import ErrorLineGroup, debug_option


@click.group(cls=ErrorLineGroup)
@click.version_option(__version__, prog_name="edge-export")
@debug_option
def main() -> None:
    """Workstation tools: train adapters, inspect them, export them for the gateway."""
