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


_FUSED = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _keep_module_path(module: nn.Module, args: tuple) -> None:
    """A no-op pre-hook: torch skips its fused fast path for modules with hooks."""


def use_module_calls(model: nn.Module, paths: list[str]) -> None:
    """Make the Transformer layers above `paths` call their submodules.

    In eval mode nn.TransformerEncoderLayer's fused fast path reads `linear1.weight` etc.
    directly, which would bypass (or break on) a wrapped submodule; a hook disables it.
    """
    for path in paths:
        parts = path.split(".")
        for i in range(len(parts)):
            ancestor = model.get_submodule(".".join(parts[:i]))
            if isinstance(ancestor, _FUSED) and not getattr(ancestor, "_edge_hooked", False):
                ancestor.register_forward_pre_hook(_keep_module_path)
                ancestor._edge_hooked = True

