"""report.json's sections (version 1) built from what the pilot measured: the line, the base,
each candidate. Figures only (fractions, bytes, seconds), never formatted: the report writers
format them, and compute none of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.pilot.metrics import accuracy, macro_f1, per_class_recall, scored
from export.pilot.prices import Prices, run_cost
from export.pilot.search import CandidateResult, Line
from export.train import target_paths

__all__ = ["base_section", "candidate_entry", "line_section"]


def line_section(line: Line, *, data: str, test_data: str | None, val_fraction: float) -> dict:
    """`n_train`: every training window; `n_val`: how many of them each seed validates on
    (its own stratified split), the rest it trains on."""
    s = line.splits
    return {"train": str(data), "test": None if test_data is None else str(test_data),
            "classes": list(s.train.class_names), "channels": s.train.num_channels,
            "length": s.train.length, "n_train": len(s.y_train),
            "n_val": len(line.fold(0, val_fraction).y_val), "n_test": len(s.y_eval),
            "val_per_seed": True, "test_is_split": test_data is None}


def base_section(line: Line, *, spec: str, weights: str | Path, fingerprint: str) -> dict:
    path = Path(weights)
    size = path.stat().st_size if path.is_file() else line.base_bytes
    return {"spec": spec, "weights": str(weights), "params": line.base_params, "bytes": size,
            "fingerprint": fingerprint}


def candidate_entry(result: CandidateResult, line: Line, prices: Prices | None,
                    vs_best: dict | None = None) -> dict:
    """`vs_best`: recommend.closeness()'s entry for this candidate."""
    c = result.candidate
    options = {"lr": c.lr}
    if c.family == "adapter":
        options.update(rank=c.rank, targets=target_paths(result.model))
    return {
        "name": c.name, "method": c.method, "family": c.family, "default": c.default,
        "options": options,
        "seeds": [r.seed for r in result.runs],
        "trainable_params": result.sizes["trainable_params"],
        "trainable_fraction": result.sizes["trainable_params"] / line.base_params,
        "adapter_bytes": result.sizes["adapter_bytes"],
        "val_accuracy": {"mean": result.val_mean,
                         "per_seed": [r.val_accuracy for r in result.runs]},
        "val_vs_best": vs_best,
        "test": _test_section(result, line),
        "training": _training_section(result, prices),
        "curves": [{"seed": r.seed, "train_loss": r.log.train_loss,
                    "val_accuracy": r.log.val_accuracy, "val_loss": r.log.val_loss,
                    "best_epoch": r.log.best_epoch,
                    "stopped": r.log.stopped}
                   for r in result.runs if r.log is not None],
    }  # fmt: skip


def _test_section(result: CandidateResult, line: Line) -> dict:
    y = line.splits.y_eval.numpy()
    names = line.splits.train.class_names
    k = len(names)
    recall = per_class_recall(y, result.test_pred, k)
    return {"seed": result.best_seed,
            "accuracy": scored(y, result.test_pred, k, accuracy),
            "macro_f1": scored(y, result.test_pred, k, macro_f1),
            "per_class_recall": {n: _finite(v) for n, v in zip(names, recall, strict=True)}}


def _training_section(result: CandidateResult, prices: Prices | None) -> dict:
    runs = [r for r in result.runs if r.log is not None]
    if not runs:  # the base as it is: nothing trained, nothing measured
        return {"wall_s": None, "cpu_s": None, "gpu_s": None, "peak_rss_bytes": None,
                "rss_growth_bytes": None, "optimizer_state_bytes": None, "grad_bytes": None,
                "epochs_run": [], "cost": None}
    wall = sum(r.usage.wall_s for r in runs)
    cpu = sum(r.usage.cpu_s for r in runs)
    return {
        "wall_s": wall, "cpu_s": cpu, "gpu_s": None,
        "peak_rss_bytes": max(r.usage.peak_rss_bytes for r in runs),
        "rss_growth_bytes": max(r.usage.rss_growth_bytes for r in runs),
        "optimizer_state_bytes": max(r.log.optimizer_state_bytes for r in runs),
        "grad_bytes": max(r.log.grad_bytes for r in runs),
        "epochs_run": [r.log.epochs_run for r in runs],
        "cost": run_cost(prices, wall_s=wall, cpu_s=cpu, gpu_s=None),
    }  # fmt: skip


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)

