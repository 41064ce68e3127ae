"""``wait_for_all_mots``: wait for many thunks without a task per thunk."""

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
    loop = asyncio.get_running_loop()
    pending = _pending_on(loop, mots)
    if pending:
        await _AllDone(loop, pending).wait()
    failed = [mot for mot in mots if mot.error is not None]
    if failed:
        raise min(failed, key=lambda mot: mot._failed_at()).error  # type: ignore[misc]


def _pending_on(
    loop: asyncio.AbstractEventLoop, mots: list[ModelOutputThunk[Any]]
) -> list[ModelOutputThunk[Any]]:
    """Check every thunk up front; return those still generating."""
    pending = []
    for mot in mots:
        if mot._is_done():
            continue
        mot._check_loop()
        pending.append(mot)
    return pending


class _AllDone:
    """One future for the whole batch, resolved by thunk done-callbacks.

    Resolves early on the first failure; the futures here never carry an
    exception, so nothing can be logged as "never retrieved".
    """

    __slots__ = ("_future", "_left", "_mots")

    def __init__(self, loop: asyncio.AbstractEventLoop, mots: list[ModelOutputThunk[Any]]) -> None:
        self._future: asyncio.Future[None] = loop.create_future()
        self._left = len(mots)
        self._mots = mots

    async def wait(self) -> None:
        for mot in self._mots:
            mot._add_done_callback(self._one_done)
        try:
            await self._future
        finally:
            for mot in self._mots:
                mot._remove_done_callback(self._one_done)

    def _one_done(self, mot: ModelOutputThunk[Any]) -> None:
        self._left -= 1
        if not self._future.done() and (mot.error is not None or self._left == 0):
            self._future.set_result(None)
