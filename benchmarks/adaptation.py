"""Adaptation benchmark: how close do small adapters get to a full fine-tune?

    python benchmarks/adaptation.py [--seeds 3] [--epochs 100] [--no-write]

Pretrains the reference base with `train(method="full")` on PLAID (the demo's recipe), then
adapts it to ACSF1 (100 train / 100 test windows) with each method below, over several
seeds, and prints one markdown table (mean ± std over seeds). The table goes into
docs/BENCHMARKS.md under "## Adaptation (benchmarks/adaptation.py)", replacing that section.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# benchmarks/export.py shares its name with the `export` package: import from the repo root.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]
from benchmarks.report import machine_line, training_options, write_section  # noqa: E402
from export.demo import run as demo  # noqa: E402
from export.train import train  # noqa: E402

TITLE = "Adaptation (benchmarks/adaptation.py)"
# Row name -> train() keywords. Everything else (epochs, seeds, data) is the same for all rows;
# adapter defaults (rank 8, targets, LayerNorms and head trained, learning rates) are train()'s.
METHODS: dict[str, dict[str, Any]] = {
    "full fine-tune": {"method": "full"},
    "lora": demo.LORA,
    "bottleneck": demo.BOTTLENECK,
    "head (linear probe)": {"method": "head"},
}


PILOT_ROW = "pilot's choice"


def pilot_row(weights: Path, data: dict[str, Any], work: Path, args: argparse.Namespace
              ) -> tuple[dict[str, Any], str]:
    """Run `edge-export pilot` on the line within its budget, then train its recommendation
    like every other row (same epochs and seeds); the row and a line on the search."""
    from export.pilot import run_pilot

    report = run_pilot(weights=weights, data=data["train"], test_data=data["test"],
                       budget_minutes=args.pilot_budget, out=work / "pilot", force=True,
                       progress=args.progress)
    rec = report["recommendation"]
    chosen = next(c for c in report["candidates"] if c["name"] == rec["name"])
    opts = chosen["options"]
    options = {"method": chosen["method"], "rank": opts["rank"], "targets": opts["targets"],
               "lr": opts["lr"]}
    row = run_method(weights, data, work, f"{PILOT_ROW} ({rec['name']})", args.seeds,
                     args.epochs, args.progress, options)
    budget = report["budget"]
    search = (f"The pilot (`edge-export pilot`, {args.pilot_budget:g}-minute budget) ran "
              f"{len(report['candidates'])} candidates in {budget['used_s']:.0f} s "
              f"(skipped {len(budget['skipped'])}) and recommended {rec['name']}: "
              f"{rec['rule']}.")
    return row, search


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="adaptation seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=demo.ADAPT_EPOCHS,
                        help="adaptation epochs (every method)")
    parser.add_argument("--pretrain-epochs", type=int, default=demo.PRETRAIN_EPOCHS)
    parser.add_argument("--pilot-budget", type=float, default=5.0,
                        help="minutes for the pilot's search (its row: the recommendation)")
    training_options(parser, "the data and pretrained base")
    return parser.parse_args(argv)


def run_method(weights: Path, data: dict[str, Any], work: Path, name: str, seeds: int,
               epochs: int, progress: bool, options: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Train one method (METHODS[name], or `options`) for every seed; the table row's numbers."""
    runs = []
    for seed in range(seeds):
        result = train(weights=weights, data=data["train"], test_data=data["test"],
                       epochs=epochs, seed=seed, out=work / f"{name.split()[0]}-{seed}",
                       force=True, progress=progress, **(options or METHODS[name]))
        runs.append(result.metrics)
        print(f"  {name} seed {seed}: {100 * result.accuracy:.1f}% "
              f"({result.metrics['train_seconds']:.1f} s)", file=sys.stderr)
    acc = [100 * m["accuracy"] for m in runs]
    return {
        "name": name, "acc": statistics.mean(acc),
        "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "trainable_pct": runs[0]["trainable_pct"], "adapter_bytes": runs[0]["adapter_bytes"],
        "base_bytes": runs[0]["base_bytes"], "adapter_base_pct": runs[0]["adapter_base_pct"],
        "seconds": statistics.mean(m["train_seconds"] for m in runs),
        "details": details(runs[0]),
    }  # fmt: skip


