"""Prefix routing on Ray workers: the driver groups, every worker routes a prefix to the same server."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

from motio import batch
from motio.backends import OpenAIBackend
from motio.batch._share import SharePlan
from tests.batch.test_order import _servers_of, group_rows
from tests.servers.vllm_sim import running_sim

MODEL = "sim-model"


def test_the_plan_carries_prefix_routing_to_the_workers() -> None:
    urls = ["http://a:1/v1", "http://b:1/v1"]
    on = OpenAIBackend(MODEL, base_url=urls, max_concurrency=4)
    off = OpenAIBackend(MODEL, base_url=urls, max_concurrency=4, prefix_routing=False)
    assert SharePlan.of(on, 2).prefix_routing and not SharePlan.of(off, 2).prefix_routing
    on.close()
    off.close()


def test_groups_stay_on_their_server_across_two_workers(tmp_path: Path, ray_address: str) -> None:
    rows = group_rows(16, 20, words=400)
    out = tmp_path / "out.jsonl"
    with (
        running_sim(slots=8, cache_tokens=4 * 416, time_scale=10) as a,
        running_sim(slots=8, cache_tokens=4 * 416, time_scale=10) as b,
        running_sim(slots=8, cache_tokens=4 * 416, time_scale=10) as c,
        running_sim(slots=8, cache_tokens=4 * 416, time_scale=10) as d,
    ):
        sims = [a, b, c, d]
        build = functools.partial(OpenAIBackend, MODEL, base_url=[s.base_url for s in sims], max_concurrency=8)
        results = list(batch.run(rows, build, ray=ray_address, workers=2, output=out, options={"max_tokens": 4}))
        stats = [s.stats() for s in sims]
    assert all(r["error"] is None for r in results)
    lines = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert Counter(lines) == Counter(row["id"] for row in rows)  # each id once
    by_group = _servers_of(stats)
    on_its_server = sum(max(counts.values()) for counts in by_group.values())
    # Both workers send a prefix to the server its key ranks (rendezvous on
    # the same base URLs), so a group shared by the two lands on one server.
    # Measured over 4 runs each (the ports, so the ranking, change every
    # run): 171-233 of 320 routed, 108-118 with prefix_routing=False (each
    # group scattered over the 4 servers). Between the two, clear of both.
    assert on_its_server >= 0.45 * len(rows), on_its_server
    assert all(s["served"] > 0 for s in stats)
