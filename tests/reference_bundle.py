"""A small reference bundle trained on real BasicMotions data (tests and benchmarks).

    build_bundle(root) -> root/bundle  with base.onnx, manifest.json and one LoRA adapter
                                       "line-a", trained for a few seconds on 2 cores; the
                                       base and the adapter carry drift profiles
    build_bank_bundle(root, K)   -> root/bank<K>    the same, exported with --bank K
    build_static_bundle(root, B) -> root/static<B>  the same, exported with a fixed batch B
    sample_windows(n)            -> raw BasicMotions test windows (tests/data/basicmotions.npz)
    basicmotions_split("train")  -> the training split from the same file

The base and the adapter record different channel statistics (the adapter's come from the
first half of the training split), so a runtime that normalises a line with the wrong
statistics gives different scores.

Importing this module needs no torch (the gateway run imports it): the builders import
torch and the exporter when they build; bank and static bundles already under root (the
checked-in ones, tests/gateway_data.py) are returned as they are.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.data import ChannelStats, load_dataset, stratified_indices  # numpy only

if TYPE_CHECKING:
    from torch import nn

DATASET = "BasicMotions"
WINDOWS = Path(__file__).resolve().parent / "data" / "basicmotions.npz"
MODEL = dict(length=100, d_model=32, depth=1, heads=4, mlp_ratio=2, patch=10, dropout=0.0)
ADAPTER_NAME = "line-a"


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, seconds: float | None,
         lr: float) -> None:
    """Full-batch Adam on (N, C, L) windows: 300 steps, or fewer once `seconds` pass."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    model.train()
    end = time.monotonic() + (seconds if seconds is not None else float("inf"))
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        if time.monotonic() > end:
            break
    model.eval()


def _preprocessing(stats: ChannelStats, channels: list[str], length: int) -> dict:
    return {"length": length, "channel_names": channels, "channel_stats": stats.to_dict()}


def build_bundle(root: str | Path, *, seconds: float | None = None, seed: int = 0,
                 model: dict | None = None) -> Path:
    """Train a tiny base and a LoRA adapter on BasicMotions; export them as root/bundle.
    By default every step is taken (about 5 s here), so the same seed gives the same bundle
    however busy the machine is (the drift tests' margins depend on it); `seconds` caps the
    training time instead (the benchmarks' quick runs).
    `model` replaces MODEL (SensorTransformer arguments): a larger base, and so a larger
    adapter, e.g. the demo's size for the memory benchmark."""
    import torch

    from export.adapters import LoraConfig, inject
    from export.drift_profile import compute_profile
    from export.models import SensorTransformer, save_base, weights_fingerprint
    from export.onnx.attach import export_attach
    from export.peft_io import save_adapter

    root = Path(root)
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    train = load_dataset(f"ucr:{DATASET}:train")
    channels = list(train.channel_names)
    # a stratified quarter of the training windows is held out of the base's training, as
    # `train` holds out its eval split: it calibrates the base profile's distance threshold
    # (the adapter trains on all of them: its scores must separate the swap tests' versions)
    fit_rows, held = stratified_indices(train.y, train.num_classes, 0.25, seed, DATASET)
    base_stats = ChannelStats.from_data(train.X)
    base = SensorTransformer(in_channels=train.num_channels, num_classes=train.num_classes,
                             **(MODEL if model is None else model))
    x_base = base_stats.apply(train.X)
    _fit(base, x_base[fit_rows], train.y[fit_rows], seconds and seconds * 0.6, lr=3e-3)
    weights = save_base(base, root / "base" / "base.safetensors")
    # export_attach reads the base's class names, preprocessing and drift profile from
    # metrics.json beside it (train writes them in edge_model.json).
    (root / "base" / "metrics.json").write_text(json.dumps({
        "class_names": train.class_names,
        "preprocessing": _preprocessing(base_stats, channels, train.length),
        "drift_profile": compute_profile(base, train.X[fit_rows],
                                         torch.from_numpy(x_base[fit_rows]), train.class_names,
                                         torch.from_numpy(x_base[held]))}))

    fingerprint = weights_fingerprint(base)  # before inject wraps the base's layers
    adapter_stats = ChannelStats.from_data(train.X[: len(train) // 2])
    adapted = inject(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "fc1"]))
    x_adapter = adapter_stats.apply(train.X)
    _fit(adapted, x_adapter, train.y, seconds and seconds * 0.4, lr=1e-2)
    meta = {"base_fingerprint": fingerprint,
            "class_names": train.class_names,
            "preprocessing": _preprocessing(adapter_stats, channels, train.length),
            "drift_profile": compute_profile(adapted, train.X, torch.from_numpy(x_adapter),
                                             train.class_names)}
    adapter_dir = save_adapter(adapted, root / "adapters" / ADAPTER_NAME, meta=meta)
    out = root / "bundle"
    export_attach(base="reference", weights=weights, adapters=[adapter_dir], out=out,
                  names=[ADAPTER_NAME])
    return out


