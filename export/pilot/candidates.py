"""The pilot's candidates, in the order the budget is spent on them, and the time each needs.

Order: the baseline (the base as it is when its classes are the line's, else the linear
probe: seconds), the full fine-tune (the reference every adapter is judged against), the
default LoRA and bottleneck adapters (train()'s defaults), then LoRA at other ranks and on each
target set (attention projections, MLP, convolutions, all), then bottlenecks at other sizes.
A base that is not the reference model gets the defaults on every Linear/Conv but the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from export.train import DEFAULT_LR, DEFAULT_RANK, REFERENCE_TARGETS

__all__ = ["Candidate", "TARGET_SETS", "estimate_seconds", "plan_candidates"]

# Module-path suffixes of the reference SensorTransformer (export/models/reference.py).
TARGET_SETS: dict[str, list[str]] = {
    "attn": ["attn.q", "attn.k", "attn.v", "attn.o"],
    "mlp": ["mlp.fc1", "mlp.fc2"],
    "conv": ["stem.conv1", "stem.conv2"],
    "all": ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2", "stem.conv1",
            "stem.conv2"],
}


@dataclass(frozen=True)
class Candidate:
    """One way to adapt the base. `targets` None: train()'s default for the base."""

    name: str
    method: str  # base | head | full | lora | bottleneck
    rank: int | None = None
    targets: list[str] | None = field(default=None, hash=False)
    lr: float | None = None
    default: bool = False  # train()'s own adapter: the recommendation's first choice


    @property
    def family(self) -> str:
        return "adapter" if self.method in ("lora", "bottleneck") else "reference"

    @property
    def trains(self) -> bool:
        return self.method != "base"

    def options(self, default_targets: list[str] | None) -> dict[str, Any]:
        """What the report lists: rank, targets (as trained), learning rate."""
        options: dict[str, Any] = {"lr": self.lr}
        if self.family == "adapter":
            options.update(rank=self.rank, targets=self.targets or default_targets)
        return options


def plan_candidates(base: nn.Module, *, classes_match: bool) -> list[Candidate]:
    """Every candidate for this base, likely winners first."""
    from export.models import SensorTransformer

    plan = [Candidate("base", "base") if classes_match
            else Candidate("head", "head", lr=DEFAULT_LR["head"]),
            Candidate("full", "full", lr=DEFAULT_LR["full"])]
    plan += [_adapter("lora", DEFAULT_RANK["lora"], "default", default=True),
             _adapter("bottleneck", DEFAULT_RANK["bottleneck"], "default")]
    if not isinstance(base, SensorTransformer):
        return plan
    plan += [_adapter("lora", rank, "default") for rank in (8, 16)]
    plan += [_adapter("lora", DEFAULT_RANK["lora"], where) for where in TARGET_SETS]
    plan += [_adapter("bottleneck", rank, "default") for rank in (4, 16, 32)]
    plan += [_adapter("bottleneck", DEFAULT_RANK["bottleneck"], where)
             for where in ("mlp", "all")]
    return plan


def _adapter(kind: str, rank: int, where: str, default: bool = False) -> Candidate:
    targets = None if where == "default" else list(TARGET_SETS[where])
    return Candidate(f"{kind}-r{rank}-{where}", kind, rank=rank, targets=targets,
                     lr=DEFAULT_LR[kind], default=default)


def default_targets(kind: str, base: nn.Module) -> list[str] | None:
    """train()'s default targets for the reference model (None: every Linear/Conv)."""
    from export.models import SensorTransformer

    return list(REFERENCE_TARGETS[kind]) if isinstance(base, SensorTransformer) else None


def estimate_seconds(epoch_s: float, epochs: int, seeds: int = 1) -> float:
    """Seconds `seeds` runs of `epochs` epochs take at `epoch_s` per epoch (validation
    included), measured on this machine for this line."""
    return epoch_s * epochs * seeds
