"""`edge-export train`: thin command over export/train.py."""

from __future__ import annotations

import json
from typing import Any

import click

from edge.errors import ConfigError
from export.adapters.registry import ADAPTER_KINDS  # no torch: names only
from export.cli.card_options import card_options
from export.cli.data_options import table_options
from export.cli.group import main

# train()'s METHODS (export/train.py imports torch, which `--help` should not wait for)
METHODS = (*ADAPTER_KINDS, "head", "full")

# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def _model_config(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """`--model-config d_model=128` (repeatable) -> {"d_model": 128}; values parse as JSON."""
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-config {pair!r}: expected KEY=VALUE, like d_model=128")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config or None


@main.command("train")
@click.option("--base", default="reference", show_default=True,
              help="'reference' (the bundled SensorTransformer) or 'package.module:callable'.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Base weights (.safetensors).")
@click.option("--data", required=True, help="Training data: .npz, .ts, .csv, .parquet or "
              "ucr:NAME:train (tables: docs/DATA.md).")
@click.option("--test-data", help="Test data (same forms); without it 20% of --data is held out.")
@table_options
@click.option("--method", type=click.Choice(METHODS), default="lora", show_default=True,
              help=f"{'/'.join(ADAPTER_KINDS)}: an adapter directory; head: linear probe; "
              "full: every weight (also how a base is pretrained).")
@click.option("--rank", type=int,
              help="LoRA rank, or the bottleneck width  [default: 4 for lora, 8 for bottleneck]")
@click.option("--alpha", type=float, help="LoRA alpha  [default: 2 * rank]")
@click.option("--targets", help="Modules to adapt: comma list of name suffixes (q,v), a regex, "
              "or all-linear (every Linear but the head).")
@click.option("--exclude-modules", help="Modules never to adapt, even when --targets names "
              "them: comma list of name suffixes or a regex (PEFT's exclude_modules).")
@click.option("--train-head/--freeze-head", default=True, show_default=True,
              help="Train the head with the adapter (always, when the class count changes).")
@click.option("--train-norms/--freeze-norms", default=True, show_default=True,
              help="Train the LayerNorms with the adapter.")
@click.option("--modules-to-save", help="Other modules to train in full with the adapter "
              "(comma list), stored in it.")
@click.option("--epochs", type=int, default=100, show_default=True)
@click.option("--lr", type=float, help="Learning rate  [default: per method]")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--length", type=int, help="Resample windows to this length [default: the base's].")
@click.option("--model-config", multiple=True, metavar="KEY=VALUE",
              help="Reference model argument for a new base (d_model=128); repeatable.")
@click.option("--val-fraction", type=float, help="Carve this stratified fraction of --data "
              "(never --test-data) as a validation split scored every epoch; the best epoch "
              "is kept.")
@click.option("--patience", type=int, help="With --val-fraction: stop after this many epochs "
              "without a better validation score.")
@click.option("--threads", type=int, help="torch threads for training [default: torch's].")
@click.option("--out", required=True, type=click.Path(), help="Output directory.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@card_options
def train_command(model_config: tuple[str, ...], **options: Any) -> None:
    """Train an adapter (lora, bottleneck), a head, or the whole model (full)."""
    from export.train import train

    result = train(model_config=_model_config(model_config), **options)
    m = result.metrics
    click.echo(f"wrote {result.out}")
    click.echo(f"  {m['eval_split']} accuracy {100 * m['accuracy']:.1f}% "
               f"({m['n_eval']} windows), train {m['train_seconds']:.1f} s")
    click.echo(f"  trainable {m['trainable_params']:,} params ({m['trainable_pct']:.2f}% of "
               f"the base), {m['adapter_bytes'] / 1024:.1f} KiB ({m['adapter_base_pct']:.2f}% "
               f"of the base's {m['base_bytes'] / 1024:.1f} KiB)")
