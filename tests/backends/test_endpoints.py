"""OpenAIBackend over several servers: load spread, failover, rotation, checks.

Every case runs real loopback servers (tests/servers/scripted.py), each in
its own thread, and asserts what each server saw as well as what the client
got. Waits on a server's state go through ``server.wait_for`` in a worker
thread (it blocks), always bounded.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from motio import BackendConnectionError, ConfigurationError, NotFoundError, StreamError
from motio.backends import EndpointSnapshot, OpenAIBackend
from motio.backends.http._endpoints import Endpoint, Endpoints
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer, running, stall_after, stall_before_headers, status

MODEL = "scripted-model"
WAIT = 30.0


@pytest.fixture
def two() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    with running() as a, running() as b:
        yield a, b


async def wait_on(server: ScriptedServer, predicate: Callable[[ScriptedServer], bool], what: str) -> None:
    await asyncio.to_thread(server.wait_for, predicate, WAIT, what)


async def answer(backend: OpenAIBackend, prompt: str, **options: Any) -> Any:
    mot = await backend.generate(prompt, **options)
    try:
        await mot.avalue()
    finally:
        await mot.aclose()
    return mot


async def answer_all(backend: OpenAIBackend, prompts: list[str], **options: Any) -> list[Any]:
    try:
        return await asyncio.gather(*(answer(backend, p, **options) for p in prompts))
    finally:
        await backend.aclose()


def prompts_seen(server: ScriptedServer) -> list[str]:
    return [r.prompt for r in server.chat_requests]


def free_port_url() -> str:
    """A URL on a port nobody listens on (free at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


# -- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize("servers", [2, 3])
def test_load_is_spread_across_equal_servers(servers: int) -> None:
    with running() as a, running() as b, running() as c:
        fleet = [a, b, c][:servers]
        backend = OpenAIBackend(MODEL, base_url=[s.base_url for s in fleet], max_concurrency=4)
        prompts = [f"p{i}" for i in range(120 * servers)]
        mots = run(answer_all(backend, prompts))
        assert [m.value for m in mots] == [f"echo: {p}" for p in prompts]
        counts = [len(s.chat_requests) for s in fleet]
        assert sum(counts) == len(prompts), counts
        # A fair share each: at least half of an even split.
        assert min(counts) >= len(prompts) / servers / 2, counts
        served_by = {m.generation.base_url for m in mots}
        assert served_by == {s.base_url for s in fleet}
        for server in fleet:
            assert {m.value[6:] for m in mots if m.generation.base_url == server.base_url} == set(
                prompts_seen(server)
            )


def test_a_slower_server_gets_fewer() -> None:
    with running(service_time=0.05) as slow, running() as fast:
        backend = OpenAIBackend(MODEL, base_url=[slow.base_url, fast.base_url], max_concurrency=4)
        run(answer_all(backend, [f"p{i}" for i in range(200)]))
        assert len(slow.chat_requests) + len(fast.chat_requests) == 200
        assert len(slow.chat_requests) < len(fast.chat_requests) / 2, (
            len(slow.chat_requests),
            len(fast.chat_requests),
        )


def test_each_server_has_its_own_concurrency_limit(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, b = two
    for server in two:
        server.configure(token_time=0.01)
    backend = OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], max_concurrency=3)
    run(answer_all(backend, [f"p{i}" for i in range(60)]))
    assert a.max_in_flight <= 3 and b.max_in_flight <= 3
    assert a.max_in_flight + b.max_in_flight == 6


