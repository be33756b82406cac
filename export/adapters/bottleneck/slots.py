"""Bottleneck adapters in a bundle: slot layouts and the slot modules that read them.

Slot layouts, with R the bundle's max rank (the bottleneck width padded), F the features:
    down_w  W_down^T (F, R)   down_b (R,)   up_w  W_up^T (R, F)   up_b (F,)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.bundle import Slot
from export.onnx.slot_base import BoundSlot, bias_rows, per_row

from .config import BottleneckConfig

_ACT = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}
_CONV = (nn.Conv1d, nn.Conv2d)


def to_slot(config: BottleneckConfig, path: str, part: str, array: np.ndarray) -> np.ndarray:
    """A file tensor (nn.Linear layout) in its slot layout, before padding."""
    return array.T if part in ("down_w", "up_w") else array


def slot_shape(part: str, shape: tuple, module: nn.Module, rank: int) -> list[int]:
    """The slot's shape: the width axis padded to the bundle's `rank` (up_b has none)."""
    shape = list(shape)
    if part != "up_b":
        shape[1 if part == "down_w" else 0] = rank
    return shape


def slot_activation(config: BottleneckConfig) -> str:
    return config.activation


class BottleneckSlot(BoundSlot):
    def __init__(self, base_layer: nn.Module, slots: dict[str, str], tensors: dict,
                 spec: Slot) -> None:
        super().__init__(base_layer, slots, tensors, spec)
        self.activation = spec.activation or "gelu"
        self.channels_first = isinstance(base_layer, _CONV)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(*args, **kwargs)
        z = h.movedim(1, h.dim() - 1) if self.channels_first else h  # features last: (..., F)
        # down_w: W_down^T (F, R), up_w: W_up^T (R, F): plain MatMuls, no runtime transposes.
        z = torch.matmul(z, self.t("down_w")) + self.t("down_b")  # (..., R)
        z = torch.matmul(_ACT[self.activation](z), self.t("up_w")) + self.t("up_b")  # (..., F)
        return h + (z.movedim(z.dim() - 1, 1) if self.channels_first else z)


class BankBottleneckSlot(BottleneckSlot):
    """K bottlenecks per slot; each row runs its own (`adapter_index`)."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(*args, **kwargs)
        z = h.movedim(1, h.dim() - 1) if self.channels_first else h  # (N, ..., F)
        z = per_row(z, self.rows("down_w"))  # (N, ..., R)
        z = _ACT[self.activation](z + bias_rows(self.rows("down_b"), z))
        z = per_row(z, self.rows("up_w"))  # (N, ..., F)
        z = z + bias_rows(self.rows("up_b"), z)
        return h + (z.movedim(z.dim() - 1, 1) if self.channels_first else z)


SLOT = BottleneckSlot
BANK_SLOT = BankBottleneckSlot
