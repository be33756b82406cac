"""The gateway's drift watch: one DriftMonitor per line, keyed by the line's route (adapter,
version), its retained drift topic, the events of state changes, and the states kept in
`<state_dir>/drift.json` across restarts.

    watch = DriftWatch(settings, layout, state_dir, profile_of=..., publish=..., event=...,
                       changed=...)
    watch.observe("press-3", route, mean, std, top, cls, features)  # the worker
    watch.announce()                                       # after every (re)connect

`<prefix>/<device>/drift/<line>` (retained, JSON): line, adapter, version, state (ok / warn
/ drift, or unknown when the line's model has no profile), since (ISO time of the last
change), windows (seen by this monitor), indicators, thresholds. Published on every state
change at once, and otherwise at most every `publish_s` seconds per line: a retained QoS 1
message per batch would cost the pipeline more than the monitoring itself.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..bundle import atomic_write
from .monitor import UNKNOWN, DriftMonitor, Evaluation, MonitorSettings
from .profile import DriftProfile

if TYPE_CHECKING:  # the payload types (docs/schemas/)
    from ..contract.payloads import DriftChange, DriftState

log = logging.getLogger(__name__)

STATE_FILE = "drift.json"
MAX_LINES = 4096  # lines come from topics when no routing is configured: keep it bounded


class RouteView(Protocol):
    """What the watch reads of a route (edge/routing.py Route)."""

    @property
    def key(self) -> tuple[str, int | None]: ...

    @property
    def labels(self) -> tuple[str, ...]: ...


class WatchSettings(Protocol):
    """What the watch reads of the config's [drift] (edge/config.py DriftSettings)."""

    publish_s: float

    def monitor_settings(self) -> MonitorSettings: ...

    def watches(self, line: str) -> bool: ...


@dataclass
class _Watched:
    key: tuple[str, int | None]  # the route this monitor belongs to
    monitor: DriftMonitor | None  # None: the model has no profile
    published: float = float("-inf")  # time.monotonic() of its last drift message


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="seconds")


