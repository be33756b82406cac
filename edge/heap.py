"""Giving freed heap back to the operating system after a burst.

Sensor payloads over 512 bytes live in glibc's heap, not in Python's small-object arenas.
After a burst (the broker's backlog delivered at a reconnect: up to limits.queue_bound
windows at once) they are freed, but glibc keeps the pages, so the gateway's resident
memory stays at the burst's high-water mark for good. `malloc_trim(0)` returns them. Other
C libraries (musl) have no such call: there `trim()` does nothing.

    heap = HeapTrim(after_bytes=1 << 20)
    heap.note(queued_bytes)     # paho's thread, per queued message: the high-water mark
    heap.drained()              # the worker, with the queue empty: trims once per burst

And `freeze_loaded()`, once the bundle is loaded: the cyclic garbage collector's full
collections stop re-scanning what the process keeps for good.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrim:
    """Trims once after the queue held more than `after_bytes` of payload and drained, at
    most once per `every_s` (a trim walks the heap: well under a millisecond here)."""

    def __init__(self, after_bytes: int, every_s: float = 1.0) -> None:
        self.after_bytes, self.every_s = after_bytes, every_s
        self._peak = 0
        self._last = float("-inf")
        self.trims = 0

    def note(self, queued_bytes: int) -> None:
        if queued_bytes > self._peak:
            self._peak = queued_bytes

    def drained(self) -> None:
        now = time.monotonic()
        if self._peak > self.after_bytes and now - self._last >= self.every_s:
            self._peak, self._last = 0, now
            if trim():
                self.trims += 1


def freeze_loaded() -> None:
    """Collect once, then move every object alive now (the bundle's sessions, the config,
    the imported libraries) out of the cyclic collector's generations. Its full collections,
    which otherwise walk all of them, paused the gateway for 20-40 ms under load (the p99 of
    benchmarks/pipeline.py at half load); after this they walk only what came later. For the
    process of one service (edge-runtime run, a worker): a frozen object in a reference
    cycle is never freed."""
    gc.collect()
    gc.freeze()