def test_snapshot_counts_in_flight_served_and_tokens(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, b = two
    for server in two:
        server.script(*[stall_after(1)] * 2)
    # Routing by load: four prompts split two and two (by prefix, their keys would decide).
    backend = OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], chunk_timeout=None, prefix_routing=False)

    async def main() -> tuple[list[EndpointSnapshot], list[EndpointSnapshot]]:
        stalled = [await backend.generate(f"s{i}") for i in range(4)]
        await wait_on(a, lambda s: s.in_flight == 2, "two stalled on a")
        await wait_on(b, lambda s: s.in_flight == 2, "two stalled on b")
        during = backend.endpoint_snapshot()
        for mot in stalled:
            await mot.aclose()
        await answer(backend, "one two three")
        after = backend.endpoint_snapshot()
        await backend.aclose()
        return during, after

    during, after = run(main())
    assert [s.base_url for s in during] == [a.base_url, b.base_url]
    assert [s.in_flight for s in during] == [2, 2] and all(s.in_rotation for s in during)
    assert sum(s.in_flight for s in after) == 0
    assert sum(s.served for s in after) == 1 and sum(s.tokens for s in after) == 4  # "echo:" + 3 words


def test_rate_limit_is_shared_by_all_servers(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, b = two
    # 600 rpm is 10 a second with a burst of 10: 30 requests take at least
    # 2 s however many servers there are (per server, 15 each would take 0.5 s).
    backend = OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], rpm=600)
    run(answer_all(backend, [f"p{i}" for i in range(30)]))
    arrivals = sorted(r.arrived for r in a.chat_requests + b.chat_requests)
    assert len(arrivals) == 30 and a.chat_requests and b.chat_requests
    assert arrivals[-1] - arrivals[0] >= 1.8, arrivals[-1] - arrivals[0]


def test_base_url_list_is_checked() -> None:
    from motio import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least one"):
        OpenAIBackend(MODEL, base_url=[])
    with pytest.raises(ConfigurationError, match="URL string"):
        OpenAIBackend(MODEL, base_url=["http://127.0.0.1:1/v1", 3])  # type: ignore[list-item]
    backend = OpenAIBackend(MODEL, base_url=["http://h:1/v1/", "http://h:1/v1", "http://h:2/v1"])
    assert backend.base_urls == ("http://h:1/v1", "http://h:2/v1") and backend.base_url == "http://h:1/v1"


# -- failover and rotation -------------------------------------------------------------


