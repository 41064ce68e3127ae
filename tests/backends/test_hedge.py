"""``generate(hedge=...)``: a second request when the first token is late.

Both HTTP protocols (OpenAI, Anthropic) against real loopback servers
(tests/servers/scripted.py): the chat requests that reach any of a test's
servers get scripted behaviours in their order of arrival (``in_turn``), so
a test says "the first request is slow, the second answers" whichever server
the router picked. Every assertion on what a server saw (a leg that was
closed, the hedge's send time) reads its records; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from motio import (
    BadRequestError,
    ConfigurationError,
    GenerationMeta,
    ModelOutputThunk,
    StreamError,
    TotalTimeoutError,
    UnsupportedOptionError,
)
from motio.backends import AnthropicBackend, Backend, LlamaCppBackend, OpenAIBackend
from motio.backends._base import refuse_hedge
from motio.backends.http import HTTPBackend
from motio.scheduling import DEFAULT_HEDGE_DELAY, HedgeBudget, HedgePolicy, RecentPercentile
from tests.asyncutil import run
from tests.servers.scripted import (
    Behaviour,
    RequestRecord,
    ScriptedServer,
    error_event,
    ok,
    running,
    slow_first_token,
    stall_before_headers,
    status,
)

MODEL = "scripted-model"
PROMPT = "hello there"
ANSWER = "echo: hello there"
WAIT = 30.0
# Long enough that only a client leaving ends it (the server then records a disconnect).
FOREVER = 60.0
# How late a hedge may be sent on a loaded 2-core machine.
SLACK = 1.0
# How much later a server may note a request's arrival than the client sent
# it (the servers' threads share two busy cores with the client's loop).
EARLY = 0.1

KINDS: dict[str, type[HTTPBackend]] = {"openai": OpenAIBackend, "anthropic": AnthropicBackend}


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> type[HTTPBackend]:
    return KINDS[request.param]


@pytest.fixture
def two() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    with running() as a, running() as b:
        yield a, b


def in_turn(servers: tuple[ScriptedServer, ...], *behaviours: Behaviour | None) -> None:
    """The n-th chat request to reach any of ``servers`` gets ``behaviours[n]``
    (None, or past the end: the server's default answer)."""
    lock, arrived = threading.Lock(), [0]

    def rule(record: RequestRecord) -> Behaviour | None:
        with lock:
            n = arrived[0]
            arrived[0] += 1
        return behaviours[n] if n < len(behaviours) else None

    for server in servers:
        server.rule = rule


def chats(servers: tuple[ScriptedServer, ...]) -> list[tuple[ScriptedServer, RequestRecord]]:
    """Every chat request the servers saw, with its server, in order of arrival."""
    seen = [(server, record) for server in servers for record in server.chat_requests]
    return sorted(seen, key=lambda pair: pair[1].arrived)


def wait_on(server: ScriptedServer, predicate: Callable[[ScriptedServer], bool], what: str) -> Any:
    return asyncio.to_thread(server.wait_for, predicate, WAIT, what)


def request_id(record: RequestRecord) -> str:
    return f"req_scripted_{record.index}"


async def answer(backend: Backend, prompt: str = PROMPT, **options: Any) -> ModelOutputThunk[Any]:
    """Generate to the end; the backend is closed after."""
    async with backend:
        mot = await backend.generate(prompt, max_tokens=16, **options)
        try:
            await mot.avalue()
        finally:
            await mot.aclose()
        return mot


def assert_slots_back(backend: HTTPBackend) -> None:
    assert [snapshot.in_flight for snapshot in backend.endpoint_snapshot()] == [0] * len(backend.base_urls)


# -- the race ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_late_first_token_is_hedged_and_the_other_server_wins(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer], stream: bool
) -> None:
    in_turn(two, slow_first_token(FOREVER))
    backend = kind(MODEL, base_url=[s.base_url for s in two])
    mot = run(answer(backend, hedge=0.3, stream=stream))
    [(late_server, late), (hedge_server, hedge)] = chats(two)
    assert late_server is not hedge_server  # sent away from the first one's server
    assert mot.value == ANSWER
    meta = mot.generation
    assert meta.hedged is True
    # The metadata describe the winning request.
    assert meta.base_url == hedge_server.base_url
    assert meta.request_id == request_id(hedge)
    assert meta.attempts.count == 1 and meta.streaming is stream
    assert meta.usage and meta.usage["completion_tokens"] and meta.finish_reasons
    assert meta.response is None  # hedge= is no reason to keep the whole answer
    # The loser was closed at once: its server saw the client leave.
    late_server.wait_for(lambda s: s.disconnects >= 1, WAIT, "the late request closed")
    assert late_server.chat_requests[0].disconnected and not hedge.disconnected
    assert 0.3 - EARLY <= hedge.arrived - late.arrived < 0.3 + SLACK
    assert_slots_back(backend)


