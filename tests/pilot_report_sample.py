"""A report dict (report.json version 1) whose figures come from real, short training runs on
real data, for the report writer's tests until a real pilot output is at hand.

The line is ArrowHead (UCR, 3 classes, 36 training and 175 test windows); the base is a
reference model pretrained briefly on GunPoint; both are resampled to 128 steps. Each
candidate trains with `export.train.train()` on the line's training data (its validation
split is train()'s own 20%); test figures come from the test split. Times, CPU seconds, peak
RSS and file sizes are measured here; the gateway's memory and latency are left null (not
measured), as a pilot would when it cannot measure them. Prices are a user's input, not a
measurement: the sample gives some so money figures appear.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from safetensors.torch import load_file

import export.train as train_module
from export import __version__
from export.data import load_dataset
from export.train import evaluate, train

LINE_TRAIN, LINE_TEST = "ucr:ArrowHead:train", "ucr:ArrowHead:test"
BASE_DATA, LENGTH = "ucr:GunPoint:train", 128
EPOCHS, BASE_EPOCHS, SEEDS = 20, 20, (0, 1)
MARGIN, LINES, BOOTSTRAP = 0.05, 10, 1000
PRICES = {"currency": "EUR", "cpu_hour": 0.05, "gpu_hour": 2.5, "kwh": 0.3, "watts": 65}
# (name, method, options for train()); "full" is the reference, trained on one seed only.
CANDIDATES: list[tuple[str, str, dict]] = [
    ("head", "head", {}),
    ("lora-r4", "lora", {"rank": 4}),
    ("bottleneck-r8", "bottleneck", {"rank": 8}),
    ("full", "full", {}),
]
SKIPPED = [{"candidate": "lora-r16-all",
            "reason": "not run in this sample: the test keeps its training short"}]


def build_report(workdir: Path, prices: dict | None = PRICES) -> dict:
    """Train the base and every candidate under `workdir`, and assemble their report dict."""
    start = time.perf_counter()
    base = train(data=BASE_DATA, method="full", epochs=BASE_EPOCHS, length=LENGTH,
                 out=workdir / "base", progress=False)
    weights = workdir / "base" / "model.safetensors"
    test = load_dataset(LINE_TEST, length=LENGTH, class_names=None)
    runs = {name: _train_candidate(workdir, weights, name, method, options, test)
            for name, method, options in CANDIDATES}
    candidates = [_candidate(name, method, runs[name], prices) for name, method, _ in CANDIDATES]
    first = runs["head"][0]
    report: dict[str, Any] = {
        "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "package_version": __version__, "machine": _machine(),
        "line": {"train": LINE_TRAIN, "test": LINE_TEST,
                 "classes": list(first["classes"]), "channels": int(test.X.shape[1]),
                 "length": LENGTH, "n_train": first["metrics"]["n_train"],
                 "n_val": first["metrics"]["n_eval"], "n_test": len(test.y),
                 "test_is_split": False},
        "base": {"spec": "reference", "weights": str(weights),
                 "params": base.metrics["base_params"], "bytes": weights.stat().st_size,
                 "fingerprint": json.loads((workdir / "base" / "edge_model.json").read_text())[
                     "weights_fingerprint"]},
        "budget": {"minutes": 5.0, "used_s": None, "skipped": SKIPPED},
        "prices": prices, "candidates": candidates,
    }
    report["recommendation"] = _recommend(report, runs, test)
    report["running_cost"] = _running_cost(report, runs, weights)
    report["commands"] = _commands(workdir, weights)
    report["budget"]["used_s"] = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _val_accuracy_per_epoch(curve: list[float]) -> Iterator[None]:
    """train() evaluates once, after its last epoch; a learning curve needs every epoch. This
    wraps export.train's `_fit` (to see the model and its validation split) and the epoch
    loop's progress bar (to evaluate after each epoch), leaving the training itself as is:
    evaluation runs in eval mode without gradients and draws no random numbers."""
    seen: dict[str, Any] = {}
    fit = train_module._fit

    def fit_and_remember(model, splits, **kwargs):
        seen.update(model=model, splits=splits)
        return fit(model, splits, **kwargs)

    class EvaluatingBar:
        def __init__(self, iterable, **_):
            self.iterable = iterable

        def __iter__(self):
            for epoch in self.iterable:
                yield epoch  # the epoch runs while the generator waits here
                splits = seen["splits"]
                curve.append(evaluate(seen["model"], splits.x_eval, splits.y_eval))

        def set_postfix(self, **_):
            pass

    with mock.patch.object(train_module, "_fit", fit_and_remember), \
            mock.patch.object(train_module, "tqdm", EvaluatingBar):
        yield


def _train_candidate(workdir: Path, weights: Path, name: str, method: str, options: dict,
                     test) -> list[dict]:
    """One run per seed: what train() measured, the val curve, test predictions, times."""
    runs = []
    for seed in SEEDS[:1] if method == "full" else SEEDS:
        curve: list[float] = []
        wall, cpu = time.perf_counter(), time.process_time()
        with _val_accuracy_per_epoch(curve):
            result = train(data=LINE_TRAIN, weights=weights, method=method, epochs=EPOCHS,
                           seed=seed, length=LENGTH, out=workdir / f"{name}-s{seed}",
                           progress=False, **options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        x = torch.from_numpy(result.channel_stats.apply(test.X))  # (N, C, L) normalised
        with torch.no_grad():
            pred = result.model(x).argmax(dim=1).numpy()  # (N,)
        trainable = [p for p in result.model.parameters() if p.requires_grad]
        runs.append({"seed": seed, "metrics": result.metrics, "losses": result.losses,
                     "curve": curve, "pred": pred, "classes": result.class_names,
                     "out": result.out, "wall_s": wall, "cpu_s": cpu,
                     "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                     "grad_bytes": sum(p.numel() * p.element_size() for p in trainable)})
    return runs


# --------------------------------------------------------------------------------------------
# Figures from the runs
# --------------------------------------------------------------------------------------------


def _candidate(name: str, method: str, runs: list[dict], prices: dict | None) -> dict:
    m0 = runs[0]["metrics"]
    per_seed = [r["metrics"]["val_accuracy"] for r in runs]
    best = runs[int(np.argmax(per_seed))]
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["cpu_s"] for r in runs)
    adapter = bool(m0.get("targets"))  # rank, alpha and targets mean something for adapters
    options = {k: m0[k] for k in ("rank", "alpha", "lr")
               if m0.get(k) is not None and (adapter or k == "lr")}
    if adapter:
        options["targets"] = m0["targets"]
    grad = max(r["grad_bytes"] for r in runs)
    return {
        "name": name, "method": method,
        "family": "adapter" if method in ("lora", "bottleneck") else "reference",
        "options": options, "seeds": [r["seed"] for r in runs],
        "trainable_params": m0["trainable_params"],
        "trainable_fraction": m0["trainable_params"] / m0["base_params"],
        "adapter_bytes": m0["adapter_bytes"],
        "val_accuracy": {"mean": float(np.mean(per_seed)), "per_seed": per_seed},
        "test": _test_figures(best),
        "training": {
            "wall_s": wall, "cpu_s": cpu, "gpu_s": None,
            "peak_rss_bytes": max(r["peak_rss"] for r in runs),
            "optimizer_state_bytes": 2 * grad,  # AdamW: exp_avg and exp_avg_sq per weight
            "grad_bytes": grad, "epochs_run": [len(r["losses"]) for r in runs],
            "cost": _cost(wall, cpu, prices),
        },
        "curves": [{"seed": r["seed"], "train_loss": r["losses"], "val_accuracy": r["curve"]}
                   for r in runs],
    }


def _test_figures(run: dict) -> dict:
    y, pred = _test_labels(run), run["pred"]
    acc = lambda idx: float(np.mean(pred[idx] == y[idx]))  # noqa: E731
    f1 = lambda idx: _macro_f1(y[idx], pred[idx], len(run["classes"]))  # noqa: E731
    return {
        "seed": run["seed"],
        "accuracy": {"value": acc(slice(None)), "ci95": _bootstrap(acc, len(y))},
        "macro_f1": {"value": f1(slice(None)), "ci95": _bootstrap(f1, len(y))},
        "per_class_recall": {name: float(np.mean(pred[y == k] == k))
                             for k, name in enumerate(run["classes"])},
    }


_TEST_LABELS: dict[tuple, np.ndarray] = {}


def _test_labels(run: dict) -> np.ndarray:
    key = tuple(run["classes"])
    if key not in _TEST_LABELS:
        _TEST_LABELS[key] = load_dataset(LINE_TEST, length=LENGTH, class_names=list(key)).y
    return _TEST_LABELS[key]


def _macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    scores = []
    for c in range(k):
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        scores.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def _bootstrap(stat, n: int, seed: int = 0) -> list[float]:
    """95% percentile interval of `stat(indices)` over BOOTSTRAP resamples of the test set."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _cost(wall: float, cpu: float, prices: dict | None) -> dict | None:
    if not prices:
        return None
    energy = wall / 3600.0 * prices["watts"] / 1000.0
    amount = cpu / 3600.0 * prices["cpu_hour"] + energy * prices["kwh"]
    return {"currency": prices["currency"], "amount": amount, "energy_kwh": energy}


