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
from motio.scheduling import KEY_SLACK, PREFIX_SLACK, prefix_key, server_seed, weight
from tests.asyncutil import run
from tests.servers.scripted import running

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
