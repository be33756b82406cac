"""What every adapter layer shares: the wrapped frozen module and named adapter slots."""

from __future__ import annotations

from torch import nn


class AdapterLayer(nn.Module):
    """Wraps `base_layer` (frozen) and holds any number of named adapters for it.

    Subclasses keep their tensors in `nn.ModuleDict`s keyed by adapter name, like PEFT, so the
    state-dict key of a tensor is `<module path>.<part>.<adapter name>.weight`.
    """

    adapter_parts: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapter: str | None = None
        base_layer.requires_grad_(False)

    def adapter_names(self) -> list[str]:
        first = getattr(self, self.adapter_parts[0])
        return list(first.keys())

    def set_adapter(self, name: str | None) -> None:
        """Activate `name` (None: the base alone). A layer without that adapter passes through."""
        self.active_adapter = name if name in self.adapter_names() else None

    def delete_adapter(self, name: str) -> None:
        for part in self.adapter_parts:
            container = getattr(self, part)
            if name in container:
                del container[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def adapter_tensors(self, name: str) -> dict[str, nn.Parameter]:
        """{`<part>.weight`: tensor} for one adapter: the file layout without the adapter name."""
        out = {}
        for part in self.adapter_parts:
            container = getattr(self, part)
            if name in container:
                for key, value in container[name].named_parameters():
                    out[f"{part}.{key}"] = value
        return out
