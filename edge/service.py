"""edge-runtime: sensor messages in over MQTT, batched inference, results out.

Threads:
    paho network thread   receive -> line known? size within the limit? -> bounded queue
                          (limits.queue_bound messages and QUEUE_BYTES of payload)
    worker                queue -> micro-batch -> decode + check -> group rows by model ->
                          normalise -> one engine.run per group (per batch with a bank)
                          -> one result per row
                          (every unusable message, on either thread: one error report)
    stats                 every topics.stats_interval_s: counters, latency, queue depth
    capture               windows the worker kept as drift evidence -> <state_dir>/capture
                          (a bounded queue; edge/drift/capture.py)
    control               adapter put / activate / rollback and watch-folder drops, one at
                          a time: checks, then a new routing table is installed in the
                          route holder between batches (edge/control.py, docs/ADAPTERS.md)

    svc = Service(load_config("firmware_configs/cpu.toml"), bundle_dir="bundle")
    svc.start(); ...; svc.stop()          # or svc.run_forever() until SIGTERM / SIGINT

With `[workers] count > 1` each worker process runs one Service with its `WorkerRole`
(edge/workers/): the leader has the control plane, the status and the drift watch; the
others serve their share of the sensor topics and follow the leader's routing.
"""

from __future__ import annotations

import logging
import math
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adapters import AdapterStore
from .batching import LatencyStats, MicroBatcher, WorkItem, group_rows, row_index
from .bundle import INDEX_INPUT, read_manifest, verify_base
from .codec import (
    InputSpec,
    best_effort_id,
    decode_sensor,
    encode_doc,
    encode_event,
    result_doc,
    softmax,
)
from .config import Config, load_config
from .contract import line_of, name_problem
from .contract.shapes import sample_shape_problem
from .control import ControlPlane, ControlSettings
from .dedupe import Dedupe
from .drift.capture import Capture
from .drift.capture_store import Record
from .drift.monitor import window_stats
from .drift.profile import DriftProfile
from .drift.watch import DriftWatch
from .engine_config import check_bundle_matches, open_engine
from .errors import (
    AdapterRejected,
    BadMessage,
    ConfigError,
    IncompatibleBundle,
    ProviderError,
)
from .heap import HeapTrim
from .line_state import LineState
from .metrics import Metrics
from .mqtt import MqttLink, Token, message_properties
from .outbox import Outbox
from .placement import describe as describe_placement
from .providers import CPU
from .routing import Route, RouteHolder, RoutingTable, TableBuilder
from .sparkplug.node import SparkplugNode, node_properties
from .state_lock import StateLock
from .status import Counters, error_kind, online_details, stats_payload, status_payload
from .workers.role import WorkerRole, sensor_filters, worker_config, worker_dir
from .workers.route_sync import RouteFollower, RouteSignal

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 10.0
PUBLISH_WAIT_S = 5.0
QUEUE_BYTES = 64 << 20  # raw payloads waiting for the worker, besides limits.queue_bound
JSON_BYTES_PER_VALUE = 24  # a number in a JSON window with its separator: 17 digits, sign, e
ROOM_WAIT_S = 1.0  # paho's thread waits this long at most for room in a full queue
TRIM_AFTER_BYTES = 1 << 20  # a queue this deep, once drained, gives its heap back (heap.py)
DEFERRED = object()  # a window that arrived while stopping: not acknowledged, not answered


@dataclass
class Pending:
    """A message accepted by the network thread, decoded later by the worker."""

    line: str
    topic: str
    payload: bytes
    content_type: str | None
    props: dict[str, str]
    received: float  # time.monotonic() at arrival: the batcher's wait and the latency
    ack: Token | None = None  # acknowledged to the broker once its answer is in the outbox


def sensor_receive_maximum(queue_bound: int, sample_shape: tuple[int, ...]) -> int:
    """Sensor windows the broker may send unacknowledged (CONNECT Receive Maximum): no more
    than the queue holds, by count (limits.queue_bound) and by bytes (QUEUE_BYTES of JSON
    windows of `sample_shape`). Every window in the queue is unacknowledged, so a backlog
    then waits at the broker, not in 'queue full' errors: the reader outpaces inference."""
    by_bytes = QUEUE_BYTES // (JSON_BYTES_PER_VALUE * max(1, math.prod(sample_shape)))
    return max(1, min(queue_bound, by_bytes))


