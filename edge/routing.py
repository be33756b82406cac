"""Which model serves which production line: line -> (adapter version or base, labels,
normaliser), built from the line assignments and the adapter store.

    tables = TableBuilder(store, manifest, shape)   # the base route built once
    holder = RouteHolder(tables.build(lines))          # the table in force
    table = holder.current()                           # the worker, once per batch
    previous = holder.install(tables.build(new_lines)) # the control thread: a hot swap

The whole table is one immutable object. The worker reads the holder's table once per batch,
so installing a new table (one attribute assignment, no lock) takes effect between batches
and never in the middle of one: a batch never mixes two versions of a line's adapter.

In bank mode (a `--bank K` bundle) the table also carries the bank tensors (K, ...) of every
slot, built for this table alone, and each route its entry in them.

Routing sees the adapter store only through `AdapterSource` (edge/adapters.py provides it):
the store knows nothing of routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from .bank import AdapterBank
from .bundle import AdapterEntry, Manifest
from .contract import BASE, Normalizer
from .engine import DeviceSlots
from .errors import AdapterRejected

if TYPE_CHECKING:
    from .line_state import Assignment, LineState



class HeldView(Protocol):
    """A held adapter version, as routing reads it."""

    @property
    def entry(self) -> AdapterEntry: ...

    @property
    def key(self) -> tuple[str, int]: ...


H = TypeVar("H", bound=HeldView)


class AdapterSource(Protocol[H]):
    """The narrow view of the adapter store that routing builds tables from."""

    @property
    def bank(self) -> AdapterBank | None: ...  # a bank bundle's template, else None

    def resolve(self, name: str, version: int | None) -> H: ...

    def loaded(self, held: H) -> Any: ...  # LoraAdapter / DeviceSlots, or arrays for a bank

    def normalizer(self, held: H, shape: tuple[int, ...]) -> Normalizer: ...

    def prepare_bank(self, tensors: Mapping[str, np.ndarray]
                     ) -> Mapping[str, np.ndarray] | DeviceSlots: ...


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


def base_route(manifest: Manifest, shape: tuple[int, ...]) -> Route:
    """The base model: its own labels and preprocessing, for samples of `shape`."""
    normalizer = Normalizer.from_preprocessing(manifest.base.preprocessing, shape[0],
                                               len(shape))
    return Route(adapter=None, version=None, session_adapter=None,
                 labels=tuple(manifest.base.class_names), normalizer=normalizer)


def held_route(held: H, store: AdapterSource[H], shape: tuple[int, ...]) -> Route:
    """A held adapter version, loaded (or taken from the store's cache)."""
    entry = held.entry
    session_adapter = None if store.bank is not None else store.loaded(held)
    normalizer = store.normalizer(held, shape)
    return Route(adapter=entry.name, version=entry.version, session_adapter=session_adapter,
                 labels=tuple(entry.class_names), sha256=entry.sha256, normalizer=normalizer)


class TableBuilder:
    """Routing tables for one adapter store and model sample `shape` (without the batch
    axis). The base route is built once here: its normaliser is half of a table's build
    time otherwise."""

    def __init__(self, store: AdapterSource[Any], manifest: Manifest,
                 shape: tuple[int, ...]) -> None:
        self.store = store
        self.shape = tuple(shape)
        self.base = base_route(manifest, self.shape)

    def build(self, state: LineState) -> RoutingTable:
        """The routing table for the line assignments; AdapterRejected names a line whose
        adapter is not held, or a bank too small for the distinct adapters in use."""
        routes: dict[str, Route] = {}
        built: dict[tuple[str, int], Route] = {}
        for line, assignment in state.lines.items():
            routes[line] = self._route_for(line, assignment, built)
        default = self.base if not routes else None
        bank = None
        if self.store.bank is not None:
            routes, default, bank = _fill_bank(routes, default, self.store)
        return RoutingTable(routes=MappingProxyType(routes), default=default,
                            bank=None if bank is None else self.store.prepare_bank(bank))

    def _route_for(self, line: str, assignment: Assignment, built: dict) -> Route:
        if assignment.adapter is None:
            return self.base
        try:
            held = self.store.resolve(assignment.adapter, assignment.version)
        except AdapterRejected as exc:
            raise AdapterRejected(f"line {line!r}: {exc}") from None
        if held.key not in built:
            built[held.key] = held_route(held, self.store, self.shape)
        return built[held.key]


def _fill_bank(routes: dict[str, Route], default: Route | None, store: AdapterSource[Any]
               ) -> tuple[dict[str, Route], Route | None, dict[str, np.ndarray]]:
    """Give each distinct model its bank entry and build fresh bank tensors for them."""
    template = store.bank  # not None: called for a bank bundle only
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


class RouteHolder:
    """The routing table in force. Only the control thread installs one; any thread reads
    it with `current()`: one attribute read, no lock (a table is immutable, and replacing
    the attribute is atomic), so the worker's per-batch read costs nothing."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def current(self) -> RoutingTable:
        return self._table

    def install(self, table: RoutingTable) -> RoutingTable:
        """Put `table` in force; returns the one it replaced, which installing again puts
        back (a failed save after the switch). The holder keeps no other table: a bank's
        device tensors go with the table that held them."""
        previous, self._table = self._table, table
        return previous
