"""OpenAIBackend against a scripted loopback server: what llama.cpp won't produce.

Error statuses, broken streams, stalls, disconnects, and counting requests
and connections in flight to prove ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from motio import (
    BackendClosedError,
    BadRequestError,
    ChunkTimeoutError,
    ModelOutputThunk,
    RateLimitError,
    ServerError,
    StreamError,
)
from motio.backends import OpenAIBackend
from tests.asyncutil import run
from tests.servers.scripted import (
    Behaviour,
    RequestRecord,
    ScriptedServer,
    drop_after,
    error_event,
    gather,
    malformed_after,
    no_done,
    ok,
    stall_after,
    status,
)

# The model a test asks for picks what the server does with it.
BY_MODEL: dict[str, Behaviour] = {
    "ok": ok(),
    "no-usage": ok(usage=False),
    "slow": ok(delay=0.02),
    "stall": stall_after(1),
    "malformed": malformed_after(1),
    "error-event": error_event(after=1),
    "truncated": drop_after(2),
    "no-done": no_done(),
    "hold-1500": gather(1500),
}


def by_model(request: RequestRecord) -> Behaviour | None:
    model = request.model or ""
    if model.startswith("status-"):
        code = int(model.removeprefix("status-"))
        return status(code, body={"error": {"message": f"fake failure {code}", "type": "x", "code": code}})
    if model == "reject-stream-options" and "stream_options" in request.body:
        return status(400, body={"error": {"message": "unknown field stream_options", "code": 400}})
    return BY_MODEL.get(model)


@pytest.fixture
def fake(server: ScriptedServer) -> ScriptedServer:
    # Answers of " tok0 tok1 ..." cut to max_tokens, so a test picks the length.
    server.chunks, server.rule = 1000, by_model
    return server


def fresh(**kwargs: Any) -> ScriptedServer:
    return ScriptedServer(chunks=1000, rule=by_model, **kwargs).start()


def backend_for(fake: ScriptedServer, model: str, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(model, base_url=fake.base_url, **kwargs)


def left(fake: ScriptedServer) -> None:
    """Wait (bounded) until the server saw a client leave a stream early."""
    fake.wait_for(lambda s: s.disconnects >= 1, 10, "the server to see the client leave")


async def failure_of(backend: OpenAIBackend, **options: Any) -> BaseException:
    async with backend:
        mot = await backend.generate("hi", **options)
        with pytest.raises(Exception) as caught:
            await mot.avalue()
        assert mot.error is caught.value and not mot.is_computed()
        return caught.value


@pytest.mark.parametrize(
    ("status", "error_type", "hint"),
    [
        (429, RateLimitError, "slow down"),
        (500, ServerError, "logs"),
        (503, ServerError, "logs"),
        (400, BadRequestError, "options"),
    ],
    ids=["429", "500", "503", "400"],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_http_error_statuses(
    fake: ScriptedServer, status: int, error_type: type[Exception], hint: str, stream: bool
) -> None:
    backend = backend_for(fake, f"status-{status}", max_retries=0)
    error = run(failure_of(backend, stream=stream))
    assert type(error) is error_type
    assert error.status_code == status and error.base_url == fake.base_url  # type: ignore[attr-defined]
    assert error.model == f"status-{status}" and hint in str(error)  # type: ignore[attr-defined]
    assert f"fake failure {status}" in str(error)
    assert len(fake.chat_requests) == 1  # max_retries=0: no retry


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("malformed", "not JSON"),
        ("error-event", "scripted mid-stream failure"),
        ("truncated", "broke mid-stream"),
        ("no-done", "before [DONE]"),
    ],
)
def test_broken_streams_are_stream_errors(fake: ScriptedServer, model: str, fragment: str) -> None:
    error = run(failure_of(backend_for(fake, model), max_tokens=3))
    assert isinstance(error, StreamError) and fragment in str(error)
    assert error.base_url == fake.base_url and error.model == model


def test_malformed_chunk_is_chained_from_the_decoder_error(fake: ScriptedServer) -> None:
    error = run(failure_of(backend_for(fake, "malformed")))
    assert isinstance(error.__cause__, ValueError)


def test_usage_from_the_server_and_metadata(fake: ScriptedServer) -> None:
    async def main() -> ModelOutputThunk[Any]:
        async with backend_for(fake, "ok") as backend:
            mot = await backend.generate("hi", max_tokens=5)
            await mot.avalue()
            return mot

    mot = run(main())
    meta = mot.generation
    assert meta.usage == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    assert meta.finish_reasons == ["length"] and meta.response_id == "chatcmpl-scripted"
    assert meta.model == "ok" and fake.chat_requests[-1].body["stream_options"] == {"include_usage": True}


def test_usage_is_counted_when_the_server_sends_none(fake: ScriptedServer) -> None:
    mot = backend_for(fake, "no-usage").generate_sync("hi", max_tokens=6)
    assert mot.value == "".join(f" tok{i}" for i in range(6))
    assert mot.generation.usage == {"prompt_tokens": None, "completion_tokens": 6, "total_tokens": None}


def test_a_server_rejecting_stream_options_is_asked_again_without(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "reject-stream-options")
    first = backend.generate_sync("hi", max_tokens=4)
    second = backend.generate_sync("hi", max_tokens=4)
    assert first.value == second.value == " tok0 tok1 tok2 tok3"
    assert first.generation.usage is not None and first.generation.usage["completion_tokens"] == 4
    # Rejected once, then remembered: three requests for two generations.
    assert ["stream_options" in r.body for r in fake.chat_requests] == [True, False, False]
    backend.close()


def test_unknown_option_is_a_type_error_naming_it(fake: ScriptedServer) -> None:
    async def main() -> None:
        async with backend_for(fake, "ok") as backend:
            with pytest.raises(TypeError, match="max_tokenz"):
                await backend.generate("hi", max_tokenz=3)

    run(main())
    assert fake.chat_requests == []


def test_chunk_timeout_closes_a_stalled_stream(fake: ScriptedServer) -> None:
    error = run(failure_of(backend_for(fake, "stall"), chunk_timeout=0.4))
    assert isinstance(error, ChunkTimeoutError)
    left(fake)


def test_closing_early_disconnects_from_the_server(fake: ScriptedServer) -> None:
    async def main() -> ModelOutputThunk[Any]:
        async with backend_for(fake, "slow") as backend:
            mot = await backend.generate("hi", max_tokens=500)
            assert await mot.astream()
            await mot.aclose()
            return mot

    mot = run(main())
    assert mot.cancelled and mot.value is not None
    left(fake)


def test_stream_sync_closed_early_disconnects(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "slow")
    deltas = backend.stream_sync("hi", max_tokens=500)
    assert next(deltas)
    deltas.close()
    left(fake)
    backend.close()


def test_max_concurrency_caps_requests_and_connections_in_flight(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "slow", max_concurrency=3)

    async def main() -> list[str]:
        async with backend:
            mots = [await backend.generate("hi", max_tokens=8) for _ in range(10)]
            return list(await asyncio.gather(*(m.avalue() for m in mots)))

    values = run(main())
    assert len(values) == 10 and all(values)
    assert fake.max_in_flight == 3  # reached, never exceeded
    # Waiting generations hold no connection either.
    assert fake.max_connections_open <= 3


def test_waiting_for_a_slot_does_not_count_against_chunk_timeout(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "slow", max_concurrency=1)

    async def main() -> list[str]:
        async with backend:
            # Each takes ~0.2 s; the last waits ~0.6 s for its slot.
            mots = [await backend.generate("hi", max_tokens=10, chunk_timeout=0.3) for _ in range(4)]
            return list(await asyncio.gather(*(m.avalue() for m in mots)))

    assert all(run(main()))


@pytest.mark.parametrize("ending", ["error", "close"])
def test_a_slot_comes_back_however_the_generation_ends(fake: ScriptedServer, ending: str) -> None:
    model = "status-500" if ending == "error" else "slow"
    failing = backend_for(fake, model, max_concurrency=1)

    async def main() -> str:
        async with failing:
            for _ in range(3):
                mot = await failing.generate("hi", max_tokens=200)
                if ending == "close":
                    await mot.astream()
                    await mot.aclose()
                else:
                    with pytest.raises(ServerError):
                        await mot.avalue()
            failing.model = "ok"
            return await (await failing.generate("hi", max_tokens=2)).avalue()

    assert run(main(), timeout=20) == " tok0 tok1"


def test_closing_a_thunk_waiting_for_its_slot(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "slow", max_concurrency=1)

    async def main() -> tuple[ModelOutputThunk[Any], str]:
        async with backend:
            running = await backend.generate("hi", max_tokens=10)
            waiting = await backend.generate("hi", max_tokens=10)
            await asyncio.sleep(0)
            await waiting.aclose()
            return waiting, await running.avalue()

    waiting, value = run(main())
    assert waiting.cancelled and waiting.value == "" and value
    assert len(fake.chat_requests) == 1  # the closed one never reached the server


def test_non_streaming_answer(fake: ScriptedServer) -> None:
    mot = backend_for(fake, "ok").generate_sync("hi", stream=False, max_tokens=3)
    assert mot.value == " tok0 tok1 tok2" and mot.generation.streaming is False
    assert mot.generation.usage == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    assert mot.generation.finish_reasons == ["length"]
    assert mot.generation.response_id == "chatcmpl-scripted"
    assert fake.chat_requests[-1].stream is False


def test_auth_and_extra_headers_reach_the_server(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "ok", api_key="sk-test-123", headers={"X-Team": "motio"})
    assert backend.generate_sync("hi", max_tokens=2).value == " tok0 tok1"
    [headers] = [r.headers for r in fake.chat_requests]
    assert headers["authorization"] == "Bearer sk-test-123" and headers["x-team"] == "motio"
    assert headers["content-type"] == "application/json"
    backend.close()


def test_sequential_requests_reuse_one_connection(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "ok")

    async def main() -> None:
        async with backend:
            for _ in range(5000):
                mot = await backend.generate("hi", max_tokens=2)
                await mot.avalue()

    run(main(), timeout=120)
    assert fake.completed == 5000
    accepted = fake.connections_accepted
    assert accepted <= 2, f"{accepted} connections for 5,000 sequential requests"


def test_no_connection_cap_below_max_concurrency() -> None:
    # The SDK's pool capped connections at 1,000 whatever max_concurrency
    # said; the server must see all 1,500 streams open at once.
    fake = fresh(record=False)
    backend = backend_for(fake, "hold-1500", connect_timeout=60.0)

    async def main() -> list[str]:
        async with backend:
            mots = [await backend.generate("hi", max_tokens=2) for _ in range(1500)]
            return list(await asyncio.gather(*(m.avalue() for m in mots)))

    try:
        assert run(main(), timeout=120) == [" tok0 tok1"] * 1500
        assert fake.max_in_flight == 1500 and fake.connections_accepted == 1500
    finally:
        fake.stop()


def test_a_closed_backend_raises_backend_closed_error(fake: ScriptedServer) -> None:
    backend = backend_for(fake, "ok")
    assert backend.generate_sync("hi", max_tokens=2).value == " tok0 tok1"
    assert not backend.is_closed
    backend.close()
    backend.close()  # idempotent
    assert backend.is_closed
    with pytest.raises(BackendClosedError, match="OpenAIBackend has been closed"):
        backend.generate_sync("hi", max_tokens=2)
    with pytest.raises(BackendClosedError):
        backend.check_sync()
    with pytest.raises(BackendClosedError):
        list(backend.stream_sync("hi", max_tokens=2))

    async def after_aclose() -> None:
        async with backend_for(fake, "ok") as other:
            pass
        with pytest.raises(BackendClosedError):
            await other.generate("hi")

    run(after_aclose())
    # Closed means closed: no request, and no new client, after close().
    assert len(fake.chat_requests) == 1
    assert backend._clients._cache.current_size() == 0


def test_a_generation_waiting_for_its_slot_when_closed_opens_no_client(fake: ScriptedServer) -> None:
    async def main() -> BaseException | None:
        backend = backend_for(fake, "slow", max_concurrency=1)
        first = await backend.generate("hi", max_tokens=500)
        assert await first.astream()  # holds the only slot
        second = await backend.generate("hi", max_tokens=2)  # waits for it
        await backend.aclose()
        await first.aclose()  # gives the slot to the waiting one
        with pytest.raises(BackendClosedError):
            await second.avalue()
        assert backend._clients._cache.current_size() == 0
        return second.error

    assert isinstance(run(main()), BackendClosedError)
    assert len(fake.chat_requests) == 1
