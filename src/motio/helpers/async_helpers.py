"""Async helper functions for managing concurrent model output thunks.

Provides ``send_to_queue``, which feeds a backend response coroutine or async
iterator into an ``asyncio.Queue`` (including sentinel and error forwarding);
``wait_for_all_mots``, which waits for many ``ModelOutputThunk`` computations
at once; ``get_current_event_loop``, which returns ``None`` instead of raising
when no event loop is running; and ``ClientCache``, an LRU cache for clients
bound to an event loop. Backends use these in async contexts.
"""

from .._cache import ClientCache
from .._feed import DEFAULT_CHUNK_TIMEOUT, send_to_queue
from .._loops import get_current_event_loop
from .._wait import wait_for_all_mots

__all__ = [
    "ClientCache",
    "DEFAULT_CHUNK_TIMEOUT",
    "get_current_event_loop",
    "send_to_queue",
    "wait_for_all_mots",
]
