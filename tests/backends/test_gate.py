"""Gate: FIFO slots taken by coroutines, released from any thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from motio.backends._gate import Gate
from tests.asyncutil import run


async def _waiters_are_served_in_order_without_threads() -> None:
    gate = Gate(1)
    await gate.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await gate.acquire()
        order.append(i)
        gate.release()

    tasks = [asyncio.create_task(take(i)) for i in range(5)]
    await asyncio.sleep(0)  # let all five queue up
    assert threading.active_count() >= 1 and order == []
    gate.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2, 3, 4]


def test_waiters_are_served_in_order_without_threads() -> None:
    run(_waiters_are_served_in_order_without_threads(), timeout=10)


async def _release_from_another_thread_wakes_the_waiter() -> None:
    gate = Gate(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    thread = threading.Thread(target=gate.release)
    thread.start()
    await asyncio.wait_for(waiter, 5)
    thread.join(5)


def test_release_from_another_thread_wakes_the_waiter() -> None:
    run(_release_from_another_thread_wakes_the_waiter(), timeout=10)


async def _a_cancelled_waiter_passes_a_granted_slot_on() -> None:
    gate = Gate(1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # granted to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)  # the slot moved on instead of leaking


def test_a_cancelled_waiter_passes_a_granted_slot_on() -> None:
    run(_a_cancelled_waiter_passes_a_granted_slot_on(), timeout=10)


async def _cancelled_waiter_leaves_the_queue() -> None:
    gate = Gate(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    await asyncio.wait_for(gate.acquire(), 5)  # the free slot was not handed to the dead waiter


def test_cancelled_waiter_leaves_the_queue() -> None:
    run(_cancelled_waiter_leaves_the_queue(), timeout=10)


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Gate(0)