def test_no_hedge_when_the_first_token_comes_in_time(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    backend = kind(MODEL, base_url=[s.base_url for s in two])
    mot = run(answer(backend, hedge=5.0))
    assert mot.value == ANSWER and mot.generation.hedged is False
    assert len(chats(two)) == 1
    assert mot.generation.base_url in {s.base_url for s in two}
    stats = backend.hedge_policy.snapshot()
    assert (stats.asked, stats.hedged) == (1, 0)


def test_off_by_default_and_with_false_or_none(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    in_turn(two, slow_first_token(0.5), slow_first_token(0.5), slow_first_token(0.5))
    for hedge in ({}, {"hedge": False}, {"hedge": None}):
        backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])
        mot = run(answer(backend, **hedge))
        assert mot.value == ANSWER and mot.generation.hedged is False
        assert backend.hedge_policy.snapshot().asked == 0
    assert len(chats(two)) == 3 and not any(r.disconnected for _, r in chats(two))


def test_hedge_true_waits_the_default_before_enough_samples(
    two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    in_turn(two, slow_first_token(FOREVER))
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])
    assert backend.hedge_policy.snapshot().delay == DEFAULT_HEDGE_DELAY
    mot = run(answer(backend, hedge=True))
    [(_, late), (_, hedge)] = chats(two)
    assert mot.value == ANSWER and mot.generation.hedged is True
    assert DEFAULT_HEDGE_DELAY - EARLY <= hedge.arrived - late.arrived < DEFAULT_HEDGE_DELAY + SLACK


def test_hedge_true_waits_the_recent_p95_time_to_first_token(
    two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])

    async def main() -> ModelOutputThunk[Any]:
        # Enough that the p95 is not the slowest (the first, opening the loop's client).
        for _ in range(3 * backend.hedge_policy.min_samples):
            fast = await backend.generate(PROMPT, hedge=True)
            assert await fast.avalue() == ANSWER and not fast.generation.hedged
        in_turn(two, slow_first_token(FOREVER))
        return await answer(backend, hedge=True)

    mot = run(main())
    delay = backend.hedge_policy.snapshot().delay
    assert delay < DEFAULT_HEDGE_DELAY / 2  # loopback answers at once
    assert mot.value == ANSWER and mot.generation.hedged is True
    late, hedge = (record for _, record in chats(two)[-2:])
    assert delay - EARLY <= hedge.arrived - late.arrived < DEFAULT_HEDGE_DELAY


def test_with_one_server_the_hedge_goes_to_the_same_server(kind: type[HTTPBackend]) -> None:
    with running() as only:
        in_turn((only,), slow_first_token(FOREVER))
        backend = kind(MODEL, base_url=only.base_url)
        mot = run(answer(backend, hedge=0.1))
        late, hedge = only.chat_requests
        assert mot.value == ANSWER and mot.generation.hedged is True
        assert mot.generation.request_id == request_id(hedge)
        only.wait_for(lambda s: s.disconnects >= 1, WAIT, "the late request closed")
        assert only.chat_requests[0].disconnected
        assert_slots_back(backend)


