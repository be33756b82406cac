"""Durable delivery for MqttLink (edge/mqtt.py), on top of the outbox (edge/outbox.py).

    delivery = Delivery(client, outbox, connected=..., errors_topic=..., counters=...)
    delivery.publish(topic, payload, 1, None)      # stored, then sent: a Receipt
    with delivery.batch(tokens): ...               # publishes stored in one transaction,
                                                   # then the sensor messages acknowledged

Delivery decides what is stored and when received messages are acknowledged (only once
their answers are stored; see "Delivery" in docs/MQTT.md). The worker's batches are stored
and acknowledged on the commit thread (edge/committer.py) while it runs the next one. Its
Sender moves the outbox to paho: in order, at most `window` unacknowledged, removed once
their PUBACKs arrive (a group at a time, within SETTLE_S).
paho itself keeps at most its in-flight window (max_inflight_messages) unacknowledged on the
wire and holds the rest of the sender's window queued (HANDOVER_DEPTH).

One thread ("edge-outbox") publishes outbox messages; paho's network thread only queues
the acknowledged mids. paho calls on_publish holding the lock that client.publish takes,
so publishing from there under our own lock could deadlock against the sender; and the
thread that maps a mid to its row is the one that got the mid, so no PUBACK can come
before its mapping.

paho keeps what it was handed across reconnects and re-sends it itself (DUP), so the
sender hands over messages only while connected, oldest first. After a restart the outbox
still holds whatever paho had not seen acknowledged, and sending starts from the oldest.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .codec import encode_error
from .committer import Committer
from .dedupe import Dedupe
from .errors import StorageError
from .outbox import Outbox, Outgoing, Row
from .status import Counters

log = logging.getLogger(__name__)

IDLE_S = 1.0  # the sender looks again this often even without a wake-up (a lost race)
# PUBACKs are settled in groups: paho's thread wakes the sender once a quarter of its window
# is acknowledged, and while messages are in flight the sender looks at least every SETTLE_S.
# Waking it on every PUBACK cost a futex wake-up, a sender round and a DELETE per result.
SETTLE_S = 0.01
# Messages handed to paho per slot of its in-flight window. paho sends up to its window
# and queues the rest without a packet; each PUBACK then sends the next one from paho's own
# thread. Handing over only a window's worth made every publish a cross-thread wake-up of
# paho's loop (a socketpair write), one per result under load.
HANDOVER_DEPTH = 4
# Batches of answers the worker may have waiting for the commit thread (edge/committer.py)
# before it waits itself: 2 lets the next batch run while one is stored.
COMMIT_DEPTH = 2


def properties_json(props: Properties | None) -> str | None:
    """The PUBLISH properties the outbox keeps (content type, user properties) as JSON."""
    if props is None:
        return None
    doc = {"content_type": getattr(props, "ContentType", None),
           "user": [list(p) for p in getattr(props, "UserProperty", None) or ()]}
    return json.dumps(doc) if doc["content_type"] or doc["user"] else None


def properties_from_json(text: str | None) -> Properties | None:
    if not text:  # results and errors: no properties, nothing to parse
        return None
    doc = json.loads(text)
    props = Properties(PacketTypes.PUBLISH)
    if doc.get("content_type"):
        props.ContentType = doc["content_type"]
    if doc.get("user"):
        props.UserProperty = [tuple(p) for p in doc["user"]]
    return props


class Sender:
    """Feeds `outbox` to `client`; `on_error(exc)` hears of disk errors (reads, removals)."""

    def __init__(self, client: mqtt.Client, outbox: Outbox, *, window: int,
                 connected: threading.Event, on_error: Callable[[StorageError], None]) -> None:
        self.client, self.outbox, self.window = client, outbox, window
        self._connected = connected
        self._on_error = on_error
        self._acks: deque[tuple[int, object]] = deque()  # (mid, reason code) from paho
        self._inflight: dict[int, Row] = {}  # mid -> (seq, message) handed to paho, not acked
        self._settle_at = max(1, window // 4)  # acks waiting that wake the sender
        self._cursor = 0  # highest seq handed to paho
        self._wake = threading.Event()
        self._progress = threading.Condition()  # notified after each removal
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="edge-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        # Event.set takes a lock and notifies even when set already; is_set is one read.
        # Safe: the sender clears the event before it looks at the outbox and the acks.
        if not self._wake.is_set():
            self._wake.set()

    def acked(self, mid: int, reason_code: object = None) -> None:
        """paho's on_publish: cheap, no lock (deque.append is atomic). Wakes the sender only
        once enough acks wait (SETTLE_S): paho itself sends what it holds queued."""
        self._acks.append((mid, reason_code))
        if len(self._acks) >= self._settle_at and not self._wake.is_set():  # see wake()
            self._wake.set()

    def wait_past(self, seq: int, timeout: float) -> bool:
        """True once no message up to `seq` is waiting (or the link is down: they wait on
        disk); False after `timeout` seconds."""
        def done() -> bool:
            oldest = self.outbox.oldest()
            return oldest is None or oldest > seq or not self._connected.is_set()

        return self.wait_for(done, timeout)

    def poke(self) -> None:
        """Wake the waiters to look again (the link went down)."""
        with self._progress:
            self._progress.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds, looking again after each removal."""
        with self._progress:
            return self._progress.wait_for(predicate, timeout)

    # -- the sender thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            busy = self._inflight and self._connected.is_set()  # PUBACKs are on their way
            self._wake.wait(SETTLE_S if busy else IDLE_S)
            self._wake.clear()
            try:
                self._settle()
                if self._connected.is_set():
                    self._fill()
            except StorageError as exc:
                self._on_error(exc)
            except Exception:  # a bug must not end delivery
                log.exception("outbox sender failed; retrying")
        try:  # acknowledgements that came in while stopping: not sent again next time
            self._settle()
        except StorageError as exc:
            self._on_error(exc)

    def _settle(self) -> None:
        """Remove what the broker acknowledged, in one transaction."""
        done = []
        acks, inflight = self._acks, self._inflight
        while acks:
            mid, code = acks.popleft()
            row = inflight.pop(mid, None)
            if row is None:
                continue  # a publish that did not come from the outbox
            if getattr(code, "is_failure", False):  # retrying would be refused again
                log.warning("the broker refused a message on %s (%s); dropped", row[1].topic,
                            code)
            done.append(row[0])
        if done:
            self.outbox.remove(done)
            with self._progress:
                self._progress.notify_all()

    def _fill(self) -> None:
        """Hand the next oldest messages to paho while fewer than `window` are unacked:
        those just committed from memory, older ones from the file (Outbox.take)."""
        with getattr(self.client, "held_writes", nullcontext)():  # one wake-up (mqtt_wire)
            self._fill_window()

    def _fill_window(self) -> None:
        room = self.window - len(self._inflight)
        publish, inflight = self.client.publish, self._inflight
        while room > 0:
            rows = self.outbox.take(self._cursor, room)
            for row in rows:
                msg = row[1]
                info = publish(msg.topic, msg.payload, qos=msg.qos,
                               properties=properties_from_json(msg.props))
                inflight[info.mid] = row
                self._cursor = row[0]
            if len(rows) < room:
                return
            room = self.window - len(inflight)


