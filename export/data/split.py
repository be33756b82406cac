"""Normalisation statistics and the deterministic train/validation split."""

from __future__ import annotations

import numpy as np

from edge.contract import Normalizer
from edge.errors import ConfigError, DataError

from .dataset import SensorDataset


class ChannelStats(Normalizer):
    """Per-channel mean and std (C,) of training windows: the gateway's own `Normalizer`
    (edge/contract), so training and the gateway normalise with the same code. `from_data`
    computes them over (N, C, L); its problems here are DataError."""

    error = DataError


def train_val_split(
    ds: SensorDataset, fraction: float, seed: int
) -> tuple[SensorDataset, SensorDataset]:
    """Deterministic per-class split: about `fraction` of each class goes to validation.

    Each class keeps at least one training sample; sample order is preserved in both parts.
    """
    train, val = stratified_indices(ds.y, ds.num_classes, fraction, seed, ds.source)
    return _subset(ds, train, "train"), _subset(ds, val, "val")


def stratified_indices(y: np.ndarray, num_classes: int, fraction: float, seed: int,
                       source: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted indices into labels y (N,): about `fraction` of each class in val,
    at least one window of each class left for training; another seed, another split."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        n_val = min(int(round(len(idx) * fraction)), max(len(idx) - 1, 0))
        val_idx.append(rng.permutation(idx)[:n_val])
    val = np.sort(np.concatenate(val_idx)) if val_idx else np.empty(0, dtype=np.int64)
    if val.size == 0:
        raise DataError(
            f"{source}: validation split is empty ({len(y)} samples, "
            f"fraction {fraction}); use a larger fraction"
        )
    return np.setdiff1d(np.arange(len(y)), val), val


def _subset(ds: SensorDataset, idx: np.ndarray, part: str) -> SensorDataset:
    return SensorDataset(
        X=ds.X[idx],
        y=ds.y[idx],
        class_names=list(ds.class_names),
        channel_names=list(ds.channel_names),
        source=f"{ds.source}#{part}",
    )
