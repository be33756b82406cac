"""Why a tensor of an adapter file does not fit a model: the module it was meant for, and
what stops it (no such module, a type the kind cannot wrap, excluded or saved whole, not
selected by target_modules, another adapter kind, a shape the module cannot take).

A file key is `base_model.model.<module path>.<part>`; the part is an adapter kind's
(`lora_A.weight`) or, for a module saved whole (modules_to_save), that module's own tensor
(`weight`, `0.bias`).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from torch import nn

from .registry import ADAPTER_KINDS, AdapterKind, adapter_kind
from .targets import exclusion, spec_matches

if TYPE_CHECKING:
    from .model import AdaptedModel

PEFT_PREFIX = "base_model.model."


def describe(module: nn.Module) -> str:
    """`Linear(in_features=16, out_features=3, bias=True)`: the type and its sizes."""
    return f"{type(module).__name__}({module.extra_repr()})"


def key_module(key: str, paths: list[str], kind: str) -> tuple[str, AdapterKind | None]:
    """(module path, adapter kind whose part the key holds, or None for a saved module's own
    tensor) of file key `key`; `kind` (the config's) is tried first."""
    rest = key.removeprefix(PEFT_PREFIX)
    kinds = [adapter_kind(kind)] + [k for n, k in ADAPTER_KINDS.items() if n != kind]
    for candidate in kinds:
        split = candidate.split_key(rest)
        if split is not None:
            return split[0], candidate
    # A saved module's tensor: the longest module path the key starts with.
    owners = [p for p in paths if rest.startswith(p + ".")]
    return (max(owners, key=len) if owners else rest.rpartition(".")[0]), None


def why_unmatched(model: AdaptedModel, name: str, key: str) -> str:
    """`meant for module P, which ...` for a file tensor adapter `name` has no place for."""
    if not key.startswith(PEFT_PREFIX):
        return f"does not start with {PEFT_PREFIX!r}, PEFT's key prefix"
    config = model.configs[name]
    named = dict(model.user_modules())
    path, kind = key_module(key, list(named), config.kind)
    module = named.get(path)
    head = f"is meant for module {path!r}, which"
    if module is None:
        close = sorted(difflib.get_close_matches(path, list(named), n=3))
        hint = f" (similar: {', '.join(close)})" if close else ""
        return f"{head} this model does not have{hint}"
    if kind is None:
        if path not in saved_paths(model, name):
            return (f"{head} ({describe(module)}) is not in modules_to_save "
                    f"{config.modules_to_save!r}")
        return f"{head} ({describe(module)}) has no tensor {key.split(path + '.', 1)[1]!r}"
    if kind.name != config.kind:
        return (f"{head} gets {kind.name} tensors in this file, but adapter_config.json "
                f"describes a {config.kind} adapter")
    reason = exclusion(path, getattr(config, "exclude_modules", None), config.modules_to_save)
    if reason:
        return f"{head} is never a {kind.name} target: {reason}"
    supported = kind.layer_cls.supported
    if not isinstance(module, supported):
        names = ", ".join(t.__name__ for t in supported)
        return f"{head} is a {type(module).__name__}; {kind.name} wraps {names}"
    if not spec_matches(config.target_modules, path):
        return f"{head} target_modules {config.target_modules!r} does not select"
    return f"{head} has no such {kind.name} tensor"


def module_of(model: AdaptedModel, name: str, key: str) -> str:
    """`module P (Linear(...))` for a key the adapter expects, for missing/shape errors."""
    named = dict(model.user_modules())
    path, _ = key_module(key, list(named), model.configs[name].kind)
    module = named.get(path)
    return f"module {path!r}" + (f" ({describe(module)})" if module is not None else "")


def saved_paths(model: AdaptedModel, name: str) -> list[str]:
    """Paths of the modules adapter `name` saves whole."""
    from .model import ModulesToSave

    return [p for p, m in model.wrappers()
            if isinstance(m, ModulesToSave) and name in m.modules_to_save]
