"""The reference drift profile of a trained model (edge/drift/profile.py's DriftProfile),
computed once at export on the windows it was trained on; the gateway compares each line's
rolling window with it.

    profile = compute_profile(model, raw, x, class_names, held_out)  # a plain dict
    profile_of(meta, where)                                # the one an output's metadata holds
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from edge.contract.shapes import MAX_RANK
from edge.drift.monitor import window_stats
from edge.drift.profile import ClassProfile, DriftProfile, InputProfile, histogram
from edge.errors import ExportError, validation_problem
from export.feature_stats import fit_features
from export.features import features_of, head_path

__all__ = ["META_KEY", "compute_profile", "profile_of"]

META_KEY = "drift_profile"  # its key in adapter metadata, edge_model.json and metrics.json
BATCH = 256  # windows per forward pass: bounds memory on long training sets


def compute_profile(model: nn.Module, raw: np.ndarray, x: torch.Tensor,
                    class_names: list[str], held_out: torch.Tensor | None = None
                    ) -> dict[str, Any]:
    """`DriftProfile(...).model_dump()` of `model` on its training samples: `raw` (N, *sample)
    as recorded (before normalisation; (N, F), (N, C, L) or (N, C, H, W)), `x` the same
    samples normalised as the model trained. Class shares and top scores use the first
    len(class_names) logits, as the gateway does (it slices padded logits before its
    softmax). `held_out` (M, *sample), normalised samples the model did not train on,
    calibrate the out-of-distribution threshold of the feature statistics
    (export/feature_stats.py)."""
    raw = np.asarray(raw, dtype=np.float64)
    if not 2 <= raw.ndim <= MAX_RANK + 1 or raw.shape != tuple(x.shape) or not len(raw):
        raise ExportError(f"a drift profile needs the same N samples raw and normalised "
                          f"((N, C, L) windows, (N, F) or (N, C, H, W)), got raw {raw.shape} "
                          f"and normalised {tuple(x.shape)}")
    classes = len(class_names)
    logits, features = _outputs(model, x)
    unseen = None if held_out is None or features is None else _outputs(model, held_out)[1]
    probs = torch.softmax(logits.double(), dim=1).numpy()[:, :classes]  # (N, K) float64
    top = probs.max(axis=1)  # (N,)
    counts = np.bincount(probs.argmax(axis=1), minlength=classes).astype(np.float64)
    means, stds = window_stats(raw, raw.ndim - 1)  # (N, C) each: per sample and channel
    profile = DriftProfile(
        n_windows=len(raw),
        inputs=InputProfile(window_mean=[histogram(means[:, c]) for c in range(means.shape[1])],
                            window_std=[histogram(stds[:, c]) for c in range(means.shape[1])]),
        classes=ClassProfile(names=list(class_names), shares=(counts / counts.sum()).tolist()),
        top_score=histogram(top), top_score_mean=float(np.clip(top.mean(), 0.0, 1.0)),
        features=None if features is None else fit_features(features, probs.argmax(axis=1),
                                                            unseen))
    return profile.model_dump()


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
    """Logits (N, K) of the model in eval mode and its penultimate features (N, D) float64,
    None when it has no head to read them at (export/features.py). The softmax is taken in
    float64: it keeps confident windows from rounding to a top score of exactly 1.0, which
    would merge decile edges."""
    was_training = model.training
    model.eval()
    try:
        path = head_path(model, (x[:2],))
        if path is None:
            with torch.no_grad():
                logits = torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
            return logits, None
        logits, features = features_of(model, x, path)
        return logits, features.double().numpy()
    finally:
        model.train(was_training)


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
