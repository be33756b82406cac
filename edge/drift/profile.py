"""The reference profile a line's model carries (schema version 1), and the population
stability index that compares a rolling window with it.

Computed at export on the model's training windows (export/drift_profile.py) and stored in
the adapter's metadata, the bundle manifest (`AdapterEntry.drift_profile`,
`BaseInfo.drift_profile`) and the signed envelope header, so a signature covers it:

    inputs.window_mean[c], inputs.window_std[c]   per channel c, a Histogram of the mean and
                                                  the std of each raw window (before
                                                  normalisation): gain, offset, noise
    classes.names / classes.shares                predicted class mix on the training windows
    top_score                                     Histogram of the top softmax score
    top_score_mean                                its mean
    features                                      (version 2, optional) statistics of the
                                                  penultimate features and the Mahalanobis
                                                  distance threshold (edge/drift/features.py)

A Histogram holds the bin edges (deciles of the reference values, so about 10% each) and the
reference share of each bin; PSI compares the shares a rolling window puts in the same bins.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .features import FeatureProfile

PROFILE_VERSION = 2  # 1: without `features`
BINS = 10  # deciles
SHARE_FLOOR = 1e-4  # an empty bin counts as this share in PSI (ln 0 is undefined)

__all__ = ["BINS", "PROFILE_VERSION", "ClassProfile", "DriftProfile", "Histogram",
           "InputProfile", "bin_counts", "histogram", "psi"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(values: list[float], what: str) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers")
    return values


def _shares(values: list[float]) -> list[float]:
    _finite(values, "shares")
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-3:
        raise ValueError("shares must be >= 0 and sum to 1")
    return values


class Histogram(_Strict):
    """`edges` (k-1 ascending) cut the line into k bins; `shares` (k) of the reference."""

    edges: list[float] = Field(min_length=1, max_length=64)
    shares: list[float] = Field(min_length=2, max_length=65)

    @field_validator("edges")
    @classmethod
    def _ascending(cls, edges: list[float]) -> list[float]:
        _finite(edges, "edges")
        if any(b < a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("edges must be ascending")
        return edges

    @field_validator("shares")
    @classmethod
    def _valid_shares(cls, shares: list[float]) -> list[float]:
        return _shares(shares)

    @model_validator(mode="after")
    def _sizes(self) -> Histogram:
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} shares, "
                             f"got {len(self.shares)}")
        return self


class InputProfile(_Strict):
    window_mean: list[Histogram] = Field(min_length=1, max_length=4096)  # one per channel
    window_std: list[Histogram] = Field(min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _channels(self) -> InputProfile:
        if len(self.window_mean) != len(self.window_std):
            raise ValueError("window_mean and window_std need one histogram per channel each")
        return self


class ClassProfile(_Strict):
    names: list[str] = Field(min_length=1)
    shares: list[float] = Field(min_length=1)

    @field_validator("shares")
    @classmethod
    def _valid_shares(cls, shares: list[float]) -> list[float]:
        return _shares(shares)

    @model_validator(mode="after")
    def _sizes(self) -> ClassProfile:
        if len(self.names) != len(self.shares):
            raise ValueError("classes.names and classes.shares differ in length")
        return self


class DriftProfile(_Strict):
    version: Literal[1, 2] = PROFILE_VERSION
    n_windows: int = Field(ge=1, description="training windows the profile was computed on")
    inputs: InputProfile
    classes: ClassProfile
    top_score: Histogram
    top_score_mean: float = Field(ge=0.0, le=1.0)
    features: FeatureProfile | None = None

    @property
    def channels(self) -> int:
        return len(self.inputs.window_mean)

    def problem(self, channels: int, class_names: list[str],
                features: int | None = None) -> str | None:
        """Why this profile does not belong to a model with that input, those classes and
        `features` penultimate features per window (None: the graph outputs none)."""
        if self.channels != channels:
            return f"drift profile has {self.channels} channel(s), the model {channels}"
        if list(self.classes.names) != list(class_names):
            return "drift profile's classes are not the model's"
        if self.features is not None and features is not None \
                and self.features.dim != features:
            return (f"drift profile has {self.features.dim} features per window, the model "
                    f"{features}")
        return None


def histogram(values: np.ndarray, bins: int = BINS) -> Histogram:
    """The reference Histogram of `values` (N,): decile edges (duplicates dropped: a constant
    signal has one bin) and the share of values in each bin."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("a histogram needs finite values")
    edges = np.unique(np.quantile(values, np.arange(1, bins) / bins))
    counts = bin_counts(edges, values)
    return Histogram(edges=edges.tolist(), shares=(counts / counts.sum()).tolist())


def bin_counts(edges: np.ndarray | list[float], values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each bin: bin i holds edges[i-1] < v <= edges[i]."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.float64)


def psi(reference: list[float] | np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of `counts` (k,) against reference shares (k,):
    sum (a - e) ln(a / e), shares floored at SHARE_FLOOR. 0 when equal."""
    e = np.maximum(np.asarray(reference, dtype=np.float64), SHARE_FLOOR)
    total = float(np.sum(counts))
    if total <= 0:
        return 0.0
    a = np.maximum(np.asarray(counts, dtype=np.float64) / total, SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))