def build_bank_bundle(root: str | Path, bank: int = 4) -> Path:
    """root/bank: the base and adapter of `build_bundle(root)` exported with --bank K."""
    root = Path(root)
    out = root / f"bank{bank}"
    if not (out / "manifest.json").is_file():
        from export.onnx.attach import export_attach

        export_attach(base="reference", weights=root / "base" / "base.safetensors",
                      adapters=[root / "adapters" / ADAPTER_NAME], out=out,
                      names=[ADAPTER_NAME], bank=bank)
    return out


def build_static_bundle(root: str | Path, batch: int = 4) -> Path:
    """root/static<B>: the base and adapter of `build_bundle(root)` exported with a fixed
    batch of B (as export.batch = B in a firmware config does, like the Jetson's 8)."""
    root = Path(root)
    out = root / f"static{batch}"
    if not (out / "manifest.json").is_file():
        from export.onnx.attach import export_attach

        target = root / f"static{batch}.toml"
        target.write_text(f'[device]\nid = "t"\n\n[export]\nbatch = {batch}\n')
        export_attach(base="reference", weights=root / "base" / "base.safetensors",
                      adapters=[root / "adapters" / ADAPTER_NAME], out=out,
                      names=[ADAPTER_NAME], target=target)
    return out


@dataclass(frozen=True)
class Split:
    """One split of the real BasicMotions data: X (N, C, L) float32 raw, y (N,) int64."""

    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    channel_names: list[str]


def basicmotions_split(split: str) -> Split:
    """"train" or "test", as `load_dataset("ucr:BasicMotions:<split>")` gives it with the
    training split's class names (tests/test_gateway_data.py checks they are equal).
    Fresh arrays on every call: a test may write into them."""
    arrays = _read_windows()
    return Split(X=arrays[f"{split}_X"].copy(), y=arrays[f"{split}_y"].copy(),
                 class_names=arrays["class_names"].tolist(),
                 channel_names=arrays["channel_names"].tolist())


@lru_cache(maxsize=1)
def _read_windows() -> dict[str, np.ndarray]:
    with np.load(WINDOWS, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def sample_windows(n: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw (not normalised) BasicMotions test windows (N, C, L) float32, labels, class names."""
    test = basicmotions_split("test")
    x, y = test.X, test.y
    if n is not None:
        x, y = x[:n], y[:n]
    return np.ascontiguousarray(x, dtype=np.float32), y, test.class_names


def write_windows(path: Path = WINDOWS) -> Path:
    """Write `path` from the sktime wheel's BasicMotions (tests/gateway_data.py's step)."""
    train = load_dataset(f"ucr:{DATASET}:train")
    test = load_dataset(f"ucr:{DATASET}:test", class_names=train.class_names)
    np.savez_compressed(path, train_X=train.X, train_y=train.y, test_X=test.X, test_y=test.y,
                        class_names=np.asarray(train.class_names),
                        channel_names=np.asarray(train.channel_names))
    return path
