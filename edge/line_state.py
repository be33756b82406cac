"""Which adapter each line is assigned, as operators changed it, persisted across restarts.

    state = LineState.load(cfg)                  # <state_dir>/routing.json, or topics.lines
    state = state.activate("press-3", "bearing", 4)   # a new object; the old one is unchanged
    state = state.rollback("press-3")            # the assignment before the last change
    state.save()

An assignment names an adapter (None = the base model) and a version (None = follow the
newest held version, so a newer upload switches the line by itself). The config's
`[topics.lines]` is the starting point; once an operator activates or rolls back, the saved
file wins at the next start, until the config's lines change (then the config wins again:
an edited config is a deliberate new start).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .bundle import atomic_write
from .config import Config
from .errors import BadMessage, ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "routing.json"
HISTORY = 16  # rollbacks remembered per line


@dataclass(frozen=True)
class Assignment:
    adapter: str | None  # None = the base model
    version: int | None = None  # None = the newest held version

    def describe(self) -> dict:
        return {"adapter": self.adapter or "base", "version": self.version}

    @classmethod
    def parse(cls, doc: dict) -> Assignment:
        adapter, version = doc.get("adapter"), doc.get("version")
        if adapter in (None, "base"):
            return cls(None, None)
        if not isinstance(adapter, str) or not (version is None or type(version) is int):
            raise ValueError(f"bad assignment {doc!r}")
        return cls(adapter, version)


@dataclass(frozen=True)
class LineState:
    """line -> assignment, when it was made, and the earlier assignments (newest last)."""

    path: Path | None
    lines: dict[str, Assignment]
    since: dict[str, float] = field(default_factory=dict)
    history: dict[str, tuple[Assignment, ...]] = field(default_factory=dict)
    config_lines: dict = field(default_factory=dict)  # topics.lines when this was saved

    @classmethod
    def from_config(cls, cfg: Config, path: Path | None = None) -> LineState:
        now = time.time()
        lines = {line: Assignment(r.adapter, r.version) for line, r in cfg.topics.lines.items()}
        return cls(path=path, lines=lines, since=dict.fromkeys(lines, now),
                   config_lines=_config_lines(cfg))

    @classmethod
    def load(cls, cfg: Config) -> LineState:
        path = Path(cfg.device.state_dir) / STATE_FILE
        start = cls.from_config(cfg, path)
        if not path.is_file():
            return start
        try:
            doc = json.loads(path.read_text())
            saved = cls(path=path, config_lines=doc["config_lines"],
                        lines={k: Assignment.parse(v) for k, v in doc["lines"].items()},
                        since={k: float(v) for k, v in doc.get("since", {}).items()},
                        history={k: tuple(Assignment.parse(a) for a in v)
                                 for k, v in doc.get("history", {}).items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
                OverflowError) as exc:  # any corrupt file: start from the config
            log.warning("%s is unreadable (%s); starting from topics.lines", path, exc)
            return start
        if saved.config_lines != start.config_lines:
            log.warning("topics.lines changed since %s was saved; the config's routing wins",
                        path)
            return start
        return saved

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"lines": {k: a.describe() for k, a in self.lines.items()},
               "since": self.since, "config_lines": self.config_lines,
               "history": {k: [a.describe() for a in v] for k, v in self.history.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            raise ConfigError(f"device.state_dir: cannot save {self.path} ({exc})") from None

    def activate(self, line: str, adapter: str | None, version: int | None) -> LineState:
        new = Assignment(adapter, version)
        history = dict(self.history)
        old = self.lines.get(line)
        if old is not None and old != new:
            history[line] = (*history.get(line, ()), old)[-HISTORY:]
        return replace(self, lines={**self.lines, line: new}, history=history,
                       since={**self.since, line: time.time()})

    def off_version(self, name: str, version: int, remaining: bool) -> LineState:
        """Every line on `name` v`version` (pinned, or following the newest) moved off it:
        to the newest remaining version of `name`, or the base model when none remains.
        Not an operator's change: the history is left as it was."""
        moved = {line: Assignment(name, None) if remaining else Assignment(None)
                 for line, a in self.lines.items()
                 if a.adapter == name and (a.version == version or a.version is None)}
        if not moved:
            return self
        now = time.time()
        return replace(self, lines={**self.lines, **moved},
                       since={**self.since, **dict.fromkeys(moved, now)})

    def rollback(self, line: str) -> LineState:
        earlier = self.history.get(line, ())
        if not earlier:
            raise BadMessage(f"line {line!r} has no earlier adapter to roll back to")
        history = {**self.history, line: earlier[:-1]}
        return replace(self, lines={**self.lines, line: earlier[-1]}, history=history,
                       since={**self.since, line: time.time()})


def _config_lines(cfg: Config) -> dict:
    return {line: Assignment(r.adapter, r.version).describe()
            for line, r in sorted(cfg.topics.lines.items())}
