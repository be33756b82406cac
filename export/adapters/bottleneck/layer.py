"""Bottleneck adapter after a module: `h + up(act(down(h)))`, up zero-initialised."""

from __future__ import annotations

import torch
from torch import nn

from edge.errors import AdapterError

from ..base import AdapterLayer

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
CONV = (nn.Conv1d, nn.Conv2d)
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm, nn.TransformerEncoderLayer,
             nn.Sequential)


def output_features(module: nn.Module) -> int:
    """Width of the module's output feature axis (last axis; axis 1 for convolutions)."""
    return _output_layout(module)[0]


def _output_layout(module: nn.Module) -> tuple[int, bool]:
    """(output width, True when the features are on axis 1 as after a convolution)."""
    if isinstance(module, nn.Linear):
        return module.out_features, False
    if isinstance(module, CONV):
        return module.out_channels, True
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1]), False
    if isinstance(module, nn.TransformerEncoderLayer):
        return module.linear2.out_features, False
    if isinstance(module, nn.Sequential):
        # The last child with a known width decides (a conv block ends in conv, BN, ReLU).
        for child in reversed(list(module)):
            try:
                return _output_layout(child)
            except AdapterError:
                continue
    raise AdapterError(f"cannot tell the output width of {type(module).__name__}; supported: "
                       f"{', '.join(t.__name__ for t in SUPPORTED)}")


class BottleneckLayer(AdapterLayer):
    """A frozen module followed by named residual bottlenecks on its output features."""

    supported = SUPPORTED  # module types it wraps
    adapter_parts = ("adapter_down", "adapter_up")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.features, self.channels_first = _output_layout(base_layer)
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_act = nn.ModuleDict()
        self.adapter_dropout = nn.ModuleDict()

    def add_adapter(self, name: str, size: int, activation: str, dropout: float) -> None:
        # dtype/device of the base; a LayerNorm without affine weights has no parameters.
        ref = next(self.base_layer.parameters(), torch.empty(0))
        down = nn.Linear(self.features, size)
        up = nn.Linear(size, self.features)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.adapter_down[name] = down.to(device=ref.device, dtype=ref.dtype)
        self.adapter_up[name] = up.to(device=ref.device, dtype=ref.dtype)
        self.adapter_act[name] = _ACT[activation]()
        self.adapter_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        for container in (self.adapter_act, self.adapter_dropout):
            if name in container:  # nn.ModuleDict.pop takes no default
                del container[name]

    def forward(self, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(*args, **kwargs)
        name = self.active_adapter
        if name is None:
            return h
        # Convolutions put features on axis 1: (N, C, L) -> (N, L, C) and back.
        z = h.movedim(1, h.dim() - 1) if self.channels_first else h
        z = self.adapter_up[name](self.adapter_act[name](
            self.adapter_down[name](self.adapter_dropout[name](z))))
        z = z.movedim(z.dim() - 1, 1) if self.channels_first else z
        return h + z

    def merged_copy(self, name: str) -> nn.Module:
        raise AdapterError(
            f"adapter {name!r} is a bottleneck adapter: its nonlinearity cannot be folded into "
            "the base weights; export it with `edge-export attach`, or `merge` keeps it as "
            "part of the static graph")
