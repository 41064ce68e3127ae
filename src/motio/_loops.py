"""Finding the running event loop without exceptions as control flow."""

from __future__ import annotations

import asyncio

__all__ = ["get_current_event_loop"]


def get_current_event_loop() -> None | asyncio.AbstractEventLoop:
    """Return the running event loop, or ``None`` when no loop is running.

    Returns:
        The loop running in this thread, or ``None`` outside a coroutine.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
