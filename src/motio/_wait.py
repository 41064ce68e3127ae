"""``wait_for_all_mots``: wait for many thunks without a task per thunk.

It reaches each thunk through one hook, ``ModelOutputThunk._watch``: call
back when settled (at once if already settled), with the failure's place in
time; ``stop=True`` forgets the callback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._thunk import ModelOutputThunk

__all__ = ["wait_for_all_mots"]


async def wait_for_all_mots(mots: list[ModelOutputThunk[Any]]) -> None:
    """Wait until every thunk is computed, concurrently.

    All thunks must belong to the running event loop. A thunk's failure does
    not stop the others: they keep generating and stay awaitable.

    Args:
        mots: the thunks to wait for; an empty list returns at once.

    Raises:
        Exception: the error of the thunk that failed first, in time.
        RuntimeError: a thunk belongs to another event loop, or has no
            generation to wait for.
    """
    if not mots:
        return
    await _AllDone(asyncio.get_running_loop()).wait(mots)


class _AllDone:
    """One future for the whole batch, resolved by the thunks' settle callbacks.

    Resolves early on the first failure *while waiting* (a thunk that had
    already failed does not cut the wait short); the future never carries
    an exception, so nothing can be logged as "never retrieved".
    """

    __slots__ = ("_first", "_future", "_left", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()
        self._left = 0
        # (failed_at, error) of the earliest failure seen.
        self._first: tuple[int, BaseException] | None = None
        self._waiting = False

    async def wait(self, mots: list[ModelOutputThunk[Any]]) -> None:
        """Wait for ``mots``; raise the earliest failure among them."""
        callback = self._one_done  # one bound method: _watch(stop=True) must find it
        watched: list[ModelOutputThunk[Any]] = []
        try:
            # Every thunk is checked (loop, generation) before anything waits.
            for mot in mots:
                if mot._watch(callback):
                    watched.append(mot)
            self._left = len(watched)
            self._waiting = True
            if self._left:
                await self._future
        finally:
            for mot in watched:
                mot._watch(callback, stop=True)
        if self._first is not None:
            raise self._first[1]

    def _one_done(self, mot: ModelOutputThunk[Any], failed_at: int) -> None:
        error = mot.error
        if failed_at and error is not None and (self._first is None or failed_at < self._first[0]):
            self._first = (failed_at, error)
        if not self._waiting:
            return  # settled before the call: counted, never cuts the wait short
        self._left -= 1
        if not self._future.done() and (failed_at or self._left == 0):
            self._future.set_result(None)
