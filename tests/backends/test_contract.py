"""The contract every backend keeps, written once and run once per backend.

As anyio runs its suite once per event loop through the parametrized
``anyio_backend`` fixture, every test here takes ``backend_kind``, one param
per entry of ``tests/backends/contract.py`` (which says how to add one): the
backend in front of a real source (the scripted loopback server, the
embedded SmolLM2 model), made to stall or crawl, and watched from the
source's side.

The contract: a closed backend refuses work, however it was closed; an
early close reaches the source; the three generation timeouts raise their
own ``BackendTimeoutError`` near their limit, given to the constructor or to
``generate``; every failure is a ``MotioError`` naming provider, server and
model; usage is counted; ``stream=False`` answers what streaming answers;
an unknown option is a TypeError and an invalid timeout a ConfigurationError,
both before anything reaches the source.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from motio import (
    BackendClosedError,
    BackendError,
    ChunkTimeoutError,
    ConfigurationError,
    ModelOutputThunk,
    MotioError,
    UnsupportedOptionError,
)
from motio._exceptions import (
    BackendChunkTimeoutError,
    BackendTimeoutError,
    FirstTokenTimeoutError,
    TotalTimeoutError,
)
from motio.backends import Backend
from motio.backends._registry import backend_class, backend_names
from tests.asyncutil import run
from tests.backends.contract import ENTRIES, LONG_PROMPT, PROMPT, Entry, LoadedLlama, loaded_llama

# Every limit under test, in seconds: short, yet far above a loop's tick.
LIMIT = 0.4
# How late a timeout may fire on a loaded 2-core machine.
SLACK = LIMIT * 0.25 + 1.0


@pytest.fixture(scope="module")
def contract_llama(smollm2_path: Path) -> Iterator[LoadedLlama]:
    """SmolLM2 loaded once for the module, tapped for stalls and paces."""
    with loaded_llama(smollm2_path) as loaded:
        yield loaded


@pytest.fixture(params=[pytest.param(name, marks=kind.marks, id=name) for name, kind in ENTRIES.items()])
def backend_kind(request: pytest.FixtureRequest) -> Iterator[Entry]:
    """One backend kind per param, on its real source (see contract.py)."""
    kind = ENTRIES[request.param]
    entry = kind(**{name: request.getfixturevalue(name) for name in kind.fixtures})
    try:
        yield entry
    finally:
        entry.finish()


@dataclass(frozen=True)
class Failure:
    """A generation that failed, and when."""

    mot: ModelOutputThunk[Any]
    error: BaseException
    elapsed: float  # seconds from the call to generate to the error
    quiet: float  # seconds from the last text (or the call) to the error


async def failure(backend: Backend, prompt: str, *, stream: bool = True, **options: Any) -> Failure:
    """Generate (reading a stream delta by delta) and expect a failure."""
    loop = asyncio.get_running_loop()
    started = last = loop.time()
    mot = await backend.generate(prompt, stream=stream, **options)
    with pytest.raises(Exception) as caught:
        if not stream:
            await mot.avalue()
        async for _ in mot:
            last = loop.time()
    ended = loop.time()
    return Failure(mot, caught.value, ended - started, ended - last)


async def finished(backend: Backend, prompt: str = PROMPT, **options: Any) -> ModelOutputThunk[Any]:
    mot = await backend.generate(prompt, **options)
    await mot.avalue()
    return mot


def assert_names_its_backend(error: BaseException, entry: Entry, backend: Backend) -> None:
    """A MotioError carrying provider, server and model, and saying them."""
    assert isinstance(error, BackendError) and isinstance(error, MotioError), repr(error)
    assert (error.provider, error.base_url, error.model) == (entry.provider, entry.base_url, backend.model)
    assert backend.model and backend.model in str(error)
    if entry.base_url is not None:
        assert entry.base_url in str(error)


def test_every_registered_backend_is_under_the_contract() -> None:
    assert sorted(ENTRIES) == sorted(backend_names())
    for name, entry in ENTRIES.items():
        assert entry.name == name and entry.provider == backend_class(name).provider


# -- the closed state --------------------------------------------------------------


def test_a_closed_backend_raises_backend_closed_error(backend_kind: Entry) -> None:
    backend = backend_kind.open()
    backend.check_sync()
    assert backend.generate_sync(PROMPT, **backend_kind.options(4)).value
    assert not backend.is_closed
    backend.close()
    backend.close()  # idempotent
    assert backend.is_closed
    with pytest.raises(BackendClosedError, match=f"{type(backend).__name__} has been closed"):
        backend.generate_sync(PROMPT, **backend_kind.options(4))
    with pytest.raises(BackendClosedError):
        backend.check_sync()
    with pytest.raises(BackendClosedError):
        list(backend.stream_sync(PROMPT, **backend_kind.options(4)))

    async def asynchronously() -> None:
        await backend.aclose()  # idempotent too
        with pytest.raises(BackendClosedError):
            await backend.generate(PROMPT)
        with pytest.raises(BackendClosedError):
            await backend.check()

    run(asynchronously())
    assert backend_kind.generations_seen() == 1  # nothing reached the source after close


def test_context_managers_close_the_backend(backend_kind: Entry) -> None:
    with backend_kind.build() as backend:
        backend.check_sync()
    assert backend.is_closed

    async def main() -> str:
        async with backend_kind.build() as other:
            value = await (await other.generate(PROMPT, **backend_kind.options(4))).avalue()
        assert other.is_closed
        with pytest.raises(BackendClosedError):
            await other.generate(PROMPT)
        return value

    assert run(main())


def test_a_generation_waiting_for_its_slot_when_closed_never_starts(backend_kind: Entry) -> None:
    backend = backend_kind.open(max_concurrency=1)
    backend_kind.pace(0.05, 64)

    async def main() -> None:
        first = await backend.generate(LONG_PROMPT, **backend_kind.options(64))
        assert await first.astream()  # holds the only slot
        second = await backend.generate(PROMPT, **backend_kind.options(4))  # waits for it
        await backend.aclose()
        await first.aclose()  # gives the slot to the waiting one
        with pytest.raises(BackendClosedError):
            await second.avalue()

    run(main())
    assert backend_kind.generations_seen() == 1


# -- an early close reaches the source ---------------------------------------------


def close_early(backend: Backend, entry: Entry, how: str) -> None:
    """Start a long stream, take its first text, and leave it ``how``."""
    options = entry.options(64)
    if how == "stream_sync":
        deltas = backend.stream_sync(LONG_PROMPT, **options)
        assert isinstance(deltas, Generator)  # documented: close() stops the generation
        assert next(deltas)
        deltas.close()
        return

    async def by_aclose() -> None:
        mot = await backend.generate(LONG_PROMPT, **options)
        assert await mot.astream()
        await mot.aclose()
        assert mot.cancelled and mot.error is None and mot.value

    async def by_cancelling_the_consumer() -> None:
        streaming = asyncio.Event()

        async def consume() -> None:
            async with await backend.generate(LONG_PROMPT, **options) as mot:
                async for _ in mot:
                    streaming.set()

        task = asyncio.create_task(consume())
        await streaming.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(by_aclose() if how == "aclose" else by_cancelling_the_consumer())


@pytest.mark.parametrize("how", ["aclose", "cancel", "stream_sync"])
def test_closing_a_stream_early_is_seen_by_the_source(backend_kind: Entry, how: str) -> None:
    backend_kind.pace(0.05, 64)  # a slow answer: still streaming when left
    close_early(backend_kind.backend, backend_kind, how)
    backend_kind.wait_left_early()
    # And the backend goes on: the slot came back.
    assert run(finished(backend_kind.backend, **backend_kind.options(4))).value


# -- the three generation timeouts ---------------------------------------------------


@dataclass(frozen=True)
class TimeoutCase:
    """How to make one timeout fire, and what it must raise.

    ``between_chunks``: the limit runs from the last text, not from the call
    (the time to the first chunks, prompt processing included, is not its).
    """

    error: type[BackendTimeoutError]
    arrange: Callable[[Entry], None]
    others: dict[str, Any] = field(default_factory=dict)
    between_chunks: bool = False


TIMEOUTS: dict[str, TimeoutCase] = {
    "first_token_timeout": TimeoutCase(FirstTokenTimeoutError, lambda e: e.stall_after(0)),
    "chunk_timeout": TimeoutCase(BackendChunkTimeoutError, lambda e: e.stall_after(2), between_chunks=True),
    # Chunks keep coming, too slowly to finish in time.
    "total_timeout": TimeoutCase(TotalTimeoutError, lambda e: e.pace(0.1, 64), {"chunk_timeout": None}),
}
# The core's chunk watchdog starts when a chunk arrives, a moment before the
# reader sees its text: that moment may come off the measured quiet time.
EARLY = 0.05


@pytest.mark.parametrize("given_to", ["generate", "constructor"])
@pytest.mark.parametrize("option", list(TIMEOUTS))
def test_a_timeout_raises_its_error_near_its_limit(backend_kind: Entry, option: str, given_to: str) -> None:
    """Given to ``generate``, a limit overrides the constructor's (far longer) default."""
    case = TIMEOUTS[option]
    limits = {option: LIMIT, **case.others}
    if given_to == "constructor":
        backend, per_call = backend_kind.open(**limits), {}
    else:
        backend, per_call = backend_kind.backend, limits
    case.arrange(backend_kind)
    failed = run(failure(backend, LONG_PROMPT, **backend_kind.options(64), **per_call))
    error = failed.error
    assert isinstance(error, case.error) and isinstance(error, TimeoutError), repr(error)
    assert error.timeout == LIMIT and f"{option}={LIMIT:g}" in str(error)
    assert_names_its_backend(error, backend_kind, backend)
    assert failed.mot.error is error
    if case.between_chunks:
        assert isinstance(error, ChunkTimeoutError) and failed.mot.text  # the chunks before the stall
        assert LIMIT - EARLY <= failed.quiet < LIMIT + SLACK, failed
    else:
        assert LIMIT <= failed.elapsed < LIMIT + SLACK, failed
    backend_kind.wait_left_early()


