"""How far can a pilot trust its validation split? The study behind the pilot's search protocol.

    python benchmarks/pilot_validation.py [--folds 3] [--epochs 60] [--base-dir DIR] [--no-write]

Every candidate of `edge-export pilot` (the demo's PLAID base adapted to ACSF1) is trained
on each of `--folds` stratified splits of ACSF1's 100 training windows (80 train / 20
validation, another split per fold, as the pilot's seeds do) for the pilot's whole schedule,
and both the validation split and the 100 test windows are scored after every epoch. Per
candidate, mean over folds:
- validation accuracy at the end of the schedule (what the pilot ranks candidates by);
- test accuracy at the end of the schedule (the weights the pilot keeps);
- test accuracy of the weights early stopping would have kept (patience 10 on validation
  accuracy, then loss: the pilot's former protocol) and of the best validation epoch.
The table goes into docs/BENCHMARKS.md under "## Pilot validation (benchmarks/pilot_validation.py)".
"""

from __future__ import annotations

import argparse
import copy
import math
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
from export.fitting import evaluate, fit, seeded  # noqa: E402
from export.pilot.candidates import Candidate, plan_candidates  # noqa: E402
from export.pilot.pipeline import VAL_FRACTION, _load_line  # noqa: E402
from export.pilot.search import EPOCHS, Fold, Line, SearchSettings  # noqa: E402
from export.train import build_model, size_metrics  # noqa: E402

TITLE = "Pilot validation (benchmarks/pilot_validation.py)"
PATIENCE = 10  # the pilot's former early stopping


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=3, help="validation splits (seeds) 0..N-1")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="each run's schedule")
    training_options(parser, "the pretrained base", progress=False)
    return parser.parse_args(argv)


def curves(line: Line, candidate: Candidate, fold: Fold, seed: int, epochs: int
           ) -> dict[str, list[float]]:
    """One run as the pilot's search trains it (search._train, fit's own schedule), scored
    on the fold's validation windows and on the test windows after every epoch."""
    settings = SearchSettings(budget_s=math.inf, epochs=epochs)
    rank = candidate.rank or 1
    test: list[float] = []
    with seeded(seed):
        model = build_model(candidate.method, copy.deepcopy(line.base), line.num_classes,
                            candidate.targets, rank, float(2 * rank), train_head=True,
                            train_norms=True, modules_to_save=None, name="adapter")
        log = fit(model, fold.x_train, fold.y_train, epochs=epochs, lr=candidate.lr,
                  batch_size=settings.batch_size, weight_decay=settings.weight_decay,
                  seed=seed, val=fold.val, keep="last", on_epoch=lambda m: test.append(
                      evaluate(m, line.splits.x_eval, line.splits.y_eval)))
    return {"val_acc": log.val_accuracy, "val_loss": log.val_loss, "test_acc": test,
            "bytes": [size_metrics(model, candidate.method, line.base_params,
                                   line.base_bytes)["adapter_bytes"]]}


def kept_epochs(run: dict[str, list[float]]) -> tuple[int, int]:
    """(the epoch early stopping with PATIENCE keeps, the best validation epoch), 0-based;
    best: highest accuracy, then lowest loss, as fit() ranks epochs."""
    score = [(a, -v) for a, v in zip(run["val_acc"], run["val_loss"], strict=True)]
    best, stopped_best = 0, None
    for epoch in range(len(score)):
        if score[epoch] > score[best]:
            best = epoch
        if stopped_best is None and epoch - best >= PATIENCE:
            stopped_best = best
    return (best if stopped_best is None else stopped_best), best


def row(name: str, runs: list[dict[str, list[float]]]) -> dict[str, Any]:
    stopped = [r["test_acc"][kept_epochs(r)[0]] for r in runs]
    best = [r["test_acc"][kept_epochs(r)[1]] for r in runs]
    mean = statistics.mean
    return {"name": name, "bytes": runs[0]["bytes"][0],
            "val_end": 100 * mean(r["val_acc"][-1] for r in runs),
            "test_end": 100 * mean(r["test_acc"][-1] for r in runs),
            "test_stopped": 100 * mean(stopped), "test_best_val": 100 * mean(best)}


def table(rows: list[dict[str, Any]], args: argparse.Namespace, n_val: int) -> str:
    lines = [
        f"The demo's base (PLAID) adapted to ACSF1 by every pilot candidate, each on "
        f"{args.folds} stratified splits of the 100 training windows ({100 - n_val} train / "
        f"{n_val} validation, another split per fold), {args.epochs}-epoch schedule; mean "
        "over the folds. Test: ACSF1's 100 test windows, scored here after every epoch only "
        "to study the protocol (the pilot never looks at them before its choice).",
        "",
        "| candidate | adapter bytes | validation acc. at the end | test acc. at the end | "
        f"test acc., early stopping (patience {PATIENCE}) | test acc., best validation epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['bytes']:,} | {r['val_end']:.1f}% | "
                     f"{r['test_end']:.1f}% | {r['test_stopped']:.1f}% | "
                     f"{r['test_best_val']:.1f}% |")
    adapters = [r for r in rows if r["name"] not in ("head", "full")]

    def spread(key: str) -> float:
        return max(r[key] for r in adapters) - min(r[key] for r in adapters)

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    lines += ["", f"Across the adapters: validation accuracy spans {spread('val_end'):.1f} "
              f"points, test accuracy {spread('test_end'):.1f}. Over every candidate the "
              f"weights at the end of the schedule score {mean('test_end'):.1f}% on the test "
              f"set, early stopping's {mean('test_stopped'):.1f}%, the best validation "
              f"epoch's {mean('test_best_val'):.1f}%."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pilot-validation-") as tmp:
        root = args.base_dir or Path(tmp)
        weights, _ = demo.pretrain_base(root / "base", data=demo.recipe_data(), progress=False)
        line, _ = _load_line("reference", weights, demo.ADAPT_DATA, demo.ADAPT_TEST, None)
    folds = [line.fold(seed, VAL_FRACTION) for seed in range(args.folds)]
    rows = []
    for candidate in plan_candidates(line.base, classes_match=False):
        runs = [curves(line, candidate, fold, seed, args.epochs)
                for seed, fold in enumerate(folds)]
        rows.append(row(candidate.name, runs))
        print(f"  {candidate.name}: val {rows[-1]['val_end']:.1f}%, test "
              f"{rows[-1]['test_end']:.1f}%", file=sys.stderr)
    body = "\n".join([
        f"{machine_line(('torch',))}; {torch.get_num_threads()} torch threads; whole run "
        f"{time.perf_counter() - start:.0f} s.", "", table(rows, args, len(folds[0].y_val))])
    print(f"## {TITLE}\n\n{body}")
    if not args.no_write:
        print(f"\nwrote {write_section(TITLE, body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
