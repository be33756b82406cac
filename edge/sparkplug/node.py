"""The Sparkplug B edge node: a second MQTT connection whose will is NDEATH.

Why a second connection: MQTT has one will per connection, and the service's will is its
retained JSON `offline` status; Sparkplug wants NDEATH (with this connection's bdSeq) as
the will, and a session with clean start and no expiry, while the service's own session may
be persistent (broker.clean_start = false) to keep sensor windows across a restart.

Per connection (paho's network thread):
    CONNECT (will: NDEATH bdSeq=b) -> SUBSCRIBE NCMD, DCMD -> NBIRTH (bdSeq=b, seq 0)
    -> DBIRTH per line (seq 1, 2, ...) -> the results that waited, as DDATA
    disconnect -> b+1 (mod 256, kept in <state_dir>/sparkplug.json), the will re-set

Results (the worker thread, `node.results([(line, result_doc), ...])` once per batch) go out
at once as DDATA while the node is born (one per result, or with `ddata = "per_batch"` one
per line and batch), else wait in a bounded queue for the next birth. DDATA is QoS 0 as the
spec says; a result stays ours until paho has written it to the socket (on_publish), so one
handed to paho just before a disconnect is sent again after the rebirth, with a new seq.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import Config
from ..errors import BadMessage
from ..mqtt import RECONNECT_MAX_S, RECONNECT_MIN_S, no_delay, set_security
from ..mqtt_wire import LeanClient
from .payload import (
    REBIRTH,
    decode_command,
    device_birth,
    device_data,
    node_birth,
    node_death,
    now_ms,
    result_metrics,
)

if TYPE_CHECKING:
    from ..routing import Route

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
STATE_FILE = "sparkplug.json"  # {"bd_seq": next connection's bdSeq}
Report = Callable[[str | None, str, str], None]  # (message id, topic, reason) -> errors topic


@dataclass(frozen=True)
class SparkplugTopics:
    group: str
    node: str

    def _topic(self, kind: str, *rest: str) -> str:
        return "/".join((NAMESPACE, self.group, kind, self.node, *rest))

    nbirth = property(lambda self: self._topic("NBIRTH"))
    ndeath = property(lambda self: self._topic("NDEATH"))
    ncmd = property(lambda self: self._topic("NCMD"))
    dcmd_filter = property(lambda self: self._topic("DCMD", "+"))

    def dbirth(self, line: str) -> str:
        return self._topic("DBIRTH", line)

    def ddata(self, line: str) -> str:
        return self._topic("DDATA", line)


@dataclass(frozen=True)
class Result:
    line: str
    doc: dict  # the result document (edge/codec.py result_doc)
    ts_ms: int  # when it was computed: DDATA carries this time, even when sent late
    drift: str | None


class SparkplugNode:
    """One edge node. `lines()` gives the routed lines (line -> Route) born with NBIRTH;
    `drift(line)` a line's drift state or None (None for `drift` when drift is off);
    `report` sends one error report (the service's errors topic)."""

    def __init__(self, cfg: Config, *, properties: dict[str, str],
                 lines: Callable[[], Mapping[str, Route]],
                 drift: Callable[[str], str | None] | None, report: Report) -> None:
        settings = cfg.sparkplug
        self.cfg = cfg
        self.topics = SparkplugTopics(settings.group_id, settings.edge_node_id or cfg.device.id)
        self._properties = properties
        self._lines, self._drift, self._report = lines, drift, report
        self._state_path = Path(cfg.device.state_dir) / STATE_FILE
        self.bd_seq = self._load_bd_seq()
        self._lock = threading.Lock()  # seq, births, queues: one order on the socket
        self._seq = 0
        self.born = False
        self._births: dict[str, tuple] = {}  # line -> the metric set of its DBIRTH
        self._pending: deque[Result] = deque()
        self._unconfirmed: dict[int, tuple[Result, ...]] = {}  # mid -> DDATA's, unwritten
        self._written: deque[int] = deque()  # mids paho wrote (on_publish; no lock needed)
        self._dropped = 0
        self._stopping = False
        self.client = self._make_client()

    # -- setup ------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        broker = self.cfg.broker
        client = LeanClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                            client_id=f"{broker.client_id}-sparkplug")
        client.will_set(self.topics.ndeath, node_death(bd_seq=self.bd_seq), qos=1)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        set_security(client, self.cfg)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = lambda _c, _u, mid, _rc, _p: self._written.append(mid)
        return client

    def _load_bd_seq(self) -> int:
        try:
            return int(json.loads(self._state_path.read_text())["bd_seq"]) % 256
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s); bdSeq starts at 0", self._state_path, exc)
            return 0

    def _save_bd_seq(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"bd_seq": self.bd_seq}))
            os.replace(tmp, self._state_path)
        except OSError as exc:  # a host then sees bdSeq restart at 0 after a restart
            log.warning("cannot keep the Sparkplug bdSeq in %s: %s", self._state_path, exc)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        broker = self.cfg.broker
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0  # Sparkplug: clean start, no session kept
        self.client.connect_async(broker.host, broker.port, broker.keepalive,
                                  clean_start=True, properties=props)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """NDEATH ourselves (a clean DISCONNECT drops the will), then disconnect."""
        with self._lock:
            self.born = False
            left = len(self._pending) + len(self._unconfirmed)
        if self.client.is_connected():
            info = self.client.publish(self.topics.ndeath, node_death(bd_seq=self.bd_seq),
                                       qos=1)
            try:  # its PUBACK also means the DDATA before it were written
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("Sparkplug NDEATH not confirmed: %s", exc)
        if left:
            log.warning("stopping with %d results not sent to Sparkplug (not connected)", left)
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- results (worker thread) ------------------------------------------------------------
    def results(self, answered: Sequence[tuple[str, dict]]) -> None:
        """A batch's results, (line, result document as the results topic carries it) in
        order: DDATA now (one per result, or one per line with `ddata = "per_batch"`), or
        after the rebirth."""
        ts = now_ms()
        drift: dict[str, str | None] = {}  # one drift lookup per line of the batch
        if self._drift is not None:
            drift = {line: self._drift(line) for line in {line for line, _ in answered}}
        items = [Result(line, doc, ts, drift.get(line)) for line, doc in answered]
        with self._lock:
            self._settle()
            if not self.born:
                return self._queue(items)
            with self.client.held_writes():  # one wake-up of paho's thread per batch
                self._send_all(items)

    def _queue(self, items: list[Result]) -> None:
        for item in items:
            if len(self._pending) >= self.cfg.sparkplug.queue:
                self._pending.popleft()
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    log.warning("Sparkplug queue full (sparkplug.queue = %d): %d oldest "
                                "results dropped", self.cfg.sparkplug.queue, self._dropped)
            self._pending.append(item)

    @property
    def waiting(self) -> int:
        """Results not yet written to the Sparkplug connection."""
        with self._lock:
            self._settle()
            return len(self._pending) + sum(map(len, self._unconfirmed.values()))

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return seq

    def _settle(self) -> None:
        while self._written:
            self._unconfirmed.pop(self._written.popleft(), None)

    def _send_all(self, items: Sequence[Result]) -> None:
        """DDATA of `items` in order: one each, or with `ddata = "per_batch"` one per run of
        results with the same line and metric set."""
        if self.cfg.sparkplug.ddata == "per_result":
            for item in items:
                self._send((item,))
            return
        run: list[Result] = []
        for item in items:
            if run and (item.line, _metric_set(item)) != (run[0].line, _metric_set(run[0])):
                self._send(tuple(run))
                run = []
            run.append(item)
        if run:
            self._send(tuple(run))

    def _send(self, items: tuple[Result, ...]) -> None:
        """One DDATA of `items` (one line, one metric set), after a DBIRTH when the line has
        none with these metrics yet."""
        first = items[0]
        labels, adapter, version = _metric_set(first)
        shape = (labels, self._drift is not None)
        if self._births.get(first.line) != shape:
            self._device_birth(first.line, labels, adapter, version)
        results = [(result_metrics(item.doc, labels, adapter, version, item.drift,
                                   self._drift is not None), item.ts_ms) for item in items]
        info = self.client.publish(self.topics.ddata(first.line), device_data(
            seq=self._next_seq(), results=results), qos=0)
        self._unconfirmed[info.mid] = items

    def _device_birth(self, line: str, labels: tuple[str, ...], adapter: str | None,
                      version: int | None) -> None:
        watch = self._drift is not None
        metrics = result_metrics(None, labels, adapter or "base", version,
                                 self._drift(line) if watch else None, watch)
        self.client.publish(self.topics.dbirth(line),
                            device_birth(seq=self._next_seq(), metrics=metrics), qos=0)
        self._births[line] = (labels, watch)

    # -- births (network thread) ------------------------------------------------------------
    def _birth(self) -> None:
        """NBIRTH with seq 0, a DBIRTH per routed line, then what waited. On a connect and
        on a rebirth request; bdSeq stays the one of this connection's will."""
        with self._lock:
            self._settle()
            self._seq, self._births = 0, {}
            self.client.publish(self.topics.nbirth, node_birth(
                bd_seq=self.bd_seq, seq=self._next_seq(), properties=self._properties), qos=0)
            for line, route in sorted(self._lines().items()):
                self._device_birth(line, tuple(route.labels), route.key[0], route.version)
            self.born = True
            pending, self._pending = list(self._pending), deque()
            self._send_all(pending)
        log.info("Sparkplug NBIRTH %s (bdSeq %d)", self.topics.nbirth, self.bd_seq)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the Sparkplug connection: %s (retrying)", reason_code)
            return
        # Commands first (spec): a rebirth request must not slip in before NBIRTH.
        client.subscribe([(self.topics.ncmd, SubscribeOptions(qos=1)),
                          (self.topics.dcmd_filter, SubscribeOptions(qos=1))])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        try:
            self._birth()
        except Exception:  # never end paho's loop
            log.exception("Sparkplug birth failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        """Results paho had not written go back to the front of the queue; the next
        connection gets the next bdSeq, in its will and in its NBIRTH."""
        with self._lock:
            self.born = False
            self._settle()
            self._pending.extendleft(reversed([item for items in self._unconfirmed.values()
                                               for item in items]))
            self._unconfirmed.clear()
            self.bd_seq = (self.bd_seq + 1) % 256
            self._save_bd_seq()
            client.will_set(self.topics.ndeath, node_death(bd_seq=self.bd_seq), qos=1)
        if not self._stopping:
            log.warning("Sparkplug connection lost (%s); reconnecting", reason_code)

    # -- commands (network thread) ----------------------------------------------------------
    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._command(msg.topic, msg.payload)
        except Exception as exc:  # a bug here must not end paho's loop
            log.exception("Sparkplug command on %s failed", msg.topic)
            self._report(None, msg.topic, f"internal error: {type(exc).__name__}: {exc}")

    def _command(self, topic: str, payload: bytes) -> None:
        if topic != self.topics.ncmd:
            return self._report(None, topic, "this edge node's devices take no commands "
                                "(DCMD); the node takes NCMD Node Control/Rebirth only")
        try:
            metrics = decode_command(payload)
        except BadMessage as exc:
            return self._report(None, topic, str(exc))
        rebirth = (REBIRTH, True) in metrics
        others = [f"{name}={value!r}" for name, value in metrics if (name, value) != (
            REBIRTH, True)]
        if others or not metrics:
            shown = ", ".join(others)[:200] or "no metrics"
            self._report(None, topic, f"unsupported NCMD ({shown}); this edge node takes "
                         f"only {REBIRTH} = true")
        if rebirth:
            log.info("Sparkplug rebirth requested")
            self._birth()


def _metric_set(item: Result) -> tuple[tuple[str, ...], str | None, int | None]:
    """(class labels, adapter, version) of a result: what its line's DBIRTH declares."""
    doc = item.doc
    return tuple(doc.get("scores") or ()), doc.get("adapter"), doc.get("adapter_version")


def node_properties(provider: str) -> dict[str, str]:
    """The read-only node metrics of NBIRTH."""
    import onnxruntime as ort

    from .. import __version__

    return {"Properties/Package Version": __version__,
            "Properties/ONNX Runtime Version": ort.__version__,
            "Properties/Provider": provider}
