"""Torch modules that read adapter tensors from graph inputs, for exporting `base.onnx`.

Each targeted module is replaced by a slot module; `SlottedModel.forward(x, *slot_tensors)`
binds the tensors by name so the tracer turns every one into a graph input. Zero-padding a
LoRA pair to rank R (or a bottleneck to size R) adds exact zeros, so shapes stay fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.bundle import INDEX_INPUT, Slot
from edge.errors import ExportError
from export.adapters.base import use_module_calls

_ACT = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}


class _Bound(nn.Module):
    """A slot module: `tensors` is the dict `SlottedModel` fills before each forward."""

    def __init__(self, base_layer: nn.Module, slots: dict[str, str], tensors: dict) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.slot_names = slots  # part -> graph input name
        self.tensors = tensors

    def t(self, part: str) -> torch.Tensor:
        return self.tensors[self.slot_names[part]]

    def rows(self, part: str) -> torch.Tensor:
        """Bank slots: this batch's rows of a bank, (K, *shape) gathered to (N, *shape)."""
        return self.t(part)[self.tensors[INDEX_INPUT]]


class LoraSlot(_Bound):
    """Merges inside the graph: W + B @ A costs R*in*out per run whatever the batch, and
    keeps the op count near the merged model's (slot layouts: slot_plan.py)."""

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


class BottleneckSlot(_Bound):
    def __init__(self, base_layer: nn.Module, slots: dict[str, str], tensors: dict,
                 activation: str, channels_first: bool) -> None:
        super().__init__(base_layer, slots, tensors)
        self.activation = activation
        self.channels_first = channels_first

    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(*args, **kwargs)
        z = h.movedim(1, -1) if self.channels_first else h  # features last: (..., F)
        # down_w: W_down^T (F, R), up_w: W_up^T (R, F): plain MatMuls, no runtime transposes.
        z = torch.matmul(z, self.t("down_w")) + self.t("down_b")  # (..., R)
        z = torch.matmul(_ACT[self.activation](z), self.t("up_w")) + self.t("up_b")  # (..., F)
        return h + (z.movedim(-1, 1) if self.channels_first else z)


class FullSlot(_Bound):
    """A modules_to_save module whose parameters come from the graph (a head, a norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, self.t("weight"), self.t("bias") if "bias" in self.slot_names
                            else None)
        if isinstance(base, nn.LayerNorm):
            return F.layer_norm(x, base.normalized_shape, self.t("weight"), self.t("bias"),
                                base.eps)
        raise ExportError(f"modules_to_save of type {type(base).__name__} cannot be slotted; "
                          "slottable: Linear, LayerNorm")


class SlottedModel(nn.Module):
    """`model` with slot modules in place; forward(x, [adapter_index,] *tensors in
    `slot_order`), the index (N,) int64 only for a bank."""

    def __init__(self, model: nn.Module, slot_order: list[str], tensors: dict,
                 bank: int = 0) -> None:
        super().__init__()
        self.model = model
        self.slot_order = slot_order
        self.tensors = tensors
        self.bank = bank

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        self.tensors.clear()
        if self.bank:
            from export.onnx.bank_slots import INDEX

            self.tensors[INDEX], inputs = inputs[0], inputs[1:]
        self.tensors.update(zip(self.slot_order, inputs, strict=True))
        return self.model(x)


def slot_name(module: str, part: str) -> str:
    return f"slot.{module}.{part}"


def build_slotted(base: nn.Module, slots: list[Slot], bank: int = 0) -> SlottedModel:
    """Replace every slotted module of a copy of `base` by its slot module; with `bank`
    K > 0 every slot holds K adapters and rows pick theirs through `adapter_index`."""
    import copy

    from export.onnx import bank_slots as bank_slots

    model = copy.deepcopy(base).eval()
    use_module_calls(model, [s.module for s in slots])
    tensors: dict = {}
    by_module: dict[str, list[Slot]] = {}
    for slot in slots:
        by_module.setdefault(slot.module, []).append(slot)
    lora, bottleneck, full = ((bank_slots.BankLoraSlot, bank_slots.BankBottleneckSlot,
                               bank_slots.BankFullSlot) if bank else
                              (LoraSlot, BottleneckSlot, FullSlot))
    for module_path, group in by_module.items():
        layer = model.get_submodule(module_path)
        names = {s.part: s.name for s in group}
        kind = group[0].kind
        if kind == "lora":
            new = lora(layer, names, tensors)
        elif kind == "bottleneck":
            new = bottleneck(layer, names, tensors, group[0].activation or "gelu",
                             isinstance(layer, (nn.Conv1d, nn.Conv2d)))
        else:
            new = full(layer, names, tensors)
        model.set_submodule(module_path, new)
    return SlottedModel(model, [s.name for s in slots], tensors, bank)
