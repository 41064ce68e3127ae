"""Chunk timeouts for many streams with one timer per loop, not one per chunk.

An ``asyncio.timeout`` per chunk costs about as much as the whole rest of a
stream's per-chunk work, and even one TimerHandle per stream adds a heap
entry and ~100 bytes to every generation. Instead each stream gets a
``Watchdog`` (a few counters) linked into its loop's ``_Hub``, and the hub
samples every linked watchdog each quarter of the limit.

A stream bumps ``ticks`` per item. A watchdog fires (cancels its task) once
four full sample periods in a row saw no progress, so a stall is caught
between 1 and 1.25 limits after the last item. Time spent blocked on a full
queue counts as progress (``waiting_on_queue``).

The hub keeps its watchdogs in an intrusive doubly linked list: linking and
unlinking are O(1) and cost no allocation, which matters with tens of
thousands of streams in flight.
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from typing import Any

__all__ = ["Watchdog", "watch"]

# Samples without progress that make a stall; the sample period is the
# limit divided by this, so a stall is detected within 1 to 1.25 limits.
_SAMPLES = 4


class _Idle(enum.IntEnum):
    """The states ``Watchdog._idle`` can hold besides a count of idle samples.

    One int slot serves both, to keep every in-flight stream small: from 0
    up it counts samples in a row without progress (-1: the first sample
    closes a partial period and does not count); these two values sit far
    outside that range.
    """

    PAUSED = -(1 << 30)  # blocked on a full queue or an async callback: not a stall
    FIRED = 1 << 30  # the stream stalled and its task was cancelled


_PAUSED, _FIRED = _Idle.PAUSED, _Idle.FIRED


class Watchdog:
    """The per-stream half: a counter the stream bumps, read by the hub."""

    __slots__ = ("ticks", "_seen", "_idle", "_task", "_prev", "_next")

    def __init__(self, task: asyncio.Task[Any] | None = None) -> None:
        self.ticks = 0
        self._seen = 0
        # Idle samples in a row, or an _Idle state. The first sample closes
        # a partial period: it must not count.
        self._idle: int = -1
        self._task = task
        self._prev: Any = None
        self._next: Any = None

    @property
    def fired(self) -> bool:
        """True once this watchdog has cancelled its task for a stall."""
        return self._idle == _FIRED

    @property
    def waiting_on_queue(self) -> bool:
        return self._idle <= _PAUSED

    @waiting_on_queue.setter
    def waiting_on_queue(self, waiting: bool) -> None:
        # Blocked on a full queue: a slow consumer is not a stalled stream.
        self._idle = _PAUSED if waiting else 0

    def disarm(self) -> None:
        """Stop watching (idempotent)."""
        if self._prev is not None:
            self._prev._next = self._next
            if self._next is not None:
                self._next._prev = self._prev
            self._prev = self._next = None

    def _stalled(self) -> bool:
        """Record one sample; return True if the stream has stalled."""
        if self._idle <= _PAUSED:
            self._seen = self.ticks
            return False
        if self.ticks != self._seen:
            self._seen = self.ticks
            self._idle = 0
            return False
        self._idle += 1
        return self._idle >= _SAMPLES


class _Hub:
    """All watchdogs with one limit on one loop, sampled by one timer.

    ``_head`` is a sentinel Watchdog heading the linked list.
    """

    __slots__ = ("_loop", "_period", "_head", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._period = timeout / _SAMPLES
        self._head = Watchdog()
        self._handle: asyncio.TimerHandle | None = None

    def link(self, dog: Watchdog) -> None:
        head = self._head
        dog._prev = head
        dog._next = head._next
        if head._next is not None:
            head._next._prev = dog
        head._next = dog
        if self._handle is None:
            self._handle = self._loop.call_later(self._period, self._sample_all)

    def _sample_all(self) -> None:
        dog = self._head._next
        while dog is not None:
            following = dog._next
            if dog._stalled():
                dog.disarm()
                dog._idle = _FIRED
                if dog._task is not None:
                    dog._task.cancel()
            dog = following
        # Stop ticking when idle, so a quiet loop has no pending timer.
        if self._head._next is not None and self._handle is not None:
            self._handle = self._loop.call_at(self._handle.when() + self._period, self._sample_all)
        else:
            self._handle = None


# Per-loop state, keyed weakly on the loop object itself (never its id(),
# which a new loop may reuse): a closed loop's hubs go away with it.
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Hub]] = weakref.WeakKeyDictionary()


def watch(timeout: float) -> Watchdog:
    """Start watching the current task's stream with limit ``timeout``."""
    loop = asyncio.get_running_loop()
    hubs = _hubs.get(loop)
    if hubs is None:
        hubs = _hubs[loop] = {}
    hub = hubs.get(timeout)
    if hub is None:
        hub = hubs[timeout] = _Hub(loop, timeout)
    dog = Watchdog(asyncio.current_task())
    hub.link(dog)
    return dog