def test_the_first_request_may_still_win(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    """The hedge is slower still: the first request's answer is the thunk's, the hedge is closed."""
    in_turn(two, slow_first_token(0.6), slow_first_token(FOREVER))
    backend = kind(MODEL, base_url=[s.base_url for s in two])
    mot = run(answer(backend, hedge=0.1))
    [(first_server, first), (hedge_server, _)] = chats(two)
    assert mot.value == ANSWER and mot.generation.hedged is True
    assert mot.generation.base_url == first_server.base_url
    assert mot.generation.request_id == request_id(first)
    hedge_server.wait_for(lambda s: s.disconnects >= 1, WAIT, "the hedge closed")
    assert backend.hedge_policy.snapshot().won == 0


# -- a leg that fails -------------------------------------------------------------------


def test_a_failed_hedge_lets_the_first_request_win(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    in_turn(two, slow_first_token(0.8), status(400))
    backend = kind(MODEL, base_url=[s.base_url for s in two])
    mot = run(answer(backend, hedge=0.1))
    [(first_server, _), (_, hedge)] = chats(two)
    assert hedge.status == 400
    assert mot.value == ANSWER and mot.generation.hedged is True
    assert mot.generation.base_url == first_server.base_url


def test_a_first_request_failing_after_the_hedge_lets_the_hedge_win(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    # The first fails (a server's error event, not retried) after the hedge
    # went out and before the hedge's first token.
    in_turn(two, error_event(after=0, gap=0.4), slow_first_token(1.5))
    backend = kind(MODEL, base_url=[s.base_url for s in two])
    mot = run(answer(backend, hedge=0.1))
    [_, (hedge_server, hedge)] = chats(two)
    assert mot.value == ANSWER and mot.generation.hedged is True
    assert mot.generation.base_url == hedge_server.base_url
    assert mot.generation.request_id == request_id(hedge)


def test_both_failing_raise_the_first_requests_error(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    in_turn(two, error_event(after=0, gap=0.4), status(400))
    backend = kind(MODEL, base_url=[s.base_url for s in two])

    async def main() -> ModelOutputThunk[Any]:
        async with backend:
            mot = await backend.generate(PROMPT, hedge=0.1)
            with pytest.raises(StreamError):
                await mot.avalue()
            return mot

    mot = run(main())
    [(first_server, first), (_, hedge)] = chats(two)
    assert (first.status, hedge.status) == (200, 400)
    # The metadata are the first request's, as the error is.
    meta = mot.generation
    assert meta.hedged is True and meta.base_url == first_server.base_url
    assert meta.request_id == request_id(first) and meta.attempts.count == 1
    assert_slots_back(backend)


def test_a_first_request_failing_before_the_timer_sends_no_hedge(
    two: tuple[ScriptedServer, ScriptedServer]
) -> None:
    in_turn(two, status(400))
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])
    with pytest.raises(BadRequestError):
        run(answer(backend, hedge=0.5))
    assert len(chats(two)) == 1 and backend.hedge_policy.snapshot().hedged == 0


# -- closing ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_closing_the_thunk_closes_both_legs(
    kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer], how: str
) -> None:
    in_turn(two, stall_before_headers(), stall_before_headers())
    backend = kind(MODEL, base_url=[s.base_url for s in two])

    async def consume(mot: ModelOutputThunk[Any]) -> None:
        async with mot:  # leaving it (here: cancelled) closes the thunk
            await mot.avalue()

    async def main() -> None:
        mot = await backend.generate(PROMPT, hedge=0.1)
        consumer = asyncio.create_task(consume(mot))
        for server in two:
            await wait_on(server, lambda s: s.in_flight == 1, "a leg on each server")
        if how == "aclose":
            await mot.aclose()
            await consumer
        else:
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        assert mot.cancelled and mot.value == ""
        for server in two:
            await wait_on(server, lambda s: s.disconnects == 1, "the leg closed")
        await backend.aclose()

    run(main())
    assert all(record.disconnected for _, record in chats(two))
    assert_slots_back(backend)


def test_stream_sync_hedges(kind: type[HTTPBackend], two: tuple[ScriptedServer, ScriptedServer]) -> None:
    in_turn(two, slow_first_token(FOREVER), ok(delay=0.02))  # the answer in several reads
    with kind(MODEL, base_url=[s.base_url for s in two]) as backend:
        deltas = list(backend.stream_sync(PROMPT, hedge=0.1, max_tokens=16))
        assert "".join(deltas) == ANSWER and len(deltas) > 1
        [(late_server, _), _] = chats(two)
        late_server.wait_for(lambda s: s.disconnects >= 1, WAIT, "the late request closed")


def test_the_total_timeout_bounds_both_legs(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    in_turn(two, stall_before_headers(), stall_before_headers())
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two], total_timeout=0.6)
    with pytest.raises(TotalTimeoutError):
        run(answer(backend, hedge=0.1))
    for server in two:
        server.wait_for(lambda s: s.disconnects == 1, WAIT, "each leg closed")


# -- the policy: overloads, the budget ---------------------------------------------------


def test_no_hedge_while_servers_push_back(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    in_turn(two, status(429, {"retry-after-ms": "10"}))
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])

    async def main() -> ModelOutputThunk[Any]:
        pushed_back = await backend.generate(PROMPT)
        assert await pushed_back.avalue() == ANSWER  # retried after the 429
        in_turn(two, slow_first_token(0.5))
        return await answer(backend, hedge=0.1)

    mot = run(main())
    assert mot.value == ANSWER and mot.generation.hedged is False
    assert len(chats(two)) == 3  # the 429, its retry, the late one: no hedge
    stats = backend.hedge_policy.snapshot()
    assert (stats.hedged, stats.paused) == (0, 1)


