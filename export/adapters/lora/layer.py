"""LoRA for Linear and Conv1d/Conv2d: `y = base(x) + scale * B(A(dropout(x)))`."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edge.errors import AdapterError

from ..base import AdapterLayer

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


class LoraLayer(AdapterLayer):
    """One frozen Linear/ConvNd plus named low-rank updates.

    Linear: A is Linear(in, r), B is Linear(r, out). ConvNd (as PEFT): A is a ConvNd(in, r) with
    the base's kernel, stride, padding and dilation; B is a 1x1 ConvNd(r, out). B starts at
    zero, so a fresh adapter leaves the output unchanged.
    """

    supported = SUPPORTED  # module types it wraps
    adapter_parts = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module) -> None:
        if not isinstance(base_layer, SUPPORTED):
            raise AdapterError(f"LoRA cannot wrap {type(base_layer).__name__}; "
                               f"supported: {', '.join(t.__name__ for t in SUPPORTED)}")
        if isinstance(base_layer, (nn.Conv1d, nn.Conv2d)) and base_layer.groups != 1:
            raise AdapterError("LoRA on a grouped convolution (groups != 1) is not supported")
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.merged: list[str] = []

    def add_adapter(self, name: str, r: int, scale: float, dropout: float, init: bool) -> None:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            a = nn.Linear(base.in_features, r, bias=False)
            b = nn.Linear(r, base.out_features, bias=False)
        else:
            conv = type(base)
            # Same padding_mode as the base, so the merged weight computes the same thing.
            a = conv(base.in_channels, r, base.kernel_size, base.stride, base.padding,
                     base.dilation, bias=False, padding_mode=base.padding_mode)
            b = conv(r, base.out_channels, 1, 1, bias=False)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        if init:
            nn.init.zeros_(b.weight)
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A[name] = a.to(device=device, dtype=dtype)
        self.lora_B[name] = b.to(device=device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = scale

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        if name in self.lora_dropout:  # nn.ModuleDict.pop takes no default
            del self.lora_dropout[name]
        self.scaling.pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        """scale * B @ A in the base weight's shape: (out, in) or (out, in, *kernel)."""
        a = self.lora_A[name].weight  # (r, in) or (r, in, *k)
        b = self.lora_B[name].weight  # (out, r) or (out, r, 1...)
        b2 = b.reshape(b.shape[0], b.shape[1])  # (out, r)
        delta = torch.einsum("or,ri...->oi...", b2, a)
        return delta * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        name = self.active_adapter
        if name is None or name in self.merged:
            return y
        a, b = self.lora_A[name], self.lora_B[name]
        return y + b(a(self.lora_dropout[name](x))) * self.scaling[name]

    def merged_copy(self, name: str) -> nn.Module:
        """Safe merge: the base layer with this adapter folded in, as a new module."""
        merged = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            new_weight = merged.weight + self.delta_weight(name).to(merged.weight.dtype)
            if not torch.isfinite(new_weight).all():
                raise AdapterError(f"merging adapter {name!r} gives non-finite weights; "
                                   "the adapter or base holds NaN/Inf or overflows")
            merged.weight.copy_(new_weight)
        merged.requires_grad_(False)
        return merged

    def merge(self, name: str) -> None:
        """Fold `name` into the base weight in place (checked first on a copy)."""
        if name in self.merged:
            return
        checked = self.merged_copy(name)
        with torch.no_grad():
            self.base_layer.weight.copy_(checked.weight)
        self.merged.append(name)

    def unmerge(self) -> None:
        """Subtract every merged adapter again, newest first."""
        with torch.no_grad():
            while self.merged:
                name = self.merged.pop()
                self.base_layer.weight -= self.delta_weight(name).to(self.base_layer.weight.dtype)
