"""Parity after every export, as optimum's exporter does: onnxruntime against torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import ExportError


@dataclass
class ParityResult:
    """Max abs difference of one output of one check (e.g. 'attached+line7: logits')."""

    check: str
    output: str
    max_abs_diff: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAIL"
        return (f"  parity {self.check:<28} {self.output:<8} max|diff| = {self.max_abs_diff:.2e}"
                f"  (atol {self.atol:.0e}) {mark}")


def compare(check: str, name: str, got: np.ndarray, want: np.ndarray, atol: float,
            *, columns: int | None = None) -> ParityResult:
    """Compare onnxruntime output `got` with torch output `want`.

    `columns`: compare only the first columns of `got` (logits padded to a wider head).
    A shape mismatch is fatal; a tolerance miss is reported by `raise_on_failure`.
    """
    if columns is not None and got.ndim == 2:
        got = got[:, :columns]
    if got.shape != want.shape:
        raise ExportError(f"parity {check}: onnxruntime output {name} has shape "
                          f"{list(got.shape)}, torch gives {list(want.shape)}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) \
        if got.size else 0.0
    if not np.isfinite(diff):
        diff = float("inf")
    return ParityResult(check, name, diff, atol)


def raise_on_failure(results: list[ParityResult]) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        worst = max(bad, key=lambda r: r.max_abs_diff)
        raise ExportError(f"parity check {worst.check} failed: max|diff| {worst.max_abs_diff:.2e}"
                          f" > {worst.atol:.0e}; loosen it with --atol if this is expected "
                          "(fp16), else the export is wrong")
