"""ClientCache: the documented LRU, validation, thread safety, eviction hook."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import pytest

from motio import ClientCache


def test_starts_empty_as_an_ordered_dict() -> None:
    cache = ClientCache(2)
    assert isinstance(cache.cache, OrderedDict) and len(cache.cache) == 0
    assert cache.current_size() == 0 and cache.get(1) is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None, True], ids=repr)
def test_capacity_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="capacity"):
        ClientCache(bad)


def test_put_evicts_least_recently_used_and_get_refreshes() -> None:
    evicted: list[str] = []
    cache = ClientCache(2, on_evict=evicted.append)
    cache.put(1, "one")
    cache.put(2, "two")
    assert cache.get(1) == "one"  # 1 is now the most recent
    cache.put(3, "three")  # evicts 2
    assert cache.get(2) is None and cache.get(1) == "one" and cache.get(3) == "three"
    assert evicted == ["two"] and cache.current_size() == 2
    assert list(cache.cache) == [1, 3]


def test_put_existing_key_replaces_and_refreshes_without_eviction() -> None:
    evicted: list[str] = []
    cache = ClientCache(2, on_evict=evicted.append)
    cache.put(1, "a")
    cache.put(2, "b")
    cache.put(1, "a2")
    cache.put(3, "c")  # 2 is least recent now
    assert cache.get(1) == "a2" and cache.get(2) is None
    assert evicted == ["b"]


def test_failing_on_evict_does_not_break_put() -> None:
    def boom(_: Any) -> None:
        raise OSError("close failed")

    cache = ClientCache(1, on_evict=boom)
    cache.put(1, "a")
    cache.put(2, "b")
    assert cache.get(2) == "b" and cache.current_size() == 1


def test_safe_under_concurrent_use_and_evicts_each_value_once() -> None:
    evicted: list[int] = []
    lock = threading.Lock()

    def record(value: int) -> None:
        with lock:
            evicted.append(value)

    cache = ClientCache(8, on_evict=record)
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait(timeout=10)
        for i in range(2_000):
            key = t * 10_000 + i
            cache.put(key, key)
            cache.get(key - 3)
            assert cache.current_size() <= 8

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    remaining = set(cache.cache.values())
    assert len(evicted) == len(set(evicted)) == 8 * 2_000 - len(remaining)
    assert remaining.isdisjoint(evicted) and cache.current_size() == 8


def test_size_is_never_seen_above_capacity_under_threads() -> None:
    import sys

    # Switch threads as often as the interpreter allows, so a window between
    # inserting and evicting (the bug this guards against) is actually hit.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        seen = _sizes_seen_while_8_threads_put_and_get()
    finally:
        sys.setswitchinterval(interval)
    assert seen and max(seen) <= 8


def _sizes_seen_while_8_threads_put_and_get() -> list[int]:
    cache = ClientCache(8)
    stop = threading.Event()
    seen: list[int] = []

    def writer(base: int) -> None:
        for i in range(3_000):
            cache.put((base, i % 50), i)
            cache.get((base, (i * 7) % 50))

    def watcher() -> None:
        while not stop.is_set():
            seen.append(cache.current_size())
            seen.append(len(cache.cache))

    watch = threading.Thread(target=watcher)
    watch.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    watch.join(60)
    assert cache.current_size() == 8
    return seen
