"""What every slot module shares: its bound tensors, and the per-row helpers of bank slots.

A slot module replaces one module of the base for `export/onnx/slots.py`'s SlottedModel and
reads its adapter tensors from graph inputs. Each adapter kind's own slot modules live in its
subpackage (`export/adapters/<kind>/slots.py`); modules_to_save slots in slots.py and
bank_slots.py.
"""

from __future__ import annotations

import torch
from torch import nn

from edge.bundle import INDEX_INPUT, Slot


class BoundSlot(nn.Module):
    """A slot module: `tensors` is the dict `SlottedModel` fills before each forward.

    `slots` maps each part to its graph input name; `spec` is the module's first Slot of the
    bundle's table (its kind, and a bottleneck's activation).
    """

    def __init__(self, base_layer: nn.Module, slots: dict[str, str], tensors: dict,
                 spec: Slot) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.slot_names = slots  # part -> graph input name
        self.tensors = tensors

    def t(self, part: str) -> torch.Tensor:
        return self.tensors[self.slot_names[part]]

    def rows(self, part: str) -> torch.Tensor:
        """Bank slots: this batch's rows of a bank, (K, *shape) gathered to (N, *shape)."""
        return self.t(part)[self.index()]

    def index(self) -> torch.Tensor:
        """Bank slots: the bank entry of each row, (N,) int64."""
        return self.tensors[INDEX_INPUT]


def per_row(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (N, ..., in) times per-row w (N, in, out) -> (N, ..., out)."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, in)
    out = torch.matmul(flat, w)  # (N, T, out)
    return out.reshape(*x.shape[:-1], w.shape[-1])


def bias_rows(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row bias (N, F) shaped to broadcast over like (N, ..., F)."""
    return b.reshape(b.shape[0], *([1] * (like.dim() - 2)), b.shape[-1])
