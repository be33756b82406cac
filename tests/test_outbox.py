"""The outbox, dedupe and delivery: SQLite on real files, then the service against a real
Mosquitto (results leave the outbox on PUBACK, duplicates are computed once, a persistent
session keeps what came while the runtime was down, the outbox is sent after a restart)."""

from __future__ import annotations

import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from reference_bundle import sample_windows
from test_runtime import WAIT_S, Collector, Publisher, exactly_once, wait_until

from edge.codec import encode_result
from edge.config import Config, OutboxSettings
from edge.dedupe import Dedupe
from edge.delivery import Delivery, properties_from_json, properties_json
from edge.errors import ConfigError
from edge.mqtt import publish_properties
from edge.outbox import FILE_NAME, Outbox, Outgoing, seq_ranges
from edge.service import Service
from edge.status import Counters

DEVICE = "gw-test"
ERRORS = f"factory/{DEVICE}/errors"
PERSISTENT = {"clean_start": False, "session_expiry": 300}


def box(tmp_path, **settings) -> Outbox:
    return Outbox(tmp_path / FILE_NAME, OutboxSettings(**settings))


def messages(n: int, first: int = 0) -> list[Outgoing]:
    return [Outgoing("factory/l/inference", f"m{i}".encode()) for i in range(first, first + n)]


# --------------------------------------------------------------------------------------------
# The SQLite file
# --------------------------------------------------------------------------------------------

def test_messages_come_back_in_order_and_survive_a_reopen(tmp_path):
    outbox = box(tmp_path)
    last, dropped = outbox.commit(messages(5))
    assert (outbox.count, dropped) == (5, 0)
    rows = outbox.after(0, 3)
    assert [r.payload for r in rows] == [b"m0", b"m1", b"m2"] and rows[-1].seq < last
    outbox.remove([rows[0].seq, rows[1].seq])
    outbox.close()
    again = box(tmp_path)  # a restart: what was not acknowledged is still there, in order
    assert again.count == 3
    assert [r.payload for r in again.after(0, 10)] == [b"m2", b"m3", b"m4"]
    assert again.oldest() == rows[2].seq
    again.commit(messages(1, first=5))
    assert again.after(0, 10)[-1].seq > last  # sequence numbers are never reused
    again.close()


def test_commits_of_any_size_keep_their_order(tmp_path):
    """Rows go in as multi-row statements of 32, 16, ... 1 rows: every size, in order, the
    answers and the dedupe keys alike."""
    outbox = box(tmp_path)
    sent = 0
    for n in (1, 2, 3, 31, 32, 33, 45, 64, 70):
        outbox.commit(messages(n, first=sent), keys=[f"l/k{i}" for i in range(sent, sent + n)])
        sent += n
    assert [r.payload for r in outbox.after(0, 1000)] == [b"m%d" % i for i in range(sent)]
    assert outbox.recent_keys() == [f"l/k{i}" for i in range(sent)]
    assert outbox.count == sent
    outbox.close()


def test_drop_oldest_keeps_the_newest_and_counts(tmp_path):
    outbox = box(tmp_path, max_messages=100, when_full="drop_oldest")
    assert outbox.commit(messages(90))[1] == 0
    assert outbox.commit(messages(30, first=90))[1] == 20
    assert outbox.count == 100
    assert outbox.after(0, 1)[0].payload == b"m20"
    outbox.close()


def test_stop_consuming_never_drops(tmp_path):
    outbox = box(tmp_path, max_messages=100, when_full="stop_consuming")
    outbox.commit(messages(100))
    assert outbox.full()
    assert outbox.commit(messages(5, first=100))[1] == 0  # the caller checks full() first
    assert outbox.count == 105 and outbox.after(0, 1)[0].payload == b"m0"
    outbox.close()


def test_dedupe_window_is_bounded_and_survives_a_restart(tmp_path):
    outbox = box(tmp_path, dedupe_window=3)
    dedupe = Dedupe.load(outbox)
    assert [dedupe.seen("l", i) for i in "abcd"] == [False] * 4
    assert dedupe.seen("l", "d") and not dedupe.seen("other", "d")
    assert not dedupe.seen("l", "a")  # pushed out of the window of 3
    outbox.commit(messages(1), keys=dedupe.take_new())
    assert dedupe.take_new() == []
    outbox.close()
    restored = Dedupe.load(box(tmp_path, dedupe_window=3))
    assert len(restored) == 3
    assert [restored.seen("l", i) for i in ("a", "d")] == [True, True]
    assert not restored.seen("l", "c")  # dropped from the window on disk too


