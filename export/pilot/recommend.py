"""The recommendation rule and what the report says about the chosen adapter.

Rule: the smallest adapter (bytes shipped per line) whose mean validation accuracy is within
MARGIN of the best candidate's (the full fine-tune and the baseline included); ties go to the
higher validation accuracy. When no adapter is that close, the adapter with the best mean
validation accuracy, and the report says it is outside the margin. Validation only: the test
set is scored after the choice and never steers it.
"""

from __future__ import annotations

import numpy as np

from export.pilot.metrics import confusion, paired_difference
from export.pilot.search import CandidateResult

__all__ = ["MARGIN", "RULE", "choose", "recommendation_section"]

MARGIN = 0.02
RULE = (f"the smallest adapter (bytes) whose mean validation accuracy is within "
        f"{100 * MARGIN:.1f} points of the best candidate's (the full fine-tune and the baseline "
        "included); if none is, the adapter with the best mean validation accuracy")


def choose(results: list[CandidateResult]) -> tuple[CandidateResult | None, bool]:
    """(the recommended adapter or None when no adapter ran, whether it is within MARGIN)."""
    adapters = [r for r in results if r.candidate.family == "adapter"]
    if not adapters:
        return None, False
    best = max(r.val_mean for r in results)
    close = [r for r in adapters if r.val_mean >= best - MARGIN - 1e-9]
    if close:
        return min(close, key=lambda r: (r.sizes["adapter_bytes"], -r.val_mean)), True
    return max(adapters, key=lambda r: r.val_mean), False


def recommendation_section(chosen: CandidateResult, within: bool,
                           results: list[CandidateResult], y_test: np.ndarray,
                           class_names: list[str]) -> dict:
    """The report's `recommendation` (without `adapter_dir`, which the writer adds)."""
    k = len(class_names)
    by_method = {r.candidate.method: r for r in results}
    baseline = by_method.get("base") or by_method.get("head")
    full = by_method.get("full")
    gain = None
    if baseline is not None:
        diff = paired_difference(y_test, chosen.test_pred, baseline.test_pred, k)
        gain = {"value": diff["difference"], "ci95": diff["ci95"],
                "baseline": baseline.candidate.name,
                "distinguishable": diff["distinguishable"]}
    vs_full = None
    if full is not None:
        vs_full = paired_difference(y_test, chosen.test_pred, full.test_pred, k)
    matrix = confusion(y_test, chosen.test_pred, k)
    return {"name": chosen.candidate.name, "rule": RULE, "margin": MARGIN,
            "within_margin": within, "gain_vs_base": gain, "vs_full": vs_full,
            "confusion_matrix": {"labels": list(class_names), "matrix": matrix.tolist()}}
