"""Do train()'s adapter defaults hold on lines nobody tuned them for?

    python benchmarks/defaults.py [--seeds 3] [--epochs 150] [--base-dir DIR] [--no-write]

The demo's base (the reference model pretrained on PLAID, export/demo/run.py) adapted with
`edge-export train`'s defaults (no --rank, --targets or --lr given) to several shipped UCR
datasets. The defaults were chosen on ACSF1 alone (the demo's and benchmarks/adaptation.py's
line); every other pair is held out: nothing was tuned on it. Each row: the full fine-tune (the
reference), LoRA and the bottleneck adapter, mean ± std test accuracy over seeds, the spread of
their final training accuracy (a run that does not fit its own training data is unstable), and
the verdict against the issue's target (within 3 points of the full fine-tune, no more than 5%
of the parameters trained). The table goes into docs/BENCHMARKS.md under
"## Default adapters on held-out lines (benchmarks/defaults.py)".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]
from benchmarks.report import machine_line, training_options, write_section  # noqa: E402
from export.demo import run as demo  # noqa: E402
from export.train import train  # noqa: E402

TITLE = "Default adapters on held-out lines (benchmarks/defaults.py)"
TUNED_ON = "ACSF1"
# One-channel UCR datasets shipped in the sktime wheel that the PLAID base can read (BasicMotions
# and JapaneseVowels have 6 and 12 channels). Resampled to the base's 256 samples.
PAIRS = ("ACSF1", "OSULeaf", "ArrowHead", "GunPoint", "ItalyPowerDemand")
# What `edge-export train --method M` does with nothing else given.
METHODS = ("full", "lora", "bottleneck")
TARGET_POINTS = 3.0
TARGET_TRAINABLE_PCT = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method and pair")
    parser.add_argument("--epochs", type=int, default=demo.ADAPT_EPOCHS)
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help="comma list of UCR datasets to adapt to")
    training_options(parser, "the pretrained base")
    return parser.parse_args(argv)


def run_pair(weights: Path, name: str, work: Path, args: argparse.Namespace
             ) -> dict[str, dict[str, Any]]:
    """{method: {acc, acc_std, train_acc (per seed), trainable_pct}} on one pair."""
    cells = {}
    for method in METHODS:
        test, fitted, pct = [], [], 0.0
        for seed in range(args.seeds):
            result = train(weights=weights, data=f"ucr:{name}:train",
                           test_data=f"ucr:{name}:test", method=method, epochs=args.epochs,
                           seed=seed, out=work / f"{name}-{method}-{seed}", force=True,
                           progress=args.progress)
            test.append(100 * result.accuracy)
            fitted.append(100 * result.metrics["train_accuracy"])
            pct = result.metrics["trainable_pct"]
            print(f"  {name} {method} seed {seed}: test {test[-1]:.1f}%, train "
                  f"{fitted[-1]:.1f}%", file=sys.stderr)
        cells[method] = {"acc": statistics.mean(test),
                         "acc_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                         "train_acc": fitted, "trainable_pct": pct}
    return cells


def verdict(cell: dict[str, Any], full: dict[str, Any]) -> str:
    gap = full["acc"] - cell["acc"]
    misses = [why for bad, why in (
        (gap > TARGET_POINTS, f"{gap:.1f} points below full"),
        (cell["trainable_pct"] > TARGET_TRAINABLE_PCT, "trainable > 5%"),
    ) if bad]
    return "FAIL (" + "; ".join(misses) + ")" if misses else "pass"


def cell_text(cell: dict[str, Any], full: dict[str, Any] | None) -> str:
    spread = f"train {min(cell['train_acc']):.0f}-{max(cell['train_acc']):.0f}%"
    text = f"{cell['acc']:.1f} ± {cell['acc_std']:.1f}% ({spread})"
    return text if full is None else f"{text} {verdict(cell, full)}"


def table(rows: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = [
        f"Base: the demo's (reference SensorTransformer {demo.BASE_CONFIG}, pretrained on "
        f"PLAID, {demo.PRETRAIN_EPOCHS} epochs). Each line adapted with `edge-export train "
        f"--method M` and nothing else ({args.epochs} epochs, seeds 0..{args.seeds - 1}, "
        "mean ± std test accuracy; in brackets the lowest and highest final training accuracy "
        "over the seeds). Target: within 3 points of the full fine-tune at no more than 5% "
        "of the parameters.",
        f"The defaults were chosen on {TUNED_ON} only; the other lines are held out.",
        "",
        "| line | role | full fine-tune | LoRA (default) | bottleneck (default) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, cells in rows.items():
        role = "tuned on" if name == TUNED_ON else "held out"
        lines.append(f"| {name} | {role} | {cell_text(cells['full'], None)} | "
                     f"{cell_text(cells['lora'], cells['full'])} | "
                     f"{cell_text(cells['bottleneck'], cells['full'])} |")
    any_row = next(iter(rows.values()))
    lines += ["", f"Trainable: LoRA {any_row['lora']['trainable_pct']:.2f}%, bottleneck "
              f"{any_row['bottleneck']['trainable_pct']:.2f}% of the base (10 classes; the "
              "head's share changes with the class count)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="defaults-") as tmp:
        work = Path(tmp)
        root = args.base_dir or work
        print(f"pretraining (or reusing) the base on {demo.PRETRAIN_DATA}...", file=sys.stderr)
        weights, _ = demo.pretrain_base(root / "base", data=demo.recipe_data(),
                                        progress=args.progress)
        rows = {name: run_pair(weights, name, work, args) for name in args.pairs.split(",")}
    body = "\n".join([
        f"{machine_line(('torch',))}; {torch.get_num_threads()} torch threads; whole run "
        f"{time.perf_counter() - start:.0f} s.", "", table(rows, args)])
    print(f"## {TITLE}\n\n{body}")
    if not args.no_write:
        print(f"\nwrote {write_section(TITLE, body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
