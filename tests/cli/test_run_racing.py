"""``motio run --hedge-budget``: racing stragglers from the command, and resume after a kill mid-race.

Two scripted servers on loopback share a rule that holds chosen prompts'
requests (``hold_after``) until released; the command runs in a subprocess.
Waits are bounded (the servers' ``wait_for``, ``finish``).
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from pathlib import Path

from tests.servers.scripted import Behaviour, RequestRecord, hold_after, ok, running

from .conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    run_motio,
    start_motio,
    write_prompts,
)


class Holding:
    """A rule for both servers: every request of the prompts in ``held`` is held while ``on``."""

    def __init__(self, *held: int) -> None:
        self.held = {f"Say the number {i}." for i in held}
        self.on = True
        self.lock = threading.Lock()

    def __call__(self, record: RequestRecord) -> Behaviour | None:
        with self.lock:
            hold = self.on and record.prompt in self.held
        return hold_after(1, max_wait=EVENT_TIMEOUT) if hold else ok()


def test_hedge_budget_is_checked_and_documented(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 1), tmp_path / "out.jsonl"
    for bad in ("1.5", "-0.1", "x"):
        done = run_motio("run", prompts, "-o", out, "--hedge-budget", bad)
        assert done.returncode == 2 and "--hedge-budget" in done.stderr
    assert not out.exists()
    usage = " ".join(run_motio("run", "--help").stdout.split())
    assert "--hedge-budget FRACTION" in usage and "0 turns racing off" in usage


def test_a_raced_run_writes_each_id_once_and_counts_the_races(tmp_path: Path) -> None:
    count = 40
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def first_of_0_held(record: RequestRecord) -> Behaviour | None:
        with lock:
            seen[record.prompt] += 1
            first = seen[record.prompt] == 1
        return (
            hold_after(1, max_wait=EVENT_TIMEOUT) if first and record.prompt == "Say the number 0." else ok()
        )

    with running(rule=first_of_0_held) as a, running(rule=first_of_0_held) as b:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", a.base_url, "--base-url", b.base_url, "-c", "4"
        )
        requests = len(a.chat_requests) + len(b.chat_requests)
        assert a.disconnects + b.disconnects == 1  # the losing request: its client left
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    assert [line["id"] for line in lines if line.get("raced")] == ["p0"] and requests == count + 1
    assert "raced on another server: 1 (1 won there)" in done.stderr


def test_a_run_killed_while_racing_resumes_and_writes_each_id_once(tmp_path: Path) -> None:
    count = 40
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    rule = Holding(0, 1)  # the originals and their racers all held: racing under way
    with running(rule=rule) as a, running(rule=rule) as b:
        urls = ["--base-url", a.base_url, "--base-url", b.base_url]
        proc = start_motio("run", prompts, "-o", out, *urls, "-c", "4", "--hedge-budget", "0.5")
        try:
            raced = lambda _: sum(1 for s in (a, b) for r in s.chat_requests if r.prompt in rule.held) == 4
            a.wait_for(raced, EVENT_TIMEOUT, "both held prompts raced (four requests held)")
            proc.send_signal(signal.SIGKILL)
        finally:
            code, _, _ = finish(proc)
        assert code == -signal.SIGKILL
        written = complete_lines(out)
        assert len(written) == count - 2 and not any(line.get("raced") for line in written)
        with rule.lock:
            rule.on = False
        again = run_motio("run", prompts, "-o", out, *urls, "-c", "4")
    assert again.returncode == 0, again.stderr
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    assert all(line["error"] is None for line in lines)
