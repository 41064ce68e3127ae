"""A FIFO gate taken by coroutines on any loop and released from any thread.

The llama.cpp backend needs this shape: a waiting generation must not hold a
thread (so a plain ``threading.Lock`` taken in the worker is out), but the
slot must be given back by the worker thread itself, once it has really
finished with the model's generator, which may be after the coroutine that
took the slot was cancelled.
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
    """Up to ``slots`` holders at a time, served first come, first served."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, got {slots}")
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self) -> None:
        """Wait for a slot without holding a thread."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            waiter = _Waiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            self._withdraw(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; callable from any thread."""
        with self._lock:
            self._hand_over()

    def _withdraw(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter.granted:
                # The slot reached us as we were cancelled: pass it on.
                self._hand_over()
            else:
                self._waiters.remove(waiter)

    def _hand_over(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            try:
                waiter.loop.call_soon_threadsafe(wake, waiter.future)
            except RuntimeError:
                continue  # that waiter's loop is closed; nobody is waiting there
            return
        self._free += 1

