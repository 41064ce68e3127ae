"""``send_to_queue``: feed a backend response into a queue, never hanging.

The queue protocol, as the consumer sees it: zero or more items, then either
the sentinel ``None`` (the end), or one exception instance (the end, with an
error: the generation's own ``Exception``, a ``ChunkTimeoutError``, or a
``CancelledError`` when the producing task was cancelled).

Any object with asyncio.Queue's ``put_nowait``/``put`` can stand in for the
queue. Internally the producer fills a ``Sink`` (``_sink.py``); a thunk is
one, so it folds chunks straight into its text without a queue or a second
task (``feed_sink``, which ``ModelOutputThunk.from_response`` runs).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from ._exceptions import ChunkTimeoutError
from ._sink import Sink, as_sink
from ._source import abandon_source, close_source, contextualise_timeout
from ._threaded import ThreadedIterator
from ._watchdog import Watchdog, watch

__all__ = ["DEFAULT_CHUNK_TIMEOUT", "feed_sink", "send_to_queue"]

DEFAULT_CHUNK_TIMEOUT = 120.0
"""Seconds to wait for each chunk of a stream, the first included."""

_log = logging.getLogger("motio")


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
    sink = as_sink(aqueue)
    await feed_sink(co, sink, chunk_timeout=chunk_timeout, on_timeout=on_timeout)


async def feed_sink(
    co: Any,
    sink: Sink,
    *,
    chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
    on_timeout: Callable[[], object] | None = None,
) -> None:
    """``send_to_queue`` into a ``Sink``: what a thunk's producer task runs.

    Same arguments, protocol and errors as ``send_to_queue``.
    """
    # One small coroutine frame for the whole stream, on purpose: every
    # nested coroutine, local and stack slot costs each in-flight generation.
    source: Any = None
    dog = _UNWATCHED
    try:
        _check_timeout(chunk_timeout)
        source = _as_async_iterator(co)
        if source is None and (source := await _resolve(co, sink)) is None:
            return
        dog = watch(chunk_timeout) if chunk_timeout is not None else Watchdog()
        async for item in source:
            dog.ticks += 1
            # `item` is reused for what the sink asks us to await, if
            # anything: one less slot in every in-flight frame.
            if (item := sink._take(item)) is not None:
                await _await_waiting(item, dog)
        dog.disarm()
        await _put(sink, None)
    except (asyncio.CancelledError, Exception):
        dog.disarm()
        if not await _ended_early(source, sink, dog, (chunk_timeout, on_timeout)):
            raise
    except BaseException:  # KeyboardInterrupt, SystemExit: release, never swallow
        dog.disarm()
        _take_final_in_flight(sink)
        raise


async def _resolve(co: Any, sink: Sink) -> Any:
    """Await ``co``: its async iterator, or None once its one result is put."""
    result = await co
    if hasattr(result, "__anext__"):
        return result
    await _put(sink, result)
    await _put(sink, None)
    return None


async def _ended_early(source: Any, sink: Sink, dog: Watchdog, limits: tuple[float | None, Any]) -> bool:
    """Handle the error in flight; return False if it must propagate.

    Our own watchdog's cancel becomes a timeout; another error is put in
    the queue; a cancellation puts a CancelledError, then propagates.
    """
    error = sys.exc_info()[1]
    if _is_own_timeout(dog):
        await _expire(source, sink, limits[0], dog.ticks, limits[1])
        return True
    await close_source(source)
    if isinstance(error, Exception):
        await _put(sink, error)
        return True
    sink._take_final(asyncio.CancelledError())
    return False


def _take_final_in_flight(sink: Sink) -> None:
    # Read here, not bound with `except ... as` in feed_sink: that would
    # add a slot to every in-flight frame.
    error = sys.exc_info()[1]
    assert error is not None
    sink._take_final(error)


def _check_timeout(chunk_timeout: float | None) -> None:
    if chunk_timeout is not None and not chunk_timeout > 0:
        raise ValueError(f"chunk_timeout must be a positive number of seconds or None, got {chunk_timeout!r}")


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
        f"send_to_queue() needs a coroutine, awaitable, async iterator or iterator, got {type(co).__name__}"
    )


async def _await_waiting(pending: Awaitable[None], dog: Watchdog) -> None:
    """Backpressure (a full queue, an async callback): the watchdog does not count this time."""
    dog.waiting_on_queue = True
    try:
        await pending
    finally:
        dog.waiting_on_queue = False


def _is_own_timeout(dog: Watchdog) -> bool:
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
    sink: Sink,
    chunk_timeout: float | None,
    ticks: int,
    on_timeout: Callable[[], object] | None,
) -> None:
    # The source may be stuck in a blocking call (a worker thread, or a
    # wrapper around one): stop it without waiting, or the timeout would take
    # as long as the close wait. Then let it give the error its context (a
    # backend adds provider, model and server), still a ChunkTimeoutError.
    await abandon_source(source)
    await _put(sink, contextualise_timeout(source, _timeout_error(chunk_timeout, ticks)))
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


async def _put(sink: Sink, item: Any) -> None:
    pending = sink._take(item)
    if pending is not None:
        await pending
