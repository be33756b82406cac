"""LoRA in a bundle: slot layouts and the slot modules that read them from graph inputs.

Slot layouts, with R the bundle's max rank, chosen so the graph needs no transposes:
    Linear  lora_A  A^T (in, R)          lora_B  (scale B)^T (R, out)
    ConvNd  lora_A  A (R, in*k...)       lora_B  scale B (out, R)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import ExportError
from export.onnx.slot_base import BoundSlot, per_row

from .config import LoraConfig

_CONV = (nn.Conv1d, nn.Conv2d)


def to_slot(config: LoraConfig, path: str, part: str, array: np.ndarray) -> np.ndarray:
    """A file tensor (PEFT layout) in its slot layout, B scaled, before padding."""
    if array.ndim > 2:  # conv: A (R, in, k...) flat; B (out, R, 1...)
        array = array.reshape(array.shape[0], -1) if part == "lora_A" else \
            array.reshape(array.shape[0], array.shape[1])
    else:
        array = array.T
    return array * config.scale_for(path) if part == "lora_B" else array


def slot_shape(part: str, shape: tuple, module: nn.Module, rank: int) -> list[int]:
    """The slot's shape: the rank axis padded to the bundle's `rank`."""
    shape = list(shape)
    rank_axis = 0 if (part == "lora_A") == isinstance(module, _CONV) else 1
    shape[rank_axis] = rank
    return shape


def slot_activation(config: LoraConfig) -> None:
    return None


class LoraSlot(BoundSlot):
    """Merges inside the graph: W + B @ A costs R*in*out per run whatever the batch, and
    keeps the op count near the merged model's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        a, b = self.t("lora_A"), self.t("lora_B")
        if isinstance(base, nn.Linear):
            # a: A^T (in, R), b: (scale B)^T (R, out); weight.t() folds into a constant.
            y = torch.matmul(x, base.weight.t() + torch.matmul(a, b))  # (..., out)
            return y + base.bias if base.bias is not None else y
        # a: A flattened (R, in*k...), b: scale B (out, R) -> delta in the weight's shape.
        weight = base.weight + torch.matmul(b, a).reshape(base.weight.shape)
        return base._conv_forward(x, weight, base.bias)


class BankLoraSlot(BoundSlot):
    """K LoRA adapters per slot; each row adds its own (`adapter_index`), as Punica's
    gathered kernels do on servers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            # A^T rows (N, in, R), (scale B)^T rows (N, R, out)
            return base(x) + per_row(per_row(x, self.rows("lora_A")), self.rows("lora_B"))
        if base.padding_mode != "zeros":
            raise ExportError(f"--bank: LoRA on a convolution with padding_mode "
                              f"{base.padding_mode!r} is not supported")
        bank_a = self.t("lora_A")  # (K, R, in*k...)
        k, r = bank_a.shape[0], bank_a.shape[1]
        weight = bank_a.reshape(k * r, *base.weight.shape[1:])  # all K adapters' A at once
        conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
        h = conv(x, weight, None, base.stride, base.padding, base.dilation)  # (N, K*R, ...)
        h = h.reshape(h.shape[0], k, r, -1)  # (N, K, R, S)
        pick = F.one_hot(self.index(), k).to(h.dtype)  # (N, K)
        h = (h * pick[:, :, None, None]).sum(1)  # (N, R, S): each row's own adapter
        delta = torch.matmul(self.rows("lora_B"), h)  # (N, out, R) @ (N, R, S) -> (N, out, S)
        y = base(x)
        return y + delta.reshape(y.shape)


SLOT = LoraSlot
BANK_SLOT = BankLoraSlot
