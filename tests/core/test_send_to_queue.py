"""send_to_queue: every kind of source, errors, timeouts, cancellation, backpressure."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from motio import DEFAULT_CHUNK_TIMEOUT, ChunkTimeoutError, send_to_queue
from tests.asyncutil import BOUND, agen, drain, run

# -- 1. coroutines and awaitables ------------------------------------------------


def test_coroutine_result_is_put_once_then_sentinel() -> None:
    async def respond() -> str:
        return "whole answer"

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(respond(), q)
        return await drain(q)

    assert run(main()) == ["whole answer", None]


def test_coroutine_returning_async_iterator_is_streamed() -> None:
    async def respond() -> AsyncIterator[str]:
        return agen(["a", "b", "c"])

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(respond(), q)
        return await drain(q)

    assert run(main()) == ["a", "b", "c", None]


@pytest.mark.parametrize("kind", ["task", "future"])
def test_task_and_future_are_awaited(kind: str) -> None:
    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        if kind == "task":
            aw: asyncio.Future[Any] = asyncio.ensure_future(asyncio.sleep(0, "from task"))
        else:
            aw = loop.create_future()
            loop.call_soon(aw.set_result, "from future")
        await send_to_queue(aw, q)  # type: ignore[arg-type]
        return await drain(q)

    assert run(main()) == [f"from {kind}", None]


# -- 2. async iterators ------------------------------------------------------------


def test_async_iterator_items_in_order_then_sentinel() -> None:
    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen(list(range(50))), q)
        return await drain(q)

    assert run(main()) == [*range(50), None]


def test_async_iterable_with_only_aiter() -> None:
    class Iterable:
        def __aiter__(self) -> AsyncIterator[str]:
            return agen(["x", "y"])

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(Iterable(), q)  # type: ignore[arg-type]
        return await drain(q)

    assert run(main()) == ["x", "y", None]


# -- 3. synchronous iterators ------------------------------------------------------


def test_sync_iterator_is_drained_in_a_worker_thread_without_blocking_the_loop() -> None:
    release = threading.Event()
    threads: list[threading.Thread] = []

    def blocking() -> Iterator[str]:
        threads.append(threading.current_thread())
        yield "first"
        # Blocks this thread until the loop has seen "first": if the
        # generator ran on the loop, the loop could never set the event.
        assert release.wait(BOUND)
        yield "second"

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(send_to_queue(blocking(), q))
        first = await q.get()
        release.set()
        rest = await drain(q)
        await task
        return [first, *rest]

    assert run(main()) == ["first", "second", None]
    assert threads and threads[0] is not threading.main_thread()


def test_sync_iterator_stops_being_pulled_when_abandoned() -> None:
    release = threading.Event()
    pulled: list[int] = []
    closed = threading.Event()

    def blocking() -> Iterator[int]:
        try:
            for i in range(1000):
                if i == 1:
                    assert release.wait(BOUND)
                pulled.append(i)
                yield i
        finally:
            closed.set()

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(blocking(), q, chunk_timeout=0.2)
        release.set()  # the worker may now return from its blocking call...
        assert await asyncio.to_thread(closed.wait, BOUND)  # ...and must then stop
        return await drain(q)

    items = run(main())
    assert items[0] == 0 and isinstance(items[1], ChunkTimeoutError)
    assert pulled[-1] <= 1  # at most the item it was blocked on


def test_sync_iterator_error_is_forwarded() -> None:
    def failing() -> Iterator[str]:
        yield "ok"
        raise ValueError("engine broke")

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(failing(), q)
        return await drain(q)

    items = run(main())
    assert items[0] == "ok" and isinstance(items[1], ValueError) and len(items) == 2


# -- 4. anything else --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [None, "text", b"bytes", 42, [1, 2], {"a": 1}], ids=lambda b: type(b).__name__
)
def test_unsupported_source_puts_a_type_error_naming_the_type(bad: Any) -> None:
    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(bad, q)
        return await drain(q)

    items = run(main())
    assert len(items) == 1 and isinstance(items[0], TypeError)
    assert type(bad).__name__ in str(items[0])


# -- 5. errors -----------------------------------------------------------------------


def test_iteration_error_is_put_without_sentinel_and_not_raised() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "partial"
        raise ConnectionResetError("peer went away")

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(failing(), q)  # must not raise
        return [q.get_nowait() for _ in range(q.qsize())]

    items = run(main())
    assert items[0] == "partial" and isinstance(items[1], ConnectionResetError)
    assert len(items) == 2


def test_coroutine_error_is_put() -> None:
    async def failing() -> str:
        raise PermissionError("401")

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(failing(), q)
        return [q.get_nowait() for _ in range(q.qsize())]

    items = run(main())
    assert len(items) == 1 and isinstance(items[0], PermissionError)


# -- 6. chunk timeout -----------------------------------------------------------------


def test_default_chunk_timeout_is_120_seconds() -> None:
    assert DEFAULT_CHUNK_TIMEOUT == 120.0


@pytest.mark.parametrize("stall_after", [0, 2], ids=["first-chunk", "mid-stream"])
def test_stalled_stream_times_out_closes_and_calls_on_timeout(stall_after: int) -> None:
    closed: list[bool] = []
    calls: list[int] = []
    never = asyncio.Event

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        source = agen(list(range(stall_after)), closed=closed, step=never())
        await send_to_queue(source, q, chunk_timeout=0.1, on_timeout=lambda: calls.append(1))
        return [q.get_nowait() for _ in range(q.qsize())]

    items = run(main())
    assert items[:-1] == list(range(stall_after))
    error = items[-1]
    assert isinstance(error, TimeoutError) and isinstance(error, ChunkTimeoutError)
    assert "chunk_timeout" in str(error) and "0.1" in str(error)
    assert calls == [1] and closed == [True]


def test_steady_stream_slower_in_total_than_the_limit_does_not_time_out() -> None:
    async def paced() -> AsyncIterator[int]:
        for i in range(8):
            await asyncio.sleep(0.03)  # the subject under test: a slow producer
            yield i

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(paced(), q, chunk_timeout=0.15)
        return await drain(q)

    assert run(main()) == [*range(8), None]


def test_time_blocked_on_a_full_queue_does_not_count() -> None:
    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        task = asyncio.create_task(send_to_queue(agen(list(range(5))), q, chunk_timeout=0.05))
        out = []
        for _ in range(6):
            await asyncio.sleep(0.1)  # a consumer slower than the limit, on purpose
            out.append(await q.get())
        await task
        return out

    assert run(main()) == [*range(5), None]


def test_backend_timeout_error_is_forwarded_unchanged_without_on_timeout() -> None:
    calls: list[int] = []
    original = TimeoutError("read timed out in the SDK")

    async def failing() -> AsyncIterator[str]:
        yield "a"
        raise original

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(failing(), q, chunk_timeout=5, on_timeout=lambda: calls.append(1))
        return await drain(q)

    assert run(main()) == ["a", original]
    assert calls == []


def test_none_disables_the_chunk_timeout() -> None:
    async def slow() -> AsyncIterator[str]:
        await asyncio.sleep(0.2)
        yield "late"

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(slow(), q, chunk_timeout=None)
        return await drain(q)

    assert run(main()) == ["late", None]


def test_non_streaming_result_is_not_bounded_by_chunk_timeout() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.2)
        return "done"

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(slow(), q, chunk_timeout=0.05)
        return await drain(q)

    assert run(main()) == ["done", None]


@pytest.mark.parametrize("bad", [0, -1.0])
def test_invalid_chunk_timeout_is_put_as_a_value_error(bad: float) -> None:
    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        source = agen(["a"])
        await send_to_queue(source, q, chunk_timeout=bad)
        return await drain(q)

    items = run(main())
    assert len(items) == 1 and isinstance(items[0], ValueError) and "chunk_timeout" in str(items[0])


def test_failing_on_timeout_is_logged_and_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("callback broke")

    async def main() -> list[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        await send_to_queue(agen([], step=asyncio.Event()), q, chunk_timeout=0.05, on_timeout=boom)
        return await drain(q)

    with caplog.at_level(logging.ERROR, logger="motio"):
        items = run(main())
    assert isinstance(items[0], ChunkTimeoutError)
    assert "on_timeout" in caplog.text


# -- 7. cancellation --------------------------------------------------------------


@pytest.mark.parametrize("maxsize", [0, 1], ids=["unbounded", "full-queue"])
def test_cancel_releases_consumer_closes_iterator_and_propagates(maxsize: int) -> None:
    closed: list[bool] = []

    async def main() -> None:
        q: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize)
        started = asyncio.Event()

        async def source() -> AsyncIterator[str]:
            try:
                yield "one"
                started.set()
                await asyncio.Event().wait()
                yield "never"
            finally:
                closed.append(True)

        producer = asyncio.create_task(send_to_queue(source(), q))
        await started.wait()
        producer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await producer
        assert producer.cancelled()
        items = await drain(q)
        assert items[0] == "one" and isinstance(items[-1], asyncio.CancelledError)

    run(main())
    assert closed == [True]


def test_consumer_already_waiting_is_released_on_cancel() -> None:
    async def main() -> Any:
        q: asyncio.Queue[Any] = asyncio.Queue()
        started = asyncio.Event()

        async def stalled() -> AsyncIterator[str]:
            started.set()
            await asyncio.Event().wait()
            yield "never"

        producer = asyncio.create_task(send_to_queue(stalled(), q))
        consumer = asyncio.create_task(q.get())
        # The producer's first step sets `started`; the consumer, scheduled
        # right after it, is blocked in q.get() before we resume.
        await started.wait()
        assert not consumer.done()
        producer.cancel()
        return await consumer

    assert isinstance(run(main()), asyncio.CancelledError)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_are_not_swallowed(exc_type: type) -> None:
    async def interrupted() -> AsyncIterator[str]:
        yield "a"
        raise exc_type()

    async def main() -> None:
        await send_to_queue(interrupted(), asyncio.Queue())

    with pytest.raises(exc_type):
        asyncio.run(main())


# -- 8. backpressure -------------------------------------------------------------


def test_bounded_queue_applies_backpressure_without_loss_or_reordering() -> None:
    async def main() -> tuple[list[Any], int]:
        q: asyncio.Queue[Any] = asyncio.Queue(maxsize=3)
        task = asyncio.create_task(send_to_queue(agen(list(range(200))), q))
        out, peak = [], 0
        while True:
            peak = max(peak, q.qsize())
            item = await q.get()
            out.append(item)
            if item is None:
                break
            if len(out) % 7 == 0:
                await asyncio.sleep(0.001)  # consumer falls behind now and then
        await task
        return out, peak

    out, peak = run(main())
    assert out == [*range(200), None]
    assert peak <= 3