class Receipt:
    """What MqttLink.publish returns for a message that went to the outbox; like paho's
    MQTTMessageInfo, `wait_for_publish(timeout)` waits for the broker's acknowledgement."""

    __slots__ = ("_sender", "_committer", "info", "seq")
    rc = mqtt.MQTT_ERR_SUCCESS
    mid = 0

    def __init__(self, sender: Sender, committer: Committer) -> None:
        self._sender, self._committer = sender, committer
        self.seq: int | None = None  # set when the outbox commits it
        self.info: mqtt.MQTTMessageInfo | None = None  # set when sent without the outbox

    def wait_for_publish(self, timeout: float | None = None) -> None:
        if self.seq is None and self.info is None:  # a batch's: maybe not stored yet
            self._committer.flush(3600.0 if timeout is None else timeout)
        if self.info is not None:
            self.info.wait_for_publish(timeout)
        elif self.seq is not None:  # while connected: otherwise it waits on disk
            self._sender.wait_past(self.seq, 3600.0 if timeout is None else timeout)

    def is_published(self) -> bool:
        if self.info is not None:
            return self.info.is_published()
        oldest = self._sender.outbox.oldest()
        return self.seq is not None and (oldest is None or oldest > self.seq)


Token = tuple[int, int, int]  # (connection number, mid, qos) of a sensor message to ack
# A finished batch: its answers with their receipts, its dedupe keys, its tokens
Batch = tuple[list[tuple[Outgoing, Receipt]], list[str], list[Token | None]]


