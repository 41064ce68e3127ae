"""Helpers for the backend tests: bounded asyncio runs that fail on loop noise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["arun", "WAIT"]

T = TypeVar("T")

# The bound on any single test's async part: generous for a 2-core CI box,
# finite so a hang fails instead of stalling the suite.
WAIT = 120.0


def arun(coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
    """Run ``coro`` in a fresh ``asyncio.run`` with an overall timeout.

    Anything the loop reports through its exception handler ("Task exception
    was never retrieved", "Event loop is closed" from a transport...) fails
    the test: those are log records, not warnings, so the pytest warning
    filter alone would let them pass.
    """
    reports: list[dict[str, Any]] = []

    async def bounded() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
        return await asyncio.wait_for(coro, timeout)

    result = asyncio.run(bounded())
    assert not reports, f"the event loop reported: {reports}"
    return result
