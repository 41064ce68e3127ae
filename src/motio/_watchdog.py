"""Chunk timeouts for many streams with one timer per loop, not one per chunk.

An ``asyncio.timeout`` per chunk costs about as much as the whole rest of a
stream's per-chunk work, and even one TimerHandle per stream adds a heap
entry and ~100 bytes to every generation. Instead each stream gets a
``Watchdog`` (a few counters) registered with its loop's ``_Hub``, and the
hub samples every registered watchdog each quarter of the limit.

A stream bumps ``ticks`` per item. A watchdog fires (cancels its task) once
four full sample periods in a row saw no progress, so a stall is caught
between 1 and 1.25 limits after the last item. Time spent blocked on a full
queue is flagged with ``waiting_on_queue`` and counts as progress.
"""

from __future__ import annotations

import asyncio
import weakref

__all__ = ["Watchdog", "watch"]

# Samples without progress that make a stall; the sample period is the
# limit divided by this, so a stall is detected within 1 to 1.25 limits.
_SAMPLES = 4


class Watchdog:
    """The per-stream half: counters the stream updates, read by the hub."""

    __slots__ = ("ticks", "waiting_on_queue", "fired", "_seen", "_idle", "_task", "_hub")

    def __init__(self, task: asyncio.Task[object] | None, hub: _Hub | None) -> None:
        self.ticks = 0
        self.waiting_on_queue = False
        self.fired = False
        self._seen = 0
        # The first sample closes a partial period: it must not count.
        self._idle = -1
        self._task = task
        self._hub = hub

    def disarm(self) -> None:
        """Stop watching (idempotent)."""
        if self._hub is not None:
            self._hub.remove(self)
            self._hub = None

    def _sample(self) -> bool:
        """Record one sample; return True if the stream has stalled."""
        if self.ticks != self._seen or self.waiting_on_queue:
            self._seen = self.ticks
            self._idle = 0
            return False
        self._idle += 1
        return self._idle >= _SAMPLES


class _Hub:
    """All watchdogs with one limit on one loop, sampled by one timer."""

    __slots__ = ("_loop", "_period", "_dogs", "_handle", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._period = timeout / _SAMPLES
        self._dogs: set[Watchdog] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, dog: Watchdog) -> None:
        self._dogs.add(dog)
        if self._handle is None:
            self._handle = self._loop.call_later(self._period, self._sample_all)

    def remove(self, dog: Watchdog) -> None:
        self._dogs.discard(dog)

    def _sample_all(self) -> None:
        for dog in [d for d in self._dogs if d._sample()]:
            self._dogs.discard(dog)
            dog._hub = None
            dog.fired = True
            if dog._task is not None:
                dog._task.cancel()
        # Stop ticking when idle, so a quiet loop has no pending timer.
        self._handle = (
            self._loop.call_at(self._handle.when() + self._period, self._sample_all)
            if self._dogs and self._handle is not None
            else None
        )


# Per-loop state, keyed weakly on the loop object itself (never its id(),
# which a new loop may reuse): a closed loop's hubs go away with it.
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Hub]] = (
    weakref.WeakKeyDictionary()
)


def watch(timeout: float) -> Watchdog:
    """Start watching the current task's stream with limit ``timeout``."""
    loop = asyncio.get_running_loop()
    hubs = _hubs.get(loop)
    if hubs is None:
        hubs = _hubs[loop] = {}
    hub = hubs.get(timeout)
    if hub is None:
        hub = hubs[timeout] = _Hub(loop, timeout)
    dog = Watchdog(asyncio.current_task(), hub)
    hub.add(dog)
    return dog
