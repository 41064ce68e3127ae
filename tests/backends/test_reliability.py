"""OpenAIBackend against a misbehaving server: retries, the four timeouts, partial text.

Every case runs against the scripted loopback server (tests/servers/scripted.py),
asserting what the server saw (requests, disconnects, its own clock for the
waits) as well as what the client raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from motio import (
    BackendConnectionError,
    BackendError,
    ChunkTimeoutError,
    ModelOutputThunk,
    ServerError,
    StreamError,
)
from motio._exceptions import BackendChunkTimeoutError, FirstTokenTimeoutError, TotalTimeoutError
from motio.backends import OpenAIBackend
from tests.asyncutil import run
from tests.servers.scripted import (
    ScriptedServer,
    drop_after,
    malformed_after,
    ok,
    reset_before_headers,
    stall_after,
    stall_before_headers,
    status,
    trickle,
    trickle_chunks,
)

MODEL = "scripted-model"


def backend_for(server: ScriptedServer, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(MODEL, base_url=server.base_url, **kwargs)


async def outcome(backend: OpenAIBackend, *, stream: bool = True, **options: Any) -> ModelOutputThunk[Any]:
    async with backend:
        mot = await backend.generate("hello there", stream=stream, **options)
        try:
            await mot.avalue()
        except Exception:
            pass
        return mot


def arrivals(server: ScriptedServer) -> list[float]:
    return [r.arrived for r in server.chat_requests]


# -- retries before the first token ------------------------------------------------


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses_are_retried_until_an_answer(server: ScriptedServer, code: int) -> None:
    server.script(status(code), status(code))
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there"
    assert len(server.chat_requests) == 3
    attempts = mot.generation.attempts
    assert attempts.count == 3 and attempts.statuses == [code, code] and len(attempts.waits) == 2


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_other_statuses_are_not_retried(server: ScriptedServer, code: int) -> None:
    server.script(status(code))
    mot = run(outcome(backend_for(server)))
    assert isinstance(mot.error, BackendError) and mot.error.status_code == code
    assert len(server.chat_requests) == 1


def test_retry_after_seconds_is_honoured_on_the_servers_clock(server: ScriptedServer) -> None:
    server.script(status(429, headers={"Retry-After": "1"}))
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there"
    first, second = arrivals(server)
    assert 1.0 <= second - first <= 1.6  # the wait asked for, plus at most 10% jitter and noise
    assert mot.generation.attempts.statuses == [429]


def test_retry_after_ms_wins_over_retry_after(server: ScriptedServer) -> None:
    server.script(status(503, headers={"Retry-After": "30", "retry-after-ms": "200"}))
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there"
    first, second = arrivals(server)
    assert 0.2 <= second - first < 1.0


def test_retry_after_as_an_http_date(server: ScriptedServer) -> None:
    from email.utils import formatdate

    server.script(status(503, headers={"Retry-After": formatdate(time.time() + 1, usegmt=True)}))
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there"
    first, second = arrivals(server)
    assert 0.0 < second - first <= 2.2  # whole seconds in an HTTP date


def test_retry_after_is_capped(server: ScriptedServer) -> None:
    server.script(status(429, headers={"Retry-After": "3600"}))
    backend = backend_for(server)
    backend.retry_policy = type(backend.retry_policy)(max_retries=2, max_retry_after=0.3)
    mot = run(outcome(backend))
    assert mot.value == "echo: hello there"
    first, second = arrivals(server)
    assert 0.3 <= second - first < 1.5


def test_giving_up_raises_the_last_error_chained_and_says_so(server: ScriptedServer) -> None:
    server.script(status(503), status(503), status(503))
    mot = run(outcome(backend_for(server, max_retries=2)))
    error = mot.error
    assert isinstance(error, ServerError) and error.status_code == 503
    assert "after 3 attempts" in str(error) and isinstance(error.__cause__, ServerError)
    assert len(server.chat_requests) == 3


def test_max_retries_zero_disables_retries(server: ScriptedServer) -> None:
    server.script(status(503))
    mot = run(outcome(backend_for(server, max_retries=0)))
    assert isinstance(mot.error, ServerError) and len(server.chat_requests) == 1


def test_a_reset_connection_before_headers_is_retried(server: ScriptedServer) -> None:
    server.script(reset_before_headers)
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there"
    assert mot.generation.attempts.statuses == [None]


def test_a_refused_connection_is_not_retried_and_fails_fast(closed_port_url: str) -> None:
    started = time.monotonic()
    mot = run(outcome(OpenAIBackend(MODEL, base_url=closed_port_url)))
    assert isinstance(mot.error, BackendConnectionError)
    assert time.monotonic() - started < 1.0
    assert mot.generation.attempts.count == 1


def test_each_retry_is_logged_at_info(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script(status(502), status(503))
    with caplog.at_level(logging.INFO, logger="motio"):
        run(outcome(backend_for(server)))
    retries = [r for r in caplog.records if r.name == "motio" and "retrying" in r.getMessage()]
    assert len(retries) == 2 and all(r.levelno == logging.INFO for r in retries)
    assert "HTTP 502" in retries[0].getMessage() and server.base_url in retries[0].getMessage()


def test_waiting_to_retry_does_not_count_against_chunk_timeout(server: ScriptedServer) -> None:
    server.script(status(429, headers={"Retry-After": "1"}))
    mot = run(outcome(backend_for(server), chunk_timeout=0.3))
    assert mot.value == "echo: hello there"


def test_waiting_to_retry_counts_against_total_timeout(server: ScriptedServer) -> None:
    server.script(status(429, headers={"Retry-After": "5"}))
    started = time.monotonic()
    mot = run(outcome(backend_for(server), total_timeout=1.0))
    assert isinstance(mot.error, TotalTimeoutError) and isinstance(mot.error, TimeoutError)
    assert time.monotonic() - started < 1.0  # a wait past the deadline is not even started
    assert isinstance(mot.error.__cause__, BackendError)


# -- never after content -------------------------------------------------------------


def test_a_drop_mid_stream_is_not_retried_and_keeps_the_partial_text(server: ScriptedServer) -> None:
    server.script(drop_after(3))
    mot = run(outcome(backend_for(server), max_tokens=10))
    error = mot.error
    assert isinstance(error, StreamError) and "not retried" in str(error)
    assert mot.text == "echo: hello there"[: len(mot.text)] and mot.text.count(" ") >= 1
    assert error.partial_text == mot.text and mot.text
    assert len(server.chat_requests) == 1


def test_malformed_chunks_are_stream_errors_not_retried(server: ScriptedServer) -> None:
    server.script(malformed_after(1))
    mot = run(outcome(backend_for(server)))
    assert isinstance(mot.error, StreamError) and len(server.chat_requests) == 1


# -- the four timeouts ---------------------------------------------------------------


def test_a_stall_before_headers_is_a_first_token_timeout(server: ScriptedServer) -> None:
    server.script(stall_before_headers)
    started = time.monotonic()
    mot = run(outcome(backend_for(server, first_token_timeout=0.5)))
    elapsed = time.monotonic() - started
    error = mot.error
    assert isinstance(error, FirstTokenTimeoutError) and isinstance(error, TimeoutError)
    assert error.timeout == 0.5 and "first_token_timeout=0.5" in str(error)
    assert error.base_url == server.base_url and error.model == MODEL and error.provider == "openai"
    assert 0.5 <= elapsed < 2.0
    server.wait_for(lambda s: s.disconnects >= 1, timeout=10)


@pytest.mark.parametrize(
    "behaviour",
    [trickle(0.05), trickle_chunks(0.05), trickle_chunks(0.05, delta={"role": "assistant"})],
    ids=["comments", "empty-deltas", "role-only"],
)
def test_keep_alives_do_not_satisfy_the_first_token_timeout(server: ScriptedServer, behaviour: Any) -> None:
    server.script(behaviour)
    started = time.monotonic()
    mot = run(outcome(backend_for(server, first_token_timeout=0.6)))
    assert isinstance(mot.error, FirstTokenTimeoutError)
    assert 0.6 <= time.monotonic() - started < 2.5
    server.wait_for(lambda s: s.disconnects >= 1, timeout=10)


@pytest.mark.parametrize(
    "behaviour",
    [stall_after(2), trickle(0.05, after=2), trickle_chunks(0.05, after=2)],
    ids=["stall", "comments", "empty-deltas"],
)
def test_quiet_or_keep_alive_only_streams_are_chunk_timeouts(server: ScriptedServer, behaviour: Any) -> None:
    server.script(behaviour)
    started = time.monotonic()
    mot = run(outcome(backend_for(server), chunk_timeout=0.6, max_tokens=10))
    elapsed = time.monotonic() - started
    error = mot.error
    assert isinstance(error, BackendChunkTimeoutError)
    assert isinstance(error, ChunkTimeoutError) and isinstance(error, TimeoutError)
    assert error.base_url == server.base_url and error.model == MODEL and error.timeout == 0.6
    assert 0.6 <= elapsed < 0.6 * 1.25 + 1.0
    assert mot.text  # the chunks before the stall are kept
    server.wait_for(lambda s: s.disconnects >= 1, timeout=10)


def test_total_timeout_bounds_a_slow_stream(server: ScriptedServer) -> None:
    server.script(ok([f" w{i}" for i in range(50)], delay=0.1))
    started = time.monotonic()
    mot = run(outcome(backend_for(server), total_timeout=0.5))
    assert isinstance(mot.error, TotalTimeoutError) and mot.error.timeout == 0.5
    assert 0.5 <= time.monotonic() - started < 1.5
    server.wait_for(lambda s: s.disconnects >= 1, timeout=10)


def test_per_generation_overrides(server: ScriptedServer) -> None:
    server.script(stall_before_headers)
    mot = run(outcome(backend_for(server, first_token_timeout=60.0), first_token_timeout=0.3))
    assert isinstance(mot.error, FirstTokenTimeoutError) and mot.error.timeout == 0.3


@pytest.mark.parametrize("behaviour", [stall_before_headers, stall_after(0)], ids=["before-headers", "body"])
def test_non_streamed_requests_are_bounded_too(server: ScriptedServer, behaviour: Any) -> None:
    server.script(behaviour)
    started = time.monotonic()
    mot = run(outcome(backend_for(server, first_token_timeout=0.5), stream=False))
    assert isinstance(mot.error, FirstTokenTimeoutError)
    assert 0.5 <= time.monotonic() - started < 2.0
    server.wait_for(lambda s: s.disconnects >= 1, timeout=10)


def test_non_streamed_requests_are_retried_too(server: ScriptedServer) -> None:
    server.script(status(503), reset_before_headers)
    mot = run(outcome(backend_for(server), stream=False))
    assert mot.value == "echo: hello there" and len(server.chat_requests) == 3


def test_the_sync_bridge_passes_timeouts_through(server: ScriptedServer) -> None:
    server.script(stall_after(1))
    backend = backend_for(server)
    with pytest.raises(ChunkTimeoutError):
        backend.generate_sync("hi", chunk_timeout=0.3)
    backend.close()


def test_many_concurrent_generations_each_retry_on_their_own(server: ScriptedServer) -> None:
    failed_once: set[str] = set()

    def first_try_fails(record: Any) -> Any:
        # Every third prompt fails its first attempt (the rule runs on the server's one thread).
        if int(record.prompt.split()[-1]) % 3 or record.prompt in failed_once:
            return None
        failed_once.add(record.prompt)
        return status(503)

    server.rule = first_try_fails

    async def main() -> list[str]:
        async with backend_for(server, max_retries=3) as backend:
            mots = [await backend.generate(f"n {i}") for i in range(60)]
            return list(await asyncio.gather(*(m.avalue() for m in mots)))

    try:
        values = run(main())
    finally:
        server.rule = None
    assert sorted(values) == sorted(f"echo: n {i}" for i in range(60))
    assert len(failed_once) == 20 and len(server.chat_requests) == 80
