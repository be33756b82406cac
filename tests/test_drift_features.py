"""The out-of-distribution part of drift profiles (issue 14): the Mahalanobis scorer against
the textbook formula, Ledoit-Wolf shrinkage, the profile schema's refusals, and on the
fixture bundle (real BasicMotions, the base's `features` output run by onnxruntime): its
own test windows mostly within the threshold, shifted windows beyond it. That the graph's
features equal torch's is the export's parity check (test_export.py). Torch-free."""

from __future__ import annotations

import numpy as np
import pytest
from drift_data import SHIFTS, bundle_line
from pydantic import ValidationError
from reference_bundle import basicmotions_split

from edge.bundle import read_manifest
from edge.drift.features import FeatureProfile, FeatureScorer
from edge.drift.monitor import DEFAULT_THRESHOLDS
from export.feature_stats import fit_features, ledoit_wolf


def _profile(rng: np.random.Generator, d: int = 6, r: int = 3, k: int = 2) -> FeatureProfile:
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:, :r].T  # (r, D) orthonormal rows
    return FeatureProfile(dim=d, class_means=rng.normal(size=(k, d)).tolist(),
                          basis=basis.tolist(), variances=[4.0, 2.0, 1.0][:r], residual=0.5,
                          threshold=3.0, quantile=0.95)


def test_distances_equal_the_mahalanobis_formula():
    rng = np.random.default_rng(0)
    profile = _profile(rng)
    v = np.asarray(profile.basis)
    cov = v.T @ np.diag(profile.variances) @ v + profile.residual * (np.eye(6) - v.T @ v)
    inv = np.linalg.inv(cov)
    z = rng.normal(size=(20, 6)) * 3
    want = np.sqrt(np.min([np.einsum("nd,de,ne->n", z - m, inv, z - m)
                           for m in np.asarray(profile.class_means)], axis=0))
    np.testing.assert_allclose(FeatureScorer(profile).distances(z), want, rtol=1e-9)
    with pytest.raises(ValueError, match=r"features must be \(n, 6\)"):
        FeatureScorer(profile).distances(z[:, :5])


def test_ledoit_wolf_shrinks_little_with_much_data_and_stays_invertible_with_little():
    rng = np.random.default_rng(1)
    scale = np.array([3.0, 1.0, 0.5, 0.2])
    many = rng.normal(size=(20000, 4)) * scale
    np.testing.assert_allclose(np.diag(ledoit_wolf(many)), scale ** 2, rtol=0.05)
    few = rng.normal(size=(8, 32))  # fewer windows than features: the sample cov is singular
    assert np.linalg.eigvalsh(few.T @ few / 8).min() < 1e-10
    assert np.linalg.eigvalsh(ledoit_wolf(few)).min() > 1e-3


@pytest.mark.parametrize("change, words", [
    (lambda d: d["class_means"][0].__setitem__(0, float("nan")), "must be finite numbers"),
    (lambda d: d["class_means"][1].pop(), "must have dim=6 values each"),
    (lambda d: d["basis"].__setitem__(1, list(d["basis"][0])), "must be orthonormal"),
    (lambda d: d["variances"].pop(), "3 basis rows need as many variances"),
    (lambda d: d["variances"].__setitem__(0, 0.0), "variances must be > 0"),
    (lambda d: d.__setitem__("residual", 0.0), "greater than 0"),
])
def test_the_schema_refuses_statistics_that_cannot_score(change, words):
    doc = _profile(np.random.default_rng(2)).model_dump()
    change(doc)
    with pytest.raises(ValidationError, match=words):
        FeatureProfile.model_validate(doc)


def test_fit_needs_enough_finite_windows():
    rng = np.random.default_rng(3)
    feats, classes = rng.normal(size=(40, 8)), np.arange(40) % 2
    assert fit_features(feats[:5], classes[:5]) is None
    bad = feats.copy()
    bad[3, 2] = np.nan
    assert fit_features(bad, classes) is None
    fitted = fit_features(feats, classes)
    # fair data: about 1 - quantile of new windows beyond the threshold
    fresh = rng.normal(size=(4000, 8))
    share = (FeatureScorer(fitted).distances(fresh) > fitted.threshold).mean()
    assert 0.01 < share < 0.2, share


@pytest.fixture(scope="module")
def line(basicmotions_bundle):
    return bundle_line(basicmotions_bundle, basicmotions_split("train").X,
                       basicmotions_split("test").X)


def test_the_bundle_outputs_features_its_profile_describes(basicmotions_bundle, line):
    manifest = read_manifest(basicmotions_bundle)
    assert manifest.features == line.profile.features.dim == 32  # the fixture's d_model
    assert [o.name for o in manifest.outputs] == ["logits", "features"]
    for entry in manifest.adapters:
        assert entry.drift_profile.features.dim == manifest.features


def test_own_windows_stay_under_the_alarm_and_shifted_ones_go_past_it(line):
    """The share beyond the threshold on the line's own test windows stays under ood_share's
    warn level; gain, offset, noise and swapped channels put most windows past it."""
    scorer, threshold = FeatureScorer(line.profile.features), line.profile.features.threshold
    own = (scorer.distances(line.features(line.test)) > threshold).mean()
    assert own < DEFAULT_THRESHOLDS["ood_share"].warn, own
    rng = np.random.default_rng(4)
    for name, shift in SHIFTS.items():
        shifted = scorer.distances(line.features(shift(line.test, line, rng)))
        assert (shifted > threshold).mean() >= DEFAULT_THRESHOLDS["ood_share"].warn, name

