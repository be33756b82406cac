"""Model size benchmark: from which base size does an adapter train faster than a full fine-tune?

    python benchmarks/model_size.py [--sizes 128x2x4,256x4x4,384x6x6,512x8x8] [--epochs 3]
        [--pretrain-epochs 40] [--adapt-epochs 50] [--base-dir DIR] [--threads N] [--no-write]

Part 1, the ladder: reference SensorTransformers from the demo's base (d_model 128, depth 2,
~0.4M parameters) up to ~19M, each trained on the real ACSF1 training windows with full /
lora / bottleneck / head built as the pilot builds them (export.train.build_model, the demo's
ranks, train()'s default targets), one warm-up epoch then `--epochs` timed epochs taken in
turns (full, lora, bottleneck, head, full, ...) so that load from other processes falls on
every method alike. Random weights: an epoch's time does not depend on their values.

Part 2, a larger pretrained base: a 2.6M-parameter SensorTransformer pretrained (full) on
PLAID + OSULeaf + GunPoint pooled into one labelled set (classes "PLAID:<c>", ...; cached in
DIR/large like the demo's base in DIR/base), then adapted to ACSF1 with full, lora and
bottleneck through export.train.train, next to the same for the demo's 0.4M base.

The section goes into docs/BENCHMARKS.md under "## Model size (benchmarks/model_size.py)".
On a machine another process keeps busy, use --threads 1: torch's threads wait on each other
when one of them loses its core, and an epoch then takes anything from 0.3 to 20 s.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# benchmarks/export.py shares its name with the `export` package: import from the repo root.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]
from benchmarks.report import machine_line, training_options, write_section  # noqa: E402
from export.data import load_dataset  # noqa: E402
from export.demo import run as demo  # noqa: E402
from export.fitting import FitLog, fit, seeded  # noqa: E402
from export.models import load_base  # noqa: E402
from export.pilot.resources import measure  # noqa: E402
from export.train import DEFAULT_LR, DEFAULT_RANK, MODEL_FILE, Splits, build_model, prepare, train  # noqa: E402

TITLE = "Model size (benchmarks/model_size.py)"
LADDER = "128x2x4,256x4x4,384x6x6,512x8x8"  # d_model x depth x heads; the first is the demo's
# Method -> train() keywords: train()'s defaults (lora rank 4, bottleneck 8, REFERENCE_TARGETS),
# head and LayerNorms trained with an adapter, as the pilot does.
METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full"}, "lora": demo.LORA, "bottleneck": demo.BOTTLENECK,
    "head": {"method": "head"},
}
FIT = {"batch_size": 32, "weight_decay": 0.01}  # train()'s and the pilot's
FASTER = 1.2  # "faster": full's epoch at least this many times the adapter's
# The larger base: 2.6M parameters, 6.6x the demo's. (384, 6, 6) has 8.3M and its epoch takes
# ~3x as long (ladder, 1 thread: 2.4 s against 0.76 s): its 60 epochs would take ~17 minutes.
LARGE_CONFIG: dict[str, Any] = {"d_model": 256, "depth": 4, "heads": 4, "window_norm": True}
PRETRAIN_SETS = ("PLAID", "OSULeaf", "GunPoint")
HELD_OUT = ("ArrowHead", "ItalyPowerDemand", "ACSF1")  # another study's sets and the target
PRETRAIN_EPOCHS = 60  # the demo base's; ~5.5 s an epoch of 787 windows, 1 thread: ~6 minutes
ADAPT_EPOCHS = 50
ADAPT_METHODS = ("full", "lora", "bottleneck")
assert not set(PRETRAIN_SETS) & set(HELD_OUT)


def parse_sizes(text: str) -> list[dict[str, Any]]:
    """"128x2x4,256x4" -> SensorTransformer configs; heads default to max(4, d_model // 64)."""
    configs = []
    for item in text.split(","):
        dims = [int(v) for v in item.strip().lower().split("x")]
        if len(dims) not in (2, 3) or min(dims) < 1:
            raise SystemExit(f"--sizes: {item!r} is not D x DEPTH [x HEADS]")
        d_model, depth = dims[:2]
        heads = dims[2] if len(dims) == 3 else max(4, d_model // 64)
        configs.append({"d_model": d_model, "depth": depth, "heads": heads,
                        "window_norm": True})
    return configs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=LADDER, help="the ladder: D x DEPTH [x HEADS], ...")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per method and size")
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS,
                        help="epochs pretraining the larger base (cached in --base-dir)")
    parser.add_argument("--demo-pretrain-epochs", type=int, default=demo.PRETRAIN_EPOCHS,
                        help="epochs pretraining the demo's base (cached in --base-dir)")
    parser.add_argument("--adapt-epochs", type=int, default=ADAPT_EPOCHS,
                        help="epochs adapting each pretrained base to ACSF1")
    parser.add_argument("--part", choices=("all", "ladder", "pretrained"), default="all")
    training_options(parser, "the pretrained bases and pooled data")
    return parser.parse_args(argv)


