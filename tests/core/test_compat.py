"""The other libraries' internals motio relies on are still there and still work.

If one of these fails after a Python upgrade, update ``motio/_compat.py``:
the failures it prevents are a consumer hanging on a queue that never
receives its end marker, and a dead loop's HTTP client left unclosed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from motio._compat import finish_aclose_without_loop, force_put
from tests.asyncutil import run


def test_asyncio_queue_still_has_the_internals_force_put_uses() -> None:
    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        for name in ("_put", "_wakeup_next", "_getters", "_unfinished_tasks", "_finished"):
            assert hasattr(queue, name), f"asyncio.Queue lost {name}: update motio/_compat.py"

    run(main())


def test_force_put_exceeds_maxsize_wakes_a_getter_and_counts_for_join() -> None:
    async def main() -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(1)
        force_put(queue, 2)  # full: a normal put_nowait would raise QueueFull
        assert queue.qsize() == 2
        got = [queue.get_nowait(), queue.get_nowait()]
        waiting = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)  # the getter is now parked in queue._getters
        queue.put_nowait(3)
        force_put(queue, 4)
        got.append(await asyncio.wait_for(waiting, 5))
        got.append(queue.get_nowait())
        for _ in got:
            queue.task_done()
        await asyncio.wait_for(queue.join(), 5)  # unfinished_tasks stayed consistent
        return got

    assert run(main()) == [1, 2, 3, 4]


def test_finish_aclose_without_loop_runs_the_finally_with_no_loop_at_all() -> None:
    cleaned: list[str] = []

    async def closer() -> Any:
        try:
            yield
        finally:
            cleaned.append("finally")  # does not await: the loop is gone

    agen = closer()
    first = agen.__anext__()
    assert hasattr(first, "send"), "async generator awaitables lost send(): update motio/_compat.py"
    with pytest.raises(StopIteration):
        first.send(None)  # suspended at its yield, as arm() leaves it
    finish_aclose_without_loop(agen)
    assert cleaned == ["finally"]
    assert agen.ag_frame is None  # finished: no finaliser will hand it to a loop later
    finish_aclose_without_loop(agen)  # a second time is harmless
    assert cleaned == ["finally"]
