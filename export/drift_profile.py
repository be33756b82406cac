"""The reference drift profile of a trained model (edge/drift/profile.py's DriftProfile),
computed once at export on the windows it was trained on; the gateway compares each line's
rolling window with it.

    profile = compute_profile(model, raw, x, class_names)  # a DriftProfile as a plain dict
    profile_of(meta, where)                                # the one an output's metadata holds
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from edge.drift.profile import ClassProfile, DriftProfile, InputProfile, histogram
from edge.errors import ExportError, validation_problem

__all__ = ["META_KEY", "compute_profile", "profile_of"]

META_KEY = "drift_profile"  # its key in adapter metadata, edge_model.json and metrics.json
BATCH = 256  # windows per forward pass: bounds memory on long training sets


def compute_profile(model: nn.Module, raw: np.ndarray, x: torch.Tensor,
                    class_names: list[str]) -> dict[str, Any]:
    """`DriftProfile(...).model_dump()` of `model` on its training windows: `raw` (N, C, L)
    as recorded (before normalisation), `x` the same windows normalised as the model trained
    (N, C, L). Class shares and top scores use the first len(class_names) logits, as the
    gateway does (it slices padded logits before its softmax)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 3 or len(raw) != len(x) or not len(raw):
        raise ExportError(f"a drift profile needs (N, C, L) windows, got raw {raw.shape} "
                          f"and normalised {tuple(x.shape)}")
    classes = len(class_names)
    probs = _probabilities(model, x)[:, :classes]  # (N, K) float64
    top = probs.max(axis=1)  # (N,)
    counts = np.bincount(probs.argmax(axis=1), minlength=classes).astype(np.float64)
    means, stds = raw.mean(axis=2), raw.std(axis=2)  # (N, C) each: per window and channel
    profile = DriftProfile(
        n_windows=len(raw),
        inputs=InputProfile(window_mean=[histogram(means[:, c]) for c in range(raw.shape[1])],
                            window_std=[histogram(stds[:, c]) for c in range(raw.shape[1])]),
        classes=ClassProfile(names=list(class_names), shares=(counts / counts.sum()).tolist()),
        top_score=histogram(top), top_score_mean=float(np.clip(top.mean(), 0.0, 1.0)))
    return profile.model_dump()


def _probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Softmax of the model's logits in eval mode, (N, K) float64: float64 keeps confident
    windows from rounding to a top score of exactly 1.0, which would merge decile edges."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
    finally:
        model.train(was_training)
    return torch.softmax(logits.double(), dim=1).numpy()


def profile_of(meta: dict, where: str) -> DriftProfile | None:
    """The profile `meta` (adapter metadata, edge_model.json) records, validated; None when
    it records none (outputs written before profiles existed). `where` names the file."""
    data = meta.get(META_KEY)
    if data is None:
        return None
    try:
        return DriftProfile.model_validate(data)
    except ValidationError as exc:
        raise ExportError(f"{where}: drift_profile: {validation_problem(exc)}") from None
