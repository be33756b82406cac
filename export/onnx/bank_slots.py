"""Slot modules for mixed-adapter batches: each slot holds a bank of K adapters (K, ...)
and the graph input `adapter_index` (N,) picks one per row, as Punica's gathered LoRA
kernels do on servers. Bank entries use the single-slot layouts of slot_plan.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.bundle import INDEX_INPUT as INDEX
from edge.errors import ExportError
from export.onnx.slots import _ACT, BottleneckSlot, _Bound


def _per_row(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (N, ..., in) times per-row w (N, in, out) -> (N, ..., out)."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, in)
    out = torch.matmul(flat, w)  # (N, T, out)
    return out.reshape(*x.shape[:-1], w.shape[-1])


def _bias_rows(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row bias (N, F) shaped to broadcast over like (N, ..., F)."""
    return b.reshape(b.shape[0], *([1] * (like.dim() - 2)), b.shape[-1])


class BankLoraSlot(_Bound):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            # A^T rows (N, in, R), (scale B)^T rows (N, R, out)
            return base(x) + _per_row(_per_row(x, self.rows("lora_A")), self.rows("lora_B"))
        if base.padding_mode != "zeros":
            raise ExportError(f"--bank: LoRA on a convolution with padding_mode "
                              f"{base.padding_mode!r} is not supported")
        bank_a = self.t("lora_A")  # (K, R, in*k...)
        k, r = bank_a.shape[0], bank_a.shape[1]
        weight = bank_a.reshape(k * r, *base.weight.shape[1:])  # all K adapters' A at once
        conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
        h = conv(x, weight, None, base.stride, base.padding, base.dilation)  # (N, K*R, ...)
        h = h.reshape(h.shape[0], k, r, -1)  # (N, K, R, S)
        pick = F.one_hot(self.tensors[INDEX], k).to(h.dtype)  # (N, K)
        h = (h * pick[:, :, None, None]).sum(1)  # (N, R, S): each row's own adapter
        delta = torch.matmul(self.rows("lora_B"), h)  # (N, out, R) @ (N, R, S) -> (N, out, S)
        y = base(x)
        return y + delta.reshape(y.shape)


class BankBottleneckSlot(BottleneckSlot):
    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(*args, **kwargs)
        z = h.movedim(1, -1) if self.channels_first else h  # (N, ..., F)
        z = _per_row(z, self.rows("down_w"))  # (N, ..., R)
        z = _ACT[self.activation](z + _bias_rows(self.rows("down_b"), z))
        z = _per_row(z, self.rows("up_w"))  # (N, ..., F)
        z = z + _bias_rows(self.rows("up_b"), z)
        return h + (z.movedim(-1, 1) if self.channels_first else z)


class BankFullSlot(_Bound):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            y = _per_row(x, self.rows("weight").transpose(1, 2))  # (N, ..., out)
            if "bias" in self.slot_names:
                y = y + _bias_rows(self.rows("bias"), y)
            return y
        if isinstance(base, nn.LayerNorm):
            y = F.layer_norm(x, base.normalized_shape, None, None, base.eps)
            return y * _bias_rows(self.rows("weight"), y) + _bias_rows(self.rows("bias"), y)
        raise ExportError(f"modules_to_save of type {type(base).__name__} cannot be slotted; "
                          "slottable: Linear, LayerNorm")
