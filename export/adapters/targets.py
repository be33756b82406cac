"""Which modules an adapter applies to: PEFT's `target_modules`, `exclude_modules` and
`modules_to_save` rules (peft/tuners/tuners_utils.py `check_target_module_exists`,
`_maybe_include_all_linear_layers`; peft/utils/other.py `_set_trainable`).

- `target_modules`: a list entry matches a module path exactly or as a dotted suffix (`"q"`
  matches `blocks.0.attn.q`); a single string is a regex that must match the whole path;
  `"all-linear"` (any case) is every `nn.Linear` but the output head (`output_head`).
- `exclude_modules`: the same two forms; an excluded module is never a target.
- `modules_to_save`: a module whose path ends with an entry (plain string suffix, as PEFT's
  `_set_trainable`) is saved whole; it and everything inside it are never targets (PEFT's
  `(^|.*\\.)<entry>($|\\..*)` rule), even when `target_modules` names them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from edge.errors import AdapterError

if TYPE_CHECKING:
    from .registry import AdapterConfig

TargetSpec = str | list[str] | tuple[str, ...] | None

ALL_LINEAR = "all-linear"  # PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND
# Top-level names PEFT and common models give a classifier head (PEFT's SEQ_CLS_HEAD_NAMES,
# and ours), looked up before falling back to the last Linear.
HEAD_NAMES = ("head", "classifier", "score", "lm_head")

Named = list[tuple[str, nn.Module]]


def matches(target: str, path: str) -> bool:
    """True when one list entry `target` names module `path` (exact or dotted suffix)."""
    return path == target or path.endswith("." + target)


def spec_matches(spec: TargetSpec, path: str) -> bool:
    """PEFT's test of one path against `target_modules` or `exclude_modules` (a regex string
    that must match the whole path, or a list of exact / dotted-suffix names)."""
    if not spec:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    return any(matches(t, path) for t in spec)


def saved_matches(entry: str, path: str) -> bool:
    """PEFT's `_set_trainable`: `modules_to_save` entry `entry` saves `path` when the path
    ends with it as a plain string (so `"head"` also saves `blocks.0.multihead`, as in PEFT)."""
    return path.endswith(entry)


def inside_saved(modules_to_save: list[str] | None, path: str) -> bool:
    """PEFT's check_target_module_exists: `path` is (inside) a module to save, never a target."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in modules_to_save or [])


def as_list(spec: TargetSpec | set[str]) -> TargetSpec:
    """A set or tuple (PEFT keeps sets) as a sorted list; a regex string or None as given."""
    return sorted(spec) if isinstance(spec, (set, tuple)) else spec


def is_all_linear(spec: TargetSpec) -> bool:
    return isinstance(spec, str) and spec.lower() == ALL_LINEAR


def output_head(named: Named) -> str | None:
    """The path of the classification head: a top-level Linear named like one (HEAD_NAMES),
    else the last Linear the model registers; None without any Linear."""
    linears = [p for p, m in named if isinstance(m, nn.Linear)]
    for name in HEAD_NAMES:
        if name in linears:
            return name
    return linears[-1] if linears else None


def expand_all_linear(named: Named) -> list[str]:
    """`all-linear` as module paths: every nn.Linear except the output head and the ones
    inside an nn.MultiheadAttention (it reads their weights directly: LoRA there does nothing)."""
    head = output_head(named)
    mha = [p for p, m in named if isinstance(m, nn.MultiheadAttention)]
    return [p for p, m in named if isinstance(m, nn.Linear) and p != head
            and not any(p.startswith(a + ".") for a in mha)]


def stored_targets(paths: list[str], named: Named) -> TargetSpec:
    """How an expanded `all-linear` is written to adapter_config.json: the list of paths, as
    PEFT writes it, unless read back as suffixes it would select more (the head `enc.fc`
    ends with a chosen `fc`); then one anchored regex of exactly those paths."""
    chosen = set(paths)
    if {p for p, _ in named if spec_matches(paths, p)} == chosen:
        return sorted(paths)
    return "|".join(re.escape(p) for p in sorted(paths))


