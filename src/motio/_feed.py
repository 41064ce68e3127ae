"""``send_to_queue``: feed a backend response into a queue, never hanging.

The queue protocol, as the consumer sees it: zero or more items, then either
the sentinel ``None`` (the end), or one exception instance (the end, with an
error: the generation's own ``Exception``, a ``ChunkTimeoutError``, or a
``CancelledError`` when the producing task was cancelled).

Any object with asyncio.Queue's ``put_nowait``/``put`` (``QueueFull`` meaning
"await ``put``") can stand in for the queue; the thunk uses that to fold
chunks straight into its text without a second task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from ._exceptions import ChunkTimeoutError
from ._threaded import ThreadedIterator

__all__ = ["DEFAULT_CHUNK_TIMEOUT", "send_to_queue"]

DEFAULT_CHUNK_TIMEOUT = 120.0
"""Seconds to wait for each chunk of a stream, the first included."""

_log = logging.getLogger("motio")


class _QueueLike(Protocol):
    def put_nowait(self, item: Any) -> None: ...

    async def put(self, item: Any) -> None: ...


class _Single:
    """A non-streaming result: put once, then the sentinel."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


async def send_to_queue(
    co: Coroutine[Any, Any, AsyncIterator[Any] | Any] | AsyncIterator[Any],
    aqueue: asyncio.Queue[Any],
    *,
    chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
    on_timeout: Callable[[], object] | None = None,
) -> None:
    """Process the output of a backend request by sending it to a queue.

    Args:
        co: a coroutine or awaitable (its result is streamed if it is an
            async iterator, else put once), an async iterator, or a blocking
            iterator (drained in a worker thread).
        aqueue: the queue to fill. Items go in order, then ``None``; on error
            the exception instance goes in instead of ``None``.
        chunk_timeout: seconds to wait for each streamed item, the first
            included; ``None`` waits forever. Time spent waiting for room in
            a full queue does not count.
        on_timeout: called once when ``chunk_timeout`` expires.

    Raises:
        asyncio.CancelledError: the task running this was cancelled; the
            queue gets a ``CancelledError`` instance first, so a waiting
            consumer is released.
    """
    source: Any = None
    try:
        source = await _open(co)
        if isinstance(source, _Single):
            await _put(aqueue, source.value)
        else:
            await _pump(source, aqueue, chunk_timeout, on_timeout)
            return
    except asyncio.CancelledError:
        await _abandon(source)
        _put_final(aqueue, asyncio.CancelledError())
        raise
    except Exception as exc:
        await _abandon(source)
        await _put(aqueue, exc)
        return
    await _put(aqueue, None)


async def _open(co: Any) -> Any:
    """Turn what a backend returned into an async iterator or a `_Single`."""
    if hasattr(co, "__anext__"):
        return co
    if hasattr(co, "__await__"):
        result = await co
        return result if hasattr(result, "__anext__") else _Single(result)
    if hasattr(co, "__aiter__"):
        return co.__aiter__()
    if hasattr(co, "__next__"):
        return ThreadedIterator(co, asyncio.get_running_loop())
    raise TypeError(
        "send_to_queue() needs a coroutine, awaitable, async iterator or iterator, "
        f"got {type(co).__name__}"
    )