class DriftWatch:
    """Every watched line's monitor. `profile_of(route)` gives the model's profile (None when
    it has none); `publish(topic, payload)` sends a retained message; `event(doc)` sends a
    state change to the events topic; `changed()` counts a state change for stats."""

    def __init__(self, settings: WatchSettings, topic: Callable[[str], str], state_dir: Path,
                 *, channels: int, profile_of: Callable[[Any], DriftProfile | None],
                 publish: Callable[[str, bytes], None], event: Callable[[DriftChange], None],
                 changed: Callable[[], None]) -> None:
        self.settings, self.monitor_settings = settings, settings.monitor_settings()
        self.topic, self.channels, self.profile_of = topic, channels, profile_of
        self.publish, self.event, self.changed = publish, event, changed
        self.path = Path(state_dir) / STATE_FILE
        self.saved = self._load()  # line -> saved doc, until the line's monitor starts
        self.lines: dict[str, _Watched] = {}
        self._lock = threading.Lock()  # the worker observes, paho's thread announces

    def observe(self, line: str, route: RouteView, mean: np.ndarray, std: np.ndarray,
                top: np.ndarray, cls: np.ndarray, features: np.ndarray | None = None
                ) -> np.ndarray | None:
        """n windows of `line` served by `route`: mean, std (n, C) raw, top (n,), cls (n,),
        features (n, D) penultimate (None: the graph outputs none). Returns the windows'
        out-of-distribution distances (n,), or None when they are not known (the line is
        not watched, its profile has no feature statistics, or no features came)."""
        watched = self.lines.get(line)
        if watched is None or watched.key != route.key:
            if not self.settings.watches(line):
                return None
            watched = self._start(line, route)
        if watched.monitor is None:
            return None
        ood = watched.monitor.distances(features)
        ev = watched.monitor.observe(mean, std, top, cls, ood)
        if ev is not None:
            self._evaluated(line, watched, ev)
        return ood

    def state_of(self, line: str) -> tuple[str, DriftProfile | None] | None:
        """(state, profile) of a watched line's monitor: ("unknown", None) when its model has
        no profile; None when the line is not watched (yet)."""
        watched = self.lines.get(line)
        if watched is None:
            return None
        m = watched.monitor
        return (UNKNOWN, None) if m is None else (m.state, m.profile)

    def announce(self) -> None:
        """Publish every known line's state (after a connect: the broker may have lost it)."""
        with self._lock:
            docs = [self._doc(line, w) for line, w in self.lines.items()]
            docs += [doc for line, doc in self.saved.items() if line not in self.lines]
        for doc in docs:
            self.publish(self.topic(doc["line"]), _encode(doc))

    # -- one line --------------------------------------------------------------------------
    def _start(self, line: str, route: RouteView) -> _Watched:
        """A new monitor for `line` on `route` (its saved state when it was on that route)."""
        profile = self.profile_of(route)
        problem = None if profile is None else profile.problem(self.channels, list(route.labels))
        if problem is not None:
            log.warning("line %s: %s; not watched for drift", line, problem,
                        extra={"line": line})
            profile = None
        elif profile is None:
            log.info("line %s: %s v%s has no drift profile; not watched for drift", line,
                     *route.key)
        saved = self.saved.pop(line, None)
        monitor = None
        if profile is not None:
            state = _restored(saved, route.key)
            monitor = DriftMonitor(profile, self.monitor_settings, **state)
        watched = _Watched(route.key, monitor)
        with self._lock:
            replaced = self.lines.pop(line, None)
            if len(self.lines) >= MAX_LINES:
                self.lines.pop(next(iter(self.lines)))
            self.lines[line] = watched
        if saved is not None or replaced is not None:  # the file follows the line's route
            self._save()
        self.publish(self.topic(line), _encode(self._doc(line, watched)))
        return watched

    def _evaluated(self, line: str, watched: _Watched, ev: Evaluation) -> None:
        if ev.changed:
            self.changed()
            worst = max(ev.indicators, key=lambda k: ev.indicators[k] / max(
                self.monitor_settings.thresholds[k].drift, 1e-9))
            change: DriftChange = {
                "type": "drift", "line": line, "adapter": watched.key[0],
                "version": watched.key[1], "previous": ev.previous, "state": ev.state,
                "windows": ev.windows, "indicator": worst, "value": ev.indicators[worst],
                "topic": self.topic(line)}
            self.event(change)
            log.warning("line %s: drift state %s -> %s (%s)", line, ev.previous, ev.state,
                        ev.indicators, extra={"line": line})
            self._save()
        now = time.monotonic()
        if ev.changed or now - watched.published >= self.settings.publish_s:
            watched.published = now
            self.publish(self.topic(line), _encode(self._doc(line, watched)))

    def _doc(self, line: str, watched: _Watched) -> DriftState:
        adapter, version = watched.key
        doc = {"line": line, "adapter": adapter, "version": version}
        m = watched.monitor
        if m is None:
            return {**doc, "state": UNKNOWN, "since": None, "windows": 0, "indicators": {},
                    "thresholds": {}, "reason": "the line's model carries no drift profile"}
        limits = {k: {"warn": v.warn, "drift": v.drift}
                  for k, v in self.monitor_settings.thresholds.items()}
        return {**doc, "state": m.state, "since": iso(m.since), "since_ts": round(m.since, 3),
                "windows": m.seen, "indicators": dict(m.indicators), "thresholds": limits}

    # -- persistence -------------------------------------------------------------------------
    def _save(self) -> None:
        """Every watched line's state (and saved ones not seen since the start), atomically."""
        with self._lock:
            docs = {line: self._doc(line, w) for line, w in self.lines.items()
                    if w.monitor is not None}
            docs = {**self.saved, **docs}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(docs, indent=1).encode())
        except OSError as exc:  # the state is still published; only a restart loses it
            log.warning("cannot save %s: %s", self.path, exc)

    def _load(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            docs = json.loads(self.path.read_text())
            return {line: doc for line, doc in docs.items()
                    if isinstance(doc, dict) and doc.get("line") == line}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s is unreadable (%s); drift states start at ok", self.path, exc)
            return {}


def _restored(saved: dict | None, key: tuple[str, int | None]) -> dict:
    """DriftMonitor keyword arguments from a saved doc of the same route; {} otherwise."""
    if saved is None or (saved.get("adapter"), saved.get("version")) != key:
        return {}
    try:
        indicators = {str(k): float(v) for k, v in (saved.get("indicators") or {}).items()}
        return {"state": str(saved["state"]), "since": float(saved["since_ts"]),
                "indicators": indicators}
    except (KeyError, TypeError, ValueError):
        return {}


def _encode(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
