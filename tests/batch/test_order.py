"""Grouped dispatch order (``batch/_order.py``) and a batch routed by prefix over several servers."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from motio import batch
from motio.backends import OpenAIBackend
from motio.batch import PromptRecord
from motio.batch._order import MAX_WINDOW, MIN_WINDOW, agrouped, grouped, window_for
from motio.scheduling import prefix_key, server_seed, weight
from tests.asyncutil import agen, run
from tests.servers.vllm_sim import running_sim

MODEL = "sim-model"


def group_rows(groups: int, per_group: int, words: int = 600, seed: int = 19) -> list[dict[str, Any]]:
    """Prompts in ``groups`` groups (a long system prompt each), shuffled."""
    rows = []
    for g in range(groups):
        system = " ".join(f"g{g}w{k}" for k in range(words))
        rows += [
            {"id": f"g{g}-{j}", "messages": [{"role": "system", "content": system},
                                             {"role": "user", "content": f"item {j} of group {g}"}]}
            for j in range(per_group)
        ]  # fmt: skip
    random.Random(seed).shuffle(rows)
    return rows


def records(rows: list[dict[str, Any]]) -> list[PromptRecord]:
    return [PromptRecord(row["id"], n, row["messages"], {}) for n, row in enumerate(rows, 1)]


def runs_of(out: list[PromptRecord]) -> int:
    """How many runs of one prefix key the order has."""
    return len([k for k, _ in itertools.groupby(prefix_key(r.request) for r in out)])


def test_grouped_emits_every_record_once_groups_together() -> None:
    given = records(group_rows(8, 25))
    out = list(grouped(iter(given), window=1000))
    assert sorted(r.id for r in out) == sorted(r.id for r in given)  # each once
    # The whole file fits: each group in one run, but for its first record,
    # sent STAGGER records ahead of the rest (into the group before).
    assert runs_of(given) > 150 and runs_of(out) <= 8 * 3
    assert runs_of([r for r in out if r.id not in _firsts(out)]) == 8


def _firsts(out: list[PromptRecord]) -> set[str | int]:
    seen: dict[int, str | int] = {}
    for r in out:
        seen.setdefault(prefix_key(r.request), r.id)
    return set(seen.values())


def test_the_servers_groups_take_turns() -> None:
    servers = [f"http://gpu{i}:8000/v1" for i in range(4)]
    given = records(group_rows(16, 10))
    out = list(grouped(iter(given), 1000, servers))
    assert sorted(r.id for r in out) == sorted(r.id for r in given)
    # The first 80 sent: about a quarter for each server's groups (their
    # first choices; a few prefixes are homed on their next, for balance).
    firsts = Counter(lane_index(r, servers) for r in out[:80])
    assert len(firsts) == 4 and min(firsts.values()) >= 8


def lane_index(record: PromptRecord, servers: list[str]) -> int:
    key = prefix_key(record.request)
    return max(range(len(servers)), key=lambda i: weight(key, server_seed(servers[i])))


def test_async_grouped_is_the_same_order() -> None:
    given = records(group_rows(8, 25))

    async def main() -> list[PromptRecord]:
        return [r async for r in agrouped(agen(given), 64)]

    out = run(main())
    assert [r.id for r in out] == [r.id for r in grouped(iter(given), 64)]
    assert sorted(r.id for r in out) == sorted(r.id for r in given)


def test_the_window_bounds_what_is_held() -> None:
    given = records(group_rows(16, 20))
    read = 0

    def counted() -> Iterator[PromptRecord]:
        nonlocal read
        for record in given:
            read += 1
            yield record

    out: list[PromptRecord] = []
    for record in grouped(counted(), 50):
        assert read - len(out) <= 50  # never more than the window held
        out.append(record)
    assert sorted(r.id for r in out) == sorted(r.id for r in given)
    assert 16 <= runs_of(out) < runs_of(given) * 0.75


def test_unshared_prompts_stay_in_file_order() -> None:
    given = [PromptRecord(f"p{i}", i, f"question {i}", {}) for i in range(1, 300)]
    assert [r.id for r in grouped(iter(given), 32)] == [r.id for r in given]


def test_the_window_is_a_few_times_what_is_in_flight_within_bounds() -> None:
    assert window_for(1) == MIN_WINDOW and window_for(10**6) == MAX_WINDOW
    assert window_for(256) == 1024


def _servers_of(stats: list[dict[str, Any]]) -> dict[str, Counter[int]]:
    """Per group, how many of its prompts each server answered."""
    seen: dict[str, Counter[int]] = {}
    for server, s in enumerate(stats):
        for prompt in s["prompts"]:
            seen.setdefault(prompt.rsplit(" ", 1)[-1], Counter())[server] += 1
    return seen


def _locality(tmp_path: Path, prefix_routing: bool) -> float:
    """The share of a shuffled batch's prompts answered by their group's main server."""
    rows = group_rows(16, 20, words=400)
    out = tmp_path / f"out-{prefix_routing}.jsonl"
    with (
        running_sim(slots=16, cache_tokens=4 * 416, time_scale=10) as a,
        running_sim(slots=16, cache_tokens=4 * 416, time_scale=10) as b,
        running_sim(slots=16, cache_tokens=4 * 416, time_scale=10) as c,
        running_sim(slots=16, cache_tokens=4 * 416, time_scale=10) as d,
    ):
        sims = [a, b, c, d]
        build = lambda: OpenAIBackend(MODEL, base_url=[s.base_url for s in sims], max_concurrency=16)  # noqa: E731
        results = list(
            batch.run(rows, build, output=out, options={"max_tokens": 4}, prefix_routing=prefix_routing)
        )
        stats = [s.stats() for s in sims]
    assert all(r["error"] is None for r in results)
    lines = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert Counter(lines) == Counter(row["id"] for row in rows)  # each id once
    assert all(s["served"] > 0 for s in stats)  # every server served
    by_group = _servers_of(stats)
    assert len(by_group) == 16
    return sum(max(counts.values()) for counts in by_group.values()) / len(rows)


def test_a_batch_over_four_servers_keeps_each_group_mostly_on_one(tmp_path: Path) -> None:
    routed, by_load = _locality(tmp_path, True), _locality(tmp_path, False)
    assert routed >= 0.6 and routed > by_load + 0.2, (routed, by_load)


def test_a_batch_stopped_and_resumed_with_grouping_answers_each_id_once(tmp_path: Path) -> None:
    rows = group_rows(6, 30)
    out = tmp_path / "out.jsonl"
    with running_sim(slots=4, time_scale=0.05) as a, running_sim(slots=4, time_scale=0.05) as b:
        build = lambda: OpenAIBackend(MODEL, base_url=[a.base_url, b.base_url], max_concurrency=4)  # noqa: E731
        first = []
        for result in batch.run(rows, build, output=out, options={"max_tokens": 2}):
            first.append(result)
            if len(first) == 50:
                break
        again = list(batch.run(rows, build, output=out, options={"max_tokens": 2}))
        off = list(batch.run(rows, build, output=out, prefix_routing=False))  # nothing left to run
    counts = Counter(json.loads(line)["id"] for line in out.read_text().splitlines())
    assert counts == Counter(row["id"] for row in rows)
    assert {r["id"] for r in again}.isdisjoint(r["id"] for r in first) and off == []
