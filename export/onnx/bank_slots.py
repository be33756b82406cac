"""modules_to_save slots for mixed-adapter batches: each slot holds a bank of K copies
(K, ...) and the graph input `adapter_index` (N,) picks one per row. An adapter kind's own
bank slots live in its subpackage (`export/adapters/<kind>/slots.py`, BANK_SLOT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import ExportError
from export.onnx.slot_base import BoundSlot, bias_rows, per_row


class BankFullSlot(BoundSlot):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            y = per_row(x, self.rows("weight").transpose(1, 2))  # (N, ..., out)
            if "bias" in self.slot_names:
                y = y + bias_rows(self.rows("bias"), y)
            return y
        if isinstance(base, nn.LayerNorm):
            y = F.layer_norm(x, base.normalized_shape, None, None, base.eps)
            return y * bias_rows(self.rows("weight"), y) + bias_rows(self.rows("bias"), y)
        raise ExportError(f"modules_to_save of type {type(base).__name__} cannot be slotted; "
                          "slottable: Linear, LayerNorm")
