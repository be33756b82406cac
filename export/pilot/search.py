"""Running the candidates within the budget: each with several seeds, timed and measured;
what does not fit is skipped with its reason.

Validation: seed s trains on the line's training windows less a stratified validation split
drawn with seed s (repeated hold-out), so a candidate's mean over seeds is scored on several
different splits, not on one split of a few windows per class. Each run follows its whole
cosine schedule and keeps the weights it ends with; with `patience`, early stopping instead
keeps the best epoch's (docs/PILOT.md says why that is not the default on small lines).

Time: one calibration epoch of the full fine-tune gives the seconds per epoch on this machine
and line; after that each method's own measured runs do. Before a run, its time is estimated
as seconds per epoch x the epochs runs of that method took so far (with early stopping; the
most epochs of any run before one of its own; `epochs` before any). A run that does not fit
what is left is not started; a run still going at the deadline stops there (the weights it has
kept). The essentials (the probe, the full fine-tune and the first adapter) always get one
run: time for their shortest run (the schedule, or patience + 1 epochs) is kept back while the
candidates before them train.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from export.data import stratified_indices
from export.fitting import FitLog, fit, predict, seeded
from export.pilot.candidates import Candidate, estimate_seconds
from export.pilot.resources import Usage, measure
from export.pilot.settings import EPOCHS, SearchSettings
from export.train import Splits, build_model, size_metrics

__all__ = ["EPOCHS", "CandidateResult", "Fold", "Line", "SearchResult", "SearchSettings",
           "SeedRun", "run_search"]


@dataclass(frozen=True)
class Fold:
    """One seed's part of the line's training windows: x (N, C, L), y (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_val, self.y_val


@dataclass
class Line:
    """The base (never trained in place: every run copies it) and the line's splits: every
    training window in `splits.x_train`, the test windows in `splits.x_eval`."""

    base: nn.Module
    splits: Splits
    base_params: int
    base_bytes: int
    _folds: dict[tuple[int, float], Fold] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return self.splits.train.num_classes

    def fold(self, seed: int, fraction: float) -> Fold:
        """The training windows split for seed `seed` (stratified, `fraction` in val); made
        once per seed, shared by every candidate's run of that seed."""
        key = (seed, fraction)
        if key not in self._folds:
            y = self.splits.y_train
            train, val = stratified_indices(y.numpy(), self.num_classes, fraction, seed,
                                            self.splits.train.source)
            x = self.splits.x_train
            self._folds[key] = Fold(x[train], y[train], x[val], y[val])
        return self._folds[key]


@dataclass
class SeedRun:
    seed: int
    val_correct: np.ndarray  # (n_val,) bool: the kept weights right on each validation window
    log: FitLog | None = None  # None: nothing trained (the base as it is)
    usage: Usage | None = None

    @property
    def val_accuracy(self) -> float:
        return float(np.mean(self.val_correct))


@dataclass
class CandidateResult:
    candidate: Candidate
    sizes: dict  # trainable_params, trainable_pct, adapter_bytes (size_metrics)
    runs: list[SeedRun] = field(default_factory=list)
    model: nn.Module | None = None  # the model of the seed with the best val accuracy
    best_seed: int = 0
    test_pred: np.ndarray | None = None  # (N_test,) class indices of `model`

    @property
    def val_mean(self) -> float:
        return float(np.mean([r.val_accuracy for r in self.runs]))


@dataclass
class SearchResult:
    results: list[CandidateResult]
    skipped: list[dict]
    used_s: float


def run_search(line: Line, plan: list[Candidate], settings: SearchSettings) -> SearchResult:
    """Run `plan` in order within `settings.budget_s` seconds (raising ConfigError naming
    --budget-minutes when not even the full fine-tune and one adapter fit)."""
    start = time.perf_counter()
    deadline = start + settings.budget_s
    clock = _Clock(_calibrate(line, settings), settings.epochs)
    _check_budget(plan, clock, settings)
    results: list[CandidateResult] = []
    skipped: list[dict] = []
    pending = _essentials(plan)
    for candidate in plan:
        if not candidate.trains:
            results.append(_as_is(line, candidate, settings))
            continue
        pending = [c for c in pending if c is not candidate]
        # time kept for the essentials still to come, at their shortest run
        reserve = sum(clock.estimate(c.method, _least_epochs(settings)) for c in pending)
        result, reason = _run_seeds(line, candidate, settings, clock, deadline - reserve,
                                    must=candidate in _essentials(plan))
        if result is not None:
            results.append(result)
        if reason:
            skipped.append({"candidate": candidate.name, "reason": reason})
    return SearchResult(results, skipped, time.perf_counter() - start)


class _Clock:
    """Seconds per epoch and epochs per run, as measured so far, per method."""

    def __init__(self, calibration_epoch_s: float, epochs: int) -> None:
        self.epoch_s: dict[str, float] = {"full": calibration_epoch_s}
        self.epochs: dict[str, list[int]] = {}
        self.max_epochs = epochs

    def record(self, method: str, usage: Usage, log: FitLog) -> None:
        self.epoch_s[method] = usage.wall_s / max(log.epochs_run, 1)
        self.epochs.setdefault(method, []).append(log.epochs_run)

    def estimate(self, method: str, epochs: int | None = None) -> float:
        epoch_s = self.epoch_s.get(method, max(self.epoch_s.values()))
        if epochs is None:
            seen = self.epochs.get(method) or [n for runs in self.epochs.values() for n in runs]
            epochs = max(seen) if seen else self.max_epochs
        return estimate_seconds(epoch_s, epochs)


def _calibrate(line: Line, settings: SearchSettings) -> float:
    """Seconds one epoch of the full fine-tune takes here (training and validation), timed
    after a first one."""
    fold = line.fold(0, settings.val_fraction)
    with seeded(0):
        model = build_model("full", copy.deepcopy(line.base), line.num_classes, None, 1, 1.0,
                            train_head=True, train_norms=False, modules_to_save=None,
                            name="calibration")
        for _ in range(2):  # the first epoch warms torch up (allocations, kernel choice)
            began = time.perf_counter()
            fit(model, fold.x_train, fold.y_train, epochs=1, lr=1e-3,
                batch_size=settings.batch_size, weight_decay=settings.weight_decay, seed=0,
                val=fold.val)
    return time.perf_counter() - began


def _essentials(plan: list[Candidate]) -> list[Candidate]:
    """What a pilot cannot say anything without: the linear probe (the baseline, when the
    base's classes are not the line's), the full fine-tune and the first adapter."""
    firsts = [[c for c in plan if c.method == m][:1] for m in ("head", "full")]
    return [*firsts[0], *firsts[1], *[c for c in plan if c.family == "adapter"][:1]]


def _least_epochs(settings: SearchSettings) -> int:
    """The shortest run: the whole schedule, or early stopping's patience + 1 epochs."""
    if settings.patience is None:
        return settings.epochs
    return min(settings.epochs, settings.patience + 1)


def _check_budget(plan: list[Candidate], clock: _Clock, settings: SearchSettings) -> None:
    """The essentials must fit one short run each."""
    need = sum(clock.estimate(c.method, _least_epochs(settings)) for c in _essentials(plan))
    if need > settings.budget_s:
        raise ConfigError(
            f"--budget-minutes {settings.budget_s / 60:g} is too small for even one candidate: "
            f"one run each of the probe, the full fine-tune and one adapter takes about "
            f"{need:.1f} s here; "
            f"give at least {max(need * 1.5, 1.0) / 60:.2f}")


def _run_seeds(line: Line, candidate: Candidate, settings: SearchSettings, clock: _Clock,
               deadline: float, *, must: bool) -> tuple[CandidateResult | None, str | None]:
    """Run the candidate's seeds while they fit (an essential's first seed runs anyway, cut at
    the deadline); (result or None, why some were skipped)."""
    result: CandidateResult | None = None
    for seed in range(settings.seeds):
        left = deadline - time.perf_counter()
        need = clock.estimate(candidate.method)
        if need > left and not (must and seed == 0):
            missing = ", ".join(str(s) for s in range(seed, settings.seeds))
            what = "not run" if result is None else f"seeds {missing} not run"
            reason = f"budget: {what} (needs ~{need:.0f} s a seed, {max(left, 0):.0f} s left)"
            return (None if result is None else _finish(line, result)), reason
        run, model = _train(line, candidate, seed, settings, deadline)
        clock.record(candidate.method, run.usage, run.log)
        if result is None:
            result = CandidateResult(candidate, size_metrics(
                model, candidate.method, line.base_params, line.base_bytes))
        result.runs.append(run)
        if result.model is None or run.val_accuracy > _best_val(result):
            result.model, result.best_seed = model, seed
        if run.log.stopped == "deadline":
            return _finish(line, result), "budget: stopped at the deadline, schedule unfinished"
    return _finish(line, result), None


def _best_val(result: CandidateResult) -> float:
    return next(r.val_accuracy for r in result.runs if r.seed == result.best_seed)


def _finish(line: Line, result: CandidateResult) -> CandidateResult:
    result.test_pred = predict(result.model, line.splits.x_eval).numpy()
    return result


def _train(line: Line, candidate: Candidate, seed: int, settings: SearchSettings,
           deadline: float) -> tuple[SeedRun, nn.Module]:
    rank = candidate.rank or 1  # adapters always name theirs; full and head have none
    fold = line.fold(seed, settings.val_fraction)
    with seeded(seed):
        model = build_model(candidate.method, copy.deepcopy(line.base), line.num_classes,
                            candidate.targets, rank, float(2 * rank), train_head=True,
                            train_norms=True, modules_to_save=None, name="adapter")
        with measure() as usage:
            log = fit(model, fold.x_train, fold.y_train, epochs=settings.epochs,
                      lr=candidate.lr, batch_size=settings.batch_size,
                      weight_decay=settings.weight_decay, seed=seed, progress=settings.progress,
                      desc=f"{candidate.name} seed {seed}", val=fold.val,
                      patience=settings.patience, deadline=deadline,
                      keep="last" if settings.patience is None else "best")
    return SeedRun(seed, _correct(model, fold), log, usage), model


def _correct(model: nn.Module, fold: Fold) -> np.ndarray:
    """(n_val,) bool: which of the fold's validation windows `model` gets right. Every
    candidate's seed s validates on the same windows: the rule compares them pairwise."""
    return (predict(model, fold.x_val) == fold.y_val).numpy()


def _as_is(line: Line, candidate: Candidate, settings: SearchSettings) -> CandidateResult:
    """The base as it is (its classes are the line's): scored on every seed's validation
    split like the candidates, nothing trained."""
    model = copy.deepcopy(line.base).eval()
    result = CandidateResult(candidate, {"trainable_params": 0, "trainable_pct": 0.0,
                                         "adapter_bytes": 0})
    for seed in range(settings.seeds):
        result.runs.append(SeedRun(seed, _correct(model, line.fold(seed, settings.val_fraction))))
    result.model = model
    return _finish(line, result)