def test_a_server_down_at_start_leaves_rotation(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, _ = two
    dead = free_port_url()
    backend = OpenAIBackend(MODEL, base_url=[dead, a.base_url], max_concurrency=4)

    async def main() -> tuple[list[Any], list[Any], list[EndpointSnapshot]]:
        report = await backend.check_each(timeout=5)
        await backend.check()  # one server answers: passes
        mots = await asyncio.gather(*(answer(backend, f"p{i}") for i in range(40)))
        snapshot = backend.endpoint_snapshot()
        await backend.aclose()
        return report, mots, snapshot

    report, mots, snapshot = run(main())
    assert report[0][0] == dead and isinstance(report[0][1], BackendConnectionError)
    assert report[1] == (a.base_url, None)
    assert all(m.generation.base_url == a.base_url for m in mots)
    assert len(a.chat_requests) == 40
    assert [s.in_rotation for s in snapshot] == [False, True]


def test_refused_requests_fail_over_without_losing_any(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, _ = two
    dead = free_port_url()
    # No check first: the requests themselves find the dead server.
    backend = OpenAIBackend(MODEL, base_url=[dead, a.base_url], max_concurrency=8, max_retries=0)
    mots = run(answer_all(backend, [f"p{i}" for i in range(50)]))
    assert [m.value for m in mots] == [f"echo: p{i}" for i in range(50)]
    moved = [m for m in mots if m.generation.attempts.count == 2]
    assert moved, "some went to the dead server first"
    for mot in moved:
        assert mot.generation.attempts.statuses == [None] and mot.generation.base_url == a.base_url
        assert mot.generation.attempts.waits == [0.0]
    assert sorted(prompts_seen(a)) == sorted(f"p{i}" for i in range(50))


def test_all_down_fails_check_fast_on_one_line() -> None:
    urls = [free_port_url(), free_port_url()]
    backend = OpenAIBackend(MODEL, base_url=urls)

    async def main() -> None:
        try:
            await backend.check()
        finally:
            await backend.aclose()

    started = time.monotonic()
    with pytest.raises(BackendConnectionError) as caught:
        run(main())
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "\n" not in message and message.startswith("none of the 2 servers answers")
    assert all(url in message for url in urls)


def test_in_flight_without_content_moves_to_another_server() -> None:
    with running(default=stall_before_headers) as dying, running() as healthy:
        mots, held = run(_crash_while_holding(dying, healthy)), prompts_seen(dying)
    assert [m.value for m in mots] == [f"echo: p{i}" for i in range(12)]
    assert len(held) >= 3
    assert sorted(prompts_seen(healthy)) == sorted(f"p{i}" for i in range(12))  # each exactly once
    for mot in mots:
        if mot.value[6:] in held:
            assert mot.generation.attempts.count >= 2 and mot.generation.base_url == healthy.base_url


async def _crash_while_holding(dying: ScriptedServer, healthy: ScriptedServer) -> list[Any]:
    backend = OpenAIBackend(MODEL, base_url=[dying.base_url, healthy.base_url], max_concurrency=3)

    tasks = [asyncio.create_task(answer(backend, f"p{i}")) for i in range(12)]
    # The dying server holds three with no answer at all; then it dies.
    await wait_on(dying, lambda s: s.in_flight == 3, "three held by the dying server")
    dying.crash()
    try:
        return await asyncio.gather(*tasks)
    finally:
        await backend.aclose()


def test_a_stream_that_gave_content_is_not_resent() -> None:
    with running(default=stall_after(1)) as dying, running() as healthy:
        mot, error = run(_crash_after_content(dying, healthy))
        assert isinstance(error, StreamError) and error.partial_text == mot.text == "echo:"
        assert prompts_seen(healthy) == [] and prompts_seen(dying) == ["partial"]


async def _crash_after_content(
    dying: ScriptedServer, healthy: ScriptedServer
) -> tuple[Any, BaseException | None]:
    # Listed second, the dying server is the first the round-robin picks
    # (routing by load: by prefix, the port would decide).
    backend = OpenAIBackend(
        MODEL, base_url=[healthy.base_url, dying.base_url], max_concurrency=1, prefix_routing=False
    )

    mot = await backend.generate("partial")
    await wait_on(dying, lambda s: any(r.chunks for r in s.chat_requests), "a content chunk sent")
    dying.crash()
    error = None
    try:
        await mot.avalue()
    except StreamError as exc:
        error = exc
    finally:
        await mot.aclose()
        await backend.aclose()
    return mot, error


def test_a_server_that_comes_back_rejoins_rotation(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    first, other = two
    url, port = first.base_url, first.port
    first.stop()  # its port now refuses
    # Routing by load: one prompt sent again and again goes round-robin (by
    # prefix it would always go to the one server its key ranks first).
    backend = OpenAIBackend(MODEL, base_url=[url, other.base_url], max_concurrency=4, prefix_routing=False)

    async def main(revived: ScriptedServer) -> list[EndpointSnapshot]:
        for _ in range(2):  # round-robin: one of the two goes to the stopped server
            await answer(backend, "finds it gone")
        assert not backend.endpoint_snapshot()[0].in_rotation
        revived.start()

        async def keep_sending() -> None:
            while True:
                await answer(backend, "again")
                await asyncio.sleep(0.05)  # paces the load, not a synchronisation

        sender = asyncio.create_task(keep_sending())
        try:
            await wait_on(revived, lambda s: len(s.chat_requests) >= 3, "requests on the revived server")
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        snapshot = backend.endpoint_snapshot()
        await backend.aclose()
        return snapshot

    revived = ScriptedServer(port=port)
    try:
        snapshot = run(main(revived))
    finally:
        revived.stop()
    assert snapshot[0].in_rotation and snapshot[0].failures == 0
    assert not revived.errors


def test_a_retryable_status_is_retried_on_another_server() -> None:
    lock, answered = threading.Lock(), []

    def first_is_503(record: Any) -> Any:
        # Whichever server the first request reaches answers it 503.
        with lock:
            answered.append(record)
            return status(503) if len(answered) == 1 else None

    with running(rule=first_is_503) as a, running(rule=first_is_503) as b:
        backend = OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], max_retries=1)
        [mot] = run(answer_all(backend, ["once"]))
        seen = sorted([[r.status for r in a.chat_requests], [r.status for r in b.chat_requests]])
        second = a if a.chat_requests[0].status == 200 else b
    assert mot.value == "echo: once" and mot.generation.attempts.statuses == [503]
    assert seen == [[200], [503]]  # one attempt on each server
    assert mot.generation.base_url == second.base_url


def test_a_waiter_cancelled_in_the_queue_leaves_no_trace(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, b = two
    for server in two:
        server.script(stall_after(1))
    backend = OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], max_concurrency=1, chunk_timeout=None)

    async def main() -> tuple[list[EndpointSnapshot], str]:
        held = [await backend.generate(f"held{i}") for i in range(2)]
        await wait_on(a, lambda s: s.in_flight == 1, "one held on a")
        await wait_on(b, lambda s: s.in_flight == 1, "one held on b")
        queued = await backend.generate("queued")
        for _ in range(10_000):  # the loop's turns it takes to reach the queue, bounded
            if backend._endpoints._waiters:
                break
            await asyncio.sleep(0)
        assert len(backend._endpoints._waiters) == 1
        await queued.aclose()  # cancels it wherever it waits
        for mot in held:
            await mot.aclose()
        after = backend.endpoint_snapshot()
        value = (await answer(backend, "after")).value
        await backend.aclose()
        return after, value

    after, value = run(main())
    assert [s.in_flight for s in after] == [0, 0] and value == "echo: after"
    assert "queued" not in prompts_seen(a) + prompts_seen(b)


