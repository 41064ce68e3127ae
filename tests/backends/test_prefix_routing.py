"""Prefix-aware routing over several servers: bounded-load consistent hashing.

The router's choices are checked on real ``Endpoints`` (gates and counters,
no network needed to take a slot); failover on real loopback servers.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

from motio.backends import OpenAIBackend
from motio.backends._gate import Gate
from motio.backends.http._endpoints import Endpoint, Endpoints
from motio.backends.http._loopclients import LoopClients
from motio.scheduling import KEY_SLACK, PREFIX_SLACK, SHARE_SLACK, prefix_key, server_seed, weight
from tests.asyncutil import run
from tests.servers.scripted import hold_after, running, stall_before_headers

MODEL = "scripted-model"


async def never_probed(endpoint: Endpoint) -> None:
    raise AssertionError("no server leaves rotation here")


def router(servers: int, limit: int) -> Endpoints:
    return Endpoints(
        [Endpoint(f"http://s{i}/v1", Gate(limit), None, LoopClients(object)) for i in range(servers)],
        never_probed,
    )


def ranking(key: int, urls: list[str]) -> list[str]:
    """The servers in ``key``'s order, as every process computes it."""
    return sorted(urls, key=lambda url: weight(key, server_seed(url)), reverse=True)


def key_preferring(url: str, urls: list[str]) -> int:
    """A prefix key whose first choice is ``url``."""
    return next(k for g in range(10_000) if ranking(k := prefix_key(f"group {g}"), urls)[0] == url)


def test_a_key_goes_to_its_first_choice_then_the_next_with_room() -> None:
    routes = router(4, limit=4)
    urls = [e.base_url for e in routes.all]
    key = prefix_key("You are a helpful assistant.")
    first, second = ranking(key, urls)[:2]

    async def main() -> list[str]:
        return [(await routes.acquire(key=key)).base_url for _ in range(6)]

    # Its first choice while it has room (a full server is within the slack
    # of idle ones: PREFIX_SLACK is a whole server's slots), then its second.
    assert PREFIX_SLACK >= 1
    assert run(main()) == [first] * 4 + [second] * 2


def test_a_key_past_the_slack_goes_to_its_next_choice() -> None:
    # Without a gate a server's load is its count in flight: the slack binds.
    routes = Endpoints(
        [Endpoint(f"http://s{i}/v1", None, None, LoopClients(object)) for i in range(3)], never_probed
    )
    urls = [e.base_url for e in routes.all]
    key = prefix_key("an uncapped prefix")
    first, second = ranking(key, urls)[:2]

    async def main() -> list[str]:
        return [(await routes.acquire(key=key)).base_url for _ in range(3)]

    assert run(main()) == [first, first, second]


def test_a_hot_key_spills_in_its_order_and_fills_every_server() -> None:
    routes = router(4, limit=10)
    urls = [e.base_url for e in routes.all]
    key = prefix_key("one prefix for everyone")

    async def main() -> Counter[str]:
        return Counter([(await routes.acquire(key=key)).base_url for _ in range(34)])

    counts = run(main())
    order = ranking(key, urls)
    assert [counts[url] for url in order] == [10, 10, 10, 4]


def test_prefixes_are_homed_evenly_within_the_key_slack() -> None:
    # Bounded loads over prefixes: no server is the home of more than
    # (1 + KEY_SLACK) times the mean number of prefixes.
    routes = router(4, limit=1000)

    async def main() -> Counter[str]:
        return Counter([(await routes.acquire(key=prefix_key(f"group {g}"))).base_url for g in range(64)])

    counts = run(main())
    assert sum(counts.values()) == 64 and max(counts.values()) <= math.ceil((1 + KEY_SLACK) * 64 / 4)
    assert sorted(e.homes for e in routes.all) == sorted(counts.values())


def test_room_freed_on_a_server_goes_to_the_waiter_whose_key_chose_it() -> None:
    routes = router(2, limit=1)
    s0, s1 = routes.all
    urls = [s0.base_url, s1.base_url]
    k0 = key_preferring(s0.base_url, urls)
    k1 = key_preferring(s1.base_url, urls)

    async def main() -> list[str]:
        assert await routes.acquire(key=k0) is s0 and await routes.acquire(key=k1) is s1
        # Both full: the first in line wants s1, the second s0.
        wants_s1 = asyncio.ensure_future(routes.acquire(key=k1))
        wants_s0 = asyncio.ensure_future(routes.acquire(key=k0))
        while len(routes._waiters) < 2:
            await asyncio.sleep(0)
        assert list(s0.queue) and list(s1.queue)
        s0.gate.release()  # type: ignore[union-attr]
        routes.release(s0, True, None)
        got = await asyncio.wait_for(wants_s0, 10)
        assert not wants_s1.done()  # it waits for its own server
        s1.gate.release()  # type: ignore[union-attr]
        routes.release(s1, True, None)
        return [got.base_url, (await asyncio.wait_for(wants_s1, 10)).base_url]

    assert run(main()) == urls
    assert not routes._waiters and not s0.queue and not s1.queue


