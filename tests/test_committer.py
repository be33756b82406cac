"""The commit thread (edge/committer.py) and the worker's batches through it
(Delivery.batch(background=True)): order, grouping, backpressure, flush, failures, and
sensor messages acknowledged only once their answers are in the outbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_outbox import ERRORS, box
from test_runtime import wait_until

from edge.committer import Committer
from edge.delivery import Delivery


class Gate:
    """A store function that records each call's entries and its thread, and can be held
    shut to let entries pile up behind it."""

    def __init__(self, fail_on: object = None) -> None:
        self.calls: list[list[int]] = []
        self.threads: list[str] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, entries: list[int]) -> None:
        self.entered.set()
        self.open.wait(5)
        self.threads.append(threading.current_thread().name)
        self.calls.append(list(entries))
        if self.fail_on in entries:
            raise RuntimeError("disk on fire")


@contextmanager
def first_held(depth: int) -> Iterator[tuple[Gate, Committer]]:
    """A started committer of `depth` whose store holds entry 1 until gate.open is set."""
    gate = Gate()
    committer = Committer(gate, depth=depth)
    committer.start()
    try:
        gate.open.clear()
        committer.put(1)
        assert gate.entered.wait(5)  # 1 is being stored: what comes next waits behind it
        yield gate, committer
    finally:
        gate.open.set()
        committer.stop()


def test_entries_waiting_are_stored_together_in_order():
    with first_held(depth=4) as (gate, committer):
        for n in (2, 3, 4):
            committer.put(n)
        gate.open.set()
        assert committer.flush(5)
        assert gate.calls == [[1], [2, 3, 4]]  # one store call (transaction) for the three
        assert set(gate.threads) == {"edge-commit"}


def test_put_waits_while_depth_entries_wait_and_flush_times_out_meanwhile():
    with first_held(depth=1) as (gate, committer):
        committer.put(2)  # waiting: the depth is reached
        third = threading.Thread(target=committer.put, args=(3,))
        third.start()
        third.join(0.2)
        assert third.is_alive()  # held back until the thread takes 2
        assert committer.flush(0.1) is False
        gate.open.set()
        third.join(5)
        assert not third.is_alive() and committer.flush(5)
        assert [n for call in gate.calls for n in call] == [1, 2, 3]


def test_a_failing_store_is_logged_and_later_entries_are_still_stored(caplog):
    gate = Gate(fail_on=1)
    committer = Committer(gate)
    committer.start()
    try:
        committer.put(1)
        committer.put(2)
        assert committer.flush(5)
        assert [n for call in gate.calls for n in call] == [1, 2]
        assert "storing 1 batches of answers failed" in caplog.text \
            or "storing 2 batches of answers failed" in caplog.text
    finally:
        committer.stop()


def test_not_started_or_stopped_it_stores_on_the_calling_thread():
    gate = Gate()
    committer = Committer(gate)
    committer.put(1)  # never started
    committer.start()
    committer.put(2)
    committer.stop()  # stores what waits, then ends
    committer.put(3)
    assert [n for call in gate.calls for n in call] == [1, 2, 3]
    me = threading.current_thread().name
    assert gate.threads == [me, "edge-commit", me]
    with pytest.raises(ValueError, match="depth"):
        Committer(gate, depth=0)


class AckingClient:
    """Stands in for paho's client: records each acknowledgement with the number of
    answers the outbox held (stored) at that moment; publishes nothing (not connected)."""

    max_inflight_messages = 3

    def __init__(self, outbox) -> None:
        self.outbox, self.acks = outbox, []

    def ack_many(self, owed):
        self.acks.append((list(owed), self.outbox.count))

    def publish(self, *args, **kwargs):
        raise AssertionError("nothing is sent while the link is down")


def test_background_batches_are_acknowledged_only_once_stored(tmp_path):
    """The worker's batches go to the commit thread; each batch's sensor messages are
    acknowledged after its answers are in the file, in batch order; a plain batch() is
    stored when it returns, after the background ones before it."""
    outbox = box(tmp_path)
    client = AckingClient(outbox)
    down = threading.Event()  # not connected: the answers stay in the outbox
    delivery = Delivery(client, outbox, connected=down, errors_topic=ERRORS)
    delivery.start()
    try:
        for b in range(5):
            tokens = [(0, 100 * b + i, 1) for i in range(3)]
            with delivery.batch(tokens, background=True):
                for i in range(3):
                    delivery.publish("factory/l/inference", b"r%d-%d" % (b, i), 1, None)
        with delivery.batch([(0, 999, 1)]):  # synchronous: stored when it returns
            delivery.publish("factory/l/inference", b"last", 1, None)
        assert outbox.count == 16
        assert wait_until(lambda: sum(len(owed) for owed, _ in client.acks) == 16)
        acked = [mid for owed, _ in client.acks for mid, _ in owed]
        assert acked == [100 * b + i for b in range(5) for i in range(3)] + [999]
        stored_before = 0
        for owed, count in client.acks:  # answers of every acked message were stored
            stored_before += len(owed)
            assert count >= stored_before
    finally:
        delivery.stop()
        outbox.close()


def test_a_receipt_of_a_background_batch_waits_for_its_commit(tmp_path):
    outbox = box(tmp_path)
    client = AckingClient(outbox)
    down = threading.Event()
    delivery = Delivery(client, outbox, connected=down, errors_topic=ERRORS)
    delivery.start()
    try:
        with delivery.batch([(0, 1, 1)], background=True):
            receipt = delivery.publish("factory/l/inference", b"r", 1, None)
        started = time.monotonic()
        receipt.wait_for_publish(5)  # stored first; then, the link down, it waits on disk
        assert receipt.seq is not None and time.monotonic() - started < 5
    finally:
        delivery.stop()
        outbox.close()
