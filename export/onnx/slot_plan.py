"""Adapter directories -> bundle slots and slot tensors (what `.onnx_adapter` files hold).

Slot layouts, with R the bundle's max rank, chosen so the graph needs no transposes:
    lora Linear  lora_A  A^T (in, R)          lora_B  (scale B)^T (R, out)
    lora ConvNd  lora_A  A (R, in*k...)       lora_B  scale B (out, R)
    bottleneck   down_w  W_down^T (F, R)  down_b (R,)  up_w  W_up^T (R, F)  up_b (F,)
    full         a modules_to_save module's own parameters; a Linear's rows padded to the
                 widest head so adapters may carry more classes than the base
Zero padding to R is exact: the padded rows and columns add nothing.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from edge.bundle import Slot
from edge.errors import AdapterRejected, ExportError
from export.adapters.model import PEFT_PREFIX
from export.onnx.slots import slot_name
from export.peft_io import AdapterDir

LORA_PARTS = {"lora_A": "lora_A", "lora_B": "lora_B"}
BOTTLENECK_PARTS = {"adapter_down.weight": "down_w", "adapter_down.bias": "down_b",
                    "adapter_up.weight": "up_w", "adapter_up.bias": "up_b"}
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
    for marker, part in LORA_PARTS.items():
        if f".{marker}." in rest:
            return rest.split(f".{marker}.")[0], part
    for marker, part in BOTTLENECK_PARTS.items():
        if rest.endswith("." + marker):
            return rest[: -len(marker) - 1], part
    path, _, param = rest.rpartition(".")
    return path, param


def adapter_rank(adapter: AdapterDir) -> int:
    groups = module_groups(adapter)
    ranks = [g["lora_A"].shape[0] for g in groups.values() if "lora_A" in g]
    ranks += [g["down_w"].shape[0] for g in groups.values() if "down_w" in g]
    return max(ranks, default=0)


def slot_kind(parts: dict) -> str:
    if "lora_A" in parts:
        return "lora"
    if "down_w" in parts:
        return "bottleneck"
    return "full"


def plan_slots(base: nn.Module, adapters: list[AdapterDir], max_rank: int) -> list[Slot]:
    """The slot table covering every module any of `adapters` touches."""
    shapes: dict[tuple[str, str], tuple[list[int], str, str | None]] = {}
    for adapter in adapters:
        if adapter_rank(adapter) > max_rank:
            raise ExportError(f"{adapter.path}: rank {adapter_rank(adapter)} exceeds "
                              f"--max-rank {max_rank}; raise --max-rank")
        act = getattr(adapter.config, "activation", None)
        for path, parts in module_groups(adapter).items():
            kind = slot_kind(parts)
            module = _module(base, path, adapter)
            for part, array in parts.items():
                array = slot_layout(kind, part, array)
                shape = _slot_shape(kind, part, array.shape, module, max_rank)
                if kind == "full":  # never narrower than the base's own head
                    own = tuple(getattr(module, part).shape)
                    shape = [max(a, b) for a, b in zip(shape, own, strict=True)]
                old = shapes.get((path, part))
                if old and old[1] != kind:
                    raise ExportError(f"module {path} gets a {kind} adapter from {adapter.path} "
                                      f"and a {old[1]} adapter from another; one kind per module")
                if old:  # a wider head than seen so far widens the slot
                    shape = [max(a, b) for a, b in zip(old[0], shape, strict=True)]
                shapes[(path, part)] = (shape, kind, act if kind == "bottleneck" else None)
    return [Slot(name=slot_name(path, part), module=path, kind=kind, part=part, shape=shape,
                 activation=act)
            for (path, part), (shape, kind, act) in sorted(shapes.items())]


def _module(base: nn.Module, path: str, adapter: AdapterDir) -> nn.Module:
    try:
        return base.get_submodule(path)
    except AttributeError:
        raise AdapterRejected(f"{adapter.path}: adapter targets {path!r}, which the base model "
                              "does not have; it was trained for another model") from None


def slot_layout(kind: str, part: str, array: np.ndarray) -> np.ndarray:
    """A file tensor (PEFT layout) in its slot layout, before padding."""
    if kind == "lora" and array.ndim > 2:  # conv: A (R, in, k...) flat; B (out, R, 1...)
        return array.reshape(array.shape[0], -1) if part == "lora_A" else \
            array.reshape(array.shape[0], array.shape[1])
    if (kind == "lora" and array.ndim == 2) or part in ("down_w", "up_w"):
        return array.T
    return array


def _slot_shape(kind: str, part: str, shape: tuple, module: nn.Module, rank: int) -> list[int]:
    shape = list(shape)
    if kind == "lora":
        rank_axis = 0 if (part == "lora_A") == isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1
        shape[rank_axis] = rank
    elif kind == "bottleneck":
        if part != "up_b":
            shape[1 if part == "down_w" else 0] = rank
    elif not isinstance(module, FULL_TYPES):
        names = ", ".join(t.__name__ for t in FULL_TYPES)
        raise ExportError(f"modules_to_save {type(module).__name__} cannot become a slot; "
                          f"slottable module types: {names}")
    return shape


def default_tensors(base: nn.Module, slots: list[Slot]) -> dict[str, np.ndarray]:
    """What `base.onnx` holds when no adapter is active: zeros, and the base's own
    parameters for full slots, so the bundle alone computes the base model exactly."""
    out = {}
    for slot in slots:
        value = np.zeros(slot.shape, dtype=np.float32)
        if slot.kind == "full":
            own = getattr(base.get_submodule(slot.module), slot.part).detach().float().numpy()
            value[tuple(slice(0, n) for n in own.shape)] = own
        out[slot.name] = value
    return out


def adapter_tensors(adapter: AdapterDir, slots: list[Slot]) -> dict[str, np.ndarray]:
    """The adapter's tensors padded into the bundle's slots; refuses what does not fit."""
    table = {(s.module, s.part): s for s in slots}
    module_kind = {s.module: s.kind for s in slots}
    config = adapter.config
    out: dict[str, np.ndarray] = {}
    for path, parts in module_groups(adapter).items():
        kind = slot_kind(parts)
        if path in module_kind and module_kind[path] != kind:
            raise AdapterRejected(f"{adapter.path}: {path} is a {kind} adapter but the "
                                  f"bundle's slot there is {module_kind[path]}")
        for part, array in parts.items():
            slot = table.get((path, part))
            if slot is None:
                raise AdapterRejected(f"{adapter.path}: the bundle has no slot for {path} "
                                      f"({kind} {part}); re-export with `edge-export attach` "
                                      "including an adapter on that module")
            if kind == "bottleneck" and slot.activation != config.activation:
                raise AdapterRejected(f"{adapter.path}: activation {config.activation} differs "
                                      f"from the bundle's {slot.activation} at {path}")
            if kind == "lora" and part == "lora_B":
                array = array * config.scale_for(path)
            out[slot.name] = _pad(slot_layout(kind, part, array), slot, adapter)
    return out


def _pad(array: np.ndarray, slot: Slot, adapter: AdapterDir) -> np.ndarray:
    if array.ndim != len(slot.shape) or any(a > s for a, s in zip(array.shape, slot.shape,
                                                                    strict=True)):
        hint = " (raise --max-rank and re-attach)" if slot.kind != "full" else ""
        raise AdapterRejected(f"{adapter.path}: tensor for {slot.name} has shape "
                              f"{list(array.shape)}, the slot holds {slot.shape}{hint}")
    out = np.zeros(slot.shape, dtype=np.float32)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out
