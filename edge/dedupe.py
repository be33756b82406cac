"""Dedupe: QoS 1 delivers a sensor message at least once, so the same one can come twice
(a redelivery after a reconnect or a restart). A bounded window of recent `<line>/<id>`
keys catches it before inference; the duplicate gets no answer of its own, because the
first copy's answer is already in the outbox.

    dedupe = Dedupe.load(outbox)             # the window as the outbox file kept it
    if dedupe.seen("press-3", "w1"): ...     # True: a duplicate, skip it
    outbox.commit(results, keys=dedupe.take_new())   # remembered with the batch's answers

Used by the worker thread only. Keys are remembered in memory as soon as they are seen
(a copy in the same batch is caught too) and stored with the answers they belong to, so
a crash before the answers are on disk forgets them as well: the broker redelivers the
unacknowledged message and it is computed then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .outbox import Outbox


class Dedupe:
    """The last `window` keys, oldest first; `window = 0` turns dedupe off."""

    def __init__(self, keys: Iterable[str], window: int) -> None:
        self.window = window
        self._order: deque[str] = deque()
        self._keys: set[str] = set()
        self._new: list[str] = []
        for key in keys:
            self._add(key)

    @classmethod
    def load(cls, outbox: Outbox) -> Dedupe:
        window = outbox.settings.dedupe_window
        return cls(outbox.recent_keys() if window else (), window)

    def seen(self, line: str, msg_id: str) -> bool:
        """True when `<line>/<msg_id>` is in the window; otherwise remember it."""
        if not self.window:
            return False
        key = f"{line}/{msg_id}"  # a line is one topic level: no '/' in it
        if key in self._keys:
            return True
        self._add(key)
        self._new.append(key)
        return False

    def take_new(self) -> list[str]:
        """Keys first seen since the last call: the next outbox commit stores them."""
        new, self._new = self._new, []
        return new

    def _add(self, key: str) -> None:
        self._order.append(key)
        self._keys.add(key)
        if len(self._order) > self.window:
            self._keys.discard(self._order.popleft())

    def __len__(self) -> int:
        return len(self._order)