class Delivery:
    """Durable publishing for MqttLink: QoS>=1 publishes go through the outbox, and sensor
    messages are acknowledged to the broker only once their answers are stored.

    Inside `with delivery.batch(tokens):` the calling thread's publishes are collected and
    stored in one transaction at the end, with the dedupe keys the batch saw; then the
    messages behind `tokens` are acknowledged. Elsewhere each publish is stored at once."""

    def __init__(self, client: mqtt.Client, outbox: Outbox, *, connected: threading.Event,
                 errors_topic: str, counters: Counters | None = None,
                 dedupe: Dedupe | None = None) -> None:
        self.client, self.outbox, self.dedupe = client, outbox, dedupe
        self._up = connected
        self.counters = counters if counters is not None else Counters()
        self.errors_topic = errors_topic
        self.sender = Sender(client, outbox,
                             window=client.max_inflight_messages * HANDOVER_DEPTH,
                             connected=connected, on_error=self.storage_failed)
        self._local = threading.local()  # .pending: the open batch of this thread
        # (answers, dedupe keys, tokens) of finished batches, stored and then acknowledged
        self._committer: Committer[Batch] = Committer(self._store_batches, depth=COMMIT_DEPTH)
        self._connection = 0  # counts (re)connects: a token from an older one is stale
        self._failing = False  # the disk refused the last write
        self._paused = False

    def connected(self) -> None:
        """On every (re)connect (network thread)."""
        self._connection += 1
        self.sender.wake()

    def token(self, msg: mqtt.MQTTMessage) -> Token | None:
        """The acknowledgement a received message is owed; None for QoS 0."""
        return (self._connection, msg.mid, msg.qos) if msg.qos else None

    def ack(self, tokens: Iterable[Token | None]) -> None:
        """Acknowledge sensor messages. One received before the last reconnect is skipped:
        the broker has forgotten it (clean start) or sends it again (and that copy is
        acknowledged), and its old packet id may already name another message."""
        owed = [(t[1], t[2]) for t in tokens if t is not None and t[0] == self._connection]
        if not owed:
            return
        ack_many = getattr(self.client, "ack_many", None)  # edge.mqtt_wire.LeanClient
        if ack_many is not None:
            ack_many(owed)
            return
        for mid, qos in owed:
            self.client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes, qos: int, properties: Properties | None
                ) -> Receipt | mqtt.MQTTMessageInfo:
        item = (Outgoing(topic, payload, qos, properties_json(properties)),
                Receipt(self.sender, self._committer))
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(item)
        else:
            self._store([item], ())
        return item[1]

    @contextmanager
    def batch(self, tokens: Iterable[Token | None] = (), *, background: bool = False
              ) -> Iterator[None]:
        """The publishes inside are stored in one transaction at the end, with the dedupe
        keys seen meanwhile; then `tokens` are acknowledged. By the commit thread, after
        the batches before it; `background`: without waiting for it (the worker goes on
        to its next batch meanwhile), else stored when this returns."""
        tokens = list(tokens)
        self._local.pending = pending = []
        try:
            yield
        except BaseException:  # not all answered: leave them unacknowledged (redelivered)
            self._local.pending = None
            self._commit(pending, [], background=False)
            raise
        self._local.pending = None
        self._commit(pending, tokens, background=background)

    def _commit(self, pending: list[tuple[Outgoing, Receipt]], tokens: list[Token | None], *,
                background: bool) -> None:
        """A finished batch, with the dedupe keys seen since the last, to the commit thread."""
        self._committer.put((pending, self.dedupe.take_new() if self.dedupe else [], tokens))
        if not background:
            self._committer.flush(None)

    def _store_batches(self, batches: list[Batch]) -> None:
        """Finished batches, oldest first (the commit thread): one transaction, then their
        sensor messages acknowledged."""
        self._store([item for items, _, _ in batches for item in items],
                    [key for _, keys, _ in batches for key in keys])
        self.ack([token for _, _, tokens in batches for token in tokens])

    def _store(self, items: list[tuple[Outgoing, Receipt]], keys: list[str]) -> None:
        box = self.outbox
        if items and box.settings.when_full == "stop_consuming" and box.full():
            self.counters.add(outbox_full=len(items))  # only what the paused worker lets by
            return self._bypass(items)
        try:
            last, dropped = box.commit([m for m, _ in items], keys)
        except StorageError as exc:
            self.storage_failed(exc)
            return self._bypass(items)
        if self._failing:
            self._failing = False
            log.warning("outbox %s: writable again", box.path)
        if dropped:
            self.counters.add(outbox_dropped=dropped)
        for _, receipt in items:
            receipt.seq = last
        if items:
            self.sender.wake()

    def _bypass(self, items: list[tuple[Outgoing, Receipt]]) -> None:
        """Hand messages straight to paho (kept in memory only), as without an outbox."""
        for msg, receipt in items:
            receipt.info = self.client.publish(msg.topic, msg.payload, qos=msg.qos,
                                               properties=properties_from_json(msg.props))

    def storage_failed(self, exc: StorageError) -> None:
        """A disk error: counted in stats; logged and reported on the errors topic when it
        starts (not for every message while it lasts). The service keeps running."""
        self.counters.add(outbox_errors=1)
        if self._failing:
            return
        self._failing = True
        log.error("%s; answers go out without the outbox until it is writable", exc)
        self.client.publish(self.errors_topic, encode_error(
            id=None, topic=str(self.outbox.path),
            reason=f"{exc}; answers are sent without the outbox until it is writable"), qos=1)

    def wait_for_room(self, give_up: threading.Event) -> None:
        """stop_consuming: block while the outbox is full, until the broker takes messages
        or `give_up` is set. The caller's sensor messages wait unacknowledged meanwhile."""
        box = self.outbox
        if box.settings.when_full != "stop_consuming" or not box.full():
            return
        log.warning("outbox full (%d messages): inference paused until the broker takes "
                    "them", box.count)
        while not self.sender.wait_for(lambda: not box.full() or give_up.is_set(), 0.5):
            pass  # looks at give_up every half second: nothing notifies when it is set
        log.info("outbox has room again (%d messages): inference resumed", box.count)

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True), or `timeout` passes, or the link is down,
        or the disk fails (acknowledged messages cannot leave the file then)."""
        def settled() -> bool:
            return not self.outbox.count or not self._up.is_set() or self._failing

        deadline = time.monotonic() + timeout
        self._committer.flush(timeout)  # the last batches' answers into the outbox first
        return self.sender.wait_for(settled, max(deadline - time.monotonic(), 0.0)) \
            and not self.outbox.count

    def start(self) -> None:
        self.sender.start()
        self._committer.start()

    def stop(self) -> None:
        self._committer.stop()
        self.sender.stop()