def test_the_first_token_timeout_bounds_stream_false(backend_kind: Entry) -> None:
    backend_kind.stall_after(0)
    backend = backend_kind.backend
    options = backend_kind.options(64)
    failed = run(failure(backend, LONG_PROMPT, stream=False, first_token_timeout=LIMIT, **options))
    error = failed.error
    assert isinstance(error, FirstTokenTimeoutError) and error.timeout == LIMIT
    assert_names_its_backend(error, backend_kind, backend)
    assert LIMIT <= failed.elapsed < LIMIT + SLACK, failed
    backend_kind.wait_left_early()


# -- errors, usage, stream=False ------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_failure_is_a_motio_error_naming_provider_server_and_model(
    backend_kind: Entry, stream: bool
) -> None:
    backend = backend_kind.backend
    prompt = backend_kind.fail_next()
    failed = run(failure(backend, prompt, stream=stream, **backend_kind.options(4)))
    assert failed.mot.error is failed.error and not failed.mot.is_computed()
    assert_names_its_backend(failed.error, backend_kind, backend)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_usage_and_metadata(backend_kind: Entry, stream: bool) -> None:
    backend = backend_kind.backend
    mot = run(finished(backend, stream=stream, **backend_kind.options(6)))
    meta = mot.generation
    expected = (backend_kind.provider, backend_kind.base_url, backend.model)
    assert (meta.provider, meta.base_url, meta.model) == expected
    assert meta.streaming is stream and meta.response_id and meta.ttfb_ms is not None
    assert meta.finish_reasons and meta.finish_reasons[-1] in ("stop", "length")
    usage = meta.usage
    assert usage is not None and usage["prompt_tokens"] and usage["prompt_tokens"] > 0
    completion = usage["completion_tokens"]
    assert completion is not None and 1 <= completion <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + completion


