"""Racing stragglers on Ray: workers race their own, the coordinator holds one budget for all.

``motio run --ray`` (a subprocess joining the session's local Ray) with two
workers against two scripted servers whose shared rule holds the first
request of eight prompts until released. The budget allows 5 races for the
whole batch (5% of 100): the workers together send exactly 5, not 5 each.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from tests.cli.conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    start_motio,
    wait_for_results,
    write_prompts,
)
from tests.servers.scripted import Behaviour, RequestRecord, hold_after, ok, running

HELD = {f"Say the number {i}." for i in range(0, 80, 10)}  # eight prompts, spread over the shards


def test_two_workers_race_within_one_budget_each_id_once(tmp_path: Path, ray_address: str) -> None:
    count = 100
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def rule(record: RequestRecord) -> Behaviour | None:
        with lock:
            seen[record.prompt] += 1
            first = seen[record.prompt] == 1
        return hold_after(1, max_wait=EVENT_TIMEOUT) if first and record.prompt in HELD else ok()

    def second_requests() -> int:
        with lock:
            return sum(1 for text in HELD if seen[text] >= 2)

    with running(rule=rule) as a, running(rule=rule) as b:
        urls = ["--base-url", a.base_url, "--base-url", b.base_url]
        proc = start_motio(
            "run", prompts, "-o", out, *urls, "-c", "16", f"--ray={ray_address}", "--workers", "2",
            "--hedge-budget", "0.05",
        )  # fmt: skip
        try:
            a.wait_for(lambda _: second_requests() >= 5, EVENT_TIMEOUT, "five stragglers raced")
            # The budget is spent: the other held prompts end only when released.
            wait_for_results(out, count - 3, proc)
            raced_before_release = second_requests()
            a.release()
            b.release()
        finally:
            code, _, err = finish(proc)
        disconnects = a.disconnects + b.disconnects
        requests = len(a.chat_requests) + len(b.chat_requests)
    assert code == 0, err
    assert_clean(err)
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    raced = [line for line in lines if line.get("raced")]
    assert raced_before_release == 5 and len(raced) == 5 and requests == count + 5
    assert all(line["race_won"] and line["error"] is None for line in raced)
    assert disconnects >= 5  # each raced original's client left its server
    assert "raced on another server: 5 (5 won there)" in err
