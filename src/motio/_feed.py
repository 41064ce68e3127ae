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
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from ._exceptions import ChunkTimeoutError
from ._threaded import ThreadedIterator
from ._watchdog import Watchdog, watch

__all__ = ["DEFAULT_CHUNK_TIMEOUT", "send_to_queue"]

DEFAULT_CHUNK_TIMEOUT = 120.0
"""Seconds to wait for each chunk of a stream, the first included."""

_log = logging.getLogger("motio")


class _QueueLike(Protocol):
    def put_nowait(self, item: Any) -> None: ...

    async def put(self, item: Any) -> None: ...


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
            consumer is released. ``KeyboardInterrupt`` and ``SystemExit``
            propagate too, after being put in the queue the same way.
    """
    # One small coroutine frame for the whole stream, on purpose: every
    # nested coroutine, local and stack slot costs each in-flight generation.
    source: Any = None
    dog = _UNWATCHED
    try:
        _check_timeout(chunk_timeout)
        source = _as_async_iterator(co)
        if source is None and (source := await _resolve(co, aqueue)) is None:
            return
        dog = watch(chunk_timeout) if chunk_timeout is not None else Watchdog()
        async for item in source:
            dog.ticks += 1
            try:
                aqueue.put_nowait(item)
                continue
            except asyncio.QueueFull:
                pass  # awaited below, outside the handler: a shallower frame
            await _put_waiting(aqueue, item, dog)
        dog.disarm()
        await _put(aqueue, None)
    except (asyncio.CancelledError, Exception):
        dog.disarm()
        if not await _ended_early(source, aqueue, dog, (chunk_timeout, on_timeout)):
            raise
    except BaseException:  # KeyboardInterrupt, SystemExit: release, never swallow
        dog.disarm()
        _put_final(aqueue, sys.exc_info()[1])  # type: ignore[arg-type]
        raise


async def _resolve(co: Any, aqueue: _QueueLike) -> Any:
    """Await ``co``: its async iterator, or None once its one result is put."""
    result = await co
    if hasattr(result, "__anext__"):
        return result
    await _put(aqueue, result)
    await _put(aqueue, None)
    return None


async def _ended_early(
    source: Any, aqueue: _QueueLike, dog: Watchdog, limits: tuple[float | None, Any]
) -> bool:
    """Handle the error in flight; return False if it must propagate.

    Our own watchdog's cancel becomes a timeout; another error is put in
    the queue; a cancellation puts a CancelledError, then propagates.
    """
    error = sys.exc_info()[1]
    if _is_own_timeout(dog):
        await _expire(source, aqueue, limits[0], dog.ticks, limits[1])
        return True
    await _abandon(source)
    if isinstance(error, Exception):
        await _put(aqueue, error)
        return True
    _put_final(aqueue, asyncio.CancelledError())
    return False


def _check_timeout(chunk_timeout: float | None) -> None:
    if chunk_timeout is not None and not chunk_timeout > 0:
        raise ValueError(
            f"chunk_timeout must be a positive number of seconds or None, got {chunk_timeout!r}"
        )


def _as_async_iterator(co: Any) -> Any:
    """What to iterate, or None when ``co`` must be awaited first.

    Raises:
        TypeError: ``co`` is none of the accepted kinds.
    """
    if hasattr(co, "__anext__"):
        return co
    if hasattr(co, "__await__"):
        return None
    if hasattr(co, "__aiter__"):
        return co.__aiter__()
    if hasattr(co, "__next__"):
        return ThreadedIterator(co, asyncio.get_running_loop())
    raise TypeError(
        "send_to_queue() needs a coroutine, awaitable, async iterator or iterator, "
        f"got {type(co).__name__}"
    )


async def _put_waiting(aqueue: _QueueLike, item: Any, dog: Any) -> None:
    """Backpressure: wait for room; the watchdog does not count this time."""
    dog.waiting_on_queue = True
    try:
        await aqueue.put(item)
    finally:
        dog.waiting_on_queue = False


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


async def _expire(
    source: Any,
    aqueue: _QueueLike,
    chunk_timeout: float | None,
    ticks: int,
    on_timeout: Callable[[], object] | None,
) -> None:
    # A source that can be left without waiting (a worker thread stuck in a
    # blocking call, or a wrapper around one) says so with abandon().
    abandon = getattr(source, "abandon", None)
    if abandon is not None:
        await abandon()
    else:
        await _abandon(source)
    error = _timeout_error(chunk_timeout, ticks)
    # A source may give the error its own context (a backend adds its
    # provider, model and server) while keeping it a ChunkTimeoutError.
    contextualise = getattr(source, "timeout_error", None)
    await _put(aqueue, error if contextualise is None else contextualise(error))
    _call_on_timeout(on_timeout)


# Stands in before the stream starts: nothing mutates it, disarm() is a no-op.
_UNWATCHED = Watchdog()


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
        if close is not None:
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
        queue: Any = aqueue
        queue._put(item)
        queue._unfinished_tasks += 1
        queue._wakeup_next(queue._getters)
