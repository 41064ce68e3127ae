"""Drain a blocking iterator in a worker thread, as an async iterator.

In-process engines such as llama.cpp hand back a synchronous generator whose
``next()`` blocks for a whole token. Calling it on the event loop would stall
every other stream, so a daemon thread pulls items into a small buffer and
wakes the loop at most once per batch (not once per item: a cross-thread
wake-up costs a syscall).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._loops import wake

if TYPE_CHECKING:
    from ._exceptions import ChunkTimeoutError

__all__ = ["ThreadedIterator"]

_log = logging.getLogger("motio")

# How many items the worker may run ahead of a slow consumer before it waits.
_BUFFER = 256
# How long aclose() waits for the worker to finish its current item.
_CLOSE_WAIT = 5.0


class ThreadedIterator:
    """An async iterator over a blocking iterator drained by a daemon thread.

    Once closed (``aclose``) or abandoned (``abandon``), the worker stops
    pulling after the item it is currently waiting for and closes the source
    iterator in its own thread. It implements the core's ``Source`` protocol.
    """

    def __init__(self, source: Iterator[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        self._error: BaseException | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    def __aiter__(self) -> ThreadedIterator:
        return self

    async def __anext__(self) -> Any:
        if self._thread is None:
            self._start()
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    if len(self._items) == _BUFFER - 1:
                        self._cond.notify()
                    return item
                if self._finished:
                    break
                waiter = self._waiter = self._loop.create_future()
            await waiter
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    def _start(self) -> None:
        name = f"motio-iter-{type(self._source).__name__}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._pull_all()
        except BaseException as exc:  # handed to the loop side, which re-raises it
            self._error = exc
        finally:
            if self._stop:
                self._close_source()
            with self._cond:
                self._finished = True
            self._wake()

    def _pull_all(self) -> None:
        for item in self._source:
            with self._cond:
                if self._stop:
                    return
                self._items.append(item)
                while len(self._items) >= _BUFFER and not self._stop:
                    self._cond.wait()
            self._wake()
            if self._stop:
                return

    def _wake(self) -> None:
        with self._cond:
            waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        try:
            self._loop.call_soon_threadsafe(wake, waiter)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to wake

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            _log.exception("closing %r failed", self._source)

    async def aclose(self, *, wait: bool = True) -> None:
        """Stop the worker after its current item and wait for it to exit.

        Args:
            wait: wait (bounded) for the worker to finish its current item
                and close the source. A stalled source (a chunk timeout) is
                not waited for: its worker exits when its blocking call
                returns.
        """
        with self._cond:
            self._stop = True
            self._items.clear()
            self._cond.notify_all()
        if self._thread is None:
            self._close_source()
            return
        if not wait:
            return
        deadline = self._loop.time() + _CLOSE_WAIT
        while True:
            with self._cond:
                if self._finished:
                    return
                waiter = self._waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - self._loop.time()))
            except TimeoutError:
                _log.warning("worker for %r still busy %.0f s after close", self._source, _CLOSE_WAIT)
                return

    async def abandon(self) -> None:
        """Stop the worker after its current item, without waiting for it.

        For a stalled source (a chunk timeout): its worker is stuck in a
        blocking call and exits when that call returns.
        """
        await self.aclose(wait=False)

    def timeout_error(self, error: ChunkTimeoutError) -> ChunkTimeoutError:
        """The core's chunk timeout as it is: a bare iterator has no context to add."""
        return error