@dataclass
class Selection:
    """What an adapter config selects in a model: `chosen` get the adapter, `saved` are
    copied whole (modules_to_save), `excluded` are targets left out, with the reason."""

    chosen: Named
    saved: list[str]
    excluded: dict[str, str]
    target_modules: TargetSpec  # `all-linear` expanded to paths; otherwise as given


def select(named: Named, config: AdapterConfig, supported: tuple[type, ...], *,
           option: str) -> Selection:
    """Apply `config`'s target_modules, exclude_modules and modules_to_save to `named` (the
    user's (path, module) pairs), or raise AdapterError naming `option` and what exists."""
    targets = config.target_modules
    if not targets:
        raise AdapterError(f"no target modules given; set {option}")
    if is_all_linear(targets):
        paths = expand_all_linear(named)
        if not paths:
            raise AdapterError(f"{option} {targets!r}: the model has no Linear besides its "
                               f"head; modules are: {_listing(named)}")
        targets = stored_targets(paths, named)
    else:
        _check_targets_exist(named, targets, option)
    saved = saved_paths(named, config.modules_to_save)
    exclude = getattr(config, "exclude_modules", None)
    chosen, excluded = [], {}
    for path, module in named:
        if not spec_matches(targets, path):
            continue
        reason = exclusion(path, exclude, config.modules_to_save)
        if reason:
            excluded[path] = reason
        else:
            chosen.append((path, module))
    if exclude and not any(spec_matches(exclude, p) for p, _ in named):
        warnings.warn(f"exclude_modules={exclude!r} excludes no module", stacklevel=3)
    if not chosen:
        why = ", ".join(f"{p} ({r})" for p, r in excluded.items())
        raise AdapterError(f"{option} selects no module to adapt: every match is excluded: {why}")
    _check_supported(chosen, supported, option)
    return Selection(chosen, saved, excluded, targets)


def exclusion(path: str, exclude: TargetSpec, modules_to_save: list[str] | None) -> str | None:
    """Why `path` can never be a target (PEFT's order: exclude_modules, then modules_to_save),
    or None."""
    if spec_matches(exclude, path):
        return "exclude_modules"
    if inside_saved(modules_to_save, path):
        return "modules_to_save: saved whole"
    return None


def saved_paths(named: Named, modules_to_save: list[str] | None) -> list[str]:
    """Paths `modules_to_save` copies whole; an entry that saves nothing is an error. A match
    inside another saved module is left to it (it is copied with its parent)."""
    paths: list[str] = []
    for entry in modules_to_save or []:
        hits = [p for p, _ in named if saved_matches(entry, p)]
        if not hits:
            raise AdapterError(f"modules_to_save {entry!r} matches no module; modules are: "
                               + ", ".join(p for p, _ in named))
        paths.extend(h for h in hits if h not in paths)
    return [p for p in paths if not any(p.startswith(q + ".") for q in paths)]


def _check_targets_exist(named: Named, targets: TargetSpec, option: str) -> None:
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, p) for p, _ in named):
            raise AdapterError(
                f"{option} regex {targets!r} matches no module; modules are: {_listing(named)}")
        return
    missing = [t for t in targets if not any(matches(t, p) for p, _ in named)]
    if missing:
        raise AdapterError(f"{option} {', '.join(map(repr, missing))} matches no module; "
                           f"modules are: {_listing(named)}")


def _check_supported(chosen: Named, supported: tuple[type, ...], option: str) -> None:
    unsupported = [(p, m) for p, m in chosen if not isinstance(m, supported)]
    if unsupported:
        kinds = ", ".join(t.__name__ for t in supported)
        bad = ", ".join(f"{p} ({type(m).__name__})" for p, m in unsupported[:8])
        raise AdapterError(f"{option} selects modules of a type this adapter cannot wrap: {bad}; "
                           f"supported types: {kinds}")


def pattern_value(patterns: dict[str, float | int], path: str, default: float | int):
    """PEFT's rank_pattern/alpha_pattern lookup: first key whose regex ends `path`."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _listing(named: Iterable[tuple[str, nn.Module]], limit: int = 40) -> str:
    leaves = [f"{p} ({type(m).__name__})" for p, m in named if not list(m.children())]
    more = f", ... {len(leaves) - limit} more" if len(leaves) > limit else ""
    return ", ".join(leaves[:limit]) + more
