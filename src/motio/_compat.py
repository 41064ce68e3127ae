"""CPython internals motio cannot avoid, in one place.

Each helper names the version it was written against; ``tests/core/
test_compat.py`` checks every internal used here, so a Python upgrade that
changes one fails that test loudly instead of hanging a consumer or leaking
a client. The HTTP stack's internals (aiohttp) have their own home,
``backends/http/_compat.py``, tested in ``tests/backends/test_compat.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

__all__ = ["finish_aclose_without_loop", "force_put"]


def force_put(queue: asyncio.Queue[Any], item: Any) -> None:
    """Put ``item`` into ``queue`` now, even when it is full.

    ``send_to_queue`` needs this for the terminal marker while it is being
    cancelled: it cannot wait for room, and a consumer that drains the queue
    later must still find the end instead of hanging. asyncio.Queue has no
    public way to exceed its ``maxsize``.

    Written against CPython 3.11-3.13 ``Lib/asyncio/queues.py``: ``put_nowait``
    is ``_put`` + ``_unfinished_tasks += 1`` + ``_finished.clear()`` +
    ``_wakeup_next(_getters)`` behind the full check; this repeats it without
    the check.
    """
    internal: Any = queue
    internal._put(item)
    internal._unfinished_tasks += 1
    internal._finished.clear()
    internal._wakeup_next(internal._getters)


def finish_aclose_without_loop(agen: AsyncGenerator[Any, Any]) -> None:
    """Run ``agen``'s ``finally`` now, synchronously, without an event loop.

    For an async generator whose ``finally`` does not await when its loop is
    gone (``backends/_loopclients.py`` closes a dead loop's HTTP client this
    way): one ``send(None)`` on the ``aclose()`` awaitable runs the cleanup
    to its end, and the generator is then finished, so it is never handed
    to the dead loop's async-generator finaliser later.

    Written against CPython 3.11-3.13: ``aclose()`` returns an awaitable
    with a coroutine's ``send``; when the generator finishes without
    awaiting, ``send(None)`` raises ``StopIteration``. A ``finally`` that
    does await would leave it suspended (``RuntimeError`` is raised if it
    was already running); both are ignored: the caller's cleanup must not
    await once the loop is dead.
    """
    closing: Any = agen.aclose()
    try:
        closing.send(None)
    except (StopIteration, RuntimeError):
        pass