def test_check_passes_at_the_first_answer_and_keeps_a_slow_server_in_rotation() -> None:
    with socket.socket() as silent, running() as live:
        # Listening, so connections are made, but never read: GET /models hangs.
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        slow_url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        backend = OpenAIBackend(MODEL, base_url=[slow_url, live.base_url])

        async def main() -> list[EndpointSnapshot]:
            await backend.check()
            snapshot = backend.endpoint_snapshot()
            await backend.aclose()
            return snapshot

        started = time.monotonic()
        snapshot = run(main())
    assert time.monotonic() - started < 5
    assert [s.in_rotation for s in snapshot] == [True, True]


# -- the router on its own ------------------------------------------------------------


def router(*limits: int) -> Endpoints:
    from motio.backends._gate import Gate
    from motio.backends.http._loopclients import LoopClients

    async def never_probed(endpoint: Endpoint) -> None:
        raise AssertionError("no server is out of rotation here")

    endpoints = [
        Endpoint(f"http://s{i}/v1", Gate(n), None, LoopClients(object)) for i, n in enumerate(limits)
    ]
    return Endpoints(endpoints, never_probed)


def test_the_router_fills_by_load_and_hands_a_freed_slot_to_the_first_waiter() -> None:
    routes = router(2, 2, 4)

    async def main() -> tuple[list[str], str, list[int]]:
        taken = [await routes.acquire() for _ in range(8)]
        waiter = asyncio.create_task(routes.acquire())
        for _ in range(100):  # bounded: a few turns of the loop put it in the queue
            await asyncio.sleep(0)
        assert not waiter.done() and len(routes._waiters) == 1
        routes.all[1].gate.release()  # type: ignore[union-attr]
        routes.release(routes.all[1], True, {"completion_tokens": 3})
        woken = await asyncio.wait_for(waiter, 5)
        return [e.base_url for e in taken], woken.base_url, [s.in_flight for s in routes.snapshot()]

    taken, woken, in_flight = run(main())
    assert sorted(taken) == ["http://s0/v1"] * 2 + ["http://s1/v1"] * 2 + ["http://s2/v1"] * 4
    assert woken == "http://s1/v1" and in_flight == [2, 2, 4]
    assert routes.snapshot()[1].served == 1 and routes.snapshot()[1].tokens == 3


