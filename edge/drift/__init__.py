"""Drift: a line's reference profile (computed on its training data at export) and the
gateway's comparison of what arrives with it. numpy only, like the rest of edge/."""

from __future__ import annotations

from .profile import PROFILE_VERSION, ClassProfile, DriftProfile, Histogram, InputProfile, psi

__all__ = ["PROFILE_VERSION", "ClassProfile", "DriftProfile", "Histogram", "InputProfile", "psi"]