class Service:
    """The gateway runtime for one config and bundle (`bundle_dir` overrides device.bundle).

    Loads and checks the bundle, the engine and every routed adapter on construction, so a
    bad bundle fails before any MQTT traffic. `routes` is the table in force: the control
    plane replaces it as a whole in `routing` (a RouteHolder), never edits it.
    """

    def __init__(self, config: Config | str | Path, bundle_dir: str | Path | None = None,
                 role: WorkerRole | None = None) -> None:
        self.role = role  # None: the one process of the runtime
        self.leader = role is None or role.leader
        self.cfg = worker_config(config if isinstance(config, Config) else load_config(config),
                                 role)
        state = self.cfg.device.state_dir  # one runtime per state (per worker directory)
        self.state_lock = StateLock.acquire(state if role is None else
                                            worker_dir(state, role.index))
        self.outbox: Outbox | None = None
        self.metrics: Metrics | None = None  # [metrics]: Prometheus and /healthz
        try:
            self._open(bundle_dir)
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            if self.outbox is not None:
                self.outbox.close()
            self.state_lock.release()
            raise

    def _open(self, bundle_dir: str | Path | None) -> None:
        role = self.role  # past worker 0, each worker has its own outbox
        self.outbox = Outbox.open(self.cfg, None if role is None or role.index == 0 else
                                  worker_dir(self.cfg.device.state_dir, role.index))
        self.dedupe = Dedupe.load(self.outbox)
        bundle = bundle_dir if bundle_dir is not None else self.cfg.device.bundle
        if bundle is None:
            raise ConfigError(f"{self.cfg.source or 'config'}: device.bundle: (missing): set it "
                              "or pass --bundle DIR")
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        check_bundle_matches(self.cfg, self.manifest, self.bundle)
        self.engine = open_engine(self.cfg, verify_base(self.bundle, self.manifest),
                                  self.manifest, placement=True)
        self.placement: dict[str, dict[str, int]] = {}  # provider -> op -> nodes, at warm-up
        self.spec = self._input_spec()
        self.store = AdapterStore.open(self.cfg, self.bundle, self.manifest, self.engine,
                                       follower=not self.leader)
        self.tables = TableBuilder(self.store, self.manifest, self.spec.shape)
        self.follower = None if self.leader or role.retiring else RouteFollower(
            self.cfg.device.state_dir, role.index, self._follow_routes)  # before the table
        lines = self._line_state()
        self.routing = RouteHolder(self.tables.build(lines))
        self.store.pin(self.routes.adapter_keys())
        self.queue: queue.Queue[Pending] = queue.Queue(maxsize=self.cfg.limits.queue_bound)
        self._queued_bytes = 0  # payload bytes in self.queue (guarded by _intake_lock)
        self._heap = HeapTrim(after_bytes=TRIM_AFTER_BYTES)  # a burst's pages back to the OS
        self.counters = Counters()
        self.latency = LatencyStats()
        self._intake_closed = threading.Event()  # set by stop(): no new work, drain the queue
        self._intake_lock = threading.Lock()  # no put can slip in after the intake closes
        self._room = threading.Condition(self._intake_lock)  # the worker took a batch
        self._stalled = False  # a wait for room timed out; set until the worker takes one
        self._abort = threading.Event()  # set when the drain runs out of time
        self._closed = threading.Event()  # ends the stats thread
        self._threads: list[threading.Thread] = []
        self._last_publish = None  # MQTTMessageInfo of the newest result
        self._topics: dict[str, str] = {}  # line -> inference topic
        self._stopped = False
        broker = self.cfg.broker
        # A window left unacknowledged in a persistent session reaches the next start.
        self._redelivered = not broker.clean_start and broker.session_expiry > 0
        will = status_payload("offline", self.cfg.device.id, reason="connection lost",
                              stamp=False) if self.leader else None  # the gateway's status
        self.link = MqttLink(self.cfg, will=will, on_connect=self._announce,
                             outbox=self.outbox, dedupe=self.dedupe, counters=self.counters,
                             receive_maximum=sensor_receive_maximum(
                                 self.cfg.limits.queue_bound, self.spec.shape))
        self.control = self._control_plane(lines)  # its topics match before the sensors'
        self._sensor_intake()
        self.drift = self._drift_watch() if self.leader else None  # sees its 1/N share
        self.capture = self._capture()
        self.sparkplug = self._sparkplug() if self.leader else None
        self._json_results = self.sparkplug is None or self.cfg.sparkplug.mode == "alongside"
        self.metrics = Metrics.open(self.cfg, self)  # a taken port fails the start here

    def _control_plane(self, lines: LineState) -> ControlPlane | None:
        """The leader's: one truth for adapters and routing, which the others follow."""
        if not self.leader:
            return None
        role = self.role
        signal = None if role is None or role.count == 1 else RouteSignal(
            self.cfg.device.state_dir, range(1, role.count))
        return ControlPlane(
            settings=ControlSettings.from_config(self.cfg, self.manifest.bank), lines=lines,
            routing=self.routing, build=self.tables.build, store=self.store, link=self.link,
            counters=self.counters, changed=None if signal is None else signal.changed)

    def _sensor_intake(self) -> None:
        """The sensor filters: plain for one process, shared among workers; the other form,
        which a persistent session may keep from an earlier run, is unsubscribed."""
        subscribe, drop = sensor_filters(self.cfg, self.role)
        for topic_filter in subscribe:
            self.link.handle(topic_filter, self._on_sensor)
        if self.role is not None and self.role.retiring:  # what its session still holds
            for topic_filter in drop:
                self.link.handle(topic_filter, self._on_sensor, subscribe=False)
        self.link.unsubscribe_on_connect = drop

    def _follow_routes(self) -> None:
        """A follower worker takes the leader's change (edge/workers/route_sync.py)."""
        self.store.refresh()
        table = self.tables.build(LineState.load(self.cfg))
        self.routing.install(table)
        self.store.pin(table.adapter_keys())

    def _drift_watch(self) -> DriftWatch | None:
        """Each watched line's monitor ([drift]); None when drift.enabled is false."""
        if not self.cfg.drift.enabled:
            return None
        layout = self.cfg.topic_layout
        return DriftWatch(
            self.cfg.drift, layout.drift, self.cfg.device.state_dir,
            channels=self.spec.channels, profile_of=self._drift_profile,
            publish=lambda topic, doc: self.link.publish(topic, doc, qos=1, retain=True),
            event=lambda doc: self.link.publish(layout.events, encode_event(doc), qos=1),
            changed=lambda: self.counters.add(drift_changes=1))

    def _capture(self) -> Capture | None:
        """The capture store's writer ([drift.capture]); None when drift or capture is off."""
        settings = self.cfg.drift.capture
        if self.drift is None or not settings.enabled:
            return None
        return Capture(settings, self.cfg.device.state_dir,
                       captured=lambda n: self.counters.add(captured=n),
                       dropped=lambda n: self.counters.add(capture_dropped=n))

    def _sparkplug(self) -> SparkplugNode | None:
        """The Sparkplug B edge node (edge/sparkplug/node.py), on its own connection."""
        if not self.cfg.sparkplug.enabled:
            return None
        drift = None if self.drift is None else (
            lambda line: (self.drift.state_of(line) or (None,))[0])
        return SparkplugNode(self.cfg, properties=node_properties(self.engine.provider),
                             lines=lambda: self.routes.routes, drift=drift,
                             report=lambda _id, topic, why: self._reject(b"", {}, topic, why))

    def _drift_profile(self, route: Route) -> DriftProfile | None:
        """The profile of the model serving `route`: the adapter's, or the base's."""
        if route.adapter is None:
            return self.manifest.base.drift_profile
        return self.store.resolve(route.adapter, route.version).entry.drift_profile

    def _line_state(self) -> LineState:
        """The saved line assignments, or topics.lines when they no longer fit the held
        adapters (say, after a bundle update); topics.lines naming an adapter that is not
        held is an error at start-up, not a surprise at the first message."""
        lines = LineState.load(self.cfg)
        try:
            self.tables.build(lines)
            return lines
        except AdapterRejected as exc:
            fresh = LineState.from_config(self.cfg, lines.path)
            if fresh.lines == lines.lines:
                raise IncompatibleBundle(f"topics.lines: {exc}") from None
            log.warning("saved routing no longer fits (%s); using topics.lines", exc)
            return self._checked(fresh)

    def _checked(self, lines: LineState) -> LineState:
        try:
            self.tables.build(lines)
        except AdapterRejected as exc:
            raise IncompatibleBundle(f"topics.lines: {exc}") from None
        return lines

    @property
    def routes(self) -> RoutingTable:
        """The routing table in force (read once per batch: a swap lands between batches)."""
        return self.routing.current()

    def _input_spec(self) -> InputSpec:
        shape = self.manifest.inputs[0].shape  # ["batch", *sample]: (F,), (C, L), (C, H, W)
        problem = sample_shape_problem(shape[1:])
        if problem:
            raise IncompatibleBundle(f"{self.bundle}: model input shape {shape} is not "
                                     f"(batch, *sample): {problem}")
        return InputSpec(shape=tuple(shape[1:]),
                         max_payload_bytes=self.cfg.limits.max_payload_bytes)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, connect_timeout: float | None = CONNECT_WAIT_S) -> bool:
        """Warm up, start the worker and stats threads and connect. True when connected and
        subscribed within `connect_timeout` (None: do not wait); otherwise paho keeps
        retrying in the background."""
        self._warm_up()
        if self.metrics is not None:
            self.metrics.warmed()
        batching = self.cfg.batching
        batcher = MicroBatcher(self.queue, batching.max_batch, batching.max_wait_ms / 1000.0)
        self._threads = [threading.Thread(target=self._work, args=(batcher,),
                                          name="edge-worker", daemon=True)]
        if self.cfg.topics.stats_interval_s > 0:
            self._threads.append(threading.Thread(target=self._stats_loop,
                                                  name="edge-stats", daemon=True))
        for thread in self._threads:
            thread.start()
        if self.control is not None:
            self.control.start()
        if self.follower is not None:
            self.follower.start()
        self.link.start()
        if self.sparkplug is not None:
            self.sparkplug.start()
        if connect_timeout is None:
            return self.link.subscribed.is_set()
        ready = self.link.wait_ready(connect_timeout)
        if not ready:
            self._warn_unconnected(connect_timeout)
        return ready

    def _warn_unconnected(self, waited: float) -> None:
        broker = self.cfg.broker
        log.warning("not connected to %s:%s after %.0f s; still trying", broker.host,
                    broker.port, waited)

    def stop(self, timeout: float = 10.0, *, end_session: bool = False) -> None:
        """Stop taking messages, finish what is queued (within `timeout`), publish the
        results, set the status offline and disconnect. Safe to call twice. `end_session`:
        the broker forgets this client's session (a retiring worker's last act)."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        with self._room:
            self._intake_closed.set()
            self._room.notify_all()  # a message waiting for room: deferred, not queued
        worker = self._threads[0] if self._threads else None
        if worker is not None:
            worker.join(max(deadline - time.monotonic() - 1.0, 0.1))
            if worker.is_alive():
                log.warning("drain timed out; dropping %d queued windows", self.queue.qsize())
                self._abort.set()
                worker.join(2.0)
        self._fail_queued("the service stopped before this message was processed")
        self._wait_published(self._last_publish, max(deadline - time.monotonic(), 0.5))
        self._closed.set()
        if self.capture is not None:  # the worker has ended: nothing more is offered
            self.capture.close(max(deadline - time.monotonic(), 0.5))
        if self.follower is not None:
            self.follower.stop()
        if self.control is not None:
            self.control.stop()
        if self.leader:
            info = self.link.publish(self.cfg.topic_layout.status, status_payload(
                "offline", self.cfg.device.id, reason="shutdown"), qos=1, retain=True)
            self._wait_published(info, min(PUBLISH_WAIT_S,
                                           max(deadline - time.monotonic(), 0.5)))
        if self.sparkplug is not None:
            self.sparkplug.stop(min(PUBLISH_WAIT_S, max(deadline - time.monotonic(), 0.5)))
        self.link.stop(end_session=end_session)
        if self.metrics is not None:
            self.metrics.close()
        self.outbox.close()
        for thread in self._threads[1:]:
            thread.join(1.0)
        self.state_lock.release()
        log.info("stopped: %s", self.counters.totals)

    def run_forever(self, stop: threading.Event | None = None) -> int:
        """start(), then block until SIGTERM or SIGINT (or `stop` is set: a worker process
        sets it for a signal that came while the service was loading); stop(), return 0."""
        stop = stop if stop is not None else threading.Event()

        def on_signal(signum, frame) -> None:
            log.info("%s: draining and stopping", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start(connect_timeout=None)  # a signal must not wait for the broker
            deadline = time.monotonic() + CONNECT_WAIT_S
            while not stop.wait(0.5):
                if deadline and time.monotonic() > deadline:
                    if not self.link.subscribed.is_set():
                        self._warn_unconnected(CONNECT_WAIT_S)
                    deadline = 0.0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _warm_up(self) -> None:
        """One run per distinct model: a broken adapter fails here, and the first real batch
        does not pay for the memory-mapped adapter's first touch."""
        rows = self.engine.static_batch or 1  # a fixed-batch bundle runs its own shape
        x = np.zeros((rows, *self.spec.shape), np.float32)
        table = self.routes
        seen = {}
        for route in [*table.routes.values(), table.default]:
            if route is not None and route.key not in seen:
                try:
                    seen[route.key] = self._infer(table, [route], x)
                except Exception as exc:  # onnxruntime's untyped errors: one line, no trace
                    error = IncompatibleBundle if self.engine.provider == CPU else ProviderError
                    raise error(f"warm-up of {route.key[0]} on {self.engine.provider} failed: "
                                f"{self.engine.failure(exc)}") from None
        log.info("warm: %d model(s) on %s (providers %s, adapters %s)", len(seen),
                 self.engine.provider, self.engine.providers,
                 "bound on the device" if self.engine.bound else "run from host memory")
        self.placement = self.engine.placement()
        off = [p for p in self.placement if p != self.engine.provider]
        level = logging.WARNING if off and self.engine.provider != CPU else logging.INFO
        log.log(level, "node placement: %s", describe_placement(self.placement))

    # -- network thread ---------------------------------------------------------------------
    def _announce(self) -> None:
        """Retained `online` after every (re)connect: it replaces a last will's `offline`.
        The leader speaks for the gateway; the other workers announce nothing."""
        if not self.leader:
            return
        adapters = sorted({(r.adapter, r.version) for r in self.routes.routes.values()
                           if r.adapter is not None})
        details = online_details(
            engine=self._engine_details(), routes=self.routes.describe(),
            adapters=[{"name": n, "version": v} for n, v in adapters], bundle=str(self.bundle))
        self.link.publish(self.cfg.topic_layout.status, status_payload(
            "online", self.cfg.device.id, details=details), qos=1, retain=True)
        self.control.publish_state()
        if self.drift is not None:
            self.drift.announce()

    def _engine_details(self) -> dict:
        """Where every model of this gateway runs (one session serves all of them)."""
        engine = self.engine
        return {"provider": engine.provider, "providers": list(engine.providers),
                "placement": {p: sum(ops.values()) for p, ops in self.placement.items()},
                "adapters_on_device": engine.bound, "static_batch": engine.static_batch,
                "precision": self.manifest.base.precision}

    def _on_sensor(self, msg) -> bool | None:
        """Cheap checks only: decoding happens on the worker, so paho's thread keeps up.
        True when queued: the worker acknowledges the message once it is answered."""
        received = time.monotonic()
        self.counters.add(received=1)
        topic, payload = msg.topic, msg.payload
        content_type, props = message_properties(msg)
        line = line_of(topic, self.cfg.topics.prefix)
        reason = self._line_problem(topic, line)
        if reason is not None:
            return self._reject(payload, props, topic, reason)
        if len(payload) > self.spec.max_payload_bytes:  # never queued, never parsed
            return self._reject(payload, props, topic, f"payload is {len(payload)} bytes, "
                                f"larger than the limit of {self.spec.max_payload_bytes} bytes")
        reason = self._enqueue(Pending(line, topic, payload, content_type, props, received,
                                       self.link.token(msg)))
        if reason is DEFERRED:
            return True  # never acknowledged: the broker gives it to the next start
        if reason is not None:
            self._reject(payload, props, topic, reason)
        return reason is None

    def _line_problem(self, topic: str, line: str | None) -> str | None:
        table = self.routing.current()  # one read: a swap between reads cannot mix tables
        if line in table.routes:  # a configured line: a valid name by construction
            return None
        prefix = self.cfg.topics.prefix
        if line is None:
            return (f"topic has no line level after {prefix!r}: sensor topics are "
                    f"{prefix}/<line>/sensors/<sensor>")
        problem = name_problem(line, "line")
        if problem:
            return f"{problem} (the topic level after {prefix!r})"
        if table.lookup(line) is None:
            known = ", ".join(sorted(table.routes)) or "(any)"
            return (f"unknown line {line!r}: no route in topics.lines (known lines: "
                    f"{known})")
        return None

    def _enqueue(self, item: Pending) -> str | object | None:
        """Put `item` on the bounded queue; the reason when it cannot go there, or DEFERRED
        when the service is stopping and the broker will redeliver it. A full queue holds
        paho's thread (so the socket, then the broker, hold the rest of a backlog) until the
        worker takes a batch, for up to ROOM_WAIT_S: Mosquitto 2.0 sends past the Receive
        Maximum once acknowledgements flow, and the reader outpaces inference."""
        with self._room:
            deadline = None
            while not self._intake_closed.is_set():
                if self._queued_bytes + len(item.payload) <= QUEUE_BYTES \
                        and not self.queue.full():
                    self.queue.put_nowait(item)  # only this thread puts: room stays
                    self._queued_bytes += len(item.payload)
                    self._heap.note(self._queued_bytes)
                    return None
                if self._stalled:  # the worker took nothing for ROOM_WAIT_S: no more waits
                    break
                deadline = deadline or time.monotonic() + ROOM_WAIT_S
                if not self._room.wait(deadline - time.monotonic()):
                    self._stalled = True
                    break
            else:
                if self._redelivered:
                    self.counters.add(deferred=1)
                    return DEFERRED
                return "the service is shutting down; this message was not processed"
        self.counters.add(queue_full=1)
        return (f"queue full ({self.queue.qsize()} messages, {self._queued_bytes} bytes "
                "waiting for inference); message dropped")

    def _reject(self, payload: bytes, props: dict, topic: str, reason: str) -> None:
        self.counters.error(error_kind(reason))
        self.link.report(best_effort_id(payload, props), topic, reason)

    # -- worker thread ----------------------------------------------------------------------
    def _work(self, batcher: MicroBatcher) -> None:
        while not self._abort.is_set():
            batch = batcher.next_batch(self._intake_closed)
            if batch:
                self.link.wait_for_room(self._abort)  # outbox.when_full = "stop_consuming"
                # answers stored, then acked, by the commit thread while the next batch runs
                with self.link.batch((p.ack for p in batch), background=True):
                    try:
                        self._run_batch(batch)
                    except Exception as exc:  # a bug must not end the worker: report rows
                        log.exception("batch of %d failed", len(batch))
                        self._fail_items(batch, f"internal error: {type(exc).__name__}: {exc}")
                if not self._queued_bytes:  # a burst is over (one int read, no lock)
                    self._heap.drained()
            elif self._intake_closed.is_set() and self.queue.empty():
                return

    def _decode(self, batch: list[Pending]) -> list[WorkItem]:
        """Decode and check each message against the model's input; bad ones are reported."""
        with self._room:
            self._queued_bytes -= sum(len(p.payload) for p in batch)
            self._stalled = False
            self._room.notify_all()
        items = []
        for p in batch:
            try:
                reading = decode_sensor(p.payload, content_type=p.content_type,
                                        user_properties=p.props, spec=self.spec)
            except BadMessage as exc:
                self._reject(p.payload, p.props, p.topic, str(exc))
                continue
            except Exception as exc:  # a bug: this message fails, not its whole batch
                log.exception("decoding a message on %s failed", p.topic,
                              extra={"line": p.line})
                self._reject(p.payload, p.props, p.topic,
                             f"internal error: {type(exc).__name__}: {exc}")
                continue
            if self.dedupe.seen(p.line, reading.id):  # a QoS 1 redelivery: answered before
                self.counters.add(duplicates=1)
                continue
            items.append(WorkItem(line=p.line, topic=p.topic, reading=reading,
                                  received=p.received))
        return items

    def _run_batch(self, batch: list[Pending]) -> None:
        items = self._decode(batch)
        table = self.routing.current()  # read once: a new table takes effect next batch
        routes = {}
        for item in items:
            routes.setdefault(item.line, table.lookup(item.line))
        missing = [it for it in items if routes[it.line] is None]
        if missing:
            self._fail_items(missing, "the line lost its route before inference")
        found = [it for it in items if routes[it.line] is not None]
        if not found:
            return
        self.counters.batch(len(found))
        if table.bank is not None:  # one run: each row picks its adapter in the bank
            return self._run_group(table, [routes[it.line] for it in found], found)
        for rows in group_rows(found, lambda it: routes[it.line].key).values():
            group = [found[i] for i in rows]
            self._run_group(table, [routes[group[0].line]] * len(group), group)

    def _run_group(self, table: RoutingTable, row_routes: list[Route],
                   items: list[WorkItem]) -> None:
        """Rows with their routes (one shared route unless the bundle has a bank)."""
        x = np.stack([it.reading.values for it in items])  # (n, *sample) raw
        raw = window_stats(x, self.spec.rank) if self.drift is not None else None  # (n, C) x2,
        groups = [(rows, row_index(rows))  # (row list, slice when consecutive)
                  for rows in group_rows(row_routes, lambda r: r.key).values()]
        for rows, at in groups:  # before normalising: raw statistics above
            x[at] = row_routes[rows[0]].normalizer.apply(x[at])  # as each model trained
        started = time.monotonic()
        try:  # logits (n, num_classes), padded; features (n, D) or None
            logits, features = self._infer(table, row_routes, x)
        except Exception as exc:  # onnxruntime raises untyped errors
            log.exception("inference failed for %s", sorted({r.key for r in row_routes}))
            return self._fail_items(items, f"inference failed: {exc}")
        inference_s = time.monotonic() - started
        probs: list = [None] * len(items)
        if raw is not None:  # the drift watch's top score and class per row
            top, cls = np.empty(len(items)), np.empty(len(items), np.int64)
        for rows, at in groups:  # (len(rows), K) for the K classes of that model
            width = len(row_routes[rows[0]].labels)
            scores = softmax(logits[at, :width])
            for row, p in zip(rows, scores, strict=True):
                probs[row] = p
            if raw is not None:
                top[at], cls[at] = scores.max(axis=1), scores.argmax(axis=1)
        answered = []  # (line, result document) for Sparkplug, one hand-over per batch
        latencies = []  # ms per row, recorded under one lock
        publish = self.link.publish if self._json_results else None
        for item, route, scores in zip(items, row_routes, probs, strict=True):
            latency_ms = (time.monotonic() - item.received) * 1000.0
            doc = result_doc(id=item.reading.id, ts=item.reading.ts, line=item.line,
                             adapter=route.key[0], adapter_version=route.version,
                             labels=route.labels, scores=scores, latency_ms=latency_ms)
            if publish is not None:
                self._last_publish = publish(self._topic(item.line), encode_doc(doc))
            answered.append((item.line, doc))
            latencies.append(latency_ms)
        self.latency.record_many(latencies)
        if self.sparkplug is not None:
            self.sparkplug.results(answered)
        self.counters.add(results=len(items))
        if self.metrics is not None:
            self.metrics.answered(items, row_routes, inference_s)
        if raw is not None:
            self._watch_drift(items, row_routes, raw, top, cls, features)

    def _watch_drift(self, items: list[WorkItem], row_routes: list[Route],
                     raw: tuple[np.ndarray, np.ndarray], top: np.ndarray, cls: np.ndarray,
                     features: np.ndarray | None) -> None:
        """Each line's rows to its drift monitor: raw mean, std (n, C), top score and
        class (n,), penultimate features (n, D) or None."""
        mean, std = raw
        for rows in group_rows(items, lambda it: it.line).values():
            try:
                ood = self.drift.observe(items[rows[0]].line, row_routes[rows[0]], mean[rows],
                                         std[rows], top[rows], cls[rows],
                                         None if features is None else features[rows])
                if self.capture is not None:
                    self._capture_rows([items[i] for i in rows], row_routes[rows[0]],
                                       (mean[rows], std[rows]), top[rows], cls[rows], ood)
            except Exception:  # a bug in the watch must not cost the results
                line = items[rows[0]].line
                log.exception("drift watch failed for line %s", line, extra={"line": line})

    def _capture_rows(self, items: list[WorkItem], route: Route,
                      raw: tuple[np.ndarray, np.ndarray], top: np.ndarray, cls: np.ndarray,
                      ood: np.ndarray | None) -> None:
        """One line's windows that the capture keeps go to its writer: raw mean, std
        (n, C), top, cls (n,), ood (n,) Mahalanobis distances or None."""
        line = items[0].line
        watched = self.drift.state_of(line)
        if watched is None:  # not a watched line (drift.lines)
            return
        state, profile = watched
        chosen = self.capture.select(line, top, *raw, state, profile, ood)
        if not chosen:
            return
        wall = time.time() - time.monotonic()  # monotonic arrival -> wall clock
        adapter, version = route.key
        for row, reason in chosen:
            item = items[row]
            self.capture.offer(Record(
                line=line, adapter=adapter, version=version, top=round(float(top[row]), 6),
                predicted=route.labels[int(cls[row])], classes=list(route.labels),
                received=round(item.received + wall, 3), reason=reason, id=item.reading.id,
                drift_state=state, ood=None if ood is None else round(float(ood[row]), 4)),
                item.reading.values)  # raw sample: never normalised

    def _infer(self, table: RoutingTable, row_routes: list[Route], x: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (n, num_classes) of x (n, *sample), normalised, and from the same onnxruntime
        run the penultimate features (n, D) when the drift watch is on and the graph has
        them (else None)."""
        features = self.drift is not None
        if table.bank is None:
            return self.engine.run_with_features(x, row_routes[0].session_adapter,
                                                 features=features)
        index = np.fromiter((r.entry for r in row_routes), np.int64, len(row_routes))
        if len(row_routes) == 1 and len(x) > 1:
            index = np.full(len(x), row_routes[0].entry, np.int64)
        return self.engine.run_with_features(x, table.bank, feeds={INDEX_INPUT: index},
                                             features=features)

    def _topic(self, line: str) -> str:
        topic = self._topics.get(line)
        if topic is None:
            if len(self._topics) > 4096:  # lines come from topics: keep the cache bounded
                self._topics.clear()
            topic = self._topics[line] = self.cfg.topic_layout.results(line)
        return topic

    def _fail_items(self, items: list[WorkItem | Pending], reason: str) -> None:
        self.counters.error(error_kind(reason), len(items))
        for item in items:
            msg_id = item.reading.id if isinstance(item, WorkItem) else best_effort_id(
                item.payload, item.props)
            self.link.report(msg_id, item.topic, reason)

    def _fail_queued(self, reason: str) -> None:
        """Windows still queued when the drain ran out of time: left unacknowledged for the
        next start when the session is persistent, else each answered with `reason`."""
        left = []
        while True:
            try:
                left.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if left and self._redelivered:
            self.counters.add(deferred=len(left))
        elif left:
            with self.link.batch(p.ack for p in left):
                self._fail_items(left, reason)

    # -- stats thread -----------------------------------------------------------------------
    def _stats_loop(self) -> None:
        interval = self.cfg.topics.stats_interval_s
        while not self._closed.wait(interval):
            counts, elapsed = self.counters.snapshot_and_reset()
            payload = stats_payload(self.cfg.device.id, counts, elapsed,
                                    self.latency.snapshot_and_reset(), self.queue.qsize(),
                                    self.queue.maxsize, outbox_depth=self.outbox.count,
                                    provider=self.engine.provider,
                                    worker=None if self.role is None else self.role.index)
            self.link.publish(self.cfg.topic_layout.stats, payload, qos=0)

    @staticmethod
    def _wait_published(info, timeout: float) -> None:
        if info is None:
            return
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:  # not connected, or the queue overflowed
            log.warning("could not confirm delivery: %s", exc)
