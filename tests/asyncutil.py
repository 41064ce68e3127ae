"""The one bounded runner for async tests, and small async helpers.

Every async test body runs through :func:`run`: a fresh event loop, an
overall bound (a hang fails the test instead of stalling the suite), and a
failure on anything the loop reports through its exception handler.
asyncio reports "Task exception was never retrieved", "Task was destroyed
but it is pending" and a transport's "Event loop is closed" that way, as log
records rather than warnings, so ``filterwarnings = error`` alone would not
fail a test on them.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BOUND", "agen", "drain", "run"]

T = TypeVar("T")

# Seconds: no test waits longer than this for anything. Generous for a
# shared 2-core CI machine running a real model; finite so a hang fails.
BOUND = 120.0


def run(coro: Coroutine[Any, Any, T], timeout: float = BOUND) -> T:
    """Run ``coro`` on a fresh loop; fail on any loop-reported error."""
    reports: list[dict[str, Any]] = []

    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner() as runner:
        result = runner.run(main())
    gc.collect()  # what a dropped task or transport reports, it reports now, in this test
    assert not reports, f"the event loop reported: {[r.get('message') for r in reports]}"
    return result


async def agen(items: list[Any], *, closed: list[bool] | None = None, step: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    """Yield ``items``; record closing in ``closed``; yield to the loop each time."""
    try:
        for item in items:
            await asyncio.sleep(0)
            yield item
        if step is not None:
            await step.wait()
    finally:
        if closed is not None:
            closed.append(True)


async def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    """Read a send_to_queue protocol to its end: items, then None or an error."""
    out = []
    while True:
        item = await queue.get()
        out.append(item)
        if item is None or isinstance(item, BaseException):
            return out
