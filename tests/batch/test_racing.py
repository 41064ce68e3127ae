"""Racing stragglers at the end of a batch (``motio.batch._racing``, ``motio.scheduling._race``).

Two scripted servers on loopback, a real ``OpenAIBackend`` over both, the
real batch job and results file. A rule shared by both servers holds the
first request of chosen prompts (``hold_after``: a stream that stops after
its first token, until released), wherever the router sends it; every
other request is answered at once. Waits are bounded: the run by
``tests.asyncutil.run``, a server's conditions by its ``wait_for``, those
over both servers (and "held this long") by polling with a deadline.
No assertion is about speed.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from motio import ConfigurationError
from motio.backends import OpenAIBackend
from motio.batch import PromptRecord, RunStats, format_summary
from motio.batch._job import BatchJob
from motio.scheduling import (
    RACE_MIN_SAMPLES as MIN_SAMPLES,
    overloaded_lately,
    RaceBudget,
    RecentLatency,
    check_hedge_budget,
    prompt_chars,
    race_kind,
    straggler_after,
)
from tests.asyncutil import run
from tests.servers.scripted import Behaviour, RequestRecord, ScriptedServer, hold_after, ok, running, status

WAIT = 60.0


def prompt(i: int) -> str:
    return f"Say {i}."


def records(count: int) -> list[PromptRecord]:
    return [PromptRecord(f"p{i}", i + 1, prompt(i), {}) for i in range(count)]


class FirstHeld:
    """A rule for both servers: the first request of each prompt in ``held`` is held; the rest answered."""

    def __init__(self, *held: int) -> None:
        self.held = {prompt(i) for i in held}
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()  # two servers, two threads

    def __call__(self, record: RequestRecord) -> Behaviour | None:
        with self.lock:
            self.seen[record.prompt] += 1
            first = self.seen[record.prompt] == 1
        return hold_after(1, max_wait=WAIT) if first and record.prompt in self.held else ok()


def asked(servers: tuple[ScriptedServer, ...], text: str) -> list[tuple[ScriptedServer, RequestRecord]]:
    """The requests for ``text`` on every server, in arrival order (one clock: one process)."""
    found = [(s, r) for s in servers for r in s.chat_requests if r.prompt == text]
    return sorted(found, key=lambda pair: pair[1].arrived)


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition over several servers (each server's ``wait_for`` sees its own changes only)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def held_for(server: ScriptedServer, record: RequestRecord, seconds: float) -> None:
    """Wait (bounded) until ``record`` has been on ``server`` for ``seconds``: time itself is the condition."""
    deadline = time.monotonic() + WAIT
    while server.now() - record.arrived < seconds:
        assert time.monotonic() < deadline, f"{record.prompt!r} not held for {seconds} s"
        time.sleep(0.05)


def run_job(
    servers: tuple[ScriptedServer, ...],
    source: Iterator[PromptRecord],
    out: Path,
    *,
    concurrency: int = 4,
    budget: float = 0.5,
    blocking: bool = False,
    **backend_options: Any,
) -> RunStats:
    async def main() -> RunStats:
        backend = OpenAIBackend(
            base_url=[s.base_url for s in servers], max_concurrency=concurrency, **backend_options
        )
        job = BatchJob(stats=RunStats(), hedge_budget=budget)
        try:
            job.open_results(out)
            await job.start(backend, checked=False)
            stats = await job.run(source, blocking=blocking)
        finally:
            job.close()
            await backend.aclose()
        assert stats is not None
        return stats

    return run(main())


def lines_of(out: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ids = Counter(line["id"] for line in lines)
    assert all(n == 1 for n in ids.values()), ids  # one line per id
    return {line["id"]: line for line in lines}


def test_a_straggler_is_raced_the_racer_wins_and_the_server_sees_the_original_leave(tmp_path: Path) -> None:
    count = MIN_SAMPLES + 10
    rule = FirstHeld(0)
    with running(rule=rule) as a, running(rule=rule) as b:
        stats = run_job((a, b), iter(records(count)), tmp_path / "out.jsonl")
        (held_on, original), (raced_on, racer) = asked((a, b), prompt(0))
        held_on.wait_for(lambda _: original.disconnected, WAIT, "the original's client left")
        assert original.disconnected and not racer.disconnected and racer.status == 200
        assert held_on is not raced_on  # sent to the other server
        total = len(a.chat_requests) + len(b.chat_requests)
    lines = lines_of(tmp_path / "out.jsonl")
    assert len(lines) == count and total == count + 1
    line = lines["p0"]
    assert line["raced"] is True and line["race_won"] is True
    assert line["output"] == "echo: Say 0." and line["error"] is None
    assert not any("raced" in other for key, other in lines.items() if key != "p0")
    assert (stats.raced, stats.race_wins, stats.ok) == (1, 1, count)
    assert any("raced on another server: 1 (1 won there)" in part for part in format_summary(stats))


def test_the_original_wins_when_it_ends_first_and_the_racer_is_closed(tmp_path: Path) -> None:
    count = MIN_SAMPLES + 10
    held = {prompt(0)}
    racing_started = threading.Event()
    lock = threading.Lock()
    seen: Counter[str] = Counter()

    def rule(record: RequestRecord) -> Behaviour | None:
        # Both requests of prompt 0 are held; the racer's arrival is the signal to free the original.
        with lock:
            seen[record.prompt] += 1
            n = seen[record.prompt]
        if record.prompt in held:
            if n == 2:
                racing_started.set()
            return hold_after(1, max_wait=WAIT)
        return ok()

    with running(rule=rule) as a, running(rule=rule) as b:

        def free_the_original() -> None:
            assert racing_started.wait(WAIT)
            [(server, _), _] = asked((a, b), prompt(0))
            server.release()

        freer = threading.Thread(target=free_the_original)
        freer.start()
        try:
            stats = run_job((a, b), iter(records(count)), tmp_path / "out.jsonl")
        finally:
            freer.join(WAIT)
        (_, original), (racer_on, racer) = asked((a, b), prompt(0))
        racer_on.wait_for(lambda s: s.disconnects >= 1, WAIT, "the racer's client left")
        assert racer.disconnected and not original.disconnected and original.status == 200
    line = lines_of(tmp_path / "out.jsonl")["p0"]
    assert line["raced"] is True and line["race_won"] is False and line["output"] == "echo: Say 0."
    assert (stats.raced, stats.race_wins) == (1, 0)


def test_no_race_while_prompts_are_left_to_dispatch(tmp_path: Path) -> None:
    count = MIN_SAMPLES + 10
    rule = FirstHeld(0)
    more = threading.Event()

    def source() -> Iterator[PromptRecord]:
        yield from records(count)
        more.wait(WAIT)  # the input is not over yet: a pipe that has not ended
        yield PromptRecord("last", count + 1, "the last one", {})

    with running(rule=rule) as a, running(rule=rule) as b:

        def check_then_end() -> None:
            try:
                # Every answer in, the straggler held well past the racing floor: still one request.
                until(lambda: a.completed + b.completed >= count - 1, "all but the held one")
                held_on, original = asked((a, b), prompt(0))[0]
                held_for(held_on, original, 3 * straggler_after(0))
                assert len(asked((a, b), prompt(0))) == 1
            finally:
                more.set()

        checker = threading.Thread(target=check_then_end)
        checker.start()
        try:
            stats = run_job((a, b), source(), tmp_path / "out.jsonl", blocking=True)
        finally:
            checker.join(WAIT)
        assert len(asked((a, b), prompt(0))) == 2  # raced once the input ended
    assert stats.raced == 1 and len(lines_of(tmp_path / "out.jsonl")) == count + 1


def test_no_race_without_room_on_another_server(tmp_path: Path) -> None:
    # One slot per server: the straggler's own, and the other held by the last prompt.
    count = MIN_SAMPLES + 5
    rule = FirstHeld(0, count - 1)
    with running(rule=rule) as a, running(rule=rule) as b:

        def free_the_last_after_a_while() -> None:
            servers = (a, b)
            until(lambda: len(asked(servers, prompt(count - 1))) == 1, "the last prompt held")
            first_on, first = asked(servers, prompt(0))[0]
            held_for(first_on, first, 3 * straggler_after(0))
            # Both stragglers held past the floor, and no server has room: no racer yet.
            assert len(asked(servers, prompt(0))) == 1 and len(asked(servers, prompt(count - 1))) == 1
            last_on, _ = asked(servers, prompt(count - 1))[0]
            last_on.release()

        helper = threading.Thread(target=free_the_last_after_a_while)
        helper.start()
        try:
            stats = run_job((a, b), iter(records(count)), tmp_path / "out.jsonl", concurrency=1)
        finally:
            helper.join(WAIT)
        assert len(asked((a, b), prompt(0))) == 2
    lines = lines_of(tmp_path / "out.jsonl")
    assert lines["p0"]["race_won"] is True and stats.raced == 1
    assert "raced" not in lines[f"p{count - 1}"]  # freed, it was no straggler any more


def test_the_budget_caps_the_races_and_0_turns_racing_off(tmp_path: Path) -> None:
    count = MIN_SAMPLES + 20  # 40 prompts: 5% is 2 races
    held = (0, 1, 2, 3)
    for budget, races in ((0.05, 2), (0.0, 0)):
        rule = FirstHeld(*held)
        out = tmp_path / f"out-{budget}.jsonl"
        with running(rule=rule) as a, running(rule=rule) as b:
            if races == 0:
                # Nothing races them: free the held ones once they are stragglers.
                def free() -> None:
                    until(lambda: a.completed + b.completed >= count - len(held), "the others answered")
                    for server in (a, b):
                        for r in server.chat_requests:
                            if r.prompt == prompt(0):
                                held_for(server, r, 2 * straggler_after(0))
                    a.release()
                    b.release()

                helper = threading.Thread(target=free)
                helper.start()
            stats = run_job((a, b), iter(records(count)), out, concurrency=8, budget=budget)
            if races == 0:
                helper.join(WAIT)
            total = len(a.chat_requests) + len(b.chat_requests)
            if races:
                a.release()
                b.release()
        assert total == count + races and stats.raced == races
        assert len(lines_of(out)) == count


def test_no_race_while_a_server_answers_429(tmp_path: Path) -> None:
    count = MIN_SAMPLES + 10
    storm = 12
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def rule(record: RequestRecord) -> Behaviour | None:
        with lock:
            seen[record.prompt] += 1
            n = seen[record.prompt]
        if record.prompt == prompt(0) and n == 1:
            return hold_after(1, max_wait=WAIT)
        if record.prompt == prompt(count - 1) and n <= storm:  # the last prompt meets a 429 storm
            return status(429, {"retry-after-ms": "300"})
        return ok()

    with running(rule=rule) as a, running(rule=rule) as b:
        stats = run_job((a, b), iter(records(count)), tmp_path / "out.jsonl", max_retries=storm + 2)
        refused = [r for _, r in asked((a, b), prompt(count - 1)) if r.status == 429]
        _, racer = asked((a, b), prompt(0))[1]
        (held_on, original), _ = asked((a, b), prompt(0))
    assert len(refused) == storm
    # The straggler was due long before the storm ended; its racer went out only after it.
    assert racer.arrived > max(r.arrived for r in refused)
    assert stats.raced == 1 and lines_of(tmp_path / "out.jsonl")["p0"]["race_won"] is True
    assert original.disconnected and held_on is not None


def test_a_batch_line_says_it_was_raced_at_top_level(tmp_path: Path) -> None:
    count = MIN_SAMPLES + 10
    rule = FirstHeld(0)
    batch_records = [
        PromptRecord(
            f"r{i}",
            i + 1,
            [{"role": "user", "content": prompt(i)}],
            {},
            fmt="openai-batch",  # type: ignore[arg-type]
            body={"messages": [{"role": "user", "content": prompt(i)}], "max_tokens": 8},
        )
        for i in range(count)
    ]
    with running(rule=rule) as a, running(rule=rule) as b:
        stats = run_job((a, b), iter(batch_records), tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    raced = [line for line in lines if line.get("raced")]
    assert [line["custom_id"] for line in raced] == ["r0"] and raced[0]["error"] is None
    assert set(raced[0]) == {"id", "custom_id", "response", "error", "raced"}
    assert stats.raced == 1 and stats.race_wins == 1


def test_hedge_budget_must_be_a_fraction() -> None:
    for bad in (-0.1, 1.5, "0.1", True, float("nan")):
        with pytest.raises(ConfigurationError, match="hedge_budget"):
            check_hedge_budget(bad)
    with pytest.raises(ConfigurationError, match="hedge_budget"):
        BatchJob(hedge_budget=2)
    assert check_hedge_budget(0) == 0.0 and check_hedge_budget(1) == 1.0


def test_one_server_or_budget_0_adds_nothing_to_the_engine() -> None:
    from motio.batch import Engine

    one = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1")
    two = OpenAIBackend("m", base_url=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"])
    assert Engine(one, hedge_budget=0.05).racing is None
    assert Engine(two, hedge_budget=0.0).racing is None
    engine = Engine(one, hedge_budget=0.05)
    assert engine.answer == engine.generate  # the per-prompt path as it was
    racing = Engine(two, hedge_budget=0.05).racing
    assert racing is not None


# -- the policy (motio.scheduling) --------------------------------------------------


def test_kinds_bucket_prompt_lengths_by_powers_of_two_and_keep_max_tokens() -> None:
    assert race_kind(20, 100) == race_kind(20, 120) != race_kind(20, 300)
    assert race_kind(20, 100) != race_kind(2000, 100)
    assert race_kind(None, 0) == (None, 0) and race_kind(True, 5)[0] is None
    messages = [
        {"role": "system", "content": "ab"},
        {"role": "user", "content": [{"type": "text", "text": "cde"}]},
    ]
    assert prompt_chars(messages) == 5 and prompt_chars("hello") == 5


def test_the_recent_p95_needs_enough_answers_and_falls_back_on_every_kind() -> None:
    latency = RecentLatency()
    small, big = race_kind(10, 10), race_kind(1000, 10)
    for i in range(MIN_SAMPLES - 1):
        latency.record(small, 1.0 + i / 100)
    assert latency.p95(small) is None  # too few anywhere
    latency.record(big, 50.0)
    assert latency.p95(big) == latency.p95(small) is not None  # each kind too few: every kind together
    for _ in range(MIN_SAMPLES):
        latency.record(big, 50.0)
    latency.record(small, 1.0)
    assert latency.p95(big) == 50.0
    small_p95 = latency.p95(small)
    assert small_p95 is not None and small_p95 < 2  # its own kind's, not the big ones'
    assert straggler_after(0.01) == straggler_after(0.0) > 0.01  # the floor
    assert straggler_after(30.0) == 30.0


def test_the_budget_is_a_floor_of_the_fraction_of_the_batch() -> None:
    budget = RaceBudget(0.05)
    assert budget.allowed(3000) == 150 and budget.allowed(30) == 1 and budget.allowed(19) == 0
    assert [budget.take(40) for _ in range(3)] == [True, True, False]
    assert budget.spent == 2


def test_overloads_hold_racing_until_quiet() -> None:
    assert not overloaded_lately([0.0, 0.0], 100.0)  # never pushed back
    assert overloaded_lately([0.0, 101.0], 101.0)  # a new one
    assert overloaded_lately([0.0, 101.0], 102.0)
    assert not overloaded_lately([0.0, 101.0], 103.5)  # none for the hold


def test_the_scheduling_package_imports_no_backend_and_no_batch() -> None:
    import ast

    root = Path(__file__).resolve().parents[2] / "src" / "motio" / "scheduling"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                assert "backends" not in name and "batch" not in name, (path.name, name)
