"""Adapter directories -> bundle slots and slot tensors (what `.onnx_adapter` files hold).

Each adapter kind's slot layouts are in its subpackage (`export/adapters/<kind>/slots.py`),
found through the registry; with R the bundle's max rank, zero padding to R is exact: the
padded rows and columns add nothing. modules_to_save become "full" slots here: a module's own
parameters, a Linear's rows padded to the widest head so adapters may carry more classes than
the base.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
from torch import nn

from edge.bundle import Slot
from edge.errors import AdapterRejected, ExportError
from export.adapters.model import PEFT_PREFIX
from export.adapters.registry import ADAPTER_KINDS, adapter_kind
from export.onnx.slots import FULL, slot_name
from export.peft_io import AdapterDir, read_adapter_dir

FULL_TYPES = (nn.Linear, nn.LayerNorm)


def module_groups(adapter: AdapterDir) -> dict[str, dict[str, np.ndarray]]:
    """{module path: {part: array}} from PEFT file keys; parts as named in the slot table."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in adapter.tensors.items():
        rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        array = tensor.detach().float().numpy()
        path, part = _split_key(rest)
        groups.setdefault(path, {})[part] = array
    return groups


def _split_key(rest: str) -> tuple[str, str]:
    for kind in ADAPTER_KINDS.values():
        found = kind.split_key(rest)
        if found:
            return found
    path, _, param = rest.rpartition(".")  # a modules_to_save parameter
    return path, param


def adapter_rank(adapter: AdapterDir) -> int:
    groups = module_groups(adapter)
    ranks = [g[kind.rank_part].shape[0] for kind in ADAPTER_KINDS.values()
             for g in groups.values() if kind.rank_part in g]
    return max(ranks, default=0)


def dir_rank(adapter_dir: str | Path) -> int:
    """The rank an adapter directory needs of a bundle's slots (LoRA r, bottleneck width);
    0 when it holds only full modules."""
    return adapter_rank(read_adapter_dir(adapter_dir))


def slot_kind(parts: dict) -> str:
    for kind in ADAPTER_KINDS.values():
        if kind.rank_part in parts:
            return kind.name
    return FULL


def _code(kind: str) -> ModuleType | None:
    """The slot code of an adapter kind; None for full slots."""
    return None if kind == FULL else adapter_kind(kind).slot_code()


def plan_slots(base: nn.Module, adapters: list[AdapterDir], max_rank: int) -> list[Slot]:
    """The slot table covering every module any of `adapters` touches."""
    shapes: dict[tuple[str, str], tuple[list[int], str, str | None]] = {}
    for adapter in adapters:
        if adapter_rank(adapter) > max_rank:
            raise ExportError(f"{adapter.path}: rank {adapter_rank(adapter)} exceeds "
                              f"--max-rank {max_rank}; raise --max-rank")
        for path, parts in module_groups(adapter).items():
            kind = slot_kind(parts)
            code = _code(kind)
            act = code.slot_activation(adapter.config) if code else None
            module = _module(base, path, adapter)
            for part, array in parts.items():
                if code:
                    array = code.to_slot(adapter.config, path, part, array)
                    shape = code.slot_shape(part, array.shape, module, max_rank)
                else:  # never narrower than the base's own head
                    shape = _full_shape(part, array.shape, module)
                old = shapes.get((path, part))
                if old and old[1] != kind:
                    raise ExportError(f"module {path} gets a {kind} adapter from {adapter.path} "
                                      f"and a {old[1]} adapter from another; one kind per module")
                if old:  # a wider head than seen so far widens the slot
                    shape = [max(a, b) for a, b in zip(old[0], shape, strict=True)]
                shapes[(path, part)] = (shape, kind, act)
    return [Slot(name=slot_name(path, part), module=path, kind=kind, part=part, shape=shape,
                 activation=act)
            for (path, part), (shape, kind, act) in sorted(shapes.items())]


def _module(base: nn.Module, path: str, adapter: AdapterDir) -> nn.Module:
    try:
        return base.get_submodule(path)
    except AttributeError:
        raise AdapterRejected(f"{adapter.path}: adapter targets {path!r}, which the base model "
                              "does not have; it was trained for another model") from None


def _full_shape(part: str, shape: tuple, module: nn.Module) -> list[int]:
    if not isinstance(module, FULL_TYPES):
        names = ", ".join(t.__name__ for t in FULL_TYPES)
        raise ExportError(f"modules_to_save {type(module).__name__} cannot become a slot; "
                          f"slottable module types: {names}")
    own = tuple(getattr(module, part).shape)
    return [max(a, b) for a, b in zip(shape, own, strict=True)]


def default_tensors(base: nn.Module, slots: list[Slot]) -> dict[str, np.ndarray]:
    """What `base.onnx` holds when no adapter is active: zeros, and the base's own
    parameters for full slots, so the bundle alone computes the base model exactly."""
    out = {}
    for slot in slots:
        value = np.zeros(slot.shape, dtype=np.float32)
        if slot.kind == FULL:
            own = getattr(base.get_submodule(slot.module), slot.part).detach().float().numpy()
            value[tuple(slice(0, n) for n in own.shape)] = own
        out[slot.name] = value
    return out


def adapter_tensors(adapter: AdapterDir, slots: list[Slot]) -> dict[str, np.ndarray]:
    """The adapter's tensors padded into the bundle's slots; refuses what does not fit."""
    table = {(s.module, s.part): s for s in slots}
    module_kind = {s.module: s.kind for s in slots}
    out: dict[str, np.ndarray] = {}
    for path, parts in module_groups(adapter).items():
        kind = slot_kind(parts)
        if path in module_kind and module_kind[path] != kind:
            raise AdapterRejected(f"{adapter.path}: {path} is a {kind} adapter but the "
                                  f"bundle's slot there is {module_kind[path]}")
        code = _code(kind)
        for part, array in parts.items():
            slot = table.get((path, part))
            if slot is None:
                raise AdapterRejected(f"{adapter.path}: the bundle has no slot for {path} "
                                      f"({kind} {part}); re-export with `edge-export attach` "
                                      "including an adapter on that module")
            if code:
                _check_activation(adapter, code, slot, path)
                array = code.to_slot(adapter.config, path, part, array)
            out[slot.name] = _pad(array, slot, adapter)
    return out


def _check_activation(adapter: AdapterDir, code: ModuleType, slot: Slot, path: str) -> None:
    act = code.slot_activation(adapter.config)
    if slot.activation != act:
        raise AdapterRejected(f"{adapter.path}: activation {act} differs "
                              f"from the bundle's {slot.activation} at {path}")


def _pad(array: np.ndarray, slot: Slot, adapter: AdapterDir) -> np.ndarray:
    if array.ndim != len(slot.shape) or any(a > s for a, s in zip(array.shape, slot.shape,
                                                                    strict=True)):
        hint = " (raise --max-rank and re-attach)" if slot.kind != FULL else ""
        raise AdapterRejected(f"{adapter.path}: tensor for {slot.name} has shape "
                              f"{list(array.shape)}, the slot holds {slot.shape}{hint}")
    out = np.zeros(slot.shape, dtype=np.float32)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out
