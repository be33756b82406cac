"""The preprocessing record and the one normalisation both halves apply.

The record says what a model's training inputs went through; the export side writes it
(edge_adapter.json, edge_model.json, metrics.json: `Preprocessing.to_dict`), the bundle
carries it (manifest.json, envelope headers) and the gateway applies it (`Normalizer`):

    {"length": 100, "channel_names": ["ch0", ...], "mean": [...], "std": [...]}

`Normalizer` is the one implementation of per-channel standardisation: the training side
computes the statistics with `from_data` and normalises with the same `apply` the gateway
runs, so the numbers cannot differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import DataError, EdgeError, IncompatibleBundle, validation_problem

STD_FLOOR = 1e-6  # a constant channel divides by this, not by zero


class Preprocessing(BaseModel):
    """What the gateway applies to a raw window before inference: windows of `length`
    samples, channel i standardised with mean[i] and std[i]."""

    model_config = ConfigDict(extra="forbid")

    length: int
    channel_names: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def of(cls, stats: Normalizer, length: int, channel_names: list[str]) -> Preprocessing:
        """The record of statistics computed on training data (`Normalizer.from_data`)."""
        return cls(length=length, channel_names=list(channel_names), **stats.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as manifest.json holds it and the export side writes it."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: object) -> Preprocessing | None:
        """The record the export side wrote; None when it holds no statistics (a model
        trained without normalisation). Files written before the record was one format
        nest the statistics as "channel_stats": {"mean", "std"} and may lack the channel
        names; they are read too. Raises DataError for a record that cannot be used."""
        if not data:
            return None
        if not isinstance(data, dict):
            raise DataError(f"preprocessing must be an object, got {type(data).__name__}")
        data = dict(data)
        legacy = data.pop("channel_stats", None)
        if legacy:  # checked, then taken as written
            stats = Normalizer.from_dict(legacy, error=DataError)
            data.update(mean=legacy["mean"], std=legacy["std"])
            data["channel_names"] = data.get("channel_names") or [
                f"ch{i}" for i in range(len(stats.mean))]
        if not {"length", "mean", "std"} <= set(data):
            return None
        check_stats(data["mean"], data["std"], error=DataError)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DataError(f"preprocessing: {validation_problem(exc)}") from None


def check_stats(mean: object, std: object, *, channels: int | None = None,
                error: type[EdgeError] = IncompatibleBundle) -> tuple[np.ndarray, np.ndarray]:
    """mean, std as float32 (C,) arrays, or `error`: equal-length non-empty lists of finite
    numbers with std > 0 (and C = `channels` when given)."""
    try:
        mean_ = np.asarray(mean, dtype=np.float32)
        std_ = np.asarray(std, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise error(f"preprocessing mean/std are not lists of numbers: {exc}") from None
    if mean_.ndim != 1 or mean_.shape != std_.shape or mean_.size == 0:
        raise error(f"preprocessing mean {mean_.shape} and std {std_.shape} must be "
                    "equal-length non-empty lists")
    if channels is not None and mean_.size != channels:
        raise error(f"preprocessing has {mean_.size} means and {std_.size} stds; the model "
                    f"takes {channels} channels")
    if not (np.isfinite(mean_).all() and np.isfinite(std_).all() and (std_ > 0).all()):
        raise error("preprocessing mean/std must be finite with std > 0")
    return mean_, std_


@dataclass(frozen=True)
class Normalizer:
    """Per-channel standardisation: `(values - mean) / std` with mean, std float32 (C,).
    Its problems raise `error` (a subclass may raise another EdgeError)."""

    mean: np.ndarray
    std: np.ndarray
    error: ClassVar[type[EdgeError]] = IncompatibleBundle

    @classmethod
    def from_data(cls, X: np.ndarray) -> Normalizer:
        """Statistics of X (N, C, L) over samples and time (float64 sums); std floored at
        STD_FLOOR."""
        if X.ndim != 3:
            raise cls.error(f"X has shape {X.shape}; expected (N, C, L)")
        X64 = np.asarray(X, dtype=np.float64)
        mean = X64.mean(axis=(0, 2))  # (C,)
        std = np.maximum(X64.std(axis=(0, 2)), STD_FLOOR)  # (C,)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    @classmethod
    def from_preprocessing(cls, pre: Preprocessing | None, channels: int) -> Normalizer:
        """From a manifest's preprocessing record; the identity when it is None."""
        if pre is None:
            return cls(mean=np.zeros(channels, np.float32), std=np.ones(channels, np.float32))
        return cls(*check_stats(pre.mean, pre.std, channels=channels, error=cls.error))

    def to_dict(self) -> dict[str, list[float]]:
        """{"mean": [...], "std": [...]}, JSON-able."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: object, error: type[EdgeError] | None = None) -> Normalizer:
        """Inverse of `to_dict`; rejects other keys, unequal lengths and bad values."""
        error = error or cls.error
        if not isinstance(data, dict) or set(data) != {"mean", "std"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise error(f"channel stats need exactly the keys mean and std, got {got}")
        return cls(*check_stats(data["mean"], data["std"], error=error))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """values (C, L) or (N, C, L) -> float32 of the same shape."""
        channels = self.mean.shape[0]
        if values.ndim not in (2, 3) or values.shape[-2] != channels:
            raise self.error(f"values have shape {values.shape}; expected (..., {channels}, L):"
                             f" one window (C, L) or a batch (N, C, L)")
        # mean[:, None] (C, 1) broadcasts over time and, for (N, C, L), over the batch too
        out = (values.astype(np.float32, copy=False) - self.mean[:, None]) / self.std[:, None]
        return out.astype(np.float32, copy=False)