def test_the_router_avoids_a_failed_server_while_another_has_room() -> None:
    routes = router(4, 4)

    async def main() -> list[str]:
        first = routes.all[0]
        return [(await routes.acquire([first])).base_url for _ in range(6)]

    # Four on the other server; then only the avoided one has room.
    assert run(main()) == ["http://s1/v1"] * 4 + ["http://s0/v1"] * 2


def test_a_shunning_attempt_waits_for_another_server_without_holding_up_the_line() -> None:
    routes = router(2, 2)
    shunned, other = routes.all

    async def main() -> tuple[str, str, list[int]]:
        held = [await routes.acquire() for _ in range(4)]  # both servers full
        shunning = asyncio.ensure_future(routes.acquire(shun=[shunned]))
        await wait_until(lambda: len(routes._waiters) == 1)
        behind = asyncio.ensure_future(routes.acquire())
        await wait_until(lambda: len(routes._waiters) == 2)
        # Room on the shunned server only: the first in line hands it on.
        release(routes, held[held.index(shunned)])
        newcomer = await asyncio.wait_for(behind, 5)
        assert not shunning.done() and len(routes._waiters) == 1
        release(routes, held[held.index(other)])
        taken = await asyncio.wait_for(shunning, 5)
        return newcomer.base_url, taken.base_url, [s.in_flight for s in routes.snapshot()]

    assert run(main()) == (shunned.base_url, other.base_url, [2, 2])


def release(routes: Endpoints, endpoint: Endpoint) -> None:
    assert endpoint.gate is not None
    endpoint.gate.release()
    routes.release(endpoint, True, None)


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


# -- steering one generation; a server started with another model ----------------------


def test_avoid_servers_steers_a_generation_to_another_server(
    two: tuple[ScriptedServer, ScriptedServer],
) -> None:
    a, b = two
    backend = OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], max_concurrency=4, max_retries=3)
    assert backend.max_reruns == 3  # a batch's bound on re-runs is max_retries
    with pytest.raises(ConfigurationError, match="avoid_servers"):
        run(backend.generate("x", avoid_servers=a.base_url))

    async def main() -> list[Any]:
        steered = [await answer(backend, f"p{i}", avoid_servers=[a.base_url + "/"]) for i in range(6)]
        unknown = await answer(backend, "elsewhere", avoid_servers=["http://127.0.0.1:1/v1"])
        await backend.aclose()
        return [*steered, unknown]

    mots = run(main())
    assert [m.value for m in mots[:6]] == [f"echo: p{i}" for i in range(6)]
    assert all(m.generation.base_url == b.base_url for m in mots[:6])
    assert prompts_seen(b)[:6] == [f"p{i}" for i in range(6)]
    assert mots[6].value == "echo: elsewhere"  # a server the backend does not have is ignored


def test_avoid_servers_names_a_server_by_its_url_with_credentials() -> None:
    # Endpoints keep the masked URL; the URL as the user wrote it names the same server.
    with running(basic_auth=("u", "secret")) as a, running(basic_auth=("u", "secret")) as b:
        urls = [url.replace("http://", "http://u:secret@") for url in (a.base_url, b.base_url)]
        backend = OpenAIBackend(MODEL, base_url=urls, max_concurrency=4)
        mots = run(answer_all(backend, [f"p{i}" for i in range(4)], avoid_servers=[urls[0]]))
        assert [m.value for m in mots] == [f"echo: p{i}" for i in range(4)]
        assert all(m.generation.base_url == b.base_url.replace("http://", "http://u:***@") for m in mots)
        assert prompts_seen(a) == []


