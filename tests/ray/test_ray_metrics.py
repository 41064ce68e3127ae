"""``--concurrency auto`` on Ray with server metrics: the coordinator judges the cluster's load.

Each worker reads its servers' metrics pages and sends the readings with its
requests in flight; the coordinator takes one reading a scrape interval and
judges it with every worker's requests as ours (``batch/_ray.py``).
"""

from __future__ import annotations

import statistics
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from motio.backends.http._adaptive import Signals
from motio.backends.http._metrics import ServerLoad
from motio.batch import _ray
from motio.batch._share import SharePlan
from tests.cli.conftest import assert_clean, complete_lines, run_motio, write_prompts
from tests.servers.vllm_sim import running_sim


def limits(answer: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The limits of a coordinator's answer, without their epochs."""
    return {url: limit for url, (limit, _epoch) in answer.items()}


def test_the_coordinator_judges_a_reading_with_every_workers_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_ray, "SCRAPE_INTERVAL", 0.0)  # every reading judged: the test sends them
    url = "http://127.0.0.1:1/v1"
    coordinator = _ray.Coordinator(SharePlan(2, (url,), concurrency="auto", initial=16))
    # 8 of a limit of 16 in flight: the limit does not bind, nothing to learn.
    assert limits(coordinator.report(1, {url: Signals([], 0, 8, ServerLoad(16, 0))})) == {url: 16}
    # Both workers' 16 fill the limit and the server runs them all: room to grow.
    assert limits(coordinator.report(2, {url: Signals([], 0, 8, ServerLoad(16, 0))})) == {url: 20}
    # 18 of ours, 16 running and 4 waiting at the server (one of them another
    # client's): full at 16; ours gives up its share of the queue (0.9 x 4).
    assert limits(coordinator.report(2, {url: Signals([], 0, 10, ServerLoad(16, 4))})) == {url: 14}


def test_two_workers_hold_the_server_at_capacity_with_nothing_waiting(
    tmp_path: Path, ray_address: str
) -> None:
    count, slots = 1200, 8
    prompts, out = write_prompts(tmp_path / "p.jsonl", count, max_tokens=16), tmp_path / "out.jsonl"
    loads: list[dict[str, Any]] = []
    stop = threading.Event()
    with running_sim(slots=slots) as sim:

        def sample() -> None:
            while not stop.wait(0.05):
                stats = sim.stats()
                if count // 3 <= stats["served"] < count - count // 10:
                    loads.append({"running": stats["running"], "waiting": stats["waiting"]})

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            done = run_motio(
                "run", prompts, "-o", out, "--base-url", sim.base_url, "--model", "sim-model",
                f"--ray={ray_address}", "--workers", "2",
            )  # fmt: skip
        finally:
            stop.set()
            sampler.join(10)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    assert loads, "the run ended before the server was loaded"
    assert statistics.median(load["waiting"] for load in loads) <= 1, loads
    assert statistics.median(load["running"] for load in loads) >= slots - 2, loads
