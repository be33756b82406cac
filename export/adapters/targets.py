"""Which modules an adapter applies to: PEFT's `target_modules` semantics.

A list entry matches a module path exactly or as a dotted suffix (`"q"` matches
`blocks.0.attn.q`); a single string is a regex that must match the whole path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from edge.errors import AdapterError

TargetSpec = str | list[str] | tuple[str, ...] | None


def matches(target: str, path: str) -> bool:
    """True when one list entry `target` names module `path` (exact or dotted suffix)."""
    return path == target or path.endswith("." + target)


def select_modules(
    named: list[tuple[str, nn.Module]], targets: TargetSpec, supported: tuple[type, ...],
    *, option: str,
) -> list[tuple[str, nn.Module]]:
    """Return the (path, module) pairs of `named` that `targets` selects, or raise naming
    what exists. `option` is the CLI flag or config key to name in errors (`--targets`).
    """
    if not targets:
        raise AdapterError(f"no target modules given; set {option}")
    if isinstance(targets, str):
        pattern = re.compile(targets)
        chosen = [(p, m) for p, m in named if pattern.fullmatch(p)]
        if not chosen:
            raise AdapterError(
                f"{option} regex {targets!r} matches no module; modules are: {_listing(named)}"
            )
    else:
        chosen, missing = [], []
        for target in targets:
            hits = [(p, m) for p, m in named if matches(target, p)]
            if not hits:
                missing.append(target)
            chosen.extend(h for h in hits if h not in chosen)
        if missing:
            raise AdapterError(
                f"{option} {', '.join(map(repr, missing))} matches no module; "
                f"modules are: {_listing(named)}"
            )
    unsupported = [(p, m) for p, m in chosen if not isinstance(m, supported)]
    if unsupported:
        kinds = ", ".join(t.__name__ for t in supported)
        bad = ", ".join(f"{p} ({type(m).__name__})" for p, m in unsupported[:8])
        raise AdapterError(f"{option} selects modules of a type this adapter cannot wrap: {bad}; "
                           f"supported types: {kinds}")
    return chosen


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
