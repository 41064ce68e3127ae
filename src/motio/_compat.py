"""Other libraries' internals that the core cannot avoid, in one place.

Each helper names the version it was written against; ``tests/core/
test_compat.py`` checks every internal used here, so a Python upgrade that
changes one fails that test loudly instead of hanging a consumer.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["force_put"]


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
