"""The workload both sides of the core benchmark run, byte for byte the same.

Imported by ``bench_core.py`` (motio and the bare baselines) and by
``core_mellea_driver.py`` (mellea 0.8.0, in its own virtual environment), so
it imports neither library. Each contender plugs in two functions:

- ``make(stream)``: start generating from an async iterator of ``str`` chunks,
  return a handle (a thunk, or a task for the bare baseline);
- ``finish(handles)``: wait for all handles (``wait_for_all_mots``, ``gather``).

Times are CPU seconds of this process (``time.process_time``), with wall
seconds kept alongside: everything measured here is single-threaded and
CPU-bound, and CPU time does not count the moments another program on a
shared machine held the core, so ratios between contenders stay honest.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "PIECE",
    "Timing",
    "bare_finish",
    "bare_make",
    "chunks",
    "chunks_interleaved",
    "consume",
    "in_flight_bytes",
    "time_lifecycle",
    "time_stream",
]

PIECE = "tok "
"""Every chunk: a constant, so no chunk allocates and only the machinery is measured."""

Make = Callable[[AsyncIterator[str]], Any]
Finish = Callable[[list[Any]], Awaitable[object]]


async def chunks(n: int, gate: asyncio.Future[None] | None = None) -> AsyncIterator[str]:
    """Yield ``n`` chunks as fast as possible, after ``gate`` resolves (if given).

    A gated stream stands for a backend waiting on the network: its producer
    has started and is suspended, which is what "in flight" means here.
    """
    if gate is not None:
        await gate
    for _ in range(n):
        yield PIECE


async def chunks_interleaved(n: int) -> AsyncIterator[str]:
    """Yield ``n`` chunks, giving the loop a turn before each (one wake-up per chunk)."""
    for _ in range(n):
        await asyncio.sleep(0)
        yield PIECE


async def consume(deltas: AsyncIterator[str]) -> int:
    """Read a stream to the end with ``async for``; return its text length."""
    total = 0
    async for delta in deltas:
        total += len(delta)
    return total


def bare_make(stream: AsyncIterator[str]) -> asyncio.Task[int]:
    """The bare baseline's "thunk": a task consuming the stream."""
    return asyncio.get_running_loop().create_task(consume(stream))


async def bare_finish(tasks: list[asyncio.Task[int]]) -> object:
    return await asyncio.gather(*tasks)


@dataclass
class Timing:
    """Median CPU and wall seconds over ``runs`` runs of one measurement."""

    cpu: float
    wall: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _run_timed(body: Callable[[], Awaitable[int]], expect: int) -> tuple[float, float]:
    """One fresh event loop, one timed ``body()``; checks the text length it returns."""

    async def main() -> tuple[float, float]:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        got = await body()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if got != expect:
            raise AssertionError(f"workload produced {got} characters, expected {expect}")
        return cpu, wall

    gc.collect()
    return asyncio.run(main())


def _median(samples: list[tuple[float, float]]) -> Timing:
    return Timing(
        cpu=statistics.median(s[0] for s in samples),
        wall=statistics.median(s[1] for s in samples),
        runs=len(samples),
    )


def time_stream(
    open_stream: Callable[[AsyncIterator[str]], AsyncIterator[str]],
    n: int,
    runs: int,
    source: Callable[[int], AsyncIterator[str]] = chunks,
) -> Timing:
    """Time ``async for`` over ``open_stream(source(n))``, creation included."""

    async def body() -> int:
        return await consume(open_stream(source(n)))

    return _median([_run_timed(body, n * len(PIECE)) for _ in range(runs)])


def time_lifecycle(
    make: Make,
    finish: Finish,
    count: int,
    size: int,
    runs: int,
    text_of: Callable[[Any], str | int],
) -> Timing:
    """Time creating ``count`` handles of ``size`` chunks and finishing them all."""

    async def body() -> int:
        handles = [make(chunks(size)) for _ in range(count)]
        await finish(handles)
        return sum(_length(text_of(h)) for h in handles)

    return _median([_run_timed(body, count * size * len(PIECE)) for _ in range(runs)])


def _length(text: str | int) -> int:
    return text if isinstance(text, int) else len(text)


def in_flight_bytes(make: Make, finish: Finish, count: int, size: int) -> dict[str, float]:
    """Bytes allocated per handle while ``count`` of them are in flight.

    All handles are created on gated streams, the loop turns twice so every
    producer has started and is suspended waiting for its first chunk, and
    tracemalloc's count of live bytes is read then (everything allocated
    since just before the first handle, divided by ``count``). Tracing stops
    before the gate opens, so finishing the handles is not traced.
    """

    async def main() -> dict[str, float]:
        gate = asyncio.get_running_loop().create_future()
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        handles = [make(chunks(size, gate)) for _ in range(count)]
        created = tracemalloc.get_traced_memory()[0] - base
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        started = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        gate.set_result(None)
        await finish(handles)
        return {"created": created / count, "in_flight": started / count}

    return asyncio.run(main())
