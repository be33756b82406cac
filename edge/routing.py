"""Which model serves which production line: line -> (adapter version or base, labels,
normaliser), built from the line assignments and the adapter store.

The whole table is one immutable object. The worker reads `service.routes` once per batch,
so replacing that attribute with a new table (a hot swap) takes effect between batches and
never in the middle of one: a batch never mixes two versions of a line's adapter.

In bank mode (a `--bank K` bundle) the table also carries the bank tensors (K, ...) of every
slot, built for this table alone, and each route its entry in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from .bank import AdapterBank
from .bundle import Manifest
from .codec import Normalizer
from .engine import DeviceSlots
from .errors import AdapterRejected

if TYPE_CHECKING:
    from .adapters import AdapterStore, HeldAdapter
    from .line_state import Assignment, LineState

BASE = "base"  # the `adapter` field of results served by the base model


@dataclass(frozen=True)
class Route:
    """How one line's windows are prepared and run. `key` groups rows sharing a model."""

    adapter: str | None  # None = the base model
    version: int | None
    session_adapter: Any = field(repr=False)  # LoraAdapter / DeviceSlots; None: base or bank
    labels: tuple[str, ...]
    normalizer: Normalizer = field(repr=False)
    sha256: str | None = None
    entry: int = 0  # bank mode: this route's entry in the bank tensors

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.adapter or BASE, self.version)

    def describe(self) -> dict:
        return {"adapter": self.adapter or BASE, "version": self.version}


@dataclass(frozen=True)
class RoutingTable:
    """line -> Route. With no lines configured every line gets `default` (the base model);
    otherwise an unlisted line has no route and its messages are reported as errors."""

    routes: Mapping[str, Route]
    default: Route | None
    bank: Mapping[str, np.ndarray] | DeviceSlots | None = field(default=None, repr=False)

    def lookup(self, line: str) -> Route | None:
        return self.routes.get(line, self.default)

    def describe(self) -> dict:
        table = {line: r.describe() for line, r in self.routes.items()}
        if self.default is not None:
            table["*"] = self.default.describe()
        return table

    def adapter_keys(self) -> set[tuple[str, int]]:
        return {r.key for r in self.routes.values() if r.adapter is not None}  # type: ignore


def base_route(manifest: Manifest, channels: int) -> Route:
    """The base model: its own labels and preprocessing."""
    return Route(adapter=None, version=None, session_adapter=None,
                 labels=tuple(manifest.base.class_names),
                 normalizer=Normalizer.from_preprocessing(manifest.base.preprocessing, channels))


def held_route(held: HeldAdapter, store: AdapterStore, channels: int) -> Route:
    """A held adapter version, loaded (or taken from the store's cache)."""
    entry = held.entry
    session_adapter = None if store.bank is not None else store.loaded(held)
    normalizer = store.normalizer(held, channels)
    return Route(adapter=entry.name, version=entry.version, session_adapter=session_adapter,
                 labels=tuple(entry.class_names), sha256=entry.sha256, normalizer=normalizer)


def build_table(state: LineState, store: AdapterStore, channels: int) -> RoutingTable:
    """The routing table for the line assignments; AdapterRejected names a line whose
    adapter is not held, or a bank too small for the distinct adapters in use."""
    base = store.base_route(channels)
    routes: dict[str, Route] = {}
    built: dict[tuple[str, int], Route] = {}
    for line, assignment in state.lines.items():
        routes[line] = _route_for(line, assignment, store, channels, base, built)
    default = base if not routes else None
    bank = None
    if store.bank is not None:
        routes, default, bank = _fill_bank(routes, default, store)
    return RoutingTable(routes=MappingProxyType(routes), default=default,
                        bank=None if bank is None else store.engine.prepare_bank(bank))


def _route_for(line: str, assignment: Assignment, store: AdapterStore, channels: int,
               base: Route, built: dict) -> Route:
    if assignment.adapter is None:
        return base
    try:
        held = store.resolve(assignment.adapter, assignment.version)
    except AdapterRejected as exc:
        raise AdapterRejected(f"line {line!r}: {exc}") from None
    if held.key not in built:
        built[held.key] = held_route(held, store, channels)
    return built[held.key]


def _fill_bank(routes: dict[str, Route], default: Route | None, store: AdapterStore
               ) -> tuple[dict[str, Route], Route | None, dict[str, np.ndarray]]:
    """Give each distinct model its bank entry and build fresh bank tensors for them."""
    template = store.bank
    bank = AdapterBank(template.defaults, template.size)
    keys = list(dict.fromkeys(r.key for r in [*routes.values(), default] if r is not None))
    if len(keys) > bank.size:
        raise AdapterRejected(f"the bundle's bank holds {bank.size} adapters; the lines would "
                              f"need {len(keys)} (export with a larger --bank)")
    entries = {}
    for index, key in enumerate(keys):
        entries[key] = index
        if key[0] != BASE:
            bank.load(index, store.loaded(store.resolve(*key)))  # type: ignore[arg-type]

    routes = {line: replace(r, entry=entries[r.key]) for line, r in routes.items()}
    default = None if default is None else replace(default, entry=entries[default.key])
    return routes, default, bank.tensors
