"""The preprocessing record and the one normalisation both halves apply.

The record says what a model's training inputs went through; the export side writes it
(edge_adapter.json, edge_model.json, metrics.json: `Preprocessing.to_dict`), the bundle
carries it (manifest.json, envelope headers) and the gateway applies it (`Normalizer`):

    {"length": 100, "channel_names": ["ch0", ...], "mean": [...], "std": [...]}   windows (C, L)
    {"shape": [30], "channel_names": ["radius", ...], "mean": [...], "std": [...]}  features (F,)
    {"shape": [1, 8, 8], "channel_names": ["gray"], "mean": [...], "std": [...]}  images (C, H, W)

Windows keep the original form (`length`, no `shape`), so gateways that predate other
shapes read new window records; for (F,) `channel_names` are the feature names.

`Normalizer` is the one implementation of per-channel standardisation (per feature for
(F,), per channel over every other axis for (C, L) and (C, H, W): edge/contract/shapes.py):
the training side computes the statistics with `from_data` and normalises with the same
`apply` the gateway runs, so the numbers cannot differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from ..errors import DataError, EdgeError, IncompatibleBundle, validation_problem
from .shapes import MAX_RANK, per_channel, sample_shape_problem

STD_FLOOR = 1e-6  # a constant channel divides by this, not by zero
_OTHER_AXES = {1: (), 2: ("L",), 3: ("H", "W")}  # by sample rank, for error messages


class Preprocessing(BaseModel):
    """What the gateway applies to a raw sample before inference: samples of `shape` (or
    windows of `length` samples, the original form), entry i of axis 0 (a channel, or a
    feature of a vector) standardised with mean[i] and std[i]."""

    model_config = ConfigDict(extra="forbid")

    length: int | None = None  # windows (C, L): L; the form older gateways read
    shape: list[int] | None = None  # any other sample shape: (F,) or (C, H, W)
    channel_names: list[str]
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _one_shape(self) -> Preprocessing:
        if self.shape is None:
            if self.length is None:
                raise ValueError("length (windows) or shape (other samples) is required")
            if self.length < 1:
                raise ValueError(f"length must be positive, got {self.length}")
            return self
        problem = sample_shape_problem(self.shape)
        if problem is None and self.length is not None and self.shape[1:] != [self.length]:
            problem = f"shape {self.shape} and length {self.length} disagree"
        if problem is None and self.shape[0] != len(self.mean):
            problem = f"shape {self.shape} has {self.shape[0]} channels, mean {len(self.mean)}"
        if problem:
            raise ValueError(problem)
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler) -> dict[str, Any]:
        # unset shape fields are left out: a window record stays the pre-shape format
        return {k: v for k, v in handler(self).items()
                if not (k in ("length", "shape") and v is None)}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The raw sample shape this record normalises: `shape`, else (C, length)."""
        return tuple(self.shape) if self.shape is not None else (len(self.mean), self.length)

    @property
    def rank(self) -> int:
        return len(self.sample_shape)

    @classmethod
    def of(cls, stats: Normalizer, shape: int | Sequence[int],
           channel_names: list[str]) -> Preprocessing:
        """The record of statistics computed on training data (`Normalizer.from_data`) for
        samples of `shape` (an int: the length L of (C, L) windows)."""
        shape = (len(stats.mean), shape) if isinstance(shape, int) else tuple(shape)
        form = {"length": shape[1]} if len(shape) == 2 else {"shape": list(shape)}
        return cls(**form, channel_names=list(channel_names), **stats.to_dict())

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
        if not {"mean", "std"} <= set(data) or not {"length", "shape"} & set(data):
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
    """Per-channel standardisation: `(values - mean) / std` with mean, std float32 (C,)
    along axis 0 of samples of `rank` axes ((F,): per feature; (C, L), (C, H, W): per
    channel). Its problems raise `error` (a subclass may raise another EdgeError)."""

    mean: np.ndarray
    std: np.ndarray
    rank: int = 2
    error: ClassVar[type[EdgeError]] = IncompatibleBundle

    @classmethod
    def from_data(cls, X: np.ndarray) -> Normalizer:
        """Statistics of X (N, *sample) over samples and every axis but the channel axis
        (float64 sums); std floored at STD_FLOOR."""
        if not 2 <= X.ndim <= MAX_RANK + 1:
            raise cls.error(f"X has shape {X.shape}; expected (N, F), (N, C, L) or "
                            "(N, C, H, W)")
        X64 = per_channel(np.asarray(X, dtype=np.float64), X.ndim - 1)  # (N, C, M)
        mean = X64.mean(axis=(0, 2))  # (C,)
        std = np.maximum(X64.std(axis=(0, 2)), STD_FLOOR)  # (C,)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32), rank=X.ndim - 1)

    @classmethod
    def from_preprocessing(cls, pre: Preprocessing | None, channels: int,
                           rank: int | None = None) -> Normalizer:
        """From a manifest's preprocessing record; the identity when it is None. `rank`
        (the model's sample rank) defaults to the record's, else 2 (windows)."""
        if pre is None:
            return cls(mean=np.zeros(channels, np.float32), std=np.ones(channels, np.float32),
                       rank=rank or 2)
        if rank is not None and rank != pre.rank:
            raise cls.error(f"preprocessing is for samples of shape {list(pre.sample_shape)}; "
                            f"the model takes samples of {rank} axes")
        return cls(*check_stats(pre.mean, pre.std, channels=channels, error=cls.error),
                   rank=pre.rank)

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
        """values: one sample (C, *rest) or a batch (N, C, *rest) -> float32, same shape."""
        channels, rank = self.mean.shape[0], self.rank
        if values.ndim not in (rank, rank + 1) or values.shape[values.ndim - rank] != channels:
            sample = ", ".join([str(channels), *_OTHER_AXES[rank]])
            raise self.error(f"values have shape {values.shape}; expected (..., {sample}): "
                             f"one sample ({sample}) or a batch (N, {sample})")
        # mean (C, 1, ...) broadcasts over the other axes and over the batch too
        tail = (channels,) + (1,) * (rank - 1)
        out = ((values.astype(np.float32, copy=False) - self.mean.reshape(tail))
               / self.std.reshape(tail))
        return out.astype(np.float32, copy=False)
