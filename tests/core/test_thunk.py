"""ModelOutputThunk: values, streaming cursors, errors, closing, metadata, loops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from motio import GenerationMeta, ModelOutputThunk, run_sync
from tests.asyncutil import agen, run

WORDS = ["The ", "quick ", "brown ", "fox ", "jumps."]
TEXT = "".join(WORDS)


def start(items: list[Any] = WORDS, **kwargs: Any) -> ModelOutputThunk[Any]:
    return ModelOutputThunk.from_response(agen(items), **kwargs)


# -- construction ----------------------------------------------------------------


def test_str_value_makes_it_computed() -> None:
    mot = ModelOutputThunk("done", meta={"k": 1}, parsed_repr=3, tool_calls={"f": {}})
    assert mot.is_computed() and mot.value == "done" and str(mot) == "done"
    assert mot.meta == {"k": 1} and mot.parsed_repr == 3 and mot.tool_calls == {"f": {}}
    assert run(mot.avalue()) == "done"


def test_none_value_is_not_computed() -> None:
    mot: ModelOutputThunk[Any] = ModelOutputThunk()
    assert not mot.is_computed() and mot.value is None and str(mot) == ""


@pytest.mark.parametrize("bad", [1, b"x", ["a"], 2.5], ids=lambda b: type(b).__name__)
def test_non_str_value_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match=type(bad).__name__):
        ModelOutputThunk(bad)


def test_thunk_without_generation_refuses_to_wait_forever() -> None:
    with pytest.raises(RuntimeError, match="no generation"):
        run(ModelOutputThunk().avalue())


def test_from_response_without_running_loop_is_clear_and_closes_the_coroutine() -> None:
    async def respond() -> str:
        return "x"

    with pytest.raises(RuntimeError, match="running event loop.*run_sync"):
        ModelOutputThunk.from_response(respond())  # no "never awaited" warning either


# -- process / post_process --------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["plain", "async"])
def test_process_and_post_process(is_async: bool) -> None:
    seen: list[Any] = []

    def fold(mot: ModelOutputThunk[Any], chunk: dict[str, Any]) -> str | None:
        seen.append(chunk)
        return chunk.get("text")

    def finish(mot: ModelOutputThunk[Any]) -> None:
        assert not mot.is_computed()  # runs before the thunk is marked computed
        mot.generation.finish_reasons.append("stop")
        mot.meta["post"] = mot.meta.get("post", 0) + 1

    async def afold(mot: ModelOutputThunk[Any], chunk: dict[str, Any]) -> str | None:
        await asyncio.sleep(0)
        return fold(mot, chunk)

    async def afinish(mot: ModelOutputThunk[Any]) -> None:
        await asyncio.sleep(0)
        finish(mot)

    chunks = [{"text": "a"}, {"role": "assistant"}, {"text": "b"}]

    async def main() -> ModelOutputThunk[Any]:
        mot = ModelOutputThunk.from_response(
            agen(chunks),
            process=afold if is_async else fold,
            post_process=afinish if is_async else finish,
        )
        assert await mot.avalue() == "ab"
        return mot

    mot = run(main())
    assert seen == chunks
    assert mot.meta["post"] == 1 and mot.generation.finish_reasons == ["stop"]


def test_process_returning_a_non_str_fails_the_thunk_clearly() -> None:
    async def main() -> None:
        mot = start(["a"], process=lambda m, c: 42)
        with pytest.raises(TypeError, match="process"):
            await mot.avalue()

    run(main())


def test_default_process_rejects_non_str_chunks() -> None:
    async def main() -> BaseException | None:
        mot = start([{"not": "text"}])
        with pytest.raises(TypeError, match="process="):
            await mot.avalue()
        return mot.error

    assert isinstance(run(main()), TypeError)


@pytest.mark.parametrize("where", ["process", "post_process"])
def test_errors_in_callbacks_fail_the_thunk(where: str) -> None:
    def broken(*_: Any) -> None:
        raise KeyError(where)

    async def main() -> None:
        mot = start(**{where: broken})
        with pytest.raises(KeyError):
            await mot.avalue()

    run(main())


# -- avalue ------------------------------------------------------------------------


def test_avalue_returns_the_full_text_and_sets_value() -> None:
    async def main() -> ModelOutputThunk[Any]:
        mot = start()
        assert mot.value is None and not mot.is_computed()
        assert await mot.avalue() == TEXT
        assert await mot.avalue() == TEXT
        assert await mot == TEXT
        return mot

    mot = run(main())
    assert mot.value == TEXT and mot.is_computed() and str(mot) == TEXT


def test_failure_reaches_every_caller_every_time() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "part"
        await asyncio.sleep(0)
        raise ConnectionError("backend died")

    async def main() -> ModelOutputThunk[Any]:
        mot = ModelOutputThunk.from_response(failing())
        results = await asyncio.gather(*(mot.avalue() for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        with pytest.raises(ConnectionError):
            await mot.avalue()
        return mot

    mot = run(main())
    assert not mot.is_computed() and mot.value is None
    assert isinstance(mot.error, ConnectionError) and not mot.cancelled


# -- astream -----------------------------------------------------------------------


def test_astream_loop_until_computed_joins_to_the_value() -> None:
    async def main() -> tuple[list[str], str | None]:
        mot = start()
        deltas = []
        while not mot.is_computed():
            deltas.append(await mot.astream())
        return deltas, mot.value

    deltas, value = run(main())
    assert "".join(deltas) == value == TEXT


def test_astream_waiting_at_completion_returns_rest_then_raises() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def gated() -> AsyncIterator[str]:
            yield "a"
            await gate.wait()

        mot = ModelOutputThunk.from_response(gated())
        assert await mot.astream() == "a"
        waiting = asyncio.create_task(mot.astream())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing new yet: it waits
        gate.set()
        assert await waiting == ""  # completed with nothing more
        assert mot.is_computed()
        with pytest.raises(RuntimeError, match="value"):
            await mot.astream()

    run(main())


def test_astream_returns_only_new_text() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def gated() -> AsyncIterator[str]:
            yield "one "
            yield "two "
            await gate.wait()
            yield "three"

        mot = ModelOutputThunk.from_response(gated())
        first = await mot.astream()
        assert first in ("one ", "one two ")
        rest = "" if first == "one two " else await mot.astream()
        assert first + rest == "one two "
        gate.set()
        assert await mot.astream() == "three"
        assert await mot.avalue() == "one two three"

    run(main())


def test_astream_raises_the_generation_error() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "x"
        raise ValueError("bad chunk")

    async def main() -> None:
        mot = ModelOutputThunk.from_response(failing())
        with pytest.raises(ValueError):
            while True:
                await mot.astream()

    run(main())


# -- async for ---------------------------------------------------------------------


def test_each_async_for_has_its_own_cursor_concurrent_and_late() -> None:
    async def consume(mot: ModelOutputThunk[Any]) -> str:
        return "".join([delta async for delta in mot])

    async def main() -> list[str]:
        mot = start()
        concurrent = await asyncio.gather(*(consume(mot) for _ in range(4)))
        late = await consume(mot)
        return [*concurrent, late]

    assert run(main()) == [TEXT] * 5


def test_async_for_gets_each_delta_when_producer_yields_between_chunks() -> None:
    async def main() -> list[str]:
        mot = start()
        return [delta async for delta in mot]

    assert run(main()) == WORDS


def test_async_for_raises_the_generation_error() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "x"
        raise ValueError("stream broke")

    async def main() -> list[str]:
        got: list[str] = []
        with pytest.raises(ValueError):
            async for delta in ModelOutputThunk.from_response(failing()):
                got.append(delta)
        return got

    assert run(main()) == ["x"]


# -- background generation -----------------------------------------------------------


def test_generation_completes_without_any_consumer() -> None:
    async def main() -> ModelOutputThunk[Any]:
        ended = asyncio.Event()
        mot = start(post_process=lambda m: ended.set())
        await ended.wait()  # set by post_process, just before the thunk completes
        return mot

    mot = run(main())
    assert mot.is_computed() and mot.value == TEXT


# -- closing -----------------------------------------------------------------------


def _endless(closed: list[bool], produced: asyncio.Event) -> AsyncIterator[str]:
    async def gen() -> AsyncIterator[str]:
        try:
            yield "partial "
            produced.set()
            while True:
                await asyncio.sleep(0.01)
                yield "more "
        finally:
            closed.append(True)

    return gen()


def test_aclose_stops_producer_and_iterator_before_returning() -> None:
    closed: list[bool] = []

    async def main() -> ModelOutputThunk[Any]:
        produced = asyncio.Event()
        mot = ModelOutputThunk.from_response(_endless(closed, produced))
        await produced.wait()
        await mot.aclose()
        assert closed == [True]  # already, not eventually
        assert mot._task is not None and mot._task.done()
        return mot

    mot = run(main())
    assert mot.is_computed() and mot.cancelled and mot.error is None
    assert mot.value is not None and mot.value.startswith("partial ")


def test_aclose_stops_a_blocking_iterator_in_its_thread_before_returning() -> None:
    import threading

    closed_in: list[threading.Thread] = []
    first = threading.Event()

    def tokens():  # type: ignore[no-untyped-def]
        try:
            for i in range(10_000):
                yield f"t{i} "
                first.set()
        finally:
            closed_in.append(threading.current_thread())

    async def main() -> ModelOutputThunk[Any]:
        mot = ModelOutputThunk.from_response(tokens())
        assert await asyncio.to_thread(first.wait, 10)
        await mot.aclose()
        assert len(closed_in) == 1  # closed already, by the worker
        return mot

    mot = run(main())
    assert closed_in[0] is not threading.main_thread()
    assert mot.cancelled and mot.value is not None and mot.value.startswith("t0 ")


def test_aclose_releases_waiters_with_partial_text_and_ends_loops() -> None:
    async def main() -> None:
        closed: list[bool] = []
        produced = asyncio.Event()
        mot = ModelOutputThunk.from_response(_endless(closed, produced))

        async def iterate() -> str:
            return "".join([d async for d in mot])

        waiter = asyncio.create_task(mot.avalue())
        looper = asyncio.create_task(iterate())
        await produced.wait()
        await mot.aclose()
        text = await waiter
        assert text == mot.value and text.startswith("partial")
        assert await looper == text
        await mot.aclose()  # idempotent
        assert mot.cancelled and mot.error is None

    run(main())


def test_async_with_closes() -> None:
    async def main() -> ModelOutputThunk[Any]:
        closed: list[bool] = []
        produced = asyncio.Event()
        async with ModelOutputThunk.from_response(_endless(closed, produced)) as mot:
            await produced.wait()
        assert closed == [True]
        return mot

    mot = run(main())
    assert mot.cancelled and mot.is_computed()


def test_aclose_on_finished_thunk_changes_nothing() -> None:
    async def main() -> ModelOutputThunk[Any]:
        mot = start()
        await mot.avalue()
        await mot.aclose()
        return mot

    mot = run(main())
    assert not mot.cancelled and mot.value == TEXT


def test_aclose_right_after_creation_leaves_no_unawaited_coroutine() -> None:
    async def respond() -> str:
        return "never started"

    async def main() -> ModelOutputThunk[Any]:
        mot = ModelOutputThunk.from_response(respond())
        await mot.aclose()
        return mot

    mot = run(main())
    assert mot.cancelled and mot.value == ""


# -- metadata and presentation -----------------------------------------------------------


def test_generation_metadata_fields_and_ttfb() -> None:
    async def main() -> ModelOutputThunk[Any]:
        mot = start()
        await mot.avalue()
        return mot

    gen = run(main()).generation
    assert isinstance(gen, GenerationMeta)
    for name in ("model", "provider", "usage", "ttfb_ms", "streaming", "finish_reasons", "response_id"):
        assert hasattr(gen, name)
    assert gen.ttfb_ms is not None and gen.ttfb_ms >= 0


def test_repr_is_short() -> None:
    mot = ModelOutputThunk("x" * 10_000)
    assert len(repr(mot)) < 80 and "computed" in repr(mot)


# -- event loops -------------------------------------------------------------------


def test_using_a_thunk_from_another_loop_is_a_clear_error() -> None:
    async def make() -> ModelOutputThunk[Any]:
        return ModelOutputThunk.from_response(agen([], step=asyncio.Event()))

    mot = run_sync(make())  # lives on motio's background loop, still generating
    try:
        for use in (mot.avalue, mot.astream, mot.aclose):
            with pytest.raises(RuntimeError, match="belongs to event loop"):
                run(use())

        async def iterate() -> None:
            async for _ in mot:
                pass

        with pytest.raises(RuntimeError, match="belongs to event loop"):
            run(iterate())
    finally:
        run_sync(mot.aclose())
    assert mot.cancelled
