"""What the core asks of a stream it drains, beyond ``async for``.

A source that can be stuck in a blocking call (a worker thread inside
llama.cpp) must be *abandoned* on a chunk timeout: told to stop, without
waiting for it to notice. Waiting would turn a 0.2 s ``chunk_timeout`` into
the worker's full close wait (5 s). The core asks for that through the
``Source`` protocol instead of recognising one concrete class, so a wrapper
(such as a backend's ``SlotStream``) passes it through and keeps the
behaviour of what it wraps.

Any other async iterator is closed with its ``aclose()`` (or ``close()``)
and waited for, best effort.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["Source", "abandon_source", "close_source"]

_log = logging.getLogger("motio")


@runtime_checkable
class Source(Protocol):
    """An async iterator that can be closed, or abandoned without waiting.

    Implemented by the core's ``ThreadedIterator`` and by wrappers that must
    pass the choice through to what they wrap.
    """

    def __aiter__(self) -> Any: ...

    async def __anext__(self) -> Any: ...

    async def aclose(self) -> None:
        """Stop the stream and wait (bounded) until it has cleaned up."""

    async def abandon(self) -> None:
        """Stop the stream without waiting for its producer, which may be stuck."""


async def abandon_source(source: Any) -> None:
    """Stop ``source`` without waiting if it can, else close it (best effort)."""
    if isinstance(source, Source):
        try:
            await source.abandon()
        except Exception:
            _log.debug("abandoning %r failed", source, exc_info=True)
        return
    await close_source(source)


async def close_source(source: Any) -> None:
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
