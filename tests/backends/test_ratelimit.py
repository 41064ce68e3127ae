"""The rate limiter: one budget across event loops and threads, refunds, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from motio import ConfigurationError, run_sync
from motio.backends.http._ratelimit import RateLimiter, estimate_tokens
from tests.asyncutil import run


def most_in_any_window(times: list[float], window: float) -> int:
    """The most events in any closed window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_rpm_holds_across_two_loops_and_a_thread() -> None:
    limiter = RateLimiter(rpm=1200)  # 20 a second, a burst of 20
    stamps: list[float] = []
    lock = threading.Lock()

    async def take(n: int) -> None:
        for _ in range(n):
            await limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    async def loop_with_tasks() -> None:
        await asyncio.gather(*(take(5) for _ in range(4)))

    threads = [threading.Thread(target=asyncio.run, args=(loop_with_tasks(),)) for _ in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    # The third caller: this thread, through run_sync's own loop.
    run_sync(asyncio.wait_for(take(20), 30))
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(stamps) == 60
    # 60 requests at 20/s with a burst of 20: (60 - 20) / 20 = 2 s at least.
    assert stamps[-1] - started >= 1.9
    assert most_in_any_window(stamps, 1.0) <= 20 + 20 + 1  # rate x window + burst (+1: clock edges)
    assert limiter.waiting == 0


def test_callers_are_served_in_the_order_they_asked() -> None:
    limiter = RateLimiter(rpm=6000)  # 100 a second, a burst of 100
    served: list[int] = []

    async def one(i: int) -> None:
        await limiter.acquire()
        served.append(i)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(150)))  # 50 of them wait

    run(main(), timeout=10)
    assert served == list(range(150))


def test_no_limits_means_no_waiting() -> None:
    async def main() -> float:
        limiter = RateLimiter()
        t0 = time.monotonic()
        for _ in range(1000):
            (await limiter.acquire(10_000)).settle(5)
        return time.monotonic() - t0

    assert run(main(), timeout=10) < 1.0


def test_tpm_counts_tokens_and_settle_refunds() -> None:
    async def main() -> float:
        limiter = RateLimiter(tpm=6000)  # 100 tokens a second, burst 100
        first = await limiter.acquire(100)
        assert first.tokens == 100
        first.settle(10)  # used far less than reserved: 90 tokens come back
        assert first.tokens == 10
        t0 = time.monotonic()
        await limiter.acquire(90)
        return time.monotonic() - t0

    assert run(main(), timeout=10) < 0.2


def test_a_refund_wakes_the_waiters_without_breaking_the_budget() -> None:
    async def main() -> dict[str, float]:
        limiter = RateLimiter(tpm=6000)  # 100 tokens a second, burst 100
        t0 = time.monotonic()
        first = await limiter.acquire(100)  # the whole burst
        went: dict[str, float] = {}

        async def waiter(name: str) -> None:
            await limiter.acquire(50)
            went[name] = time.monotonic() - t0

        tasks = [asyncio.ensure_future(waiter(n)) for n in "bcd"]
        for _ in range(5):
            await asyncio.sleep(0)
        assert limiter.waiting == 3 and not went
        first.settle(0)  # nothing used: the burst is free again, for b and c
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return went

    went = run(main(), timeout=10)
    assert went["b"] < 0.2 and went["c"] < 0.2
    assert went["d"] >= 0.45  # 50 more tokens: half a second of rate, not at once


def test_settle_charges_what_the_estimate_missed() -> None:
    async def main() -> float:
        limiter = RateLimiter(tpm=6000)
        (await limiter.acquire(10)).settle(100)  # used 90 more than estimated
        t0 = time.monotonic()
        await limiter.acquire(100)
        return time.monotonic() - t0

    assert run(main(), timeout=10) >= 0.8