def _trim() -> None:
    """Hand freed heap back to the OS, so the next run's RSS growth is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _state_bytes(log: FitLog) -> int:
    return log.optimizer_state_bytes + log.grad_bytes


# --------------------------------------------------------------------------------------------
# Part 1: the ladder (time per epoch, random weights)
# --------------------------------------------------------------------------------------------


def _build(method: str, base: nn.Module, num_classes: int) -> nn.Module:
    """The model the pilot trains for `method` (search.py `_train`): a copy of the base."""
    rank = DEFAULT_RANK.get(method, 1)  # train()'s default; full and head have none
    return build_model(method, copy.deepcopy(base), num_classes, None, rank, float(2 * rank),
                       train_head=True, train_norms=True, modules_to_save=None, name="adapter")


def _epoch(model: nn.Module, method: str, splits: Splits, seed: int) -> FitLog:
    return fit(model, splits.x_train, splits.y_train, epochs=1, lr=DEFAULT_LR[method],
               seed=seed, **FIT)


def ladder_size(config: dict[str, Any], splits: Splits, epochs: int) -> list[dict[str, Any]]:
    """One size: every method's warm-up epoch (measured alone: memory), then `epochs` timed
    rounds, each method one epoch per round; a row per method."""
    k = splits.train.num_classes
    with seeded(0):
        base = load_base("reference", in_channels=splits.train.num_channels, num_classes=k,
                         length=demo.LENGTH, **config)
    params = sum(p.numel() for p in base.parameters())
    models, rows = {}, {}
    for method in METHODS:
        _trim()
        with seeded(0):
            models[method] = _build(method, base, k)
            with measure() as usage:  # fresh model: grads, optimizer state, activations
                log = _epoch(models[method], method, splits, seed=0)
        trainable = sum(p.numel() for p in models[method].parameters() if p.requires_grad)
        rows[method] = {"config": config, "params": params, "method": method,
                        "trainable_pct": 100.0 * trainable / params,
                        "state_bytes": _state_bytes(log), "rss_growth": usage.rss_growth_bytes,
                        "epoch_s": []}
    for round_ in range(epochs):
        for method, model in models.items():
            with seeded(1 + round_):
                began = time.perf_counter()
                _epoch(model, method, splits, seed=1 + round_)
                rows[method]["epoch_s"].append(time.perf_counter() - began)
    for row in rows.values():
        row["s"] = statistics.median(row["epoch_s"])
    for row in rows.values():
        row["speedup"] = rows["full"]["s"] / row["s"]
    return list(rows.values())


def run_ladder(configs: list[dict[str, Any]], epochs: int) -> tuple[list[dict[str, Any]], int]:
    """Every size on ACSF1's training windows (normalised as train() does); rows, windows."""
    _, splits = prepare("reference", None, demo.ADAPT_DATA, demo.ADAPT_TEST, length=demo.LENGTH,
                        model_config=configs[0])
    rows = []
    for config in configs:
        size_rows = ladder_size(config, splits, epochs)
        rows += size_rows
        print("  " + ", ".join(f"{r['method']} {r['s']:.2f} s" for r in size_rows)
              + f" an epoch at {size_rows[0]['params']:,} parameters", file=sys.stderr)
    return rows, len(splits.y_train)


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def first_faster(rows: list[dict[str, Any]], method: str) -> str:
    """The smallest size at which `method`'s epoch is FASTER x quicker than full's."""
    hits = [r for r in rows if r["method"] == method and r["speedup"] >= FASTER]
    if not hits:
        return f"{method}: not within this ladder"
    r = min(hits, key=lambda r: r["params"])
    return f"{method}: from {r['params'] / 1e6:.1f}M parameters ({r['speedup']:.2f}x)"