def _collapse(paths: list[str] | None) -> str:
    """blocks.0.attn.q, blocks.1.attn.q -> blocks.*.attn.q"""
    return ", ".join(sorted({re.sub(r"\.\d+\.", ".*.", p) for p in paths or []}))


def details(m: dict[str, Any]) -> str:
    """One line on what a row trained, from its metrics.json."""
    if m["method"] not in ("lora", "bottleneck"):
        return f"lr {m['lr']:g}" + ("" if m["method"] == "full" else ", head only")
    size = f"rank {m['rank']}, alpha {m['alpha']:g}" if m["method"] == "lora" \
        else f"size {m['rank']}"
    return (f"{size}, lr {m['lr']:g}; adapts {_collapse(m['targets'])}; also "
            f"trains {_collapse(m['modules_to_save'])}")


def verdict(row: dict[str, Any], full: dict[str, Any]) -> str:
    """The issue's target for adapters: within 3 points of full FT, <= 5% trainable, file <=
    3% of the base's."""
    if row["name"] not in ("lora", "bottleneck") and not row["name"].startswith(PILOT_ROW):
        return "-"
    misses = [why for bad, why in (
        (full["acc"] - row["acc"] > 3.0, f"{full['acc'] - row['acc']:.1f} points below full"),
        (row["trainable_pct"] > 5.0, "trainable > 5%"),
        (row["adapter_base_pct"] > 3.0, "file > 3%"),
    ) if bad]
    return "FAIL (" + "; ".join(misses) + ")" if misses else "pass"


def table(rows: list[dict[str, Any]], base: dict[str, Any], args: argparse.Namespace,
          search: str) -> str:
    head = [
        f"Base: reference SensorTransformer {demo.BASE_CONFIG}, {base['base_params']:,} "
        f"parameters, {base['adapter_bytes'] / 1000:.1f} KB file, pretrained (full, "
        f"{base['epochs']} epochs) on PLAID: **{100 * base['accuracy']:.1f}%** PLAID test "
        "accuracy.",
        f"Adapted to ACSF1 (100 train / 100 test windows, length {demo.LENGTH}), "
        f"{args.epochs} epochs, seeds 0..{args.seeds - 1} (mean ± std). The base "
        "z-normalises each window in its graph (window_norm).",
        "",
        "| method | ACSF1 test accuracy | trainable % | adapter bytes | adapter / base file "
        "| train s | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        head.append(f"| {r['name']} | {r['acc']:.1f} ± {r['acc_std']:.1f}% | "
                    f"{r['trainable_pct']:.2f}% | {r['adapter_bytes']:,} | "
                    f"{r['adapter_base_pct']:.2f}% | {r['seconds']:.1f} | "
                    f"{verdict(r, rows[0])} |")
    head += ["", "Rows (every method: AdamW, warm-up + cosine, batch 32, weight decay 0.01):"]
    head += [f"- {r['name']}: {r['details']}" for r in rows]
    head += ["", search]
    return "\n".join(head)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adaptation-") as tmp:
        work = Path(tmp)
        root = args.base_dir or work  # root/data: the recipe's data, root/base: the base
        data = demo.recipe_data()
        print(f"pretraining the base on {demo.PRETRAIN_DATA}...", file=sys.stderr)
        weights, base = demo.pretrain_base(root / "base", data=data,
                                           epochs=args.pretrain_epochs, progress=args.progress)
        rows = [run_method(weights, data["adapt"], work, name, args.seeds, args.epochs,
                           args.progress) for name in METHODS]
        pilot, search = pilot_row(weights, data["adapt"], work, args)
        rows.append(pilot)
    body = "\n".join([
        f"{machine_line(('torch',))}; {torch.get_num_threads()} torch threads; whole run "
        f"{time.perf_counter() - start:.0f} s.", "", table(rows, base, args, search)])
    print(f"## {TITLE}\n\n{body}")
    if not args.no_write:
        print(f"\nwrote {write_section(TITLE, body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
