"""The adaptive concurrency gate: a cross-loop FIFO gate, and a limit that finds capacity.

Convergence runs through the real OpenAIBackend against the scripted loopback
server in its two capacity modes: rejecting (429 beyond capacity) and
queueing (time to first token grows with the queue, as vLLM's does).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from motio import ConfigurationError
from motio.backends import OpenAIBackend
from motio.backends.http._adaptive import AdaptiveConcurrency
from motio.backends.http._metrics import ServerLoad
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer, running


def test_fixed_gate_admits_fifo_up_to_its_limit() -> None:
    gate = AdaptiveConcurrency(initial=2, adaptive=False)
    order: list[int] = []

    async def holder(i: int, release: asyncio.Event) -> None:
        await gate.acquire()
        order.append(i)
        await release.wait()
        gate.release()

    async def main() -> None:
        release = asyncio.Event()
        tasks = [asyncio.ensure_future(holder(i, release)) for i in range(5)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert order == [0, 1] and gate.in_flight == 2 and gate.waiting == 3
        release.set()
        await asyncio.gather(*tasks)

    run(main())
    assert order == [0, 1, 2, 3, 4] and gate.in_flight == 0


def test_a_release_from_another_thread_wakes_a_waiter_on_its_loop() -> None:
    gate = AdaptiveConcurrency(initial=1, adaptive=False)

    async def main() -> None:
        await gate.acquire()
        waiting = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        threading.Thread(target=gate.release).start()
        await asyncio.wait_for(waiting, 10)
        gate.release()

    run(main())
    assert gate.in_flight == 0


def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on() -> None:
    gate = AdaptiveConcurrency(initial=1, adaptive=False)

    async def main() -> None:
        await gate.acquire()
        first = asyncio.ensure_future(gate.acquire())
        second = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        gate.release()  # granted to first...
        first.cancel()  # ...which is cancelled before it runs
        await asyncio.wait_for(second, 10)  # so second gets the slot
        assert first.cancelled() and gate.in_flight == 1
        gate.release()

    run(main())
    assert gate.in_flight == 0 and gate.waiting == 0


def test_overload_halves_once_per_round_and_good_rounds_grow() -> None:
    gate = AdaptiveConcurrency(initial=16, maximum=256)
    for _ in range(16):
        gate.record_first_token(0.01)
    assert gate.limit == 24  # slow start grows by half
    gate.record_overload()
    gate.record_overload()  # the same burst: no second cut
    assert gate.limit == 12 and gate.snapshot().overloads == 2
    for _ in range(12):
        gate.record_first_token(0.01)
    assert gate.limit == 12  # the round after a cut is not judged: it saw the old queue
    for _ in range(12):
        gate.record_first_token(0.01)
    # Back in one step to just below the level the burst showed (24 sent, one more refused: 23).
    assert gate.limit == 22


def test_rising_latency_cuts_by_the_queue_it_shows_and_adds_no_headroom_above_baseline() -> None:
    gate = AdaptiveConcurrency(initial=64, maximum=256)
    for _ in range(32):  # slow start judges half rounds
        gate.record_first_token(0.01)
    assert gate.limit == 96
    for _ in range(48):
        gate.record_first_token(0.1)
    assert gate.limit == 96  # sent before it grew: a level is judged by requests sent at it
    for _ in range(48):
        gate.record_first_token(0.1)  # 10x the baseline: a long queue
    assert gate.limit == 64  # back to the level before the growth, which was calm
    for _ in range(64):
        gate.record_first_token(0.1)
    assert gate.limit == 64  # the round after a cut only shows the queue being drained
    # Issue 19: no additive headroom while latency is above the baseline (it
    # used to climb half the way back here, and settled a few requests above
    # a slotted server's capacity: a standing queue that doubled the tail).
    for _ in range(64):
        gate.record_first_token(0.012)  # 1.2x the baseline: holds
    assert gate.limit == 64
    for _ in range(64):
        gate.record_first_token(0.0102)  # at the baseline: a step (a sixteenth) back up
    assert gate.limit == 68


def test_a_refused_probe_above_the_known_level_steps_back_without_halving() -> None:
    gate = AdaptiveConcurrency(initial=16, maximum=256)
    gate.record_overload()  # a 429 at 16: halved, and 16 is where it happened
    assert gate.limit == 8
    for _ in range(16):  # a skipped round, then a calm one: straight back below it
        gate.record_first_token(0.01)
    assert gate.limit == 15
    for _ in range(15 * 12):  # calm rounds at the known level (and a baseline measurement): a probe above
        gate.record_first_token(0.01)
        if gate.limit == 16:
            break
    assert gate.limit == 16
    gate.record_overload()  # the probe was refused: that is no news, no halving
    assert gate.limit == 15 and gate.snapshot().overloads == 2


def _read(gate: AdaptiveConcurrency, capacity: int) -> tuple[int, int]:
    """One reading of a single client's server with ``capacity`` slots, the limit binding."""
    running, waiting = min(gate.limit, capacity), max(0, gate.limit - capacity)
    gate.record_load(ServerLoad(running, waiting), ours=running + waiting)
    return running, waiting