class _Watchdog:
    """One re-armed timer per stream instead of a timeout per chunk.

    The producer bumps ``ticks`` per item. The timer samples it every quarter
    of the limit and cancels the producer after four samples in a row saw no
    progress, so a stall is caught between 1 and 1.25 limits after the last
    item, at the cost of one integer increment per chunk.
    """

    __slots__ = (
        "ticks", "waiting_on_queue", "fired", "_seen", "_idle", "_period", "_task", "_loop", "_handle"
    )

    def __init__(self, timeout: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.ticks = 0
        self.waiting_on_queue = False
        self.fired = False
        self._seen = 0
        self._idle = 0
        self._period = timeout / 4
        self._task = asyncio.current_task()
        self._handle = loop.call_at(loop.time() + self._period, self._check)

    def _check(self) -> None:
        if self.ticks != self._seen or self.waiting_on_queue:
            self._seen = self.ticks
            self._idle = 0
        else:
            self._idle += 1
            if self._idle >= 4:
                self.fired = True
                assert self._task is not None
                self._task.cancel()
                return
        self._handle = self._loop.call_at(self._handle.when() + self._period, self._check)

    def disarm(self) -> None:
        self._handle.cancel()


async def _pump(
    source: Any,
    aqueue: _QueueLike,
    chunk_timeout: float | None,
    on_timeout: Callable[[], object] | None,
) -> None:
    """Move every item of ``source`` into ``aqueue`` under the watchdog."""
    dog = _Watchdog(chunk_timeout) if chunk_timeout is not None else _NoWatchdog()
    try:
        await _move_items(source, aqueue, dog)
    except (asyncio.CancelledError, Exception):
        dog.disarm()
        if not _is_own_timeout(dog):
            raise
    else:
        dog.disarm()
        await _put(aqueue, None)
        return
    await _abandon(source)
    await _put(aqueue, _timeout_error(chunk_timeout, dog.ticks))
    _call_on_timeout(on_timeout)


def _is_own_timeout(dog: Any) -> bool:
    """Whether the error in flight is the watchdog's cancel (then absorb it).

    An outer cancel() that arrived as well leaves cancelling() above zero and
    must propagate. Some HTTP stacks turn a cancel into their own error; when
    the watchdog fired, that error is still our timeout.
    """
    if not dog.fired:
        return False
    task = asyncio.current_task()
    return task is not None and task.uncancel() == 0


async def _move_items(source: Any, aqueue: _QueueLike, dog: Any) -> None:
    put = aqueue.put_nowait
    async for item in source:
        dog.ticks += 1
        try:
            put(item)
        except asyncio.QueueFull:
            # Backpressure: wait for room; the watchdog does not count this.
            dog.waiting_on_queue = True
            try:
                await aqueue.put(item)
            finally:
                dog.waiting_on_queue = False


class _NoWatchdog:
    __slots__ = ("ticks", "waiting_on_queue", "fired")

    def __init__(self) -> None:
        self.ticks = 0
        self.waiting_on_queue = False
        self.fired = False

    def disarm(self) -> None:
        pass


def _timeout_error(chunk_timeout: float | None, ticks: int) -> ChunkTimeoutError:
    assert chunk_timeout is not None
    which = "the first chunk" if ticks == 0 else f"chunk {ticks + 1}"
    return ChunkTimeoutError(
        f"stream stalled: no chunk within chunk_timeout={chunk_timeout:g} s while waiting "
        f"for {which}; pass chunk_timeout=<seconds> to allow longer, or None to wait forever",
        timeout=chunk_timeout,
        chunks=ticks,
    )


def _call_on_timeout(on_timeout: Callable[[], object] | None) -> None:
    if on_timeout is None:
        return
    try:
        on_timeout()
    except Exception:
        _log.exception("on_timeout callback failed")


async def _abandon(source: Any) -> None:
    """Close an iterator that will not be read to the end (best effort)."""
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        close = getattr(source, "close", None)
        if close is not None and not isinstance(source, _Single):
            _close_quietly(close)
        return
    try:
        await aclose()
    except Exception:
        _log.debug("closing %r failed", source, exc_info=True)


def _close_quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception:
        _log.debug("closing failed", exc_info=True)


async def _put(aqueue: _QueueLike, item: Any) -> None:
    try:
        aqueue.put_nowait(item)
    except asyncio.QueueFull:
        await aqueue.put(item)


def _put_final(aqueue: Any, item: BaseException) -> None:
    """Put the terminal marker now, even into a full queue.

    We are being cancelled and cannot wait for room; a consumer that drains
    the queue later must still find the end instead of hanging.
    """
    try:
        aqueue.put_nowait(item)
    except asyncio.QueueFull:
        if not isinstance(aqueue, asyncio.Queue):
            raise
        aqueue._put(item)  # type: ignore[attr-defined]
        aqueue._unfinished_tasks += 1  # type: ignore[attr-defined]
        aqueue._wakeup_next(aqueue._getters)  # type: ignore[attr-defined]