def test_avoid_servers_with_one_server_still_uses_it(two: tuple[ScriptedServer, ScriptedServer]) -> None:
    a, _ = two
    backend = OpenAIBackend(MODEL, base_url=a.base_url)
    [mot] = run(answer_all(backend, ["only"], avoid_servers=[a.base_url]))
    assert mot.value == "echo: only" and prompts_seen(a) == ["only"]


def test_a_404_for_the_model_fails_over_and_the_server_leaves_rotation_until_it_lists_it() -> None:
    models = ["another-model"]

    def not_listed(record: Any) -> Any:
        missing = f"The model `{record.model}` does not exist."
        return None if record.model in models else status(404, body=missing)

    with running() as good, running(models=models, rule=not_listed) as wrong:
        # Routing by load: "again" reaches the rejoined server in turn (by prefix, only if its key ranks it first).
        backend = OpenAIBackend(
            MODEL, base_url=[wrong.base_url, good.base_url], max_concurrency=2, prefix_routing=False
        )

        async def main() -> tuple[list[Any], EndpointSnapshot, list[Any]]:
            first = await asyncio.gather(*(answer(backend, f"p{i}") for i in range(20)))
            out = backend.endpoint_snapshot()[0]
            # "Restarted" with the model: a probe finds it listed, and it serves again.
            models[:] = [MODEL]
            wrong.models = (MODEL,)
            later: list[Any] = []
            deadline = asyncio.get_running_loop().time() + WAIT
            while not any(m.generation.base_url == wrong.base_url for m in later):
                assert asyncio.get_running_loop().time() < deadline, "never rejoined"
                later.append(await answer(backend, "again"))
                await asyncio.sleep(0.05)  # paces the load, not a synchronisation
            await backend.aclose()
            return first, out, later

        first, out, later = run(main())
        refused = [r for r in wrong.chat_requests if r.status == 404]
    assert [m.value for m in first] == [f"echo: p{i}" for i in range(20)]
    assert all(m.generation.base_url == good.base_url for m in first)
    assert 1 <= len(refused) <= 2  # at most the two routed there before the first 404 came back
    assert not out.in_rotation
    moved = [m for m in first if m.generation.attempts.statuses == [404]]
    assert len(moved) == len(refused) and all(m.generation.attempts.waits == [0.0] for m in moved)
    assert later[-1].value == "echo: again"


def test_a_404_with_one_server_is_the_prompts_failure_as_before() -> None:
    with running(rule=lambda record: status(404)) as only:
        backend = OpenAIBackend(MODEL, base_url=[only.base_url])
        with pytest.raises(NotFoundError):
            run(answer_all(backend, ["x"]))
        assert len(only.chat_requests) == 1  # not retried


def test_check_each_names_the_server_without_the_model_and_keeps_it_out() -> None:
    with running(models=["other"]) as wrong, running() as good:
        # No model given: it comes from the first server in the order given
        # that lists one, whichever answers first.
        backend = OpenAIBackend(base_url=[good.base_url, wrong.base_url])

        async def main() -> tuple[list[Any], list[EndpointSnapshot]]:
            report = await backend.check_each(timeout=5)
            snapshot = backend.endpoint_snapshot()
            await backend.aclose()
            return report, snapshot

        report, snapshot = run(main())
    assert backend.model == MODEL
    assert report[0] == (good.base_url, None)
    assert isinstance(report[1][1], NotFoundError)
    assert "does not list model 'scripted-model'" in str(report[1][1])
    assert [s.in_rotation for s in snapshot] == [True, False]


def test_a_backend_without_servers_is_never_rerun(tmp_path: Any) -> None:
    from motio.backends import LlamaCppBackend

    # Nothing is loaded until the first generation: the path need not exist.
    assert LlamaCppBackend(model_path=tmp_path / "model.gguf").max_reruns == 0
    assert OpenAIBackend(MODEL, base_url="http://127.0.0.1:1/v1", max_retries=0).max_reruns == 0
