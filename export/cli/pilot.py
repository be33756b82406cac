"""`edge-export pilot`: thin command over export/pilot (run_pilot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from export.cli.card_options import card_options
from export.cli.data_options import table_options
from export.cli.group import main
from export.pilot.settings import EPOCHS


@main.command("pilot")
@click.option("--base", default="reference", show_default=True,
              help="'reference' (the bundled SensorTransformer) or 'package.module:callable'.")
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The pretrained base's weights (.safetensors).")
@click.option("--data", required=True, help="The line's training data: .csv, .parquet, .npz, "
              ".ts or ucr:NAME:train (docs/DATA.md); a stratified 20% of it is the validation "
              "split.")
@click.option("--test-data", help="The line's test data [default: a stratified 20% of --data "
              "held out].")
@click.option("--budget-minutes", type=float, default=10.0, show_default=True,
              help="Time for the whole search (every candidate and seed).")
@click.option("--prices", type=click.Path(dir_okay=False),
              help="prices.toml: currency, cpu_hour, gpu_hour, kwh, watts [default: times only].")
@click.option("--lines", type=int, default=10, show_default=True,
              help="N of the running-cost figures (one base + N adapters vs N models).")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Runs per candidate, where the budget allows.")
@click.option("--threads", type=int, help="torch threads for training [default: torch's].")
@click.option("--epochs", type=int, default=EPOCHS, show_default=True,
              help="Epochs per run: its whole cosine schedule, the weights it ends with kept.")
@click.option("--patience", type=int,
              help="Early stopping instead: stop after this many epochs without a better "
              "validation score and keep the best epoch's weights  [default: off; on a few "
              "validation windows per class the best epoch is mostly noise].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Pilot directory: report.html, report.md, report.json, adapter/.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@table_options
@card_options
def pilot_command(**options: Any) -> None:
    """Search adapters for one line within a budget, recommend one, write the KPI report."""
    from export.pilot.pipeline import REPORT_FILE, run_pilot

    report = run_pilot(**options)
    click.echo(report["summary"])
    out = options["out"]
    if report["recommendation"] is not None:
        click.echo(f"adapter: {out}/{report['recommendation']['adapter_dir']}")
    html = Path(out) / "report.html"
    click.echo(f"report: {html if html.is_file() else Path(out) / REPORT_FILE}")
