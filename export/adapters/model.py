"""A base model with named adapters injected: freeze, add, switch, save, merge.

Mirrors PEFT's `PeftModel` closely enough that adapter state dicts use PEFT's file keys:
`base_model.model.<module path>.lora_A.weight` (the adapter name is not in the key).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from edge.errors import AdapterError

from .base import AdapterLayer, use_module_calls
from .fit import PEFT_PREFIX, module_of, why_unmatched
from .registry import AdapterConfig, adapter_kind
from .targets import select


class ModulesToSave(nn.Module):
    """PEFT's modules_to_save: a trainable full copy of a small module (a head, a norm)."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None

    def add(self, name: str) -> None:
        self.modules_to_save[name] = copy.deepcopy(self.original_module).requires_grad_(True)

    def forward(self, *args, **kwargs):
        if self.active_adapter in self.modules_to_save:
            return self.modules_to_save[self.active_adapter](*args, **kwargs)
        return self.original_module(*args, **kwargs)


@dataclass
class AdapterSummary:
    """Sizes of one adapter against its base (parameters counted, bytes as stored)."""

    name: str
    kind: str
    trainable_params: int
    base_params: int
    adapter_bytes: int
    base_bytes: int

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / max(self.base_params, 1)

    def __str__(self) -> str:
        return (f"adapter {self.name!r} ({self.kind}): {self.trainable_params:,} trainable "
                f"parameters = {self.trainable_pct:.2f}% of the base's {self.base_params:,}; "
                f"{self.adapter_bytes / 1024:.1f} KiB vs base {self.base_bytes / 1024:.1f} KiB")


