"""What ``send_to_queue`` feeds: the ``Sink`` protocol, and queues adapted to it.

The producer hands a sink each item (a chunk, ``None`` for the end, or an
exception instance) through ``_take``. A sink that must await something
before the next item (an async ``process`` callback, a full queue) says so by
returning the awaitable: no exception travels from the sink to the producer
and back, and the hot path (nothing to await) costs one call.

``ModelOutputThunk`` is itself a sink, so a generation needs no real queue
and no second task; any object with asyncio.Queue's ``put_nowait``/``put``
is adapted by ``QueueSink``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, runtime_checkable

from ._compat import force_put

__all__ = ["QueueLike", "QueueSink", "Sink", "as_sink"]


@runtime_checkable
class Sink(Protocol):
    """Where a producer puts a stream's items, in order."""

    def _take(self, item: Any) -> Awaitable[None] | None:
        """Take one item; return an awaitable to await before the next one, or None."""

    def _take_final(self, item: BaseException) -> None:
        """Take the terminal exception now, never waiting: the producer is being cancelled."""


class QueueLike(Protocol):
    """asyncio.Queue's producer half, which ``send_to_queue`` accepts."""

    def put_nowait(self, item: Any) -> None: ...

    async def put(self, item: Any) -> None: ...


class QueueSink:
    """A queue as a sink: ``put_nowait``, and ``put`` when the queue is full."""

    __slots__ = ("_queue",)

    def __init__(self, queue: QueueLike) -> None:
        self._queue = queue

    def _take(self, item: Any) -> Awaitable[None] | None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return self._queue.put(item)
        return None

    def _take_final(self, item: BaseException) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if not isinstance(self._queue, asyncio.Queue):
                raise
            force_put(self._queue, item)


def as_sink(target: QueueLike | Sink) -> Sink:
    """``target`` itself if it is a sink (a thunk), else the queue adapted."""
    if isinstance(target, Sink):
        return target
    return QueueSink(target)
