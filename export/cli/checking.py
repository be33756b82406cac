"""`edge-export check-adapters`: thin command over export/check_adapters.py."""

from __future__ import annotations

from typing import Any

import click

from export.cli.group import main


@main.command("check-adapters")
@click.option("--bundle", required=True, metavar="DIRECTORY",
              help="The bundle of the new base (edge-export attach --weights NEW ...).")
@click.option("--adapters", "adapters", multiple=True, metavar="DIR [DIR...]",
              help="Adapter directories from `train` or `pilot` (several after one flag, "
                   "or the flag repeated).")
@click.argument("more", nargs=-1, metavar="")  # the DIRs after the first
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="Accuracy an adapter may lose on its sample and still pass.")
@click.option("--json", "json", metavar="FILE",
              help="Also write the report as JSON to this file.")
def check_adapters_command(adapters: tuple[str, ...], more: tuple[str, ...],
                           **options: Any) -> None:
    """Before a new base ships: run each adapter's stored validation sample through the new
    bundle as a gateway would, and say which still meet the accuracy recorded at training
    (ok), which must be retrained, and which do not fit the new base (incompatible). Exits 1
    when any must be retrained, is incompatible or cannot be read."""
    from export.check_adapters import check_adapters

    report = check_adapters(adapters=[*adapters, *more], **options)
    for line in report.lines():
        click.echo(line)
    if report.failed:
        click.get_current_context().exit(1)
