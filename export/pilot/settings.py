"""The search's settings and their defaults: torch-free, so `edge-export --help` shows them
without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EPOCHS", "SearchSettings"]

EPOCHS = 60  # each run's cosine schedule (docs/PILOT.md: how it was chosen)


@dataclass(frozen=True)
class SearchSettings:
    budget_s: float
    seeds: int = 3
    epochs: int = EPOCHS
    patience: int | None = None  # None: whole schedules, the last weights kept
    val_fraction: float = 0.2  # of the line's training windows, per class and seed
    batch_size: int = 32
    weight_decay: float = 0.01
    progress: bool = False
