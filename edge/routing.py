"""Which model serves which production line: line -> (adapter or base, labels, normaliser).

The whole table is one immutable object. The worker reads `service.routes` once per batch,
so replacing that attribute with a new table (a later hot swap) takes effect between
batches and never in the middle of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import onnxruntime as ort

from .bundle import Manifest, sha256_file
from .codec import Normalizer
from .config import Config
from .engine import load_adapter_file
from .errors import IncompatibleBundle

BASE = "base"  # the `adapter` field of results served by the base model


@dataclass(frozen=True)
class Route:
    """How one line's windows are prepared and run. `key` groups rows sharing a model."""

    adapter: str | None  # None = the base model
    version: int | None
    session_adapter: ort.LoraAdapter | None = field(repr=False)
    labels: tuple[str, ...]
    normalizer: Normalizer = field(repr=False)

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

    def lookup(self, line: str) -> Route | None:
        return self.routes.get(line, self.default)

    def describe(self) -> dict:
        table = {line: r.describe() for line, r in self.routes.items()}
        if self.default is not None:
            table["*"] = self.default.describe()
        return table


def base_route(manifest: Manifest, channels: int) -> Route:
    """The base model: its own labels and preprocessing."""
    return Route(adapter=None, version=None, session_adapter=None,
                 labels=tuple(manifest.base.class_names),
                 normalizer=Normalizer.from_preprocessing(manifest.base.preprocessing, channels))


def adapter_route(bundle: Path, manifest: Manifest, name: str, version: int | None,
                  channels: int, loaded: dict) -> Route:
    """A bundle adapter, its file checked against the manifest's sha256 and loaded once
    (`loaded` caches LoraAdapters by (name, version) across lines)."""
    entry = manifest.adapter(name, version)
    cache_key = (entry.name, entry.version)
    if cache_key not in loaded:
        path = bundle / entry.file
        if path.is_file() and sha256_file(path) != entry.sha256:
            raise IncompatibleBundle(f"{path}: sha256 does not match the manifest; the adapter "
                                     "file was changed")
        loaded[cache_key] = load_adapter_file(path)
    if len(entry.class_names) > manifest.num_classes:
        raise IncompatibleBundle(f"adapter {name!r} has {len(entry.class_names)} classes; "
                                 f"the model outputs {manifest.num_classes}")
    pre = entry.preprocessing or manifest.base.preprocessing
    return Route(adapter=entry.name, version=entry.version, session_adapter=loaded[cache_key],
                 labels=tuple(entry.class_names),
                 normalizer=Normalizer.from_preprocessing(pre, channels))


def build_routes(cfg: Config, bundle: Path, manifest: Manifest, channels: int) -> RoutingTable:
    """The routing table for `topics.lines`; a route naming an adapter the bundle lacks is
    an IncompatibleBundle error at start-up, not a surprise at the first message."""
    base = base_route(manifest, channels)
    loaded: dict = {}
    routes = {}
    for line, spec in cfg.topics.lines.items():
        routes[line] = base if spec.adapter is None else adapter_route(
            bundle, manifest, spec.adapter, spec.version, channels, loaded)
    default = base if not routes else None
    return RoutingTable(routes=MappingProxyType(routes), default=default)


def line_of(topic: str, prefix: str) -> str | None:
    """The line level of `<prefix>/<line>[/...]`; None when the topic has no such level."""
    if not topic.startswith(prefix + "/"):
        return None
    line = topic[len(prefix) + 1:].partition("/")[0]
    return line or None
