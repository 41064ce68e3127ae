"""A small thread-safe LRU cache for loop-bound clients."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["ClientCache"]


class ClientCache:
    """A least-recently-used cache, used to keep one client per event loop.

    Async HTTP clients are bound to the loop that created them, so backends
    keep them here keyed by loop. Every method is safe to call from many
    threads at once.

    Args:
        capacity: how many entries to hold before evicting the least
            recently used one; an int >= 1.
        on_evict: called once with each value evicted for capacity, outside
            the cache's lock, so a backend can close an evicted client.
            Replacing a key's value with ``put`` is not an eviction.

    Attributes:
        cache: the entries in LRU order, least recently used first.

    Raises:
        ValueError: ``capacity`` is not an int >= 1.
    """

    def __init__(self, capacity: int, on_evict: Callable[[Any], object] | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ClientCache capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._on_evict = on_evict
        self._lock = threading.Lock()

    def current_size(self) -> int:
        """Return the number of entries currently cached (never above ``capacity``)."""
        with self._lock:
            return len(self.cache)

    def get(self, key: Hashable) -> Any | None:
        """Return the value cached for ``key`` (now most recently used), or None."""
        with self._lock:
            try:
                self.cache.move_to_end(key)
            except KeyError:
                return None
            return self.cache[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Cache ``value`` under ``key`` as the most recently used entry.

        When the cache is full, the least recently used entry is evicted
        first and handed to ``on_evict``.
        """
        evicted = []
        with self._lock:
            # Make room first, then insert: even a reader that bypasses the
            # lock (``cache`` is public) never sees more than ``capacity``.
            if key not in self.cache:
                while len(self.cache) >= self.capacity:
                    evicted.append(self.cache.popitem(last=False)[1])
            self.cache[key] = value
            self.cache.move_to_end(key)
        for old in evicted:
            self._evict(old)

    def _evict(self, value: Any) -> None:
        if self._on_evict is None:
            return
        try:
            self._on_evict(value)
        except Exception:
            # A failing close of an old client must not break the caller's put().
            import logging

            logging.getLogger("motio").exception("ClientCache on_evict callback failed")
