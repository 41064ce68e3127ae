"""Finding the running event loop, and waking a coroutine on it from a thread."""

from __future__ import annotations

import asyncio

__all__ = ["get_current_event_loop", "wake"]


def get_current_event_loop() -> None | asyncio.AbstractEventLoop:
    """Return the running event loop, or ``None`` when no loop is running.

    Returns:
        The loop running in this thread, or ``None`` outside a coroutine.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def wake(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` with ``None`` unless it is already done.

    Passed to ``loop.call_soon_threadsafe`` by worker threads: by the time
    the loop runs it, the waiting coroutine may have been cancelled, and
    ``set_result`` on a done future would raise inside the loop.
    """
    if not future.done():
        future.set_result(None)