def test_a_free_slot_is_never_left_idle_for_a_key() -> None:
    routes = router(2, limit=1)
    s0, s1 = routes.all
    k0 = key_preferring(s0.base_url, [s0.base_url, s1.base_url])

    async def main() -> list[Endpoint]:
        return [await routes.acquire(key=k0), await routes.acquire(key=k0)]

    assert run(main()) == [s0, s1]  # its server full: the other's room, not a wait


def test_avoid_and_shun_come_before_the_key() -> None:
    routes = router(3, limit=4)
    urls = [e.base_url for e in routes.all]
    key = prefix_key("a shared system prompt")
    first = next(e for e in routes.all if e.base_url == ranking(key, urls)[0])
    second = next(e for e in routes.all if e.base_url == ranking(key, urls)[1])

    async def main() -> tuple[Endpoint, Endpoint]:
        return await routes.acquire(avoid=[first], key=key), await routes.acquire(shun=[first], key=key)

    assert run(main()) == (second, second)


def test_a_waiter_with_a_key_cancelled_leaves_no_trace() -> None:
    routes = router(2, limit=1)
    s0, s1 = routes.all
    key = key_preferring(s0.base_url, [s0.base_url, s1.base_url])

    async def main() -> None:
        await routes.acquire(key=key)
        await routes.acquire(key=key)
        waiting = asyncio.ensure_future(routes.acquire(key=key))
        while not routes._waiters:
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    run(main())
    assert not routes._waiters and not s0.queue and not s1.queue


def test_a_prompt_whose_server_refuses_fails_over_and_routing_can_be_turned_off() -> None:
    with running() as a, running() as b:
        urls = [a.base_url, b.base_url]
        prompt = next(p for g in range(1000) if ranking(prefix_key(p := f"question {g}"), urls)[0] == a.base_url)
        backend = OpenAIBackend(MODEL, base_url=urls, max_concurrency=4)
        assert backend.prefix_routing

        async def main() -> list[Any]:
            try:
                first = [await _answer(backend, prompt) for _ in range(3)]
                a.stop()  # its port now refuses: the prompt's own server is gone
                return first + [await _answer(backend, prompt)]
            finally:
                await backend.aclose()

        mots = run(main())
        assert [m.generation.base_url for m in mots] == [a.base_url] * 3 + [b.base_url]
        assert mots[-1].value == f"echo: {prompt}" and mots[-1].generation.attempts.count == 2
        off = OpenAIBackend(MODEL, base_url=urls, max_concurrency=4, prefix_routing=False)
        assert not off.prefix_routing and not OpenAIBackend(MODEL, base_url=b.base_url).prefix_routing
        off.close()


async def _answer(backend: OpenAIBackend, prompt: str) -> Any:
    mot = await backend.generate(prompt)
    try:
        await mot.avalue()
    finally:
        await mot.aclose()
    return mot


# -- holding a prefix's prompts until its first prompt is cached on the server ---------


