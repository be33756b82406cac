"""The out-of-distribution part of a drift profile: statistics of the model's penultimate
features (the input of its classification head) on the training windows, and the Mahalanobis
distance of a window's features from them (Lee et al., 2018: class means, one shared
covariance; a window's distance is the one to its nearest class).

The covariance is the within-class covariance, shrunk (Ledoit-Wolf) so that the few hundred
windows a line trains on still give an invertible matrix, and stored as its top `rank`
principal directions plus one residual variance for every other direction (the probabilistic
PCA form): D x (K + r) numbers instead of D x D, which keeps the profile small enough for the
manifest and the signed envelope header. Shapes: D features, K classes with training
windows, r principal directions, n windows.

    scorer = FeatureScorer(profile.features)
    d = scorer.distances(features)             # features (n, D) -> (n,) >= 0
    d > profile.features.threshold              # out of distribution
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FEATURES_OUTPUT", "FeatureProfile", "FeatureScorer"]

FEATURES_OUTPUT = "features"  # the graph output that carries them, (N, D) float32
_ORTHONORMAL_TOL = 1e-3


def _finite(rows: list[list[float]] | list[float]) -> bool:
    flat = rows if not rows or not isinstance(rows[0], list) else [v for r in rows for v in r]
    return all(math.isfinite(v) for v in flat)


class FeatureProfile(BaseModel):
    """Penultimate-feature statistics of the training windows and the distance threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(ge=1, le=8192, description="D, features per window")
    class_means: list[list[float]] = Field(min_length=1, max_length=1024)  # (K, D)
    basis: list[list[float]] = Field(max_length=256)  # (r, D), orthonormal rows
    variances: list[float] = Field(max_length=256)  # (r,) along each basis row, > 0
    residual: float = Field(gt=0.0, description="variance in every direction not in basis")
    threshold: float = Field(gt=0.0, description="distance beyond which a window is out of "
                                                 "distribution")
    quantile: float = Field(gt=0.0, lt=1.0, description="share of held-out training windows "
                                                         "within the threshold")

    @model_validator(mode="after")
    def _consistent(self) -> FeatureProfile:
        d, r = self.dim, len(self.basis)
        if any(len(m) != d for m in self.class_means) or any(len(b) != d for b in self.basis):
            raise ValueError(f"class_means and basis rows must have dim={d} values each")
        if len(self.variances) != r or r > d:
            raise ValueError(f"{r} basis rows need as many variances, and at most dim={d}")
        if not (_finite(self.class_means) and _finite(self.basis) and _finite(self.variances)
                and math.isfinite(self.residual) and math.isfinite(self.threshold)):
            raise ValueError("feature statistics must be finite numbers")
        if any(v <= 0 for v in self.variances):
            raise ValueError("variances must be > 0")
        if r:
            basis = np.asarray(self.basis)
            if np.abs(basis @ basis.T - np.eye(r)).max() > _ORTHONORMAL_TOL:
                raise ValueError("basis rows must be orthonormal")
        return self


class FeatureScorer:
    """A FeatureProfile as arrays, for distances of many windows at once (float64)."""

    def __init__(self, profile: FeatureProfile) -> None:
        self.profile = profile
        self.means = np.asarray(profile.class_means, np.float64)  # (K, D)
        self.basis = np.asarray(profile.basis, np.float64).reshape(-1, profile.dim)  # (r, D)
        self.inv_var = 1.0 / np.asarray(profile.variances, np.float64)  # (r,)
        self.inv_res = 1.0 / profile.residual
        self.mean_proj = self.means @ self.basis.T  # (K, r)
        self.mean_sq = (self.means ** 2).sum(axis=1)  # (K,)

    @property
    def dim(self) -> int:
        return self.profile.dim

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (n,) of features (n, D) to the nearest class mean:
        d^2 = sum_i (p_i - m_i)^2 / var_i + (|z - mu|^2 - |p - m|^2) / residual, with p, m
        the projections of z and mu on the basis."""
        z = np.asarray(features, np.float64)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {z.shape}")
        p = z @ self.basis.T  # (n, r)
        diff = p[:, None, :] - self.mean_proj[None]  # (n, K, r)
        in_basis = (diff ** 2 * self.inv_var).sum(axis=2)  # (n, K)
        full = (z ** 2).sum(axis=1)[:, None] - 2.0 * z @ self.means.T + self.mean_sq  # (n, K)
        rest = np.maximum(full - (diff ** 2).sum(axis=2), 0.0)  # rounding can go below 0
        d2 = in_basis + rest * self.inv_res
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))
