"""What the core asks of a stream it drains, beyond ``async for``.

Two hooks, both asked only when a chunk timeout fires:

- ``abandon()``: a source that can be stuck in a blocking call (a worker
  thread inside llama.cpp) must be told to stop without waiting for it to
  notice. Waiting would turn a 0.2 s ``chunk_timeout`` into the worker's full
  close wait (5 s).
- ``timeout_error(error)``: a backend's stream gives the core's
  ``ChunkTimeoutError`` its own context (provider, model, server), returning
  a subclass such as ``BackendChunkTimeoutError``.

The core asks through the ``Source`` protocol instead of recognising
concrete classes, so a wrapper (a backend's ``SlotStream``) passes both on
and keeps the behaviour of what it wraps. Each hook is looked up on its own:
any other async iterator is closed with its ``aclose()`` (or ``close()``),
waited for, best effort, and its timeout error is the core's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from ._exceptions import ChunkTimeoutError

__all__ = ["Source", "abandon_source", "close_source", "contextualise_timeout"]

_log = logging.getLogger("motio")

T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Source(Protocol[T_co]):
    """An async iterator the core can close, abandon, and ask for context.

    Implemented by the core's ``ThreadedIterator``, by backends' streams, and
    by wrappers (``SlotStream``) that pass each hook to what they wrap.
    """

    def __aiter__(self) -> Source[T_co]: ...

    async def __anext__(self) -> T_co: ...

    async def aclose(self) -> None:
        """Stop the stream and wait (bounded) until it has cleaned up."""

    async def abandon(self) -> None:
        """Stop the stream without waiting for its producer, which may be stuck."""

    def timeout_error(self, error: ChunkTimeoutError) -> ChunkTimeoutError:
        """``error`` (the core's chunk timeout), or a subclass of it with context."""


async def abandon_source(source: object) -> None:
    """Stop ``source`` without waiting if it can, else close it (best effort)."""
    abandon = getattr(source, "abandon", None)
    if abandon is None:
        await close_source(source)
        return
    try:
        await abandon()
    except Exception:
        _log.debug("abandoning %r failed", source, exc_info=True)


async def close_source(source: object) -> None:
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


def contextualise_timeout(source: object, error: ChunkTimeoutError) -> ChunkTimeoutError:
    """``source.timeout_error(error)`` if the source has the hook, else ``error``."""
    hook: Callable[[ChunkTimeoutError], ChunkTimeoutError] | None = getattr(source, "timeout_error", None)
    return error if hook is None else hook(error)


def _close_quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception:
        _log.debug("closing failed", exc_info=True)