def test_settle_counts_once_and_none_keeps_the_estimate() -> None:
    async def main() -> tuple[float, float]:
        limiter = RateLimiter(tpm=6000)
        reservation = await limiter.acquire(100)
        reservation.settle(None)
        reservation.settle(0)  # too late: already settled
        t0 = time.monotonic()
        await limiter.acquire(50)
        kept = time.monotonic() - t0
        return kept, reservation.tokens

    kept, tokens = run(main(), timeout=10)
    assert kept >= 0.4 and tokens == 100


def test_a_request_above_the_burst_goes_alone_and_overdraws() -> None:
    async def main() -> tuple[float, float]:
        limiter = RateLimiter(tpm=60_000)  # 1,000 tokens a second, burst 1,000
        t0 = time.monotonic()
        await limiter.acquire(1500)  # more than a burst: goes, on an empty budget
        big = time.monotonic() - t0
        await limiter.acquire(100)  # waits until 900 of the 1,500 drained: 0.6 s
        return big, time.monotonic() - t0

    big, after = run(main(), timeout=10)
    assert big < 0.1 and 0.55 <= after < 1.5


def test_a_cancelled_head_gives_its_place_to_the_next() -> None:
    async def main() -> float:
        limiter = RateLimiter(rpm=60)  # 1 a second, burst 1
        await limiter.acquire()
        head = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        t0 = time.monotonic()
        nxt = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        assert limiter.waiting == 2
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        await asyncio.wait_for(nxt, 5)  # at the head's time, about 1 s, not 2
        assert limiter.waiting == 0
        return time.monotonic() - t0

    assert run(main(), timeout=10) < 1.5


def test_a_cancelled_wait_in_the_middle_keeps_the_others_in_order() -> None:
    async def main() -> list[int]:
        limiter = RateLimiter(rpm=600)  # 10 a second, burst 10
        for _ in range(10):
            await limiter.acquire()
        served: list[int] = []

        async def one(i: int) -> None:
            await limiter.acquire()
            served.append(i)

        tasks = [asyncio.ensure_future(one(i)) for i in range(4)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert limiter.waiting == 0
        return served

    assert run(main(), timeout=10) == [0, 2, 3]


def test_a_waiter_on_another_loop_is_woken_by_a_refund_from_this_one() -> None:
    limiter = RateLimiter(tpm=600)  # 10 tokens a second, burst 10
    first = run_sync(limiter.acquire(10))
    queued = threading.Event()
    result: list[float] = []

    async def other_loop() -> None:
        task = asyncio.ensure_future(limiter.acquire(10))
        await asyncio.sleep(0)
        queued.set()
        t0 = time.monotonic()
        await asyncio.wait_for(task, 5)
        result.append(time.monotonic() - t0)

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    assert queued.wait(5)
    first.settle(0)  # without the refund it would wait a whole second
    thread.join(10)
    assert result and result[0] < 0.5


def test_estimate_tokens() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "x" * 40},
        {
            "role": "user",
            "content": [{"type": "text", "text": "y" * 8}, {"type": "image_url", "image_url": {}}],
        },
        {"role": "assistant", "content": None},
    ]
    assert estimate_tokens(messages, 100) == 10 + 2 + 100
    assert estimate_tokens(messages, None) == 12
    assert estimate_tokens([{"role": "user", "content": "abcde"}], 0) == 2  # rounded up
    assert estimate_tokens([], None) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"rpm": 0}, {"tpm": -5}, {"rpm": True}, {"rpm": "60"}, {"tpm": float("inf")}, {"rpm": float("nan")}],
    ids=str,
)
def test_bad_limits_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_bad_token_counts_are_configuration_errors() -> None:
    async def main() -> None:
        limiter = RateLimiter(tpm=6000)
        with pytest.raises(ConfigurationError):
            await limiter.acquire(-1)
        reservation = await limiter.acquire(1)
        with pytest.raises(ConfigurationError):
            reservation.settle(-3)

    run(main(), timeout=10)
