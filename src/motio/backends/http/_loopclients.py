"""One loop-bound HTTP client per event loop, always closed on its own loop.

An async HTTP client belongs to the loop that created it. Two failures this
module prevents:

* handing a client to the wrong loop: ``asyncio.run`` creates a new loop per
  call and CPython often gives it the ``id()`` of the one just closed, so a
  cache keyed by ``id(loop)`` returns a dead loop's client ("bound to a
  different event loop"). The cache is keyed by a weak reference to the loop
  object instead, which never equals one to another loop.
* "Event loop is closed" noise: closing a client from another loop, or after
  its loop is gone, makes its sockets call into a dead loop. Here a client is
  closed on its own loop while that loop still runs, by a suspended async
  generator that ``asyncio.run``/``Runner`` finalise at shutdown
  (``loop.shutdown_asyncgens``); a client whose loop is already closed is
  just dropped, its sockets closed without touching the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

from ..._cache import ClientCache
from ..._compat import finish_aclose_without_loop

__all__ = ["LoopClients", "LoopClient", "loop_semaphore"]

_log = logging.getLogger("motio")


class _State(enum.Enum):
    """A LoopClient's lifecycle: SERVING -> RETIRED, and either -> LOOP_DEAD."""

    SERVING = "handed out to requests on its loop"
    RETIRED = "no longer handed out; closed on its loop once idle"
    LOOP_DEAD = "its loop is closed: sockets closed without it"


class LoopClient:
    """A client plus what it takes to close it on its own loop.

    ``retire()`` (on the owning loop) closes it once no request is using it;
    requests bracket their use with ``acquire()``/``release()``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self.client = client
        self._loop_ref = weakref.ref(loop)
        self._in_flight = 0
        self._state = _State.SERVING
        self._closer = _close_at_shutdown(self)
        self._close_task: asyncio.Task[None] | None = None

    async def arm(self) -> None:
        """Register the shutdown hook: must run on the client's loop."""
        await self._closer.__anext__()

    def loop_is_dead(self) -> bool:
        loop = self._loop_ref()
        return loop is None or loop.is_closed()

    def serves(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._state is _State.SERVING and self._loop_ref() is loop

    def acquire(self) -> None:
        self._in_flight += 1

    def release(self) -> None:
        self._in_flight -= 1
        if self._state is not _State.SERVING and self._in_flight == 0:
            self._schedule_close()

    def retire(self) -> None:
        """Stop handing this client out; close it when idle (on its loop)."""
        self._stop_serving()
        if self._in_flight == 0:
            self._schedule_close()

    def discard(self) -> None:
        """Get rid of this client from any thread, whatever its loop's state."""
        loop = self._loop_ref()
        if loop is None or loop.is_closed():
            self._drop_dead()
            return
        try:
            loop.call_soon_threadsafe(self.retire)
        except RuntimeError:  # closed between the check and the call
            self._drop_dead()

    async def aclose_now(self) -> None:
        """Close the client at once, on its own (running) loop."""
        self._stop_serving()
        await self._closer.aclose()

    def _stop_serving(self) -> None:
        if self._state is _State.SERVING:  # a dead loop's client stays dead
            self._state = _State.RETIRED

    def _schedule_close(self) -> None:
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._closer.aclose())

    def _drop_dead(self) -> None:
        # Run the closer's `finally` synchronously: with the loop dead it does
        # not await (see _close_client), so it finishes here.
        self._state = _State.LOOP_DEAD
        finish_aclose_without_loop(self._closer)

    async def _close_client(self) -> None:
        if self._state is _State.LOOP_DEAD:
            self.client.close_without_loop()
            return
        try:
            await self.client.close()
        except Exception:
            _log.debug("closing %r failed", self.client, exc_info=True)


async def _close_at_shutdown(entry: LoopClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await entry._close_client()


class LoopClients:
    """A ``ClientCache`` of :class:`LoopClient`, one per live event loop.

    Args:
        factory: builds a new client; called on the loop that will use it.
        capacity: how many loops' clients to keep.
    """

    def __init__(self, factory: Callable[[], Any], capacity: int = 8) -> None:
        self._factory = factory
        self._cache = ClientCache(capacity, on_evict=LoopClient.discard)

    async def get(self) -> LoopClient:
        """The running loop's client, created (and armed) on first use."""
        loop = asyncio.get_running_loop()
        # Keyed weakly on the loop object, as all per-loop state in motio: a
        # weak reference equals another to the same live loop, and never one
        # to a new loop that reuses a dead loop's id().
        key = weakref.ref(loop)
        entry: LoopClient | None = self._cache.get(key)
        if entry is not None and entry.serves(loop):
            return entry
        fresh = LoopClient(loop, self._factory())
        await fresh.arm()
        self._cache.put(key, fresh)
        if entry is not None:
            # A retired client replaced: that is not an eviction, so the
            # cache does not discard it for us.
            entry.discard()
        self._drop_dead_loops()
        return fresh

    def _drop_dead_loops(self) -> None:
        # A loop closed without shutdown_asyncgens (a bare new_event_loop()
        # ... close()) left its client's sockets open: close them now rather
        # than when the entry finally falls out of the LRU.
        for entry in list(self._cache.cache.values()):
            if entry.loop_is_dead():
                entry.discard()

    async def aclose(self) -> None:
        """Close every client: the running loop's now, others on their loops."""
        entries = list(self._cache.cache.values())
        self._cache = ClientCache(self._cache.capacity, on_evict=LoopClient.discard)
        loop = asyncio.get_running_loop()
        for entry in entries:
            if entry._loop_ref() is loop:
                await entry.aclose_now()
            else:
                entry.discard()

    def close_all_elsewhere(self) -> None:
        """Discard every client from outside any of their loops."""
        entries = list(self._cache.cache.values())
        self._cache = ClientCache(self._cache.capacity, on_evict=LoopClient.discard)
        for entry in entries:
            entry.discard()


_semaphores_lock = threading.Lock()


def loop_semaphore(
    table: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore], limit: int
) -> asyncio.Semaphore:
    """The running loop's semaphore in ``table``, created on first use.

    Keyed weakly on the loop object itself: a semaphore is bound to its loop,
    and a new loop that reuses a dead loop's id() must not inherit its count.
    """
    loop = asyncio.get_running_loop()
    sem = table.get(loop)
    if sem is None:
        with _semaphores_lock:
            sem = table.get(loop)
            if sem is None:
                sem = table[loop] = asyncio.Semaphore(limit)
    return sem
