"""SlotStream: the slot comes back exactly once, and abandoning passes through."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from motio import ChunkTimeoutError, ModelOutputThunk
from motio._exceptions import BackendChunkTimeoutError
from motio._source import Source
from motio._threaded import ThreadedIterator
from motio.backends._base import SlotStream
from tests.asyncutil import BOUND, run


def _stuck_after_one(release: threading.Event, stuck: threading.Event) -> Iterator[str]:
    yield "first "
    stuck.set()
    release.wait(BOUND)  # a blocking call that does not return on its own
    yield "late"


def test_slotstream_is_a_source_and_a_stuck_worker_is_abandoned_at_once() -> None:
    release, stuck = threading.Event(), threading.Event()
    releases: list[float] = []

    async def main() -> tuple[ModelOutputThunk[Any], float]:
        loop = asyncio.get_running_loop()
        worker = ThreadedIterator(_stuck_after_one(release, stuck), loop)
        stream = SlotStream(worker, lambda: releases.append(time.monotonic()))
        assert isinstance(stream, Source) and isinstance(worker, Source)
        mot = ModelOutputThunk.from_response(stream, chunk_timeout=0.2)
        with pytest.raises(ChunkTimeoutError):
            await mot.avalue()
        return mot, time.monotonic()

    try:
        started = time.monotonic()
        mot, failed_at = run(main())
    finally:
        release.set()
    assert stuck.is_set() and mot.value is None
    # 1 to 1.25 limits after the last chunk; the worker's 5 s close wait was not waited for.
    assert failed_at - started < 1.5, failed_at - started
    assert len(releases) == 1 and releases[0] <= failed_at


def test_slotstream_over_an_async_generator_is_closed_and_released_once() -> None:
    closed: list[bool] = []
    releases: list[int] = []

    async def chunks() -> Any:
        try:
            yield "a"
            await asyncio.Event().wait()  # stalls forever; only a close ends it
        finally:
            closed.append(True)

    async def main() -> ModelOutputThunk[Any]:
        stream = SlotStream(chunks(), lambda: releases.append(1))
        mot = ModelOutputThunk.from_response(stream, chunk_timeout=0.2)
        with pytest.raises(ChunkTimeoutError):
            await mot
        await stream.aclose()  # a second close gives nothing back twice
        return mot

    run(main())
    assert closed == [True] and releases == [1]


def test_slotstream_passes_the_timeout_context_through() -> None:
    # A backend's stream names provider and model in the core's chunk timeout;
    # wrapped in a SlotStream it still must.
    class Named:
        def __init__(self) -> None:
            self.closed = False

        def __aiter__(self) -> Named:
            return self

        async def __anext__(self) -> str:
            await asyncio.Event().wait()  # stalls; only a close ends it
            raise StopAsyncIteration

        async def aclose(self) -> None:
            self.closed = True

        def timeout_error(self, error: ChunkTimeoutError) -> BackendChunkTimeoutError:
            return BackendChunkTimeoutError(
                f"m: {error}", timeout=error.timeout or 0.0, chunks=error.chunks, provider="p", model="m"
            )

    source, releases = Named(), []

    async def main() -> BaseException | None:
        mot = ModelOutputThunk.from_response(
            SlotStream(source, lambda: releases.append(1)), chunk_timeout=0.1
        )
        with pytest.raises(BackendChunkTimeoutError):
            await mot.avalue()
        return mot.error

    error = run(main())
    assert isinstance(error, BackendChunkTimeoutError) and error.model == "m"
    assert source.closed and releases == [1]  # no abandon(): closed, and released once
