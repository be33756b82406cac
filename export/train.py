"""Training: `edge-export train` and its Python twin `train()`.

Methods:
    lora        LoRA on `--targets` (frozen base); writes a PEFT adapter directory at OUT
    bottleneck  residual bottleneck adapters after `--targets` (`--rank` is their width)
                (every adapter kind of export/adapters/registry.py is a method like these)
    head        linear probe: only the classification head trains; writes OUT/head.safetensors
                (the head only; `load_head(OUT)` applies it on the base edge_model.json names)
    full        every weight trains (also how a base is pretrained); writes OUT/model.safetensors

Every method writes OUT/metrics.json. Inputs are normalised per channel with statistics of the
training split, which travel with the output (adapter metadata or OUT/edge_model.json), so the
gateway applies the same.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from edge.contract import Preprocessing
from edge.errors import ConfigError, DataError
from export.adapters.model import AdaptedModel
from export.adapters.registry import ADAPTER_KINDS, adapter_kind
from export.adapters.targets import ALL_LINEAR, is_all_linear, output_head
from export.cards import CardOptions, make_card, training_card
from export.check_sample import SAMPLE_FILE, SAMPLE_KEY, CheckSample, make_sample
from export.data import ChannelStats, SensorDataset, TableColumns, load_dataset, train_val_split
from export.drift_profile import META_KEY, compute_profile
from export.fitting import FitLog, evaluate, fit, limit_threads, seeded
from export.models import load_base, save_base, weights_fingerprint
from export.outputs import check_writable
from export.peft_io import WEIGHTS_FILE, save_adapter

__all__ = ["DEFAULT_LR", "DEFAULT_RANK", "METHODS", "REFERENCE_TARGETS", "Splits", "TrainResult",
           "build_model", "check_sample", "evaluate", "load_head", "output_meta",
           "parse_targets", "prepare", "size_metrics", "target_paths", "train",
           "training_profile"]

ADAPTER_METHODS = tuple(ADAPTER_KINDS)  # ("lora", "bottleneck"): an adapter directory
METHODS = (*ADAPTER_METHODS, "head", "full")
# Adapters start from zero and move few parameters: they take a larger step than a full
# fine-tune, which would wreck the pretrained weights at that rate (ACSF1 from a PLAID base,
# benchmarks/adaptation.py: LoRA at 1e-2 beat 3e-3 by ~7 points; full FT is best near 1e-3).
DEFAULT_LR = {**dict.fromkeys(ADAPTER_METHODS, 1e-2), "head": 1e-2, "full": 1e-3}
# --rank when none is given: LoRA's rank, the bottleneck's width. Both keep the adapter file
# (with the head and LayerNorms stored alongside) within 3% of the reference base's; LoRA at
# rank 8 on the same targets takes ~5% and was no better on ACSF1 (benchmarks/adaptation.py).
DEFAULT_RANK = {"lora": 4, "bottleneck": 8}
# Default targets for the reference SensorTransformer (module-path suffixes, PEFT semantics).
# Every kind adapts the conv stem: its first conv sees the raw signal and its patch conv (a
# third of the base's weights) turns local shapes into tokens; both differ most between sensor
# lines. LoRA on the stem's (D, C, 7) and (D, D, 8) kernels costs (7C + D) and 9D per rank. On
# ACSF1 (validation split) LoRA here beat LoRA on attention q, v, o by ~10 points at equal size.
REFERENCE_TARGETS: dict[str, list[str]] = {
    kind: ["stem.conv1", "stem.conv2", "mlp.fc2"] for kind in ADAPTER_METHODS
}
MODEL_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"  # what `--method head` writes: the head's tensors only
MODEL_META_FILE = "edge_model.json"
METRICS_FILE = "metrics.json"
VAL_FRACTION = 0.2
_REGEX_CHARS = set("*+?()[]{}|^$\\")


@dataclass
class TrainResult:
    """What `train()` wrote and measured. `model` is the trained model in eval mode (an
    `AdaptedModel` for lora/bottleneck)."""

    out: Path
    method: str
    metrics: dict[str, Any]
    model: nn.Module
    class_names: list[str]
    channel_stats: ChannelStats
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])


@dataclass
class Splits:
    """Normalised tensors: x (N, *sample) float32 ((N, C, L) windows, (N, F), (N, C, H, W)),
    y (N,) int64. `eval` is the test data, or a
    stratified 20% of the data held out (`eval_split` "test" / "val"); `val` (early stopping,
    carved from the training part only) exists when a validation fraction was asked for."""

    train: SensorDataset
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    eval_split: str
    stats: ChannelStats
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    eval_data: SensorDataset | None = None  # the eval windows as read (raw), for the sample

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.y_val is None else (self.x_val, self.y_val)


def train(
    *,
    base: str = "reference",
    weights: str | Path | None = None,
    data: str | Path,
    test_data: str | Path | None = None,
    method: str = "lora",
    rank: int | None = None,
    alpha: float | None = None,
    targets: str | list[str] | None = None,
    train_head: bool = True,
    train_norms: bool = True,
    modules_to_save: str | list[str] | None = None,
    exclude_modules: str | list[str] | None = None,
    epochs: int = 100,
    lr: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    seed: int = 0,
    length: int | None = None,
    model_config: dict[str, Any] | None = None,
    columns: TableColumns | None = None,
    val_fraction: float | None = None,
    patience: int | None = None,
    threads: int | None = None,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    card: CardOptions | None = None,
) -> TrainResult:
    """Train `method` on `data` starting from `base` (+ `weights`) and write the result to `out`.

    Without `test_data`, a stratified 20% of `data` is held out and its accuracy reported.
    `rank` defaults to DEFAULT_RANK, `alpha` to 2 * rank, `lr` to DEFAULT_LR (per method).
    `targets` is a comma list of module-path suffixes, a regex over full paths, or PEFT's
    `all-linear` (every Linear but the head) (default: REFERENCE_TARGETS for the reference
    model, every Linear/Conv but the head otherwise); `exclude_modules` (same forms) are never
    targets, nor is anything saved whole (PEFT's rules, export/adapters/targets.py). The
    head is trained with an adapter unless `train_head=False`; it is always re-created when the
    data's class count differs from the base head's. `train_norms` also trains the LayerNorms,
    and `modules_to_save` (comma list) any other modules, as full copies stored in the adapter
    (PEFT's modules_to_save, e.g. a small input conv). `model_config` passes SensorTransformer
    arguments (d_model, depth, ...) when building a reference base. `columns` names the columns
    of CSV / Parquet data (docs/DATA.md; inferred when None).
    `val_fraction` carves a stratified validation split out of the training part (never the
    test data): each epoch is scored on it, the best epoch's weights are kept, and `patience`
    stops training after that many epochs without a better one; metrics then hold the
    per-epoch `curves`. `threads` sets torch's thread count for the run (restored after).
    `card` sets the output's card (export/cards.py: author, licence, base, intended use...);
    the rest of it is measured here: data fingerprint, sizes, scores, time, command line.
    Bad data raises DataError, bad options ConfigError; the same seed gives the same tensors.
    """
    rank = DEFAULT_RANK.get(method, 1) if rank is None else rank
    alpha = float(2 * rank if alpha is None else alpha)
    lr = DEFAULT_LR.get(method, 0.0) if lr is None else lr
    _check_options(method, rank, alpha, epochs, lr, batch_size, targets, modules_to_save,
                   weight_decay, exclude_modules)
    _check_early_stopping(val_fraction, patience)
    out = Path(out)
    _check_out(out, force)
    make_card(options=card, layers=[])  # a bad licence or card file fails before training
    with limit_threads(threads), seeded(seed):
        base_model, splits = prepare(base, weights, data, test_data, length=length,
                                     model_config=model_config, seed=seed,
                                     val_fraction=val_fraction, columns=columns)
        fingerprint = weights_fingerprint(base_model)  # before any injection renames modules
        base_config = getattr(base_model, "config", None)  # copied: full/head may resize the head
        base_config = dict(base_config) if isinstance(base_config, dict) else None
        base_bytes = _file_bytes(base_model.state_dict())
        base_params = sum(p.numel() for p in base_model.parameters())
        model = build_model(method, base_model, splits.train.num_classes, targets, rank, alpha,
                            train_head=train_head, train_norms=train_norms,
                            modules_to_save=modules_to_save, name=out.name,
                            exclude_modules=exclude_modules)
        start = time.perf_counter()
        log = fit(model, splits.x_train, splits.y_train, epochs=epochs, lr=lr,
                  batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                  progress=progress, desc=f"train {method}", val=splits.val, patience=patience)
        seconds = time.perf_counter() - start
    accuracy = evaluate(model, splits.x_eval, splits.y_eval)
    metrics = {
        "method": method, "accuracy": accuracy, f"{splits.eval_split}_accuracy": accuracy,
        "eval_split": splits.eval_split, "train_accuracy": evaluate(model, splits.x_train,
                                                                    splits.y_train),
        "final_train_loss": log.train_loss[-1], "train_seconds": round(seconds, 3),
        "epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
        "weight_decay": weight_decay, "base_params": base_params, "base_bytes": base_bytes,
        "train_data": str(data), "test_data": None if test_data is None else str(test_data),
        "n_train": len(splits.y_train), "n_eval": len(splits.y_eval),
    }  # fmt: skip
    metrics.update(_early_stopping_metrics(splits, log, patience))
    metrics.update(size_metrics(model, method, base_params, base_bytes))
    if isinstance(model, AdaptedModel):
        metrics.update(**model.configs[model.active_adapter].train_options(),
                       targets=target_paths(model),
                       modules_to_save=model.configs[model.active_adapter].modules_to_save)
    files, sample = _adapter_sample(model, splits)  # its record holds its size in bytes
    card_doc = training_card(card, train_ds=splits.train, n_test=len(splits.y_eval),
                             eval_split=splits.eval_split, metrics=metrics, weights=weights,
                             fingerprint=fingerprint, new_base=weights_fingerprint(model)
                             if method == "full" else None)
    meta = output_meta(base, weights, base_config, fingerprint, splits, metrics,
                       profile=training_profile(model, splits), sample=sample, card=card_doc)
    _write(model, method, out, meta, metrics, files)
    return TrainResult(out, method, metrics, model, splits.train.class_names, splits.stats,
                       log.train_loss)


def _early_stopping_metrics(splits: Splits, log: FitLog, patience: int | None) -> dict:
    if splits.y_val is None:
        return {}
    return {"n_val": len(splits.y_val), "val_accuracy": max(log.val_accuracy),
            "patience": patience, "epochs_run": log.epochs_run, "best_epoch": log.best_epoch,
            "stopped": log.stopped,
            "curves": {"train_loss": log.train_loss, "val_accuracy": log.val_accuracy}}


def _check_early_stopping(val_fraction: float | None, patience: int | None) -> None:
    if val_fraction is not None and not (isinstance(val_fraction, (int, float))
                                         and 0.0 < val_fraction < 1.0):
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction!r}")
    if patience is None:
        return
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ConfigError(f"--patience must be a positive integer, got {patience!r}")
    if val_fraction is None:
        raise ConfigError("--patience needs --val-fraction: early stopping scores a validation "
                          "split carved from --data")


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _check_options(method: str, rank: int, alpha: float, epochs: int, lr: float,
                   batch_size: int, targets: Any, modules_to_save: Any,
                   weight_decay: float, exclude_modules: Any = None) -> None:
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    for flag, value in (("--rank", rank), ("--epochs", epochs), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--lr must be a positive number, got {lr!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"--alpha must be a positive number, got {alpha!r}")
    if weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {weight_decay!r}")
    for flag, value in (("--targets", targets), ("--modules-to-save", modules_to_save),
                        ("--exclude-modules", exclude_modules)):
        if value and method not in ADAPTER_METHODS:
            kinds = ", ".join(ADAPTER_METHODS[:-1]) + f" and {ADAPTER_METHODS[-1]}"
            raise ConfigError(f"{flag} applies to {kinds}, not --method {method}")


def parse_targets(text: str | list[str] | None,
                  flag: str = "--targets") -> str | list[str] | None:
    """`--targets` (or `--exclude-modules`, named by `flag`): PEFT's `all-linear` (every
    Linear but the head), a regex (kept as one string, matched against full module paths)
    when it holds regex syntax, else a comma list of path suffixes."""
    if text is None or isinstance(text, list):
        return text
    if is_all_linear(text.strip()) and flag == "--targets":
        return ALL_LINEAR
    if _REGEX_CHARS & set(text):
        try:
            re.compile(text)
        except re.error as exc:
            raise ConfigError(f"{flag} {text!r} is not a valid regex: {exc}") from None
        return text
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{flag} is empty; give module names like q,v or a regex")
    return items


def _comma_list(value: str | list[str] | None) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value or [])


def _check_out(out: Path, force: bool) -> None:
    """Fail before training, not after it, when OUT cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out names a directory")
    empty_dir = out.is_dir() and not any(out.iterdir())
    check_writable(out, force or empty_dir, ConfigError)


# --------------------------------------------------------------------------------------------
# Data and base
# --------------------------------------------------------------------------------------------


def prepare(base: str, weights: Any, data: Any, test_data: Any, *, length: int | None = None,
            model_config: dict[str, Any] | None = None, seed: int = 0,
            val_fraction: float | None = None,
            columns: TableColumns | None = None) -> tuple[nn.Module, Splits]:
    """Load the base and the data, in the order that lets each size the other, and split it:
    eval is `test_data` or a held-out 20% of `data` ("holdout" when a validation split is
    also carved), val a stratified `val_fraction` of what is left for training."""
    config = dict(model_config or {})
    if base == "reference" and weights is None:
        # A new reference model takes its input and output sizes from the data.
        ds = load_dataset(data, length=length or config.pop("length", None), columns=columns)
        if not ds.is_windows:
            raise ConfigError(f"--data {data}: samples of shape {list(ds.sample_shape)}; the "
                              "reference model takes windows (C, L): pass --base "
                              "package.module:callable for feature vectors or images")
        model = load_base("reference", in_channels=ds.num_channels, num_classes=ds.num_classes,
                          length=ds.length, **config)
    else:
        model = load_base(base, weights=weights, **config)
        ds = load_dataset(data, length=length or _model_length(model), columns=columns)
    if test_data is not None:
        train_ds = ds
        eval_ds = load_dataset(test_data, length=ds.length, class_names=ds.class_names,
                               columns=columns)
        split = "test"
    else:
        train_ds, eval_ds = train_val_split(ds, VAL_FRACTION, seed)
        split = "val" if val_fraction is None else "holdout"
    val_ds = None
    if val_fraction is not None:
        train_ds, val_ds = train_val_split(train_ds, val_fraction, seed)
    if eval_ds.X.ndim != train_ds.X.ndim:
        raise DataError(f"{eval_ds.source}: samples of shape {list(eval_ds.sample_shape)}, "
                        f"the training data's are {list(train_ds.sample_shape)}")
    if eval_ds.num_channels != train_ds.num_channels:
        raise DataError(f"{eval_ds.source}: {eval_ds.num_channels} channel(s), the training "
                        f"data has {train_ds.num_channels}")
    stats = ChannelStats.from_data(train_ds.X)  # (C,) from the training split only
    x_train, y_train = _tensors(stats, train_ds)
    x_eval, y_eval = _tensors(stats, eval_ds)
    x_val, y_val = _tensors(stats, val_ds) if val_ds is not None else (None, None)
    _check_fits(model, x_train, train_ds, f"--data {data}")
    return model, Splits(train_ds, x_train, y_train, x_eval, y_eval, split, stats, x_val, y_val,
                         eval_ds)


def _model_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return config.get("length") if isinstance(config, dict) else None


def _tensors(stats: ChannelStats, ds: SensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(stats.apply(ds.X)), torch.from_numpy(ds.y)  # (N, *sample), (N,)


def _check_fits(model: nn.Module, x: torch.Tensor, ds: SensorDataset, name: str) -> None:
    """One forward pass on two windows, so a shape mismatch names the data (`name`: the
    option and file the user gave, not a split of it), not a matmul."""
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("in_channels") not in (None, ds.num_channels):
        raise DataError(f"{name}: {ds.num_channels} channel(s), the base model takes "
                        f"{config['in_channels']}")
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[:2])
    except RuntimeError as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise DataError(f"{name}: samples of shape {tuple(x.shape[1:])} do not fit the base "
                        f"model: {reason}") from None
    if logits.ndim != 2:
        raise DataError(f"base model returns shape {tuple(logits.shape)}; a classifier returns "
                        "(batch, classes)")


# --------------------------------------------------------------------------------------------
# Methods: which parameters train
# --------------------------------------------------------------------------------------------


def _head_path(model: nn.Module) -> str:
    """The classification head (export/adapters/targets.py `output_head`): a top-level Linear
    called head, classifier, score or lm_head, else the last Linear; the one `all-linear`
    leaves out."""
    head = output_head(list(model.named_modules()))
    if head is None:
        raise ConfigError("the base model has no nn.Linear head to train")
    return head


def _fresh_head(old: nn.Linear, num_classes: int) -> nn.Linear:
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    return head.to(dtype=old.weight.dtype)


def build_model(method: str, model: nn.Module, num_classes: int, targets: Any, rank: int,
           alpha: float, *, train_head: bool, train_norms: bool, modules_to_save: Any,
           name: str, exclude_modules: Any = None) -> nn.Module:
    head_path = _head_path(model)
    old_head = model.get_submodule(head_path)
    new_head = old_head.out_features != num_classes
    if method in ("full", "head"):
        if new_head:
            model.set_submodule(head_path, _fresh_head(old_head, num_classes))
            if isinstance(getattr(model, "config", None), dict):
                model.config["num_classes"] = num_classes  # the sidecar must rebuild this head
        model.requires_grad_(method == "full")
        model.get_submodule(head_path).requires_grad_(True)
        return model
    save = [head_path] if (train_head or new_head) else []
    if train_norms:
        save += [p for p, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    save += _comma_list(modules_to_save)
    targets = parse_targets(targets) or _default_targets(model, method, head_path)
    config = adapter_kind(method).config_cls.from_train_options(
        rank=rank, alpha=alpha, target_modules=targets, modules_to_save=save or None,
        exclude_modules=parse_targets(exclude_modules, "--exclude-modules"))
    adapted = AdaptedModel(model)
    adapted.add_adapter(name, config)
    if new_head:
        adapted.replace_saved_module(name, head_path, _fresh_head(old_head, num_classes))
    return adapted


def _default_targets(model: nn.Module, method: str, head_path: str) -> list[str]:
    from export.models import SensorTransformer

    if isinstance(model, SensorTransformer):
        return list(REFERENCE_TARGETS[method])
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [p for p, m in model.named_modules() if isinstance(m, kinds) and p != head_path]


def target_paths(model: nn.Module) -> list[str]:
    from export.adapters.base import AdapterLayer

    inner = model.base_model if isinstance(model, AdaptedModel) else model
    return [p for p, m in inner.named_modules() if isinstance(m, AdapterLayer)]


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _file_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Size of these tensors as a safetensors file (what would ship)."""
    return len(safetensors_bytes({k: v.detach().contiguous() for k, v in tensors.items()}))


def size_metrics(model: nn.Module, method: str, base_params: int, base_bytes: int) -> dict:
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if isinstance(model, AdaptedModel):
        shipped = model.adapter_state_dict(model.active_adapter)  # the adapter file's tensors
    elif method == "head":
        shipped = trainable  # a head-only delta on top of the base
    else:
        shipped = model.state_dict()
    n_trainable = sum(p.numel() for p in trainable.values())
    adapter_bytes = _file_bytes(shipped)
    return {
        "trainable_params": n_trainable,
        "trainable_pct": round(100.0 * n_trainable / base_params, 3),
        "adapter_bytes": adapter_bytes,
        "adapter_base_pct": round(100.0 * adapter_bytes / base_bytes, 3),
    }


def training_profile(model: nn.Module, splits: Splits) -> dict:
    """The drift profile of `model` on its training windows (raw and normalised), its
    out-of-distribution threshold calibrated on the held-out (eval) windows."""
    return compute_profile(model, splits.train.X, splits.x_train, splits.train.class_names,
                           splits.x_eval)


def check_sample(model: nn.Module, splits: Splits) -> CheckSample:
    """The validation sample an adapter keeps (export/check_sample.py): held-out windows,
    raw, with the answers `model` gives them."""
    return make_sample(model, splits.eval_data.X, splits.x_eval, splits.y_eval,
                       list(splits.train.class_names), splits.eval_split)


def _adapter_sample(model: nn.Module, splits: Splits) -> tuple[dict[str, bytes], dict | None]:
    """An adapter's check sample: the files to write beside it and its metadata record;
    nothing for the other methods (no adapter directory, no base update to survive)."""
    if not isinstance(model, AdaptedModel):
        return {}, None
    sample = check_sample(model, splits)
    blob = sample.to_bytes()
    return {SAMPLE_FILE: blob}, sample.record(blob)


def output_meta(base: str, weights: Any, base_config: dict | None, fingerprint: str,
          splits: Splits, metrics: dict, *, profile: dict | None = None,
          sample: dict | None = None, card: dict | None = None) -> dict:
    """The metadata an output carries (adapter metadata, edge_model.json); `profile` (the
    drift profile, export/drift_profile.py) under META_KEY, `sample` (the check sample's
    record, export/check_sample.py) under SAMPLE_KEY and `card` (export/cards.py) under
    "card" when given."""
    return {
        "base_fingerprint": fingerprint,
        "base": {"spec": base, "weights": None if weights is None else str(weights),
                 "config": base_config},
        "preprocessing": Preprocessing.of(splits.stats, splits.train.sample_shape,
                                          splits.train.channel_names).to_dict(),
        "class_names": list(splits.train.class_names),
        "metrics": metrics,
    } | {key: value for key, value in ((META_KEY, profile), (SAMPLE_KEY, sample),
                                       ("card", card)) if value is not None}


def _write(model: nn.Module, method: str, out: Path, meta: dict, metrics: dict,
           files: dict[str, bytes]) -> None:
    """Write everything (and `files`: name -> bytes, beside the outputs) into a staging
    directory beside OUT, then swap it in."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = staging / "out"
        if isinstance(model, AdaptedModel):
            save_adapter(model, target, meta=meta)
            metrics["adapter_file_bytes"] = (target / WEIGHTS_FILE).stat().st_size
        elif method == "head":
            _save_head(model, target, meta)
            metrics["adapter_file_bytes"] = (target / HEAD_FILE).stat().st_size
        else:
            save_base(model, target / MODEL_FILE)
            meta["weights_fingerprint"] = weights_fingerprint(model)
            body = {"format": "edge-model/1", "method": method, **meta}
            (target / MODEL_META_FILE).write_text(json.dumps(body, indent=2, sort_keys=True))
        for name, blob in files.items():
            (target / name).write_bytes(blob)
        text = json.dumps(metrics, indent=2, sort_keys=True, default=_json_default)
        (target / METRICS_FILE).write_text(text + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_head(model: nn.Module, target: Path, meta: dict) -> None:
    """A linear probe ships its head only: the Linear's tensors, and in edge_model.json the
    base it sits on (spec, weights, fingerprint) and the head's path; `load_head` applies it."""
    head_path = _head_path(model)
    head = model.get_submodule(head_path)
    tensors = {f"{head_path}.{k}": v.detach().cpu().contiguous().clone()
               for k, v in head.state_dict().items()}
    target.mkdir(parents=True)
    save_file(tensors, str(target / HEAD_FILE))  # no metadata: its size is adapter_bytes
    body = {"format": "edge-model/1", "method": "head", "head": head_path, **meta}
    (target / MODEL_META_FILE).write_text(json.dumps(body, indent=2, sort_keys=True))


def load_head(out: str | Path) -> nn.Module:
    """A `train --method head` output applied on its base (eval mode): the base rebuilt from
    the spec and weights edge_model.json names and checked against the fingerprint recorded
    at training, its head replaced by OUT/head.safetensors."""
    out = Path(out)
    try:
        meta = json.loads((out / MODEL_META_FILE).read_text(encoding="utf-8"))
        head_path, base = meta["head"], meta["base"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{out}: not a `train --method head` output ({exc})") from None
    model = load_base(base["spec"], weights=base["weights"])
    if weights_fingerprint(model) != meta.get("base_fingerprint"):
        raise ConfigError(f"{out}: the base at {base['weights']} is not the one the head was "
                          "trained on (fingerprint differs)")
    tensors = load_file(str(out / HEAD_FILE))  # {"<head>.weight": (K, D), "<head>.bias": (K,)}
    old = model.get_submodule(head_path)
    classes = tensors[f"{head_path}.weight"].shape[0]
    if classes != old.out_features:
        model.set_submodule(head_path, _fresh_head(old, classes))
        if isinstance(getattr(model, "config", None), dict):
            model.config["num_classes"] = classes
    model.get_submodule(head_path).load_state_dict(
        {k.removeprefix(f"{head_path}."): v for k, v in tensors.items()})
    return model.eval()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
