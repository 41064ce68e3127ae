"""One generation's three time limits as deadlines, and the error each one raises.

Every backend means the same by them:

- ``first_token``: from the start of an attempt (a request sent, a model
  instance taken) to its first content: queueing and prompt processing.
- ``chunk``: between content chunks. On a stream the core's watchdog
  enforces it on the source's items, and the source names the stall with
  ``chunk_timeout_error``; a backend bounds a wait with it itself only
  where the core does not watch (a whole body read, a non-streamed answer).
- ``total``: the whole generation from ``start()``, retries and their
  waits included.

A backend bounds each wait with ``scope(limit, since)``, the sooner of that
limit and the total deadline; when the scope expires, ``expired`` says
which limit it was, as the error to raise. The messages are written here
once, so every backend says the same thing the same way.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from .._exceptions import (
    BackendChunkTimeoutError,
    BackendError,
    ChunkTimeoutError,
    FirstTokenTimeoutError,
    TotalTimeoutError,
)

if TYPE_CHECKING:
    from ._errors import Where

__all__ = ["Deadlines", "chunk_timeout_error"]


class Deadlines:
    """The first-token, chunk and total limits of one generation, in seconds
    (None: no limit), and the total one as a deadline once started.

    Attributes:
        total_at: the total deadline on the loop's clock, once ``start()``
            ran (None: no limit, or not started). A plain attribute: a
            stream reads it on every network read.
    """

    __slots__ = ("first_token", "chunk", "total", "total_at")

    def __init__(self, first_token: float | None, chunk: float | None, total: float | None) -> None:
        self.first_token = first_token
        self.chunk = chunk
        self.total = total
        self.total_at: float | None = None

    def start(self) -> None:
        """Start the total limit's clock, once (later calls keep the first start)."""
        if self.total_at is None and self.total is not None:
            self.total_at = asyncio.get_running_loop().time() + self.total

    def scope(self, limit: float | None, since: float) -> asyncio.Timeout:
        """A timeout at the sooner of ``since + limit`` and the total deadline."""
        end = None if limit is None else since + limit
        total_at = self.total_at
        if total_at is not None and (end is None or total_at < end):
            end = total_at
        return asyncio.timeout_at(end)

    def expired(
        self,
        which: Literal["first_token", "chunk"],
        limit: float | None,
        since: float,
        where: Where,
        *,
        hint: str,
        seen: int = 0,
    ) -> BackendError:
        """The error for a ``scope(limit, since)`` that expired: the total
        limit's if its deadline came first, else ``which``'s.

        Args:
            which: the limit the scope was for.
            limit: the scope's own limit (None: it was the total's alone).
            since: the scope's start.
            where: the error's context.
            hint: what the limit covered and what to do, after its value.
            seen: chunks received before a chunk timeout.
        """
        total_at = self.total_at
        if total_at is not None and (limit is None or total_at <= since + limit):
            return self.total_error(where)
        if which == "first_token":
            return FirstTokenTimeoutError(
                f"{where.describe()}: no content within first_token_timeout={limit:g} s {hint}",
                timeout=limit,
                **where.fields(),
            )
        return BackendChunkTimeoutError(
            f"{where.describe()}: {hint} chunk_timeout={limit:g} s; raise chunk_timeout=",
            timeout=limit or 0.0,
            chunks=seen,
            **where.fields(),
        )

    def total_error(self, where: Where, detail: str = "") -> TotalTimeoutError:
        """The total limit passed; ``detail`` says what it included."""
        return TotalTimeoutError(
            f"{where.describe()}: the generation did not finish within total_timeout={self.total:g} s"
            f"{detail}; raise total_timeout=",
            timeout=self.total,
            **where.fields(),
        )


def chunk_timeout_error(error: ChunkTimeoutError, where: Where) -> BackendChunkTimeoutError:
    """The core's chunk timeout with a backend's context (a source's ``timeout_error``)."""
    return BackendChunkTimeoutError(
        f"{where.describe()}: {error}",
        timeout=error.timeout or 0.0,
        chunks=error.chunks,
        **where.fields(),
    )