def test_dedupe_off(tmp_path):
    dedupe = Dedupe.load(box(tmp_path, dedupe_window=0))
    assert not dedupe.seen("l", "a") and not dedupe.seen("l", "a")
    assert dedupe.take_new() == []


def test_state_dir_that_cannot_hold_the_outbox_is_one_config_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    cfg = Config.model_validate({"device": {"id": "gw", "state_dir": str(blocker)}})
    with pytest.raises(ConfigError) as err:
        Outbox.open(cfg)
    message = str(err.value)
    assert "device.state_dir" in message and str(blocker) in message
    assert len(message.splitlines()) == 1


def test_publish_properties_survive_the_outbox():
    props = publish_properties("application/octet-stream", {"id": "w1", "shape": "6,100"})
    back = properties_from_json(properties_json(props))
    assert back.ContentType == "application/octet-stream"
    assert dict(back.UserProperty) == {"id": "w1", "shape": "6,100"}
    assert properties_json(None) is None and properties_from_json(None) is None


# --------------------------------------------------------------------------------------------
# The service: in-process, against the test broker
# --------------------------------------------------------------------------------------------



def send(pub: Publisher, ids: list[str], line: str = "line-b") -> None:
    x, _, _ = sample_windows(len(ids))
    for i, msg_id in enumerate(ids):
        pub.json(f"factory/{line}/sensors/s", msg_id, x[i])
    pub.flush()


def test_results_leave_the_outbox_when_acknowledged(service, mosquitto):
    svc = service(topics={"stats_interval_s": 0.2})
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS, "factory/+/stats"))
    pub = Publisher(mosquitto.port)
    ids = [f"o{i}" for i in range(40)]
    send(pub, ids)
    assert collector.wait(lambda c: len(c.answers()) >= len(ids))
    exactly_once(collector.answers(), ids)
    assert collector.wait(lambda c: any(s["outbox"]["depth"] == 0 for s in c.docs("/stats")))
    # The stats messages go through the outbox too (QoS 1, every 0.2 s): one may be waiting
    # for its PUBACK at any instant, so wait for an empty outbox rather than sample it once.
    assert wait_until(lambda: svc.outbox.count == 0), svc.outbox.count
    stats = collector.docs("/stats")[-1]
    assert {"depth", "dropped", "full", "errors"} <= set(stats["outbox"])
    assert stats["duplicates"] == 0
    pub.close()
    collector.close()


def test_a_duplicate_is_computed_once(service, mosquitto):
    """The same id twice on one line: one result, counted as a duplicate; the same id on
    another line is another message."""
    svc = service()
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    send(pub, ["d1", "d2", "d1"])
    send(pub, ["d1"], line="line-a")
    assert collector.wait(lambda c: len(c.answers()) >= 3)
    send(pub, ["after"])  # answered after everything before it: no late duplicate
    assert collector.wait(lambda c: any(d["id"] == "after" for d in c.answers()))
    lines = sorted((d["line"], d["id"]) for d in collector.docs("/inference"))
    assert lines == [("line-a", "d1"), ("line-b", "after"), ("line-b", "d1"), ("line-b", "d2")]
    assert svc.counters.totals["duplicates"] == 1
    pub.close()
    collector.close()


def test_dedupe_and_the_outbox_survive_a_restart(runtime_config, mosquitto):
    """A first service answers d1; a second one on the same state_dir does not answer d1
    again, and sends what the outbox still held (written here while nothing ran)."""
    config = runtime_config()
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    first = Service(config)
    assert first.start()
    send(pub, ["d1"])
    assert collector.wait(lambda c: len(c.answers()) >= 1)
    first.stop(5)
    left = Outbox.open(first.cfg)  # answers a crash left behind, oldest first
    left.commit([Outgoing("factory/line-b/inference", encode_result(  # a result, as sent
        id=f"k{i}", ts=None, line="line-b", adapter="base", adapter_version=None,
        labels=["a", "b"], scores=np.array([0.25, 0.75]), latency_ms=1.0)) for i in range(3)])
    left.close()
    second = Service(config)
    try:
        assert second.start()
        send(pub, ["d1", "d2"])
        assert collector.wait(lambda c: len(c.answers()) >= 5)
        send(pub, ["after"])
        assert collector.wait(lambda c: any(d["id"] == "after" for d in c.answers()))
        ids = [d["id"] for d in collector.docs("/inference")]
        assert ids[1:4] == ["k0", "k1", "k2"]  # sent first, in order
        exactly_once(collector.answers(), ["d1", "d2", "k0", "k1", "k2", "after"])
        assert second.counters.totals["duplicates"] == 1
    finally:
        second.stop(5)
        pub.close()
        collector.close()


