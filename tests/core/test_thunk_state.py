"""The thunk's lifecycle: one state, one transition table, the diagram that draws it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import motio._thunk as thunk_module
from motio import ModelOutputThunk, send_to_queue
from motio._thunk import _TRANSITIONS, _State
from tests.asyncutil import run

EDGE = re.compile(r"^\s+([A-Z]+)\s+->\s+([A-Z]+)\s", re.MULTILINE)


def test_the_docstring_diagram_is_the_transition_table_edge_for_edge() -> None:
    drawn: set[tuple[str, str]] = set(EDGE.findall(thunk_module.__doc__ or ""))
    table = {(a.name, b.name) for a, targets in _TRANSITIONS.items() for b in targets}
    assert drawn == table
    assert set(_TRANSITIONS) == set(_State)  # every state has its row


async def _gated(items: list[str], gate: asyncio.Event) -> AsyncIterator[str]:
    for item in items:
        await gate.wait()
        yield item


def test_a_generation_walks_started_streaming_computed() -> None:
    async def fed(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        while (item := await queue.get()) is not None:
            yield item

    async def main() -> list[_State]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        mot = ModelOutputThunk.from_response(fed(queue))
        seen = [mot._state]
        queue.put_nowait("a")
        assert await mot.astream() == "a"
        seen.append(mot._state)
        queue.put_nowait(None)
        assert await mot == "a"
        seen.append(mot._state)
        assert mot.ttfb_ms is not None and mot.ttfb_ms >= 0
        return seen

    assert run(main()) == [_State.STARTED, _State.STREAMING, _State.COMPUTED]


def test_a_stream_that_ends_before_any_chunk_has_no_time_to_first_chunk() -> None:
    async def main() -> ModelOutputThunk[Any]:
        mot = ModelOutputThunk.from_response(_gated([], asyncio.Event()))
        assert await mot == ""
        return mot

    mot = run(main())
    assert mot._state is _State.COMPUTED and mot.ttfb_ms is None


def test_setting_the_value_resets_failed_to_computed_and_keeps_cancelled() -> None:
    async def boom() -> str:
        raise ConnectionError("down")

    async def main() -> tuple[ModelOutputThunk[Any], ModelOutputThunk[Any]]:
        failed = ModelOutputThunk.from_response(boom())
        with pytest.raises(ConnectionError):
            await failed
        cancelled = ModelOutputThunk.from_response(_gated(["x"], asyncio.Event()))
        await cancelled.aclose()
        return failed, cancelled

    failed, cancelled = run(main())
    assert failed._state is _State.FAILED and "failed ConnectionError" in repr(failed)
    failed.value = "fixed"
    assert failed._state is _State.COMPUTED and failed.error is None and failed.value == "fixed"
    assert cancelled._state is _State.CANCELLED
    cancelled.value = "edited"
    assert cancelled.cancelled and cancelled.value == "edited" and "cancelled" in repr(cancelled)


def test_an_empty_thunk_becomes_computed_by_value_and_refuses_a_start() -> None:
    mot: ModelOutputThunk[Any] = ModelOutputThunk()
    assert mot._state is _State.EMPTY and "empty" in repr(mot)
    mot.value = "text"
    assert mot._state is _State.COMPUTED and mot.is_computed()
    with pytest.raises(RuntimeError, match="cannot go from computed to started"):
        mot._become(_State.STARTED)


def test_a_hand_fed_thunk_stays_empty_until_the_end() -> None:
    async def main() -> list[_State]:
        mot: ModelOutputThunk[Any] = ModelOutputThunk()
        states = []

        async def chunks() -> AsyncIterator[str]:
            yield "a"
            states.append(mot._state)
            yield "b"

        await send_to_queue(chunks(), mot)  # type: ignore[arg-type]
        states.append(mot._state)
        assert mot.value == "ab" and mot.ttfb_ms is None
        return states

    assert run(main()) == [_State.EMPTY, _State.COMPUTED]


def test_async_process_is_awaited_through_the_queue_spelling_too() -> None:
    # put_nowait/put keep asyncio.Queue's contract for callers that treat a
    # thunk as a queue: QueueFull means "await put() with the same item".
    async def upper(mot: ModelOutputThunk[Any], chunk: str) -> str:
        await asyncio.sleep(0)
        return chunk.upper()

    async def main() -> str:
        mot: ModelOutputThunk[Any] = ModelOutputThunk()
        mot._more().process = upper
        for item in ("a", "b", None):
            try:
                mot.put_nowait(item)
            except asyncio.QueueFull:
                await mot.put(item)
        assert mot.value is not None
        return mot.value

    assert run(main()) == "AB"
