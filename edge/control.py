"""Adapter control: uploads (MQTT or the watch folder), activate, rollback, retained state.

    <prefix>/<device>/adapters/put/<name>   in   an adapter envelope (docs/FORMATS.md)
    <prefix>/<device>/adapters/activate     in   {"line", "name", "version"?, "id"?}
    <prefix>/<device>/adapters/rollback     in   {"line", "id"?}
    <prefix>/<device>/adapters/revoke       in   {"name", "version", "reason"?, "id"?,
                                                  "key_id", "signature"}: signed like adapters
    <prefix>/<device>/adapters/state        out  retained: lines, held and revoked adapters,
                                                 the last change

Handlers on paho's thread only check the size and queue the command; one control thread
runs them in arrival order, so changes never race. A change builds the new routing table,
installs it in the route holder in one assignment (the worker picks it up at its next
batch), then saves the assignments; a failed save puts the previous table back. A refused
command changes nothing and is answered on the errors topic.

The control plane gets what it uses as arguments (edge/service.py wires them):

    ControlPlane(settings=ControlSettings.from_config(cfg, manifest.bank), lines=lines,
                 routing=RouteHolder(table), build=TableBuilder(...).build, store=store,
                 link=link, counters=counters)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .adapters import AdapterStore
from .commands import MAX_COMMAND_BYTES, Command, parse_command, request_id
from .config import Config
from .contract import ADAPTER_COMMANDS, ANY, TopicLayout, name_problem
from .envelope import MAX_HEADER, REVOKE_CONTEXT, peek_id, verify
from .errors import EdgeError
from .inbox import FolderWatcher
from .line_state import LineState
from .routing import RouteHolder, RoutingTable
from .status import Counters

if TYPE_CHECKING:  # the payload types (docs/schemas/)
    from .contract.payloads import AdapterState, LastCommand

log = logging.getLogger(__name__)

QUEUE_BOUND = 32  # commands waiting for the control thread
DONE_IDS = 1024  # ids of applied commands remembered: a repeated id is not applied twice
QUEUED_PUTS = 4  # envelope bytes waiting, in largest-envelope units: memory stays bounded


class ControlLink(Protocol):
    """What the control plane uses of the MQTT link (edge/mqtt.py's MqttLink)."""

    def handle(self, topic_filter: str, handler: Callable[[Any], Any],
               qos: int | None = None) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int | None = None,
                retain: bool = False) -> Any: ...

    def report(self, msg_id: str | None, topic: str, reason: str) -> None: ...


@dataclass(frozen=True)
class ControlSettings:
    """The pieces of the config (and the bundle) that the control plane reads."""

    device: str  # device.id, named in the state document
    topics: TopicLayout  # <prefix>/<device>/adapters/... (edge/contract/topics.py)
    max_put: int  # largest envelope taken: limits.max_adapter_bytes + header + framing
    keep_versions: int  # adapters.keep_versions
    bank: int  # the bundle's bank size K (0: not a bank bundle), shown in the state
    watch_dir: Path | None = None  # adapters.watch_dir; None: MQTT only
    watch_interval_s: float = 0.5  # adapters.watch_interval_s

    @classmethod
    def from_config(cls, cfg: Config, bank: int) -> ControlSettings:
        adapters = cfg.adapters
        return cls(device=cfg.device.id, topics=cfg.topic_layout,
                   max_put=cfg.limits.max_adapter_bytes + MAX_HEADER + 12,
                   keep_versions=adapters.keep_versions, bank=bank,
                   watch_dir=adapters.watch_dir, watch_interval_s=adapters.watch_interval_s)


