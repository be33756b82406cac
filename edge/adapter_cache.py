"""Loaded adapters kept in memory, least recently used first out, within a byte budget.

Adapters that a route uses are pinned: dropping them would only force a reload at the next
batch. Past the budget, unpinned ones go; pinned ones stay even over it (with a warning),
since serving the configured lines comes first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

log = logging.getLogger(__name__)


class LoadedCache:
    """key -> loaded value with its size in bytes (the adapter file's size)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pinned: set[Hashable] = set()
        self._lock = threading.Lock()
        self.evictions = 0

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def holds(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            self._evict()

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def pin(self, keys: set[Hashable]) -> None:
        """Replace the pinned set (the adapters the live routes use)."""
        with self._lock:
            self._pinned = set(keys)
            self._evict()

    def _evict(self) -> None:
        total = sum(size for _, size in self._items.values())
        for key in list(self._items):
            if total <= self.budget:
                return
            if key not in self._pinned:
                total -= self._items.pop(key)[1]
                self.evictions += 1
        if total > self.budget:
            log.warning("adapters in use hold %d bytes, over adapters.memory_budget_mb "
                        "(%d bytes)", total, self.budget)
