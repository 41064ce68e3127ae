"""wait_for_all_mots and get_current_event_loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from motio import ModelOutputThunk, get_current_event_loop, run_sync, wait_for_all_mots
from tests.asyncutil import agen, run


def test_empty_list_returns_at_once() -> None:
    run(wait_for_all_mots([]))


def test_already_computed_thunks_are_fine() -> None:
    run(wait_for_all_mots([ModelOutputThunk("a"), ModelOutputThunk("b")]))


def test_waits_for_every_thunk_concurrently() -> None:
    n = 20

    async def main() -> list[str | None]:
        # Every generation waits at a barrier for all the others: waiting one
        # by one would deadlock (and hit the test's bound).
        barrier = asyncio.Barrier(n)

        async def gen(i: int) -> AsyncIterator[str]:
            yield f"{i}:"
            await barrier.wait()
            yield "done"

        mots = [ModelOutputThunk.from_response(gen(i)) for i in range(n)]
        await wait_for_all_mots(mots)
        return [m.value for m in mots]

    assert run(main()) == [f"{i}:done" for i in range(n)]


def test_first_failure_in_time_is_raised_others_keep_going(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        first_failed = asyncio.Event()
        release = asyncio.Event()

        async def fails_late() -> AsyncIterator[str]:
            yield "x"
            await first_failed.wait()
            raise KeyError("second in time")

        async def fails_early() -> AsyncIterator[str]:
            yield "y"
            first_failed.set()  # lets the other one fail, strictly later
            raise ValueError("first in time")

        async def slow_ok() -> AsyncIterator[str]:
            yield "ok "
            await release.wait()
            yield "finished"

        late = ModelOutputThunk.from_response(fails_late())
        early = ModelOutputThunk.from_response(fails_early())
        ok = ModelOutputThunk.from_response(slow_ok())
        with pytest.raises(ValueError, match="first in time"):
            await wait_for_all_mots([late, ok, early])
        assert not ok.is_computed()  # still generating, untouched
        release.set()
        assert await ok.avalue() == "ok finished"
        with pytest.raises(KeyError):
            await late.avalue()
        # And again, now that both have failed: still the earliest one.
        with pytest.raises(ValueError):
            await wait_for_all_mots([late, early, ok])

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(main())
    assert "never retrieved" not in caplog.text and "destroyed" not in caplog.text


def test_failed_thunks_never_awaited_individually_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(i: int) -> AsyncIterator[str]:
        yield "a"
        raise RuntimeError(f"fail {i}")

    async def main() -> None:
        mots = [ModelOutputThunk.from_response(failing(i)) for i in range(10)]
        with pytest.raises(RuntimeError):
            await wait_for_all_mots(mots)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main())  # run() also fails on anything the loop's exception handler saw
    assert caplog.text == ""


def test_thunk_from_another_loop_fails_promptly() -> None:
    async def make() -> ModelOutputThunk[Any]:
        return ModelOutputThunk.from_response(agen([], step=asyncio.Event()))

    foreign = run_sync(make())
    try:
        with pytest.raises(RuntimeError, match="event loop"):
            run(wait_for_all_mots([foreign]), timeout=5)
    finally:
        run_sync(foreign.aclose())


def test_get_current_event_loop() -> None:
    assert get_current_event_loop() is None

    async def main() -> bool:
        return get_current_event_loop() is asyncio.get_running_loop()

    assert run(main())