def _recommend(report: dict, runs: dict, test) -> dict:
    """The smallest adapter within MARGIN of the best mean validation accuracy."""
    cands = report["candidates"]
    best = max(c["val_accuracy"]["mean"] for c in cands)
    adapters = [c for c in cands if c["family"] == "adapter"]
    close = [c for c in adapters if c["val_accuracy"]["mean"] >= best - MARGIN]
    chosen = min(close, key=lambda c: c["adapter_bytes"]) if close else \
        max(adapters, key=lambda c: c["val_accuracy"]["mean"])
    pred = {c["name"]: next(r["pred"] for r in runs[c["name"]] if r["seed"] == c["test"]["seed"])
            for c in cands}
    y = _test_labels(runs[chosen["name"]][0])
    labels = runs[chosen["name"]][0]["classes"]
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(matrix, (y, pred[chosen["name"]]), 1)
    return {
        "name": chosen["name"],
        "rule": f"the smallest adapter (bytes) whose mean validation accuracy is within "
                f"{100 * MARGIN:.1f} points of the best candidate's",
        "margin": MARGIN, "adapter_dir": f"{chosen['name']}-s{chosen['test']['seed']}",
        "gain_vs_base": {**_paired(y, pred[chosen["name"]], pred["head"]), "baseline": "head"},
        "vs_full": _against_full(y, pred[chosen["name"]], pred["full"]),
        "confusion_matrix": {"labels": list(labels), "matrix": matrix.tolist()},
    }


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Accuracy of predictions `a` minus that of `b` on the same test windows, with a paired
    bootstrap interval."""
    diff = lambda idx: float(np.mean(a[idx] == y[idx]) - np.mean(b[idx] == y[idx]))  # noqa: E731
    return {"value": diff(slice(None)), "ci95": _bootstrap(diff, len(y))}


def _against_full(y: np.ndarray, a: np.ndarray, full: np.ndarray) -> dict:
    paired = _paired(y, a, full)
    low, high = paired["ci95"]
    return {"difference": paired["value"], "ci95": paired["ci95"],
            "distinguishable": not low <= 0.0 <= high}


def _running_cost(report: dict, runs: dict, weights: Path) -> dict:
    """File sizes of what the runs wrote, and load times of those files; memory and latency
    on the gateway are not measured here."""
    rec = report["recommendation"]["name"]
    adapter_file = next(runs[rec][0]["out"].glob("*.safetensors"))
    model_file = runs["full"][0]["out"] / "model.safetensors"
    adapter, model = adapter_file.stat().st_size, model_file.stat().st_size
    return {
        "lines": LINES,
        "bytes_per_line": {"adapter": adapter, "full_model": model},
        "disk_bytes": {"attached": weights.stat().st_size + LINES * adapter,
                       "merged": LINES * model},
        "memory_bytes": {"attached": None, "merged": None},
        "swap_ms": {"adapter_swap": _load_ms(adapter_file), "model_reload": _load_ms(model_file)},
        "latency_ms": {"attached": None, "merged": None, "batch": 1},
    }


def _load_ms(path: Path, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_file(str(path))
        times.append(1000.0 * (time.perf_counter() - start))
    return float(np.median(times))


def _machine() -> dict:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def _commands(workdir: Path, weights: Path) -> list[str]:
    common = f"--epochs {EPOCHS} --length {LENGTH} --no-progress"
    cmds = [f"edge-export train --method full --data {BASE_DATA} --epochs {BASE_EPOCHS} "
            f"--length {LENGTH} --no-progress --out {workdir / 'base'}"]
    for name, method, options in CANDIDATES:
        rank = f" --rank {options['rank']}" if "rank" in options else ""
        for seed in SEEDS[:1] if method == "full" else SEEDS:
            cmds.append(f"edge-export train --method {method}{rank} --data {LINE_TRAIN} "
                        f"--weights {weights} --seed {seed} {common} "
                        f"--out {workdir / f'{name}-s{seed}'}")
    return cmds