class AdaptedModel(nn.Module):
    """`base_model` (frozen) with any number of named adapters; one is active at a time."""

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model.requires_grad_(False)
        self.configs: dict[str, AdapterConfig] = {}
        self.active_adapter: str | None = None
        self.base_params = sum(p.numel() for p in base_model.parameters())
        self.base_bytes = sum(t.numel() * t.element_size()
                              for t in base_model.state_dict().values())

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    # -- building ---------------------------------------------------------------------------
    def add_adapter(self, name: str, config: AdapterConfig, *, option: str = "--targets") -> None:
        """Inject adapter `name` as `config` says, and make it the active, trainable one."""
        if name in self.configs:
            raise AdapterError(f"an adapter named {name!r} exists already")
        layer_cls = adapter_kind(config.kind).layer_cls
        named = self.user_modules()
        selection = select(named, config, layer_cls.supported, option=option)
        chosen, saved = selection.chosen, selection.saved
        if selection.target_modules != config.target_modules:  # all-linear, as PEFT saves it
            config = dataclasses.replace(config, target_modules=selection.target_modules)
        for path in [p for p, _ in chosen] + saved:
            parent = self.base_model.get_submodule(path.rpartition(".")[0])
            if isinstance(parent, nn.MultiheadAttention):
                raise AdapterError(f"{option}: {path} cannot be adapted: MultiheadAttention "
                                   "reads its out_proj weight directly, never calling it")
        self._check_no_double_wrap(name, [p for p, _ in chosen], saved)
        for path, _ in chosen:
            current = self.base_model.get_submodule(path)
            if isinstance(current, AdapterLayer):
                if not isinstance(current, layer_cls):
                    raise AdapterError(f"module {path} already carries a "
                                       f"{type(current).__name__}; one adapter kind per module")
                layer = current
            else:
                layer = layer_cls(current)
                self.base_model.set_submodule(path, layer)
            config.add_to(layer, name, path)
        for path in saved:
            current = self.base_model.get_submodule(path)
            if not isinstance(current, ModulesToSave):
                current = ModulesToSave(current)
                self.base_model.set_submodule(path, current)
            current.add(name)
        self.configs[name] = config
        use_module_calls(self.base_model, [p for p, _ in chosen] + saved)
        self.set_adapter(name)

    def _check_no_double_wrap(self, name: str, chosen: list[str], saved: list[str]) -> None:
        """A module is either adapted or saved whole, across all adapters: an adapter layer
        inside a saved copy (or a copy of an adapter layer) would mix two adapters' tensors."""
        for path in chosen:
            current = self.base_model.get_submodule(path)
            if isinstance(current, ModulesToSave):
                owners = sorted(current.modules_to_save)
                raise AdapterError(f"adapter {name!r}: module {path} is saved whole by adapter(s) "
                                   f"{owners} (modules_to_save), so it cannot carry an adapter "
                                   "here; load these adapters into separate models")
        for path in saved:
            current = self.base_model.get_submodule(path)
            if isinstance(current, AdapterLayer):
                raise AdapterError(f"adapter {name!r}: modules_to_save {path} carries adapter(s) "
                                   f"{current.adapter_names()} already, so it cannot be saved "
                                   "whole here; load these adapters into separate models")

    def user_modules(self) -> list[tuple[str, nn.Module]]:
        """(path, module) of the user's model, wrappers seen through to what they wrap; what
        lies inside a wrapper (its base layer, adapter tensors, saved copies) is not listed."""
        out: list[tuple[str, nn.Module]] = []
        wrapper_paths: list[str] = []  # named_modules() yields a wrapper before its children
        for path, module in self.base_model.named_modules():
            if not path or any(path.startswith(w + ".") for w in wrapper_paths):
                continue
            if isinstance(module, AdapterLayer):
                wrapper_paths.append(path)
                module = module.base_layer
            elif isinstance(module, ModulesToSave):
                wrapper_paths.append(path)
                module = module.original_module
            out.append((path, module))
        return out

    def wrappers(self) -> Iterator[tuple[str, nn.Module]]:
        for path, module in self.base_model.named_modules():
            if isinstance(module, (AdapterLayer, ModulesToSave)):
                yield path, module

    # -- switching --------------------------------------------------------------------------
    def set_adapter(self, name: str | None) -> None:
        """Activate adapter `name` (None: the plain base). Only its tensors are trainable."""
        if name is not None and name not in self.configs:
            raise AdapterError(f"no adapter named {name!r}; adapters: {sorted(self.configs)}")
        self.active_adapter = name
        for _, module in self.wrappers():
            if isinstance(module, AdapterLayer):
                module.set_adapter(name)
            else:
                module.active_adapter = name
        # Freeze all, then unfreeze this adapter's own tensors (matching `.{name}.` in
        # parameter names would also unfreeze a base module that happens to be called `name`).
        self.requires_grad_(False)
        if name is None:
            return
        for _, module in self.wrappers():
            if isinstance(module, AdapterLayer):
                for tensor in module.adapter_tensors(name).values():
                    tensor.requires_grad_(True)
            elif name in module.modules_to_save:
                module.modules_to_save[name].requires_grad_(True)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain base inside the block, then restore the active adapter."""
        previous = self.active_adapter
        self.set_adapter(None)
        try:
            yield
        finally:
            self.set_adapter(previous)

    def delete_adapter(self, name: str) -> None:
        if name not in self.configs:
            raise AdapterError(f"no adapter named {name!r}; adapters: {sorted(self.configs)}")
        self.configs.pop(name)
        for _, module in self.wrappers():
            if isinstance(module, AdapterLayer):
                module.delete_adapter(name)
            elif name in module.modules_to_save:  # nn.ModuleDict.pop takes no default
                del module.modules_to_save[name]
        if self.active_adapter == name:
            self.set_adapter(None)

    def replace_saved_module(self, name: str, path: str, module: nn.Module) -> None:
        """Swap adapter `name`'s copy of a modules_to_save module (a head with new classes)."""
        wrapper = self.base_model.get_submodule(path)
        if not isinstance(wrapper, ModulesToSave) or name not in wrapper.modules_to_save:
            raise AdapterError(f"{path} is not in modules_to_save of adapter {name!r}")
        wrapper.modules_to_save[name] = module.requires_grad_(self.active_adapter == name)

    # -- tensors ----------------------------------------------------------------------------
    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name`'s tensors under PEFT's file keys (`base_model.model.<path>.<part>...`)."""
        if name not in self.configs:
            raise AdapterError(f"no adapter named {name!r}; adapters: {sorted(self.configs)}")
        out: dict[str, torch.Tensor] = {}
        for path, module in self.wrappers():
            if isinstance(module, AdapterLayer):
                for key, tensor in module.adapter_tensors(name).items():
                    out[f"{PEFT_PREFIX}{path}.{key}"] = tensor
            elif name in module.modules_to_save:
                for key, tensor in module.modules_to_save[name].state_dict().items():
                    out[f"{PEFT_PREFIX}{path}.{key}"] = tensor
        return out

    def load_adapter_state_dict(self, name: str, tensors: dict[str, torch.Tensor], *,
                                source: str = "adapter") -> None:
        """Copy file tensors into adapter `name`, checking keys, shapes and finiteness first.

        A Linear in modules_to_save whose output width differs (a head for another label
        set) is rebuilt to the file's shape.
        """
        self._resize_saved_heads(name, tensors)
        expected = self.adapter_state_dict(name)
        unknown = sorted(set(tensors) - set(expected))
        if unknown:
            why = why_unmatched(self, name, unknown[0])
            raise AdapterError(f"{source}: tensor {unknown[0]} {why} ({len(unknown)} "
                               "tensor(s) fit no module of this model)")
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise AdapterError(f"{source}: tensor {missing[0]} is missing: "
                               f"{module_of(self, name, missing[0])} expects it "
                               f"({len(missing)} missing)")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise AdapterError(f"{source}: tensor {key} has shape {tuple(value.shape)}, "
                                   f"the model needs {tuple(expected[key].shape)} for "
                                   f"{module_of(self, name, key)}")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise AdapterError(f"{source}: tensor {key} holds NaN or Inf values")
        with torch.no_grad():
            for key, value in tensors.items():
                expected[key].copy_(value.to(expected[key].dtype))

    def _resize_saved_heads(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        for path, module in self.wrappers():
            if not isinstance(module, ModulesToSave) or name not in module.modules_to_save:
                continue
            head = module.modules_to_save[name]
            weight = tensors.get(f"{PEFT_PREFIX}{path}.weight")
            if (isinstance(head, nn.Linear) and weight is not None and weight.ndim == 2
                    and weight.shape[1] == head.in_features
                    and weight.shape[0] != head.out_features):
                new = nn.Linear(head.in_features, weight.shape[0], bias=head.bias is not None)
                self.replace_saved_module(name, path, new.to(head.weight.dtype))

    def summary(self, name: str | None = None) -> AdapterSummary:
        name = name or self.active_adapter
        tensors = self.adapter_state_dict(name)
        return AdapterSummary(
            name=name, kind=self.configs[name].kind,
            trainable_params=sum(t.numel() for t in tensors.values()),
            base_params=self.base_params,
            adapter_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            base_bytes=self.base_bytes,
        )

    # -- merging ----------------------------------------------------------------------------
    def merged_model(self, name: str) -> nn.Module:
        """A plain copy of the base with adapter `name` folded in (safe merge: the original
        is untouched and every merged weight is checked finite). Bottleneck adapters cannot
        fold and raise AdapterError."""
        if name not in self.configs:
            raise AdapterError(f"no adapter named {name!r}; adapters: {sorted(self.configs)}")
        model = copy.deepcopy(self.base_model)
        wrapped = [(p, m) for p, m in model.named_modules()
                   if isinstance(m, (AdapterLayer, ModulesToSave))]
        # Deepest first, so a wrapper's path is still valid when it is replaced.
        for path, module in sorted(wrapped, key=lambda pm: -pm[0].count(".")):
            if isinstance(module, ModulesToSave):
                plain = module.modules_to_save[name] if name in module.modules_to_save \
                    else module.original_module
            elif name in module.adapter_names():
                plain = module.merged_copy(name)
            else:
                plain = module.base_layer
            model.set_submodule(path, plain)
        return model.requires_grad_(False)


def inject(model: nn.Module, config: AdapterConfig, name: str = "default") -> AdaptedModel:
    """Freeze `model` and add one adapter; the Python twin of `edge-export train`'s injection."""
    adapted = AdaptedModel(model)
    adapted.add_adapter(name, config)
    return adapted