def ladder_table(rows: list[dict[str, Any]], epochs: int, windows: int) -> str:
    lines = [
        f"### Time per epoch by size (ACSF1, {windows} training windows, batch 32)",
        "",
        f"Reference SensorTransformers (length {demo.LENGTH}, window_norm), **random weights**: "
        "the time of an epoch does not depend on their values. Methods built as the pilot "
        "builds them (lora rank 4, bottleneck 8, train()'s targets, head and LayerNorms "
        f"trained). One warm-up epoch each, then {epochs} timed epochs taken in turns "
        "(full, lora, bottleneck, head, ...); s/epoch is their median. Memory: the "
        "warm-up epoch of a fresh model (RSS growth: its peak over the RSS it started at).",
        "",
        "| params | d_model x depth x heads | method | s/epoch | speed-up vs full | "
        "trainable % | optimizer + grad | RSS growth |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["config"]
        lines.append(f"| {r['params']:,} | {c['d_model']} x {c['depth']} x {c['heads']} | "
                     f"{r['method']} | {r['s']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['trainable_pct']:.2f}% | {_mb(r['state_bytes'])} | "
                     f"{_mb(r['rss_growth'])} |")
    lines += ["", f"First size where the adapter's epoch is >= {FASTER}x faster than full's: "
              + "; ".join(first_faster(rows, m) for m in ("lora", "bottleneck")) + ".", "",
              "Why adapters can be no faster at small size: the forward pass and the "
              "backward through the activations are the same (the adapted stem conv is the "
              "first layer, so the gradient flows through every block); only the weight "
              "gradients and the optimizer step shrink, a small share of an epoch until "
              "the weights are large."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Part 2: a larger pretrained base, adapted like the demo's
# --------------------------------------------------------------------------------------------


def write_pooled(names: tuple[str, ...], out: Path, length: int = demo.LENGTH
                 ) -> dict[str, Path]:
    """The bundled sets `names` as one labelled set per split, npz files in `out`:
    X (N, 1, length) float32, y (N,) class ids into class_names ("<set>:<class>")."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    class_names: list[str] = []
    channels: list[str] = []
    for name in names:
        train_ds = load_dataset(f"ucr:{name}:train", length=length)
        test_ds = load_dataset(f"ucr:{name}:test", length=length,
                               class_names=train_ds.class_names)
        offset = len(class_names)  # this set's class ids follow the previous sets'
        class_names += [f"{name}:{c}" for c in train_ds.class_names]
        channels = channels or train_ds.channel_names
        for split, ds in (("train", train_ds), ("test", test_ds)):
            parts[split].append((ds.X, ds.y + offset))  # (N, 1, L), (N,)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, arrays in parts.items():
        paths[split] = out / f"{'+'.join(names)}_{split}.npz"
        np.savez(paths[split], X=np.concatenate([x for x, _ in arrays]).astype(np.float32),
                 y=np.concatenate([y for _, y in arrays]).astype(np.int64),
                 class_names=np.asarray(class_names), channel_names=np.asarray(channels))
    return paths


def pretrain_large(out: Path, *, epochs: int = PRETRAIN_EPOCHS, progress: bool = False,
                   force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Full training of LARGE_CONFIG on PRETRAIN_SETS pooled (npz files in out/../pooled);
    skipped when `out` holds its weights. The weights path and the pretraining metrics."""
    weights = out / MODEL_FILE
    if weights.is_file() and not force:
        return weights, json.loads((out / "metrics.json").read_text())
    data = write_pooled(PRETRAIN_SETS, out.parent / "pooled")
    result = train(data=data["train"], test_data=data["test"], method="full",
                   length=demo.LENGTH, model_config=LARGE_CONFIG, epochs=epochs, seed=0,
                   out=out, force=True, progress=progress)
    return weights, result.metrics


def _train_state_bytes(model: nn.Module) -> int:
    """What fit's FitLog counts: a gradient and AdamW's exp_avg and exp_avg_sq per trainable
    weight, and one float32 step per trainable tensor."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return 3 * grads + 4 * len(trainable)


def adapt(label: str, weights: Path, work: Path, epochs: int, progress: bool
          ) -> list[dict[str, Any]]:
    """Each of ADAPT_METHODS on ACSF1 from `weights` (seed 0) through train(); a row each.
    `work` is this base's own directory (its name becomes the adapter's: no dots)."""
    rows = []
    for method in ADAPT_METHODS:
        _trim()
        with measure() as usage:
            result = train(weights=weights, data=demo.ADAPT_DATA, test_data=demo.ADAPT_TEST,
                           epochs=epochs, seed=0, out=work / method, force=True,
                           progress=progress, **METHODS[method])
        m = result.metrics
        rows.append({"base": label, "method": method, "acc": 100 * m["accuracy"],
                     "train_s": m["train_seconds"], "wall_s": usage.wall_s,
                     "trainable_pct": m["trainable_pct"], "base_params": m["base_params"],
                     "state_bytes": _train_state_bytes(result.model),
                     "peak_rss": usage.peak_rss_bytes, "rss_growth": usage.rss_growth_bytes})
        print(f"  {label} {method}: {rows[-1]['acc']:.1f}% in {m['train_seconds']:.1f} s",
              file=sys.stderr)
    for row in rows:
        row["speedup"] = rows[0]["train_s"] / row["train_s"]  # rows[0]: full
    return rows


def _base_line(name: str, config: dict[str, Any], metrics: dict[str, Any], data: str) -> str:
    epochs = metrics["epochs"]
    return (f"- {name}: {config}, {metrics['base_params']:,} parameters, pretrained (full, "
            f"{epochs} epochs, {metrics['train_seconds'] / epochs:.1f} s an epoch of "
            f"{metrics['n_train']} windows) on {data}: **{100 * metrics['accuracy']:.1f}%** "
            "test accuracy.")


def pretrained_table(rows: list[dict[str, Any]], bases: list[str], epochs: int) -> str:
    lines = [
        "### Pretrained bases adapted to ACSF1",
        "",
        *bases,
        "",
        f"Each adapted to ACSF1 with export.train.train (100 train / 100 test windows, "
        f"{epochs} epochs, seed 0; the demo's lora rank 4 and bottleneck 8). train s: the "
        "training loop; wall s: the whole call (data, base, writing the output). Peak RSS "
        "and its growth: sampled during the call, in this process after the earlier runs.",
        "",
        "| base | method | ACSF1 test accuracy | train s | speed-up vs full | trainable % | "
        "optimizer + grad | peak RSS | RSS growth | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['base']} | {r['method']} | {r['acc']:.1f}% | {r['train_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['trainable_pct']:.2f}% | "
                     f"{_mb(r['state_bytes'])} | {_mb(r['peak_rss'])} | "
                     f"{_mb(r['rss_growth'])} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def run_pretrained(root: Path, work: Path, args: argparse.Namespace) -> str:
    """Both bases (cached in root/base and root/large), each adapted with ADAPT_METHODS."""
    print(f"the demo's base on {demo.PRETRAIN_DATA} ({root / 'base'})...", file=sys.stderr)
    small, small_m = demo.pretrain_base(root / "base", data=demo.recipe_data(),
                                        epochs=args.demo_pretrain_epochs,
                                        progress=args.progress)
    print(f"the larger base on {' + '.join(PRETRAIN_SETS)} ({root / 'large'})...",
          file=sys.stderr)
    large, large_m = pretrain_large(root / "large", epochs=args.pretrain_epochs,
                                    progress=args.progress)
    names = {"small": f"{small_m['base_params'] / 1e6:.1f}M (demo)",
             "large": f"{large_m['base_params'] / 1e6:.1f}M"}
    rows = [row for key, weights in (("small", small), ("large", large))
            for row in adapt(names[key], weights, work / key, args.adapt_epochs, args.progress)]
    bases = [_base_line(f"{names['small']} base", demo.BASE_CONFIG, small_m, "PLAID"),
             _base_line(f"{names['large']} base", LARGE_CONFIG, large_m,
                        " + ".join(PRETRAIN_SETS) + " pooled (classes named "
                        "\"<set>:<class>\")")]
    return pretrained_table(rows, bases, args.adapt_epochs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    parts = []
    with tempfile.TemporaryDirectory(prefix="model-size-") as tmp:
        work = Path(tmp)
        if args.part in ("all", "ladder"):
            print("the ladder: time per epoch by size...", file=sys.stderr)
            rows, windows = run_ladder(parse_sizes(args.sizes), args.epochs)
            parts.append(ladder_table(rows, args.epochs, windows))
        if args.part in ("all", "pretrained"):
            parts.append(run_pretrained(args.base_dir or work, work, args))
    body = "\n\n".join([
        f"{machine_line(('torch',))}; {torch.get_num_threads()} torch threads; whole run "
        f"{time.perf_counter() - start:.0f} s.", *parts])
    print(f"## {TITLE}\n\n{body}")
    if not args.no_write:
        print(f"\nwrote {write_section(TITLE, body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
