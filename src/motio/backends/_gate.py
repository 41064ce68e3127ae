"""A FIFO gate taken by coroutines on any loop and released from any thread.

The llama.cpp backend needs this shape: a waiting generation must not hold a
thread (so a plain ``threading.Lock`` taken in the worker is out), but the
slot must be given back by the worker thread itself, once it has really
finished with the model's generator, which may be after the coroutine that
took the slot was cancelled. OpenAIBackend's ``max_concurrency`` is one gate
shared by every loop and thread using the backend; its ``"auto"`` mode is a
gate whose limit moves (``_adaptive.py``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from .._loops import wake

__all__ = ["Gate"]


class _Waiter:
    __slots__ = ("loop", "future", "granted")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


class Gate:
    """Up to ``limit`` holders at a time, served first come, first served.

    Subclasses may move ``_limit`` (under ``_lock``) and call ``_admit()``:
    when it shrinks, nobody new is let in until enough holders left; when it
    grows, waiters are let in at once.
    """

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, got {slots}")
        self._lock = threading.Lock()
        self._limit = float(slots)
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Wait for a slot without holding a thread."""
        with self._lock:
            if self._in_flight < self.limit and not self._waiters:
                self._in_flight += 1
                return
            waiter = _Waiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            self._withdraw(waiter)
            raise

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting; never waits."""
        with self._lock:
            if self._in_flight < self.limit and not self._waiters:
                self._in_flight += 1
                return True
            return False

    def release(self) -> None:
        """Give a slot back; callable from any thread."""
        with self._lock:
            self._in_flight -= 1
            self._admit()

    def _withdraw(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter.granted:
                # The slot reached us as we were cancelled: pass it on.
                self._in_flight -= 1
                self._admit()
            else:
                self._waiters.remove(waiter)

    def _admit(self) -> None:
        """Let waiters in while there is room (the lock is held)."""
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            waiter.granted = True
            try:
                waiter.loop.call_soon_threadsafe(wake, waiter.future)
            except RuntimeError:
                continue  # that waiter's loop is closed; nobody is waiting there
            self._in_flight += 1