def test_stream_false_gives_the_streamed_text(backend_kind: Entry) -> None:
    backend = backend_kind.backend
    options = backend_kind.options(8)

    async def main() -> tuple[list[str], ModelOutputThunk[Any], ModelOutputThunk[Any]]:
        streamed = await backend.generate(PROMPT, **options)
        deltas = [delta async for delta in streamed]
        return deltas, streamed, await finished(backend, stream=False, **options)

    deltas, streamed, whole = run(main())
    assert deltas and "".join(deltas) == streamed.value == whole.value
    assert streamed.generation.usage == whole.generation.usage
    assert streamed.generation.finish_reasons == whole.generation.finish_reasons


# -- options refused before anything reaches the source --------------------------------


def test_an_unknown_option_is_a_type_error_naming_it(backend_kind: Entry) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="max_tokenz"):
            await backend_kind.backend.generate(PROMPT, max_tokenz=3)

    run(main())
    assert backend_kind.generations_seen() == 0


def test_a_hedge_is_honoured_or_refused_by_the_capability(backend_kind: Entry) -> None:
    """``hedging`` says it: a backend of servers takes ``hedge=``, the others
    refuse it with ``UnsupportedOptionError`` before anything reaches the source."""
    backend = backend_kind.backend

    async def main() -> None:
        if backend.hedging:
            mot = await backend.generate(PROMPT, hedge=30.0, **backend_kind.options(4))
            assert await mot.avalue() and mot.generation.hedged is False  # in time: no second request
            return
        with pytest.raises(UnsupportedOptionError, match="hedge") as caught:
            await backend.generate(PROMPT, hedge=True, **backend_kind.options(4))
        assert caught.value.option == "hedge"

    run(main())
    assert backend_kind.generations_seen() == (1 if backend.hedging else 0)


BAD_TIMEOUTS = [-1, 0, "5"]


@pytest.mark.parametrize("value", BAD_TIMEOUTS, ids=repr)
@pytest.mark.parametrize("option", list(TIMEOUTS))
def test_an_invalid_timeout_is_refused_by_the_constructor(
    backend_kind: Entry, option: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(value))):
        backend_kind.build(**{option: value})


@pytest.mark.parametrize("value", BAD_TIMEOUTS, ids=repr)
@pytest.mark.parametrize("option", list(TIMEOUTS))
def test_an_invalid_timeout_is_refused_by_generate(backend_kind: Entry, option: str, value: Any) -> None:
    async def main() -> BaseException | None:
        try:
            mot = await backend_kind.backend.generate(PROMPT, **{option: value}, **backend_kind.options(4))
        except Exception as exc:
            return exc
        await mot.aclose()  # accepted: stop it, the test fails below
        return None

    error = run(main())
    assert error is not None, f"generate accepted {option}={value!r}"
    assert isinstance(error, ConfigurationError) and repr(value) in str(error), repr(error)
    assert backend_kind.generations_seen() == 0
