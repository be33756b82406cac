"""The outbox, dedupe and delivery: SQLite on real files, then the service against a real
Mosquitto (results leave the outbox on PUBACK, duplicates are computed once, a persistent
session keeps what came while the runtime was down, the outbox is sent after a restart)."""

from __future__ import annotations

import threading

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
from edge.outbox import FILE_NAME, Outbox, Outgoing
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
