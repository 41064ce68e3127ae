"""The rate limiter: one budget across event loops and threads, refunds, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from motio import ConfigurationError
from motio.backends._ratelimit import RateLimiter, estimate_tokens


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
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
    threads.append(threading.Thread(target=asyncio.run, args=(take(20),)))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(stamps) == 60
    # 60 requests at 20/s with a burst of 20: (60 - 20) / 20 = 2 s at least.
    assert time.monotonic() - started >= 1.9
    assert most_in_any_window(stamps, 1.0) <= 20 + 20 + 1  # rate x window + burst (+1 for clock edges)


def test_tpm_counts_tokens_and_settle_refunds() -> None:
    async def main() -> float:
        limiter = RateLimiter(tpm=6000)  # 100 tokens a second, burst 100
        first = await limiter.acquire(100)
        first.settle(10)  # used far less than reserved: 90 tokens come back
        t0 = time.monotonic()
        await limiter.acquire(90)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 0.2


def test_settle_charges_what_the_estimate_missed() -> None:
    async def main() -> float:
        limiter = RateLimiter(tpm=6000)
        (await limiter.acquire(10)).settle(100)  # used 90 more than estimated
        t0 = time.monotonic()
        await limiter.acquire(100)
        return time.monotonic() - t0

    assert asyncio.run(main()) >= 0.8


def test_a_cancelled_wait_gives_its_place_back() -> None:
    async def main() -> float:
        limiter = RateLimiter(rpm=60)  # 1 a second, burst 1
        await limiter.acquire()
        waiting = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        t0 = time.monotonic()
        await limiter.acquire()  # next in line again: about 1 s, not 2
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.5


def test_estimate_tokens() -> None:
    messages = [{"role": "user", "content": "x" * 40}, {"role": "user", "content": [{"type": "text", "text": "y" * 8}]}]
    assert estimate_tokens(messages, 100) == 10 + 2 + 100
    assert estimate_tokens(messages, None) == 12


@pytest.mark.parametrize("kwargs", [{"rpm": 0}, {"tpm": -5}, {"rpm": True}], ids=str)
def test_bad_limits_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]
