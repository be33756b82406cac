"""The training loop every method shares: AdamW with a short warm-up and cosine decay, early
stopping on a validation split (the best epoch's weights restored), seeding and thread limits.

Shapes: x (N, C, L) float32 normalised windows, y (N,) int64 class indices.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from edge.errors import ConfigError

__all__ = ["FitLog", "evaluate", "fit", "limit_threads", "predict", "seeded"]


@dataclass
class FitLog:
    """What one training run did, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    val_accuracy: list[float] = field(default_factory=list)  # per epoch; empty without val
    val_loss: list[float] = field(default_factory=list)  # mean cross-entropy, per epoch
    best_epoch: int | None = None  # 1-based epoch whose weights were kept (None: the last)
    stopped: str = "epochs"  # "epochs" | "patience" | "deadline"
    optimizer_state_bytes: int = 0  # AdamW: exp_avg and exp_avg_sq per trainable weight
    grad_bytes: int = 0  # one gradient per trainable weight

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch and use deterministic kernels; the caller's RNG and settings come back."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) for the block, the previous count restored after."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
        batch_size: int, weight_decay: float, seed: int, progress: bool = False,
        desc: str = "train", val: tuple[torch.Tensor, torch.Tensor] | None = None,
        patience: int | None = None, deadline: float | None = None,
        keep: str = "best", on_epoch: Callable[[nn.Module], None] | None = None) -> FitLog:
    """Train the parameters of `model` that require grad on (x, y).

    With `val` (x_val, y_val) every epoch is scored on it; with `keep="best"` the weights of
    the best epoch (highest accuracy, then lowest loss) are restored at the end, and with
    `patience` training stops after that many epochs without a better one. `keep="last"` keeps
    the weights the schedule ends with: on a small validation split (a few windows per class)
    the "best" epoch is mostly noise, and the annealed end of the cosine schedule scores better
    on the test data (ACSF1, docs/PILOT.md). `deadline` (time.perf_counter() value)
    stops training when another epoch, as long as the last one, would end after it.
    `on_epoch(model)` is called after every epoch's training step (a study that scores more
    than the validation split; benchmarks/pilot_validation.py).
    """
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(y) / batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps))))
    order = torch.Generator().manual_seed(seed)  # shuffling only; dropout uses the seeded global
    log = FitLog()
    best: tuple[float, float] | None = None  # (accuracy, -loss) of the kept epoch
    kept: dict[str, torch.Tensor] | None = None
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        began = time.perf_counter()
        log.train_loss.append(_epoch(model, opt, sched, params, x, y, batch_size, order))
        bar.set_postfix(loss=f"{log.train_loss[-1]:.3f}")
        if on_epoch is not None:
            on_epoch(model)
        if val is not None:
            score = _score(model, *val)
            log.val_accuracy.append(score[0])
            log.val_loss.append(-score[1])
            if best is None or score > best:
                best, log.best_epoch = score, epoch + 1
                if keep == "best":
                    kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif patience is not None and epoch + 1 - log.best_epoch >= patience:
                log.stopped = "patience"
                break
        now = time.perf_counter()
        if deadline is not None and now + (now - began) > deadline and epoch + 1 < epochs:
            log.stopped = "deadline"
            break
    if kept is not None:
        model.load_state_dict(kept)
    if keep == "last":
        log.best_epoch = None
    model.eval()
    log.optimizer_state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values()
                                    for t in s.values() if isinstance(t, torch.Tensor))
    log.grad_bytes = sum(p.numel() * p.element_size() for p in params)
    return log


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, sched, params: list[nn.Parameter],
           x: torch.Tensor, y: torch.Tensor, batch_size: int, order: torch.Generator) -> float:
    """One pass over (x, y) in shuffled batches; the mean training loss."""
    model.train()
    total = 0.0
    for idx in torch.randperm(len(y), generator=order).split(batch_size):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(y)


@torch.no_grad()
def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, -mean loss) on a validation split: higher is better in both places."""
    model.eval()
    logits = torch.cat([model(chunk) for chunk in x.split(256)])  # (N, K)
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return accuracy, -float(F.cross_entropy(logits, y))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted class indices (N,) of `model` (eval mode) on normalised windows x (N, C, L)."""
    model.eval()
    preds = [model(chunk).argmax(dim=1) for chunk in x.split(batch_size)]  # (B,) each
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy of `model` (eval mode) on normalised windows x (N, C, L) and labels y (N,)."""
    if not len(y):
        return float("nan")
    return float((predict(model, x, batch_size) == y).float().mean())
