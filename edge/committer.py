"""Stores the worker's answers on a thread of their own ("edge-commit"), so that the next
batch is decoded and inferred while the outbox's transaction and fsync run.

    committer = Committer(store, depth=2)   # store(entries) is called on the thread
    committer.start()
    committer.put(entry)                     # waits while `depth` entries are waiting
    committer.flush(timeout)                 # True once all put so far are stored
    committer.stop(timeout)                  # flush, then end the thread

Entries are stored in the order they were put. Those waiting when the thread comes round
go to one `store` call together (group commit: under load one transaction and one fsync
for several batches; when idle a batch at a time, as nothing waits to gather more). The
caller's guarantees ride on `store`: edge/delivery.py acknowledges a batch's sensor
messages inside it, after the commit, so a crash before it leaves them unacknowledged.
Measured before this thread existed, binary windows under the closed loop of
benchmarks/pipeline.py: the worker spent 30% of its time in the outbox commit, four
fifths of that off the CPU (fsync, and the GIL taken back after it).

Not started (or stopped), `put` stores at once on the calling thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
WAIT_S = 0.5  # a waiting put looks again this often (the thread may have been stopped)


class Committer(Generic[T]):
    """A FIFO of entries stored in groups by `store(entries)` on one thread."""

    def __init__(self, store: Callable[[list[T]], None], *, depth: int = 2,
                 name: str = "edge-commit") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._store, self.depth, self.name = store, depth, name
        self._waiting: list[T] = []
        self._cv = threading.Condition()
        self._put = 0  # entries queued so far
        self._done = 0  # ... of them stored (or failed: logged, never retried)
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._alive() and not self._stopping

    def start(self) -> None:
        with self._cv:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def put(self, entry: T) -> None:
        """Queue `entry`, waiting while `depth` entries are waiting; stored at once on this
        thread when the committer is not running."""
        with self._cv:
            while len(self._waiting) >= self.depth and self.running:
                self._cv.wait(WAIT_S)
            if self.running:
                self._waiting.append(entry)
                self._put += 1
                self._cv.notify_all()
                return
        self._store([entry])

    def flush(self, timeout: float | None) -> bool:
        """True once every entry queued before this call is stored; False after `timeout`
        seconds (None: no limit), or when the thread ended with some unstored."""
        with self._cv:
            target = self._put
            return self._cv.wait_for(
                lambda: self._done >= target or not self._alive(), timeout) \
                and self._done >= target

    def stop(self, timeout: float = 5.0) -> None:
        """Store what waits (within `timeout`), then end the thread."""
        self.flush(timeout)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if not self._waiting:  # stopping, and nothing left
                    return
                group, self._waiting = self._waiting, []
                self._cv.notify_all()  # room for a waiting put
            try:
                self._store(group)
            except Exception:  # a bug must not end storing: these stay unacknowledged
                log.exception("storing %d batches of answers failed", len(group))
            with self._cv:
                self._done += len(group)
                self._cv.notify_all()
