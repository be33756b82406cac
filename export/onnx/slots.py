"""Torch modules that read adapter tensors from graph inputs, for exporting `base.onnx`.

Each targeted module is replaced by a slot module; `SlottedModel.forward(x, *slot_tensors)`
binds the tensors by name so the tracer turns every one into a graph input. Zero-padding a
LoRA pair to rank R (or a bottleneck to size R) adds exact zeros, so shapes stay fixed. The
slot modules of an adapter kind come from its registry entry (export/adapters/registry.py);
modules_to_save ("full" slots) are slotted here and in bank_slots.py.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edge.bundle import INDEX_INPUT, Slot
from edge.errors import ExportError
from export.adapters.base import use_module_calls
from export.adapters.registry import adapter_kind
from export.onnx.bank_slots import BankFullSlot
from export.onnx.slot_base import BoundSlot

FULL = "full"  # the slot kind of a modules_to_save module's own parameters


class FullSlot(BoundSlot):
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
            self.tensors[INDEX_INPUT], inputs = inputs[0], inputs[1:]
        self.tensors.update(zip(self.slot_order, inputs, strict=True))
        return self.model(x)


def slot_name(module: str, part: str) -> str:
    return f"slot.{module}.{part}"


def slot_class(kind: str, bank: int) -> type[BoundSlot]:
    """The slot module for a slot `kind` ("full", or an adapter kind), single or bank."""
    if kind == FULL:
        return BankFullSlot if bank else FullSlot
    code = adapter_kind(kind).slot_code()
    return code.BANK_SLOT if bank else code.SLOT


def build_slotted(base: nn.Module, slots: list[Slot], bank: int = 0) -> SlottedModel:
    """Replace every slotted module of a copy of `base` by its slot module; with `bank`
    K > 0 every slot holds K adapters and rows pick theirs through `adapter_index`."""
    model = copy.deepcopy(base).eval()
    use_module_calls(model, [s.module for s in slots])
    tensors: dict = {}
    by_module: dict[str, list[Slot]] = {}
    for slot in slots:
        by_module.setdefault(slot.module, []).append(slot)
    for module_path, group in by_module.items():
        layer = model.get_submodule(module_path)
        names = {s.part: s.name for s in group}
        new = slot_class(group[0].kind, bank)(layer, names, tensors, group[0])
        model.set_submodule(module_path, new)
    return SlottedModel(model, [s.name for s in slots], tensors, bank)