class ControlPlane:
    """Owns the line assignments and installs routing tables into the route holder."""

    def __init__(self, *, settings: ControlSettings, lines: LineState, routing: RouteHolder,
                 build: Callable[[LineState], RoutingTable], store: AdapterStore,
                 link: ControlLink, counters: Counters,
                 changed: Callable[[], object] | None = None) -> None:
        self.settings, self.lines, self.routing, self.build = settings, lines, routing, build
        self.store, self.link, self.counters = store, link, counters
        # With worker processes: every worker serves a change before it is answered
        # (edge/workers/route_sync.py RouteSignal.changed).
        self.changed = changed
        self.queue: queue.Queue[Command | None] = queue.Queue(QUEUE_BOUND)
        self.last: LastCommand = {}
        self._active: dict[str, tuple] = {}  # line -> (model key, since): when it took over
        self.max_put = settings.max_put
        self.topics = settings.topics
        self.state_topic = self.topics.state
        link.handle(self.topics.put(ANY), self._on_put, qos=1)
        for kind in ADAPTER_COMMANDS:
            link.handle(self.topics.command(kind), self._on_command, qos=1)
        watch = settings.watch_dir
        self.watcher = None if watch is None else FolderWatcher(
            watch, self.submit_file, max_bytes=self.max_put,
            interval=settings.watch_interval_s,
            report=lambda name, reason: self._refuse(None, f"file:{name}", reason))
        self._thread: threading.Thread | None = None
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._done_ids: deque[str] = deque(maxlen=DONE_IDS)  # commands applied, by "id"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-control", daemon=True)
        self._thread.start()
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(10.0)

    def alive(self) -> bool:
        """True while the control thread runs (a bug in a command must never end it)."""
        return self._thread is not None and self._thread.is_alive()

    # -- intake (paho's thread, the watcher's thread) ---------------------------------------
    def _on_put(self, msg) -> None:
        name = self.topics.put_name(msg.topic) or ""
        if not msg.payload:  # clearing a retained message: nothing to do
            return None
        if msg.retain:
            return self._refuse_retained(peek_id(msg.payload) or name, msg.topic)
        problem = name_problem(name, "adapter")
        if problem:  # the topic level names the adapter: it follows the one rule too
            return self._refuse(peek_id(msg.payload), msg.topic, f"put/<name>: {problem}")
        if len(msg.payload) > self.max_put:
            return self._refuse(peek_id(msg.payload) or name, msg.topic,
                                f"envelope of {len(msg.payload)} bytes exceeds "
                                f"the limit of {self.max_put} bytes (limits.max_adapter_bytes)")
        self.submit(Command("put", msg.payload, msg.topic, "mqtt", time.monotonic(), name))

    def _on_command(self, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if not msg.payload:
            return None
        if msg.retain:
            return self._refuse_retained(request_id(msg.payload), msg.topic)
        if len(msg.payload) > MAX_COMMAND_BYTES:
            return self._refuse(None, msg.topic, f"{kind} command of {len(msg.payload)} bytes "
                                f"exceeds {MAX_COMMAND_BYTES} bytes")
        self.submit(Command(kind, msg.payload, msg.topic, "mqtt", time.monotonic()))

    def submit_file(self, data: bytes, source: str, done: Callable[[str | None], None]) -> None:
        name = source.partition(":")[2]
        self.submit(Command("put", data, f"file:{name}", source, time.monotonic(), None, done))

    def submit(self, cmd: Command) -> None:
        """Queue `cmd` for the control thread; refused (and reported) when the queue holds
        too many commands or bytes."""
        with self._bytes_lock:
            room = self._queued_bytes + len(cmd.payload) <= QUEUED_PUTS * self.max_put
            if room:
                try:
                    self.queue.put_nowait(cmd)
                    self._queued_bytes += len(cmd.payload)
                    return
                except queue.Full:
                    pass
        reason = (f"{self.queue.qsize()} adapter commands ({self._queued_bytes} bytes) are "
                  "already waiting; try again")
        self._refuse(cmd.name, cmd.topic, reason)
        if cmd.done is not None:
            cmd.done(reason)

    def _refuse_retained(self, msg_id: str | None, topic: str) -> None:
        """A retained command would run again at every reconnect, undoing later changes."""
        self._refuse(msg_id, topic, "retained adapter commands are refused: publish them "
                     "with retain = false (and clear the retained one with an empty payload)")

    def _refuse(self, msg_id: str | None, topic: str, reason: str) -> None:
        log.warning("refused %s: %s", topic, reason, extra={"id": msg_id})
        self.counters.error("command")
        self.link.report(msg_id, topic, reason)

    # -- the control thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while (cmd := self.queue.get()) is not None:
            with self._bytes_lock:
                self._queued_bytes -= len(cmd.payload)
            reason = None
            msg_id = (peek_id(cmd.payload) if cmd.kind == "put" else None) or cmd.name
            try:
                msg_id = self._execute(cmd) or msg_id
            except EdgeError as exc:
                reason = str(exc)
            except Exception as exc:  # a bug must not end the control thread
                log.exception("%s command failed", cmd.kind)
                reason = f"internal error: {type(exc).__name__}: {exc}"
            if reason is not None:
                self.last = {"action": cmd.kind, "topic": cmd.topic, "result": "refused",
                             "reason": reason[:500], "ts": round(time.time(), 3)}
                self._refuse(msg_id or request_id(cmd.payload), cmd.topic, reason)
            if cmd.done is not None:
                try:
                    cmd.done(reason)
                except Exception:  # filing a dropped file must not end the control thread
                    log.exception("after the %s command from %s", cmd.kind, cmd.source)

    def _execute(self, cmd: Command) -> str | None:
        """Run one command; returns the id its answer names."""
        if cmd.kind == "put":
            held, new = self.store.accept(cmd.payload, cmd.source, cmd.name)
            self.last = {"action": "put", "name": held.entry.name,
                         "version": held.entry.version, "sha256": held.entry.sha256,
                         "result": "accepted" if new else "already held"}
            if new:  # lines that follow the newest version switch now
                self._install(self.lines, cmd)
                self._prune(held.entry.name)
            else:
                self.publish_state()
            return f"{held.entry.name}.v{held.entry.version}"
        doc = parse_command(cmd.payload, cmd.kind)
        if doc["id"] is not None and doc["id"] in self._done_ids:  # a QoS 1 redelivery
            self.publish_state()
            return doc["id"]
        if cmd.kind == "revoke":
            self._revoke(doc, cmd)
        else:
            if cmd.kind == "rollback":
                lines = self.lines.rollback(doc["line"])
            else:
                lines = self.lines.activate(doc["line"], doc["name"], doc["version"])
            self.last = {"action": cmd.kind, **doc, "result": "done"}
            self._install(lines, cmd)
        if doc["id"] is not None:
            self._done_ids.append(doc["id"])
        return doc["id"]

    def _revoke(self, doc: dict, cmd: Command) -> None:
        """Withdraw a version: its signature checked like an adapter's, the revocation saved,
        then every line on it moves to the newest remaining version of the adapter (the
        base model when none remains) and the new table is installed."""
        store = self.store
        signer = verify(doc["signed"], store.trusted, store.require_signed,
                        context=REVOKE_CONTEXT, what="revoke command")
        name, version, reason = doc["name"], doc["version"], doc["reason"]
        held = store.revoke(name, version, reason=reason, signer=signer)
        before = {line: route.key for line, route in self.routing.current().routes.items()}
        remaining = store.holds_any(name)
        lines = self.lines.off_version(name, version, remaining)
        self.last = {"action": "revoke", "name": name, "version": version, "reason": reason,
                     "id": doc["id"], "signer": signer, "was_held": held is not None,
                     "result": "done"}
        try:
            self._install(lines, cmd)
        except EdgeError as exc:  # never keep serving a revoked version: the base takes over
            log.warning("revoke: %s; lines on %s go to the base model", exc, name)
            self._install(self.lines.off_version(name, version, remaining=False), cmd)
        self.last["lines"] = {line: route.describe()
                              for line, route in self.routing.current().routes.items()
                              if before.get(line) != route.key}
        self.publish_state()

    def _install(self, lines: LineState, cmd: Command) -> None:
        """Build the table (it may refuse), install it with one assignment, then save the
        assignments (fsync: milliseconds, kept out of the switch); a failed save puts the
        previous table back. The state, which is the answer, goes out only after the save."""
        start = time.perf_counter()
        table = self.build(lines)
        previous = self.routing.install(table)
        switch_ms = (time.perf_counter() - start) * 1000.0
        installed_ms = (time.monotonic() - cmd.received) * 1000.0
        if lines is not self.lines:
            try:
                lines.save()
            except EdgeError:
                self.routing.install(previous)
                raise
        self.lines = lines
        self.counters.add(swaps=1)
        self._note_active(table)
        self.store.pin(table.adapter_keys())
        self.last.update(switch_ms=round(switch_ms, 3), ts=round(time.time(), 3),
                         save_ms=round((time.perf_counter() - start) * 1000.0 - switch_ms, 3),
                         installed_ms=round(installed_ms, 3),  # received -> serving it
                         command_ms=round((time.monotonic() - cmd.received) * 1000.0, 3))
        log.info("%s: routes now %s (switch %.2f ms)", cmd.kind, table.describe(), switch_ms)
        if self.changed is not None:
            self.changed()
        self.publish_state()

    def _prune(self, name: str) -> None:
        """Old versions go once `adapters.keep_versions` newer ones are held; a version a
        line uses or may roll back to stays."""
        store, in_use = self.store, set(self.routing.current().adapter_keys())
        for assignment in (a for h in self.lines.history.values() for a in h):
            if assignment.adapter == name and assignment.version is not None:
                in_use.add((name, assignment.version))
        gone = store.prune(name, self.settings.keep_versions, in_use)
        if gone:
            log.info("deleted old versions %s of %s", [v for _, v in gone], name)
            if self.changed is not None:
                self.changed()
            self.publish_state()

    # -- state --------------------------------------------------------------------------------
    def _note_active(self, table: RoutingTable) -> None:
        now = time.time()
        self._active = {line: (r.key, since if key == r.key else now)
                        for line, r in table.routes.items()
                        for key, since in [self._active.get(line, (None, now))]}

    def state_doc(self) -> AdapterState:
        table = self.routing.current()
        if not self._active:
            self._note_active(table)
        lines = {}
        for line, route in table.routes.items():
            assignment = self.lines.lines.get(line)
            follow = assignment is not None and assignment.adapter is not None \
                and assignment.version is None
            lines[line] = {**route.describe(), "sha256": route.sha256,
                           "follow": "latest" if follow else "pinned",
                           "since": round(self._active.get(line, (None, 0.0))[1], 3)}
        if table.default is not None:
            lines["*"] = table.default.describe()
        return {"device": self.settings.device, "ts": round(time.time(), 3), "lines": lines,
                "held": self.store.describe(), "revoked": self.store.revoked.describe(),
                "bank": self.settings.bank, "last": self.last}

    def publish_state(self):
        payload = json.dumps(self.state_doc(), separators=(",", ":")).encode()
        return self.link.publish(self.state_topic, payload, qos=1, retain=True)