def test_with_metrics_a_false_full_reading_is_left_within_a_few_readings() -> None:
    gate = AdaptiveConcurrency(initial=8, maximum=256)
    while gate.limit < 40:  # nothing waiting: it grows by a quarter a reading
        _read(gate, 64)
    level = gate.limit
    # Requests that arrived mid-step wait for the next one although slots
    # are free; running is the highest yet: that reading looks full.
    gate.record_load(ServerLoad(level - 3, 3), ours=level)
    assert gate.limit == level - 3
    readings = 0
    while gate.limit < 64:
        _read(gate, 64)
        readings += 1
        assert readings <= 12, gate.limit  # 6 s of readings; it held the false level for 20 s before
    for _ in range(8):
        _read(gate, 64)
    assert 63 <= gate.limit <= 65


def test_with_metrics_probes_above_the_capacity_get_rarer_as_they_queue() -> None:
    gate = AdaptiveConcurrency(initial=64, maximum=256)
    gate.record_load(ServerLoad(64, 0), ours=64)
    gate.record_load(ServerLoad(64, 16), ours=80)  # full at 64
    assert gate.limit == 64
    probes = []
    for reading in range(400):
        if _read(gate, 64)[1]:
            probes.append(reading)
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert len(probes) >= 4 and all(b >= 2 * a - 1 for a, b in zip(gaps, gaps[1:], strict=False)), probes
    assert gate.limit == 64


def test_bad_bounds_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        AdaptiveConcurrency(initial=0)
    with pytest.raises(ConfigurationError):
        OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", max_concurrency="auto", concurrency_bound=0)


def run_batch(server: ScriptedServer, prompts: int) -> tuple[OpenAIBackend, int]:
    """Run the batch; return the backend and its settled limit.

    Settled: the median limit seen as the second half of the prompts
    completed, while the server was still fully loaded. The final value
    alone is read while the batch drains, when a round of few, fast
    requests lets the limit climb with nothing left to send.
    """
    backend = OpenAIBackend(
        server_model(server), base_url=server.base_url, max_concurrency="auto", max_retries=8
    )
    limits: list[int] = []

    async def one(mot: Any) -> str:
        value = await mot.avalue()
        adaptive = backend.adaptive_concurrency
        assert adaptive is not None
        limits.append(adaptive.limit)
        return str(value)

    async def main() -> None:
        async with backend:
            mots = [await backend.generate(f"p {i}", max_tokens=4) for i in range(prompts)]
            values = await asyncio.gather(*(one(m) for m in mots))
            assert all(v.startswith("echo: p") for v in values)

    run(main(), timeout=110)
    under_load = limits[prompts // 2 : prompts - prompts // 10]
    return backend, int(statistics.median(under_load))


def server_model(server: ScriptedServer) -> str:
    return "scripted-model"


@pytest.fixture
def rejecting() -> Iterator[ScriptedServer]:
    with running(
        capacity=32, overflow="reject", retry_after=None, retry_after_ms=50, service_time=0.02
    ) as server:
        yield server


@pytest.fixture
def queueing() -> Iterator[ScriptedServer]:
    with running(capacity=32, overflow="queue", service_time=0.02, record=False) as server:
        yield server


def test_auto_converges_near_a_rejecting_servers_capacity(rejecting: ScriptedServer) -> None:
    backend, settled = run_batch(rejecting, 1500)
    adaptive = backend.adaptive_concurrency
    assert adaptive is not None and 12 <= settled <= 64, (settled, adaptive.snapshot())
    assert rejecting.max_serving <= 32
    assert rejecting.rejected < 0.15 * 1500, rejecting.rejected


def test_auto_converges_near_a_queueing_servers_capacity(queueing: ScriptedServer) -> None:
    backend, settled = run_batch(queueing, 1500)
    adaptive = backend.adaptive_concurrency
    # A queueing server only says "too many" through first-token latency, and
    # on a busy 2-core machine that signal carries the machine's own noise
    # (66 was seen with other test suites running alongside): what must hold
    # is a limit within a small multiple of the capacity, far from the bound.
    assert adaptive is not None and 12 <= settled <= 96, (settled, adaptive.snapshot())
    assert queueing.max_in_flight <= 128  # never ran up to the bound of 256


def test_rpm_holds_across_two_loops_and_a_thread_through_the_backend() -> None:
    with running() as server:
        backend = OpenAIBackend("scripted-model", base_url=server.base_url, rpm=600)  # 10/s, burst 10

        async def some(n: int) -> None:
            mots = [await backend.generate("hi", max_tokens=1) for _ in range(n)]
            await asyncio.gather(*(m.avalue() for m in mots))

        threads = [threading.Thread(target=asyncio.run, args=(some(10),)) for _ in range(2)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for _ in range(10):
            backend.generate_sync("hi", max_tokens=1)  # the sync bridge: a third loop
        for t in threads:
            t.join(30)
        backend.close()
        arrived = sorted(r.arrived for r in server.chat_requests)
    assert len(arrived) == 30 and time.monotonic() - started >= 1.8  # (30 - 10) / 10 s
    window_counts = [sum(1 for t in arrived if a <= t < a + 1.0) for a in arrived]
    assert max(window_counts) <= 10 + 10 + 1
