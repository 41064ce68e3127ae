"""One HTTP client per event loop: never handed to the wrong loop, closed on its own.

Run against the scripted loopback server (fast); the same paths against the
real llama.cpp server are in test_openai_server.py.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from motio import run_sync
from motio.backends import OpenAIBackend
from motio.backends._errors import Where
from motio.backends.http._http import HTTPClient
from motio.backends.http._loopclients import LoopClient, LoopClients
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer


@pytest.fixture
def no_log_noise(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail if asyncio or motio log anything at WARNING or above."""
    with caplog.at_level(logging.WARNING):
        yield
    noisy = [r for r in caplog.records if r.name in ("asyncio", "motio") and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def entries(backend: OpenAIBackend) -> list[LoopClient]:
    return list(backend._clients._cache.cache.values())


async def one_answer(backend: OpenAIBackend) -> str:
    return await (await backend.generate("hi", max_tokens=3)).avalue()


def test_repeated_asyncio_run_closes_each_loops_client_on_that_loop(
    server: ScriptedServer, no_log_noise: None
) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url)
    clients = []
    for _ in range(6):
        assert run(one_answer(backend)) == "echo: hi"
        clients += [e.client for e in entries(backend)]
    # Every loop got its own client, and asyncio.run's shutdown closed it
    # there (through the async-generator hook), before the loop closed.
    assert len({id(c) for c in clients}) == len(set(map(id, clients)))
    assert all(c.is_closed() for c in clients)
    gc.collect()  # nothing left to warn "unclosed transport" about
    backend.close()


def test_a_new_loop_reusing_a_dead_loops_id_gets_a_new_client(
    server: ScriptedServer, no_log_noise: None
) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url)
    run(one_answer(backend))
    [stale] = entries(backend)

    async def reuse_id() -> tuple[str, Any]:
        # CPython often gives a new loop the id() of the one just freed; make
        # it certain by filing the stale entry under this loop's id.
        backend._clients._cache.put(id(asyncio.get_running_loop()), stale)
        answer = await one_answer(backend)
        return answer, (await backend._clients.get()).client

    answer, fresh = run(reuse_id())
    assert answer == "echo: hi" and fresh is not stale.client
    backend.close()


def test_a_loop_closed_without_shutdown_is_dropped_quietly(
    server: ScriptedServer, no_log_noise: None
) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(one_answer(backend)) == "echo: hi"
    finally:
        loop.close()  # no shutdown_asyncgens: the client still holds an open socket
    del loop
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(one_answer(backend)) == "echo: hi"
        backend.close()
        gc.collect()


def test_sync_api_and_asyncio_run_and_threads_at_once(server: ScriptedServer, no_log_noise: None) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url)
    results: list[str] = []
    lock = threading.Lock()

    def in_thread() -> None:
        for _ in range(3):
            answer = (
                run(one_answer(backend))
                if threading.current_thread().name[-1] in "02"
                else (backend.generate_sync("hi", max_tokens=3).value)
            )
            with lock:
                results.append(answer)

    threads = [threading.Thread(target=in_thread, name=f"t{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["echo: hi"] * 12
    backend.close()


def test_sync_calls_from_inside_a_running_loop(server: ScriptedServer) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url)

    async def notebook_cell() -> str:
        # Sync library code called from async code (a notebook, a web handler).
        mot = backend.generate_sync("hi", max_tokens=2)
        return mot.value + "|" + "".join(backend.stream_sync("hi", max_tokens=2))

    assert run(notebook_cell()) == "echo: hi|echo: hi"
    backend.close()


def test_evicting_a_live_loops_client_closes_it_on_its_own_loop(
    server: ScriptedServer, no_log_noise: None
) -> None:
    factory = functools.partial(HTTPClient, server.base_url, {}, 5.0, 30.0)
    clients = LoopClients(factory, capacity=1)

    async def request() -> LoopClient:
        entry = await clients.get()
        await entry.client.get_json(
            "/models", Where("openai", "m", server.base_url)
        )  # leaves a pooled connection open
        return entry

    first = run_sync(request())  # lives on run_sync's long-lived loop
    second = run(request())  # another loop: evicts the first
    assert first.client is not second.client

    async def wait_closed() -> None:
        while not first.client.is_closed():
            await asyncio.sleep(0.01)

    run_sync(wait_closed(), timeout=10)  # closed there, by that loop


def test_closing_the_backend_closes_every_client(server: ScriptedServer, no_log_noise: None) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url)
    backend.generate_sync("hi", max_tokens=1)
    [entry] = entries(backend)
    backend.close()
    assert entry.client.is_closed() and entries(backend) == []
