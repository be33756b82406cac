"""edge.batching: micro-batches from a real queue fed by real threads; latency statistics.

Timing bounds are loose on purpose (shared CI machines): lower bounds are exact, upper bounds
allow several times the expected time.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from edge.batching import LatencyStats, MicroBatcher, WorkItem, group_rows, row_index
from edge.codec import SensorReading
from edge.errors import ConfigError


def item(n: int, line: str = "line7", received: float | None = None) -> WorkItem:
    reading = SensorReading(id=f"m{n}", ts=None, values=np.zeros((6, 100), np.float32))
    return WorkItem(line=line, topic=f"sensors/{line}/press", reading=reading,
                    received=time.monotonic() if received is None else received)


def producer(q: queue.Queue, items: list[WorkItem], every_s: float, delay_s: float = 0.0):
    """Put `items` on `q` from another thread, one every `every_s` after `delay_s`."""

    def run():
        time.sleep(delay_s)
        for it in items:
            it.received = time.monotonic()
            q.put(it)
            time.sleep(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_lone_item_waits_max_wait_then_returns():
    q: queue.Queue = queue.Queue()
    batcher = MicroBatcher(q, max_batch=8, max_wait_s=0.05)
    started = time.monotonic()
    q.put(item(0))
    batch = batcher.next_batch(threading.Event())
    elapsed = time.monotonic() - started
    assert [b.reading.id for b in batch] == ["m0"]
    assert 0.05 <= elapsed < 0.5


def test_full_batch_returns_without_waiting():
    q: queue.Queue = queue.Queue()
    batcher = MicroBatcher(q, max_batch=4, max_wait_s=5.0)
    for n in range(10):
        q.put(item(n))
    started = time.monotonic()
    sizes = [len(batcher.next_batch(threading.Event())) for _ in range(2)]
    assert sizes == [4, 4]  # max_batch respected, and no 5 s wait for a full batch
    assert time.monotonic() - started < 1.0
    assert q.qsize() == 2


def test_backlog_is_not_waited_for_again():
    q: queue.Queue = queue.Queue()
    batcher = MicroBatcher(q, max_batch=16, max_wait_s=1.0)
    for n in range(3):  # arrived 2 s ago: their wait is long over
        q.put(item(n, received=time.monotonic() - 2.0))
    started = time.monotonic()
    batch = batcher.next_batch(threading.Event())
    assert len(batch) == 3 and time.monotonic() - started < 0.5


def test_gathers_items_arriving_during_the_wait():
    q: queue.Queue = queue.Queue()
    batcher = MicroBatcher(q, max_batch=5, max_wait_s=2.0)
    thread = producer(q, [item(n) for n in range(5)], every_s=0.01)
    started = time.monotonic()
    batch = batcher.next_batch(threading.Event())
    elapsed = time.monotonic() - started
    thread.join()
    assert [b.reading.id for b in batch] == [f"m{n}" for n in range(5)]
    assert elapsed < 1.0  # returned when full, long before max_wait


def test_wait_is_measured_from_the_first_item():
    q: queue.Queue = queue.Queue()
    batcher = MicroBatcher(q, max_batch=100, max_wait_s=0.2)
    thread = producer(q, [item(n) for n in range(40)], every_s=0.02)  # 0.8 s of arrivals
    first = batcher.next_batch(threading.Event())
    thread.join()
    span = first[-1].received - first[0].received
    assert 1 < len(first) < 40 and span <= 0.2 + 0.1


def test_blocks_for_the_first_item():
    q: queue.Queue = queue.Queue()
    batcher = MicroBatcher(q, max_batch=4, max_wait_s=0.01)
    producer(q, [item(0)], every_s=0, delay_s=0.2)
    started = time.monotonic()
    batch = batcher.next_batch(threading.Event())
    assert len(batch) == 1 and time.monotonic() - started >= 0.19


def test_stop_with_empty_queue_returns_empty():
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert MicroBatcher(q, max_batch=4, max_wait_s=1.0).next_batch(stop) == []
    assert time.monotonic() - started < 0.2


def test_stop_from_another_thread_wakes_a_blocked_batcher():
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert MicroBatcher(q, max_batch=4, max_wait_s=1.0).next_batch(stop) == []
    assert 0.1 <= time.monotonic() - started < 0.6  # noticed within a poll (50 ms)


def test_stop_still_drains_queued_items():
    q: queue.Queue = queue.Queue()
    for n in range(3):
        q.put(item(n))
    stop = threading.Event()
    stop.set()
    batcher = MicroBatcher(q, max_batch=2, max_wait_s=10.0)
    started = time.monotonic()
    assert [len(batcher.next_batch(stop)) for _ in range(3)] == [2, 1, 0]
    assert time.monotonic() - started < 0.5  # stop cuts the wait short


def test_blocked_batcher_does_not_spin():
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    cpu = {}

    def consume():
        t = time.thread_time()
        MicroBatcher(q, max_batch=4, max_wait_s=0.3).next_batch(stop)  # blocked first ...
        cpu["s"] = time.thread_time() - t

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    q.put(item(0))  # ... then waiting out max_wait for a second item
    thread.join(timeout=5)
    stop.set()
    assert cpu["s"] < 0.1  # 0.6 s blocked: a spinning loop would burn most of it


def test_bad_settings():
    with pytest.raises(ConfigError, match="max_batch"):
        MicroBatcher(queue.Queue(), max_batch=0, max_wait_s=0.01)
    with pytest.raises(ConfigError, match="max_wait_s"):
        MicroBatcher(queue.Queue(), max_batch=1, max_wait_s=-1)
    with pytest.raises(ConfigError, match="max_wait_s"):
        MicroBatcher(queue.Queue(), max_batch=1, max_wait_s=float("nan"))


def test_group_rows_keeps_order():
    items = [item(0, "line7"), item(1, "line2"), item(2, "line7"), item(3, "line9"),
             item(4, "line2")]
    groups = group_rows(items, key=lambda it: it.line)
    assert list(groups) == ["line7", "line2", "line9"]
    assert groups == {"line7": [0, 2], "line2": [1, 4], "line9": [3]}
    by_adapter = group_rows(items, key=lambda it: ("lora", it.line == "line9"))
    assert by_adapter == {("lora", False): [0, 1, 2, 4], ("lora", True): [3]}
    assert group_rows([], key=lambda it: it.line) == {}


def test_latency_percentiles():
    stats = LatencyStats()
    for ms in range(1, 101):  # 1 .. 100 ms
        stats.record(float(ms))
    snap = stats.snapshot_and_reset()
    assert set(snap) == {"messages", "p50_ms", "p99_ms"}
    assert snap["messages"] == 100
    assert snap["p50_ms"] == pytest.approx(50.5) and snap["p99_ms"] == pytest.approx(99.01)


def test_snapshot_resets():
    stats = LatencyStats()
    stats.record(5.0)
    stats.snapshot_and_reset()
    snap = stats.snapshot_and_reset()
    assert snap["messages"] == 0
    assert snap["p50_ms"] is None and snap["p99_ms"] is None
    stats.record(7.0)
    assert stats.snapshot_and_reset()["p50_ms"] == 7.0  # no stale ring entries


def test_latency_ring_is_bounded():
    stats = LatencyStats(window=4096)
    for ms in range(10_000):
        stats.record(float(ms))
    snap = stats.snapshot_and_reset()
    assert snap["messages"] == 10_000  # counted in full ...
    assert snap["p50_ms"] == pytest.approx((5904 + 9999) / 2)  # ... percentiles: last 4096
    assert stats._ring.size == 4096


def test_latency_stats_are_thread_safe():
    stats = LatencyStats(window=128)
    threads = [threading.Thread(target=lambda: [stats.record(1.0) for _ in range(5000)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot_and_reset()
    assert snap["messages"] == 40_000 and snap["p50_ms"] == 1.0


@pytest.mark.parametrize("chunks", [[3, 0, 5], [20], [7, 9, 1, 13]])
def test_record_many_is_record_per_value(chunks):
    """A batch recorded at once leaves the same window as its values one by one, also when
    a batch is longer than the ring (the last `window` values stay)."""
    one, many = LatencyStats(window=8), LatencyStats(window=8)
    values = [float(v * 7 % 23) for v in range(sum(chunks) + 5)]
    start = 0
    for n in chunks:
        for v in values[start:start + n]:
            one.record(v)
        many.record_many(values[start:start + n])
        start += n
    for v in values[start:]:  # then single records again: the oldest go first
        one.record(v)
        many.record(v)
    assert many.snapshot_and_reset() == one.snapshot_and_reset()


def test_row_index_is_a_slice_for_consecutive_rows():
    x = np.arange(10.0)
    assert row_index([2, 3, 4]) == slice(2, 5) and row_index([0]) == slice(0, 1)
    assert row_index([1, 3, 4]) == [1, 3, 4] and row_index([]) == []
    for rows in ([2, 3, 4], [1, 3, 4], [0]):  # the same rows either way
        np.testing.assert_array_equal(x[row_index(rows)], x[rows])
