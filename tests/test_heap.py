"""edge/heap.py: freed payload memory goes back to the OS after a burst (glibc's
malloc_trim), once per burst and at most once a second."""

from __future__ import annotations

import os
import sys

import pytest

from edge.heap import HeapTrim, trim

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_burst_of_payloads_is_given_back():
    if not trim():
        pytest.skip("this C library has no malloc_trim")
    # 4000 windows of 12.8 kB (51 MB), each followed by a small object that outlives the
    # burst, as results and log records do in the service: the freed payloads are holes
    # under live data, which free() alone never hands back.
    burst, kept = [], []
    for _ in range(4000):
        burst.append(os.urandom(64) * 200)
        kept.append(os.urandom(600))
    grown = rss()
    del burst
    freed = rss()
    trim()
    assert freed > grown - (10 << 20), (grown, freed)  # free() alone: still held
    assert rss() < freed - (25 << 20), (freed, rss())  # trimmed: most of it went back


def test_trims_once_per_burst_above_the_threshold():
    heap = HeapTrim(after_bytes=1000, every_s=0.0)
    heap.note(900)
    heap.drained()
    assert heap.trims == 0  # a small queue: nothing to give back
    heap.note(5000)
    heap.drained()
    heap.drained()
    expected = 1 if trim() else 0
    assert heap.trims == expected  # once for the burst, not at every empty queue
    heap.note(2000)
    heap.drained()
    assert heap.trims == 2 * expected


def test_trims_at_most_once_per_interval():
    heap = HeapTrim(after_bytes=10, every_s=3600.0)
    for _ in range(3):
        heap.note(100)
        heap.drained()
    assert heap.trims == (1 if trim() else 0)