def test_no_hedge_without_a_free_slot(kind: type[HTTPBackend]) -> None:
    """One server, one slot, held by the first request: a hedge would only
    queue behind it (and behind any other waiting generation)."""
    with running() as only:
        in_turn((only,), slow_first_token(0.4))
        backend = kind(MODEL, base_url=only.base_url, max_concurrency=1)
        mot = run(answer(backend, hedge=0.05))
        assert mot.value == ANSWER and mot.generation.hedged is False
        assert len(only.chat_requests) == 1
        stats = backend.hedge_policy.snapshot()
        assert (stats.hedged, stats.busy) == (0, 1)


def test_the_budget_caps_hedges(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])
    backend.hedge_policy = HedgePolicy(fraction=0.0, reserve=1.0)

    async def main() -> list[bool]:
        hedged = []
        for _ in range(2):
            in_turn(two, slow_first_token(0.4))
            mot = await backend.generate(PROMPT, hedge=0.05)
            assert await mot.avalue() == ANSWER
            hedged.append(mot.generation.hedged)
        await backend.aclose()
        return hedged

    assert run(main()) == [True, False]
    stats = backend.hedge_policy.snapshot()
    assert (stats.asked, stats.hedged, stats.over_budget) == (2, 1, 1)


def test_hedge_budget_is_a_fraction_beyond_the_reserve() -> None:
    budget = HedgeBudget(fraction=0.1, reserve=2.0)
    spent = 0
    for _ in range(100):
        budget.deposit()
        spent += budget.try_spend()
    assert 2 + 8 <= spent <= 2 + 10


def test_recent_percentile_follows_the_last_samples() -> None:
    recent = RecentPercentile(0.95, window=20)
    assert recent.value() is None
    for value in range(100):
        recent.add(float(value))
    assert len(recent) == 20 and recent.value() == 99.0
    for _ in range(20):
        recent.add(1.0)
    assert recent.value() == 1.0


def test_hedge_policy_pauses_after_an_overload() -> None:
    now = [100.0]
    policy = HedgePolicy(pause=5.0, clock=lambda: now[0])
    policy.ask(True)
    assert not policy.allow(last_overload=97.0)
    assert policy.allow(last_overload=94.0) and policy.allow(None)
    assert policy.snapshot().paused == 1


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["soon", -1, float("nan")], ids=repr)
def test_an_invalid_hedge_is_refused_before_anything_is_sent(
    two: tuple[ScriptedServer, ScriptedServer], value: Any
) -> None:
    backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in two])

    async def main() -> None:
        async with backend:
            with pytest.raises(ConfigurationError, match="hedge="):
                await backend.generate(PROMPT, hedge=value)

    run(main())
    assert chats(two) == []


def test_only_backends_of_servers_hedge(smollm2_path: Any) -> None:
    assert OpenAIBackend.hedging and AnthropicBackend.hedging and not Backend.hedging
    assert not LlamaCppBackend.hedging
    for cls in (OpenAIBackend, AnthropicBackend):
        assert "hedge" in cls.options
    llama = LlamaCppBackend(smollm2_path)

    async def main() -> None:
        with pytest.raises(UnsupportedOptionError, match="hedge") as caught:
            await llama.generate(PROMPT, hedge=0.5)
        assert caught.value.option == "hedge" and caught.value.backend == "LlamaCppBackend"
        await llama.aclose()

    run(main())
    options = {"hedge": False, "max_tokens": 2}
    refuse_hedge(options, "LlamaCppBackend")  # off passes, taken out
    assert options == {"max_tokens": 2}


def test_the_scheduling_package_imports_no_backend_nor_batch() -> None:
    import ast
    from pathlib import Path

    import motio.scheduling

    for path in Path(motio.scheduling.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("backends", "batch")), (path.name, node.module)
                assert "motio.backends" not in node.module and "motio.batch" not in node.module


def test_generation_meta_says_not_hedged_by_default() -> None:
    assert GenerationMeta().hedged is False
    with running() as server:
        server.script(ok())
        mot = run(answer(OpenAIBackend(MODEL, base_url=server.base_url)))
        assert mot.generation.hedged is False