def test_persistent_session_keeps_what_came_while_down(runtime_config, mosquitto):
    """clean_start = false: QoS 1 windows published while no runtime runs are answered by the
    next one (same client id)."""
    config = runtime_config(broker=PERSISTENT)
    collector = Collector(mosquitto.port, ("factory/+/inference", ERRORS))
    pub = Publisher(mosquitto.port)
    first = Service(config)
    assert first.start()
    first.stop(5)
    ids = [f"p{i}" for i in range(20)]
    send(pub, ids)  # nobody is subscribed right now: the broker keeps them for the session
    second = Service(config)
    try:
        assert second.start()
        assert collector.wait(lambda c: len(c.answers()) >= len(ids))
        exactly_once(collector.answers(), ids)
        assert collector.docs("/errors") == []
    finally:
        second.stop(5)
        pub.close()
        collector.close()


def test_a_full_outbox_under_stop_consuming(tmp_path, mosquitto):
    """Nothing leaves (the sender is not started): the worker's wait_for_room blocks until
    given up; what is published while full goes straight to paho and is counted."""
    cfg = Config.model_validate({"device": {"id": DEVICE, "state_dir": str(tmp_path / "s")},
                                 "broker": {"port": mosquitto.port},
                                 "outbox": {"max_messages": 100}})
    outbox = Outbox.open(cfg)
    counters = Counters()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    delivery = Delivery(client, outbox, connected=threading.Event(), errors_topic=ERRORS,
                        counters=counters)
    for i in range(100):
        delivery.publish("factory/l/inference", b"r%d" % i, 1, None)
    assert outbox.full() and counters.totals["outbox_full"] == 0
    receipt = delivery.publish("factory/l/inference", b"over", 1, None)
    assert receipt.info is not None and counters.totals["outbox_full"] == 1
    give_up = threading.Event()
    waiter = threading.Thread(target=delivery.wait_for_room, args=(give_up,))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # paused while full
    outbox.remove([r.seq for r in outbox.after(0, 1)])
    waiter.join(WAIT_S)
    assert not waiter.is_alive()  # room again
    outbox.close()


# --------------------------------------------------------------------------------------------
# The handoff: the sender takes committed messages from memory, the file when memory lacks them
# --------------------------------------------------------------------------------------------

def no_file_reads(outbox: Outbox, monkeypatch) -> None:
    def refuse(cursor, limit):
        raise AssertionError(f"read the file (after seq {cursor})")

    monkeypatch.setattr(outbox, "_read", refuse)


def take_all(outbox: Outbox, cursor: int = 0, limit: int = 7) -> list[tuple[int, Outgoing]]:
    """What a sender takes, `limit` at a time, until nothing is left."""
    taken = []
    while rows := outbox.take(cursor, limit):
        taken += rows
        cursor = rows[-1][0]
    return taken


def test_the_sender_takes_what_was_just_committed_from_memory(tmp_path, monkeypatch):
    outbox = box(tmp_path)
    last, _ = outbox.commit(messages(5))
    outbox.commit(messages(3, first=5))
    no_file_reads(outbox, monkeypatch)
    rows = take_all(outbox, limit=3)
    assert [m.payload for _, m in rows] == [f"m{i}".encode() for i in range(8)]
    assert [s for s, _ in rows] == list(range(last - 4, last + 4))  # the rows' own seqs
    assert [r.seq for r in Outbox.after(outbox, 0, 10)] == [s for s, _ in rows]  # as stored
    outbox.remove([s for s, _ in rows])
    assert outbox.count == 0
    outbox.close()