def holding_router(servers: int, limit: int) -> Endpoints:
    return Endpoints(
        [Endpoint(f"http://s{i}/v1", Gate(limit), None, LoopClients(object)) for i in range(servers)],
        never_probed,
        hold_prefixes=True,
    )


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` on the loop until it holds, at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def test_a_second_prompt_of_a_prefix_waits_for_the_first_ones_first_token_on_its_server() -> None:
    routes = holding_router(2, limit=4)
    s0, s1 = routes.all
    key = key_preferring(s0.base_url, [s0.base_url, s1.base_url])

    async def main() -> list[Endpoint]:
        first = await routes.acquire(key=key)
        second = asyncio.ensure_future(routes.acquire(key=key))
        await until(lambda: len(s0.queue) == 1)
        # Room on both servers, yet it waits: its prefix is being prefilled on s0.
        assert not second.done()
        assert s0.in_flight == 1 and s1.in_flight == 0
        other = await routes.acquire()  # no key: not held
        routes.warmed(first, key, cached=True)
        got = await asyncio.wait_for(second, 10)
        third = await routes.acquire(key=key)  # cached there now: no wait
        return [first, got, third, other]

    first, got, third, other = run(main())
    assert first is got is third is s0 and other is s1
    assert not routes._waiters and not s0.queue and not s0.warming and key in s0.warm


def test_a_held_prompt_is_released_when_the_first_one_ends_without_a_first_token() -> None:
    routes = holding_router(2, limit=4)
    s0, s1 = routes.all
    key = key_preferring(s0.base_url, [s0.base_url, s1.base_url])

    async def main() -> Endpoint:
        first = await routes.acquire(key=key)
        second = asyncio.ensure_future(routes.acquire(key=key))
        await until(lambda: len(s0.queue) == 1)
        routes.warmed(first, key, cached=False)  # failed or closed before its first token
        return await asyncio.wait_for(second, 10)

    assert run(main()) is s0
    assert key in s0.warming and key not in s0.warm  # the second prefills it now: the next wait for it


def test_a_hold_is_bounded(monkeypatch: Any) -> None:
    import motio.backends.http._endpoints as endpoints_module

    monkeypatch.setattr(endpoints_module, "PREFIX_HOLD", 0.2)
    routes = holding_router(2, limit=4)
    s0, s1 = routes.all
    key = key_preferring(s0.base_url, [s0.base_url, s1.base_url])

    async def main() -> tuple[Endpoint, float]:
        await routes.acquire(key=key)  # its first token never comes
        started = asyncio.get_running_loop().time()
        second = await asyncio.wait_for(routes.acquire(key=key), 10)
        return second, asyncio.get_running_loop().time() - started

    second, waited = run(main())
    assert second is s0 and 0.15 <= waited < 5
    assert not routes._waiters and not s0.queue


def test_without_a_key_or_without_hold_prefixes_nothing_is_held() -> None:
    routes = holding_router(2, limit=4)
    plain = router(2, limit=4)
    key = prefix_key("a shared system prompt")

    async def main() -> None:
        for _ in range(4):
            await routes.acquire()
        for _ in range(3):
            await plain.acquire(key=key)

    run(main())
    assert not any(e.warming for e in routes.all) and not any(e.warming for e in plain.all)
    assert sum(e.in_flight for e in routes.all) == 4 and sum(e.in_flight for e in plain.all) == 3


def test_the_backend_holds_a_prefix_for_its_first_token_and_releases_it_on_close() -> None:
    with running() as a, running() as b:
        urls = [a.base_url, b.base_url]
        mine = (p for g in range(1000) if ranking(prefix_key(p := f"question {g}"), urls)[0] == a.base_url)
        prompt, other = next(mine), next(mine)
        backend = OpenAIBackend(MODEL, base_url=urls, max_concurrency=4)
        home = next(e for e in backend._endpoints.all if e.base_url == a.base_url)

        async def main() -> list[Any]:
            try:
                a.script(hold_after(0))
                first = await backend.generate(prompt)
                await until(lambda: len(a.chat_requests) == 1)
                second = await backend.generate(prompt)
                await until(lambda: len(home.queue) == 1)
                assert len(a.chat_requests) == 1 and not b.chat_requests  # held, with room on both
                a.release()  # the first token: the prefix is cached there, the second goes
                await second.avalue()
                a.script(stall_before_headers())
                stalled = await backend.generate(other)
                await until(lambda: len(a.chat_requests) == 3)
                held = await backend.generate(other)
                await until(lambda: len(home.queue) == 1)
                await stalled.aclose()  # closed before its first token: the held one goes
                await held.avalue()
                for mot in (first, second, held):
                    await mot.avalue()
                    await mot.aclose()
                return [first, second, held]
            finally:
                await backend.aclose()

        mots = run(main())
        assert [m.generation.base_url for m in mots] == [a.base_url] * 3
        assert [m.value for m in mots] == [f"echo: {prompt}"] * 2 + [f"echo: {other}"]
        assert len(a.chat_requests) == 4 and not b.chat_requests


def test_no_server_takes_more_than_its_share_of_prompts_by_key() -> None:
    # Slots enough that only the share bounds: one prefix for 400 prompts.
    routes = router(4, limit=1000)
    urls = [e.base_url for e in routes.all]
    key = prefix_key("one prefix, many prompts")

    async def main() -> Counter[str]:
        return Counter([(await routes.acquire(key=key)).base_url for _ in range(400)])

    counts = run(main())
    home = ranking(key, urls)[0]
    assert sum(counts.values()) == 400
    # Its home takes more than an even share (the prefix stays), at most the bound.
    assert 100 < counts[home] <= (1 + SHARE_SLACK) * 100 + 16 + 1
    assert max(counts.values()) == counts[home]
