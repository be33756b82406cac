"""Bottleneck (Houlsby) adapter configuration, saved as our own `adapter_config.json`.

Documented format (docs/FORMATS.md):
    {"adapter_type": "bottleneck", "target_modules": [...] | "regex",
     "exclude_modules": [...] | "regex" | null, "placement": "after",
     "size": 16 | null, "reduction_factor": 16, "activation": "gelu",
     "modules_to_save": [...] | null}
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields

from edge.errors import AdapterError

from ..targets import TargetSpec, as_list
from .layer import BottleneckLayer

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")


@dataclass
class BottleneckConfig:
    """`h + up(act(down(h)))` after each target module's output."""

    target_modules: TargetSpec = None
    exclude_modules: TargetSpec = None
    size: int | None = None
    reduction_factor: int = 16
    activation: str = "gelu"
    placement: str = "after"
    dropout: float = 0.0
    modules_to_save: list[str] | None = None

    kind = "bottleneck"

    def __post_init__(self) -> None:
        self.target_modules = as_list(self.target_modules)
        self.exclude_modules = as_list(self.exclude_modules)
        if self.activation not in ACTIVATIONS:
            raise AdapterError(f"bottleneck activation {self.activation!r} is not one of "
                               f"{', '.join(ACTIVATIONS)}")
        if self.placement != "after":
            raise AdapterError(f"bottleneck placement {self.placement!r}: only 'after' exists")
        if self.size is not None and self.size < 1:
            raise AdapterError(f"bottleneck size must be >= 1, got {self.size} (--rank)")
        if self.reduction_factor < 1:
            raise AdapterError(f"reduction_factor must be >= 1, got {self.reduction_factor}")

    def size_for(self, features: int) -> int:
        return self.size if self.size is not None else max(1, features // self.reduction_factor)

    def add_to(self, layer: BottleneckLayer, name: str, path: str) -> None:
        layer.add_adapter(name, self.size_for(layer.features), self.activation, self.dropout)

    @classmethod
    def from_train_options(cls, *, rank: int, alpha: float, target_modules: TargetSpec,
                           modules_to_save: list[str] | None,
                           exclude_modules: TargetSpec = None) -> BottleneckConfig:
        """`--rank` is the bottleneck's width; it has no alpha."""
        return cls(size=rank, target_modules=target_modules, modules_to_save=modules_to_save,
                   exclude_modules=exclude_modules)

    def train_options(self) -> dict:
        return {"rank": self.size, "alpha": None}

    def to_file_dict(self) -> dict:
        return {"adapter_type": self.kind, **asdict(self)}

    @classmethod
    def from_file_dict(cls, data: dict, *, source: str = "adapter_config.json") -> BottleneckConfig:
        known = {f.name for f in fields(cls)}
        ignored = sorted(set(data) - known - {"adapter_type"})
        if ignored:
            warnings.warn(f"{source}: ignoring unknown bottleneck config keys {ignored}",
                          stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})
