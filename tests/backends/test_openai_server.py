"""OpenAIBackend against a real llama.cpp server (python -m llama_cpp.server).

Greedy decoding (temperature 0, fixed seed) and short answers; assertions are
on structure and invariants, never on the model's exact words.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from motio import AuthenticationError, BackendConnectionError, ModelOutputThunk, NotFoundError
from motio.backends import OpenAIBackend
from tests.asyncutil import run

pytestmark = pytest.mark.integration

OPTS: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0, "seed": 7}
PROMPT = "Name three colours."


@pytest.fixture
def backend(llama_server: Any) -> OpenAIBackend:
    return OpenAIBackend(llama_server.model, base_url=llama_server.base_url)


def assert_well_formed(mot: ModelOutputThunk[Any], *, streaming: bool, max_tokens: int = 12) -> None:
    meta = mot.generation
    assert mot.is_computed() and mot.error is None and not mot.cancelled
    assert mot.value, "the model produced no text"
    assert meta.provider == "openai" and meta.streaming is streaming
    assert meta.model and meta.response_id
    assert meta.finish_reasons and meta.finish_reasons[-1] in ("stop", "length")
    assert meta.ttfb_ms is not None and meta.ttfb_ms >= 0
    usage = meta.usage
    assert usage is not None and 1 <= usage["completion_tokens"] <= max_tokens
    if usage["total_tokens"] is not None:
        assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]


def test_streaming_deltas_join_to_the_value(backend: OpenAIBackend) -> None:
    async def main() -> tuple[list[str], ModelOutputThunk[Any]]:
        async with backend:
            mot = await backend.generate(PROMPT, **OPTS)
            assert not mot.is_computed()  # returned at once, still generating
            return [delta async for delta in mot], mot

    deltas, mot = run(main())
    assert_well_formed(mot, streaming=True)
    assert "".join(deltas) == mot.value and len(deltas) >= 1


def test_non_streaming_and_streaming_side_by_side(backend: OpenAIBackend) -> None:
    async def main() -> tuple[ModelOutputThunk[Any], ModelOutputThunk[Any]]:
        async with backend:
            whole = await backend.generate(PROMPT, stream=False, **OPTS)
            streamed = await backend.generate(PROMPT, stream=True, **OPTS)
            await asyncio.gather(whole.avalue(), streamed.avalue())
            return whole, streamed

    whole, streamed = run(main())
    assert_well_formed(whole, streaming=False)
    assert_well_formed(streamed, streaming=True)
    # The server reports usage for whole answers; streamed ones are counted.
    assert whole.generation.usage is not None and whole.generation.usage["prompt_tokens"]


def test_messages_are_accepted(backend: OpenAIBackend) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": PROMPT},
    ]
    mot = backend.generate_sync(messages, **OPTS)
    assert_well_formed(mot, streaming=True)
    backend.close()


def test_sixteen_concurrent_generations(backend: OpenAIBackend) -> None:
    async def main() -> list[ModelOutputThunk[Any]]:
        async with backend:
            mots = [await backend.generate(f"Count to {i}.", **OPTS) for i in range(16)]
            await asyncio.gather(*(m.avalue() for m in mots))
            return mots

    mots = run(main())
    for mot in mots:
        assert_well_formed(mot, streaming=True)
    assert len({m.generation.response_id for m in mots}) == 16


def test_early_close_stops_the_stream_and_the_backend_stays_usable(backend: OpenAIBackend) -> None:
    async def main() -> tuple[ModelOutputThunk[Any], str]:
        async with backend:
            mot = await backend.generate("Write a long story about a ship.", max_tokens=400)
            first = await mot.astream()
            await mot.aclose()
            after = await backend.generate(PROMPT, **OPTS)
            return mot, first + await after.avalue()

    mot, text = run(main())
    assert mot.cancelled and mot.is_computed() and mot.error is None
    assert mot.generation.usage is None or mot.generation.usage["completion_tokens"] < 400
    assert text


def test_max_concurrency_end_to_end(llama_server: Any) -> None:
    backend = OpenAIBackend(llama_server.model, base_url=llama_server.base_url, max_concurrency=2)

    async def main() -> list[str]:
        async with backend:
            mots = [await backend.generate(PROMPT, **OPTS) for _ in range(6)]
            return list(await asyncio.gather(*(m.avalue() for m in mots)))

    values = run(main())
    assert len(values) == 6 and all(values)


def test_repeated_asyncio_run_reuses_nothing_from_dead_loops(backend: OpenAIBackend) -> None:
    async def once() -> str:
        return await (await backend.generate(PROMPT, **OPTS)).avalue()

    values = [run(once()) for _ in range(4)]
    assert all(values)
    backend.close()


def test_sync_api(backend: OpenAIBackend) -> None:
    with backend:
        backend.check_sync()
        mot = backend.generate_sync(PROMPT, **OPTS)
        deltas = list(backend.stream_sync(PROMPT, **OPTS))
    assert_well_formed(mot, streaming=True)
    assert "".join(deltas) == mot.value


def test_threads_each_with_their_own_loop(backend: OpenAIBackend) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        async def once() -> str:
            return await (await backend.generate(PROMPT, **OPTS)).avalue()

        try:
            results.append(run(once()))
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 4 and all(results)
    backend.close()


def test_model_none_asks_the_server(llama_server: Any) -> None:
    backend = OpenAIBackend(base_url=llama_server.base_url)
    mot = backend.generate_sync(PROMPT, **OPTS)
    assert backend.model == llama_server.model and mot.value
    backend.close()


# -- error paths against real servers --------------------------------------------


def test_wrong_api_key_is_an_authentication_error(llama_server_with_key: Any) -> None:
    server = llama_server_with_key
    backend = OpenAIBackend(server.model, base_url=server.base_url, api_key="sk-wrong")

    async def main() -> None:
        async with backend:
            mot = await backend.generate(PROMPT, **OPTS)
            with pytest.raises(AuthenticationError) as caught:
                await mot.avalue()
            assert mot.error is caught.value
            error = caught.value
            assert error.status_code == 401 and error.base_url == server.base_url
            assert error.model == server.model and error.provider == "openai"
            assert "API key" in str(error)
            with pytest.raises(AuthenticationError):
                await backend.check()

    run(main())


def test_right_api_key_works(llama_server_with_key: Any) -> None:
    server = llama_server_with_key
    with OpenAIBackend(server.model, base_url=server.base_url, api_key=server.api_key) as backend:
        backend.check_sync()
        assert backend.generate_sync(PROMPT, **OPTS).value


def test_wrong_path_is_not_found(llama_server: Any) -> None:
    root = llama_server.base_url.removesuffix("/v1")
    backend = OpenAIBackend(llama_server.model, base_url=f"{root}/wrong/v1")

    async def main() -> None:
        async with backend:
            mot = await backend.generate(PROMPT, **OPTS)
            with pytest.raises(NotFoundError) as caught:
                await mot.avalue()
            assert caught.value.status_code == 404 and "base_url" in str(caught.value)
            with pytest.raises(NotFoundError):
                await backend.check()

    run(main())


def test_unknown_model_fails_the_check(llama_server: Any) -> None:
    backend = OpenAIBackend("no-such-model", base_url=llama_server.base_url)
    with pytest.raises(NotFoundError, match="no-such-model"):
        backend.check_sync()
    backend.close()


def test_connection_refused_fails_fast(closed_port_url: str) -> None:
    backend = OpenAIBackend("m", base_url=closed_port_url)

    async def main() -> float:
        async with backend:
            start = time.monotonic()
            mot = await backend.generate(PROMPT, **OPTS)
            with pytest.raises(BackendConnectionError) as caught:
                await mot.avalue()
            elapsed = time.monotonic() - start
            assert caught.value.base_url == closed_port_url and "running" in str(caught.value)
            with pytest.raises(BackendConnectionError):
                await backend.check()
            return elapsed

    assert run(main()) < 1.0