def test_after_a_restart_the_file_comes_first_then_memory(tmp_path, monkeypatch):
    first = box(tmp_path)
    first.commit(messages(4))
    first.close()
    outbox = box(tmp_path)  # 4 rows left by the earlier run: only the file has them
    outbox.commit(messages(3, first=4))
    rows = outbox.take(0, 5)  # the oldest 5, from the file
    assert [m.payload for _, m in rows] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    no_file_reads(outbox, monkeypatch)  # caught up: the rest from memory
    outbox.commit(messages(2, first=7))
    rest = take_all(outbox, rows[-1][0])
    assert [m.payload for _, m in rest] == [b"m5", b"m6", b"m7", b"m8"]
    outbox.close()


def test_nothing_is_lost_when_the_handoff_overflows(tmp_path, monkeypatch):
    """More waiting than memory holds (a broker away): the file gives them back, in order,
    each once, and memory takes over again once the sender has caught up."""
    monkeypatch.setattr("edge.outbox.HANDOFF_MAX", 10)
    outbox = box(tmp_path)
    for first in range(0, 40, 4):
        outbox.commit(messages(4, first=first))
    outbox.commit(messages(3, first=40))
    rows = take_all(outbox, limit=6)
    assert [m.payload for _, m in rows] == [f"m{i}".encode() for i in range(43)]
    no_file_reads(outbox, monkeypatch)
    outbox.commit(messages(2, first=43))
    assert [m.payload for _, m in take_all(outbox, rows[-1][0])] == [b"m43", b"m44"]
    outbox.close()


def test_rows_dropped_by_drop_oldest_are_not_taken_from_memory(tmp_path):
    outbox = box(tmp_path, max_messages=100, when_full="drop_oldest")
    outbox.commit(messages(98))
    assert outbox.commit(messages(6, first=98))[1] == 4  # m0..m3 deleted before they went
    assert [m.payload for _, m in take_all(outbox, limit=30)] == [
        f"m{i}".encode() for i in range(4, 104)]
    outbox.close()


def test_acknowledged_runs_are_removed_by_range(tmp_path):
    assert seq_ranges([7, 3, 4, 5, 9, 4]) == [(3, 5), (7, 7), (9, 9)]
    assert seq_ranges([]) == []
    outbox = box(tmp_path)
    outbox.commit(messages(10))
    seqs = [r.seq for r in outbox.after(0, 10)]
    outbox.remove(seqs[0:3] + seqs[5:7] + seqs[9:])  # three runs, one transaction
    assert [r.payload for r in outbox.after(0, 10)] == [b"m3", b"m4", b"m7", b"m8"]
    assert outbox.count == 4
    outbox.remove(seqs[3:5])  # one run, one statement
    assert [r.payload for r in outbox.after(0, 10)] == [b"m7", b"m8"] and outbox.count == 2
    outbox.close()


class RecordingClient:
    """Stands in for paho: records each publish and acknowledges it while connected."""

    max_inflight_messages = 3

    def __init__(self, up: threading.Event) -> None:
        self.up, self.sent, self.sender = up, [], None
        self._mid = 0

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        self._mid += 1
        self.sent.append(payload)
        if self.up.is_set():
            self.sender.acked(self._mid)
        return mqtt.MQTTMessageInfo(self._mid)


def test_the_sender_sends_everything_once_in_order_across_an_outage(tmp_path, monkeypatch):
    """Connected, then away while more is committed than memory holds, then back: every
    answer reaches the client once, oldest first, and leaves the file."""
    monkeypatch.setattr("edge.outbox.HANDOFF_MAX", 8)
    outbox = box(tmp_path)
    up = threading.Event()
    up.set()
    client = RecordingClient(up)
    delivery = Delivery(client, outbox, connected=up, errors_topic=ERRORS)
    client.sender = delivery.sender
    delivery.start()
    sent = 0

    def answers(*batches: int) -> None:
        nonlocal sent
        for n in batches:
            with delivery.batch():
                for i in range(sent, sent + n):
                    delivery.publish("factory/l/inference", b"r%d" % i, 1, None)
            sent += n

    try:
        answers(5, 7)
        assert wait_until(lambda: outbox.count == 0)
        up.clear()  # the broker is away: 26 answers wait, more than memory holds
        answers(9, 6, 11)
        time.sleep(0.05)
        assert outbox.count == 26 and len(client.sent) == 12
        up.set()  # back (Delivery.connected wakes the sender)
        delivery.sender.wake()
        answers(4)
        assert wait_until(lambda: outbox.count == 0)
        assert client.sent == [b"r%d" % i for i in range(sent)]
    finally:
        delivery.stop()
        outbox.close()
