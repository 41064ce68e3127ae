"""A Ray worker killed with ``kill -9``: its death costs its prompts one loss, once.

Each test runs the real command (a driver process joining the session's Ray
instance) with two workers over two loopback servers, kills one or both
workers at a chosen moment, and checks what a user would: exit 0, every id
exactly once with its exact output, no ``WorkerLost``, and a summary that
says how many prompts ran again. What the servers saw bounds that count.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray

from motio import batch
from motio.backends import OpenAIBackend
from tests.cli.conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    start_motio,
    wait_for_results,
    write_prompts,
)
from tests.servers.scripted import ScriptedServer, hold_after, running

from .conftest import alive, streaming_workers
from .test_run_ray import each_id_once, echo_of, on_ray

COUNT = 600
_ANSWERED = re.compile(r"127\.0\.0\.1:\d+ ([\d,]+) answered")
_RERUN = re.compile(r"ray: 2 workers; ([\d,]+) prompts ran again after a worker died")


@contextmanager
def a_run(
    tmp_path: Path, ray_address: str, **server: Any
) -> Iterator[tuple[subprocess.Popen[str], Path, ScriptedServer, ScriptedServer]]:
    """``motio run`` of COUNT prompts on two workers and two servers, started."""
    prompts, out = write_prompts(tmp_path / "p.jsonl", COUNT), tmp_path / "out.jsonl"
    with running(**server) as a, running(**server) as b:
        urls = (a.base_url, b.base_url)
        proc = start_motio("run", prompts, "-o", out, *on_ray(ray_address, *urls), "-c", "16")
        try:
            yield proc, out, a, b
        finally:
            if proc.poll() is None:  # a failed assertion above: do not leave it running
                proc.kill()
                finish(proc)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def assert_complete_once(code: int, err: str, out: Path, *servers: ScriptedServer) -> int:
    """Exit 0, each id once with its exact output, no WorkerLost; the re-run count."""
    assert code == 0, err
    assert_clean(err)
    lines = each_id_once(out, COUNT)
    assert all(line["error"] is None and line["output"] == echo_of(line) for line in lines)
    assert "WorkerLost" not in err and b"WorkerLost" not in out.read_bytes()
    match = _RERUN.search(err)
    assert match, err
    rerun = int(match.group(1).replace(",", ""))
    # A prompt whose request reached a server from the dead worker was asked
    # again: it ran again, so it is counted; no prompt ran more than once
    # per death.
    asked = Counter(r.prompt for s in servers for r in s.chat_requests)
    assert set(asked) == {f"Say the number {i}." for i in range(COUNT)}
    twice = sum(1 for n in asked.values() if n > 1)
    assert 0 < twice <= rerun <= COUNT, (twice, rerun)
    # What a dead worker had reported serving still counts: every prompt
    # was answered once by a worker that lived to report it, at least.
    answered = sum(int(n.replace(",", "")) for n in _ANSWERED.findall(err))
    assert COUNT <= answered <= sum(s.completed for s in servers), (answered, err)
    return max(asked.values())


def finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    code, _, err = finish(proc)
    return code, err


def test_a_worker_killed_before_any_result_costs_no_prompt(tmp_path: Path, ray_address: str) -> None:
    # Every stream holds after its first chunk until released: when the
    # worker dies, both workers have prompts in flight and none has answered.
    with a_run(tmp_path, ray_address, default=hold_after(1)) as (proc, out, a, b):
        held: Callable[[ScriptedServer], bool] = lambda s: s.in_flight >= 16  # noqa: E731
        a.wait_for(held, EVENT_TIMEOUT, "streams held on the first server")
        b.wait_for(held, EVENT_TIMEOUT, "streams held on the second server")
        victim = streaming_workers(a.port, b.port)[0]
        assert complete_lines(out) == []
        kill(victim)
        # The dead worker's streams were cut; then let every stream finish.
        for server in (a, b):
            server.wait_for(lambda s: s.disconnects >= 1, EVENT_TIMEOUT, "the dead worker's disconnects")
        a.release()
        b.release()
        code, err = finished(proc)
    assert not alive(victim)
    assert assert_complete_once(code, err, out, a, b) == 2


def test_a_worker_killed_mid_shard_costs_no_prompt(tmp_path: Path, ray_address: str) -> None:
    # 5 tokens at 40 ms each: the run lasts seconds, with prompts in flight on both workers.
    with a_run(tmp_path, ray_address, token_time=0.04) as (proc, out, a, b):
        wait_for_results(out, 50, proc)
        victim = streaming_workers(a.port, b.port)[0]
        kill(victim)
        code, err = finished(proc)
    assert not alive(victim)
    assert assert_complete_once(code, err, out, a, b) == 2


def test_a_worker_killed_while_the_other_restarts_costs_no_prompt(tmp_path: Path, ray_address: str) -> None:
    with a_run(tmp_path, ray_address, token_time=0.04) as (proc, out, a, b):
        wait_for_results(out, 50, proc)
        first, second = streaming_workers(a.port, b.port)
        kill(first)
        # At once: Ray takes a second or more to bring a worker back, so the
        # second dies while it does, and the first one's shards are on their way.
        kill(second)
        code, err = finished(proc)
    assert not alive(first) and not alive(second)
    # A prompt in flight on each death may run three times, never more.
    assert assert_complete_once(code, err, out, a, b) <= 3


def slow_restarts(*urls: str, seconds: float = 5.0) -> Callable[[], Any]:
    """A backend factory whose worker, once Ray restarts it, takes ``seconds`` to come back.

    As a worker loading a model does; every call sent to it meanwhile is
    refused (``ActorUnavailableError``). Nested, so that it is pickled by
    value and the workers need not import this module.
    """

    def build() -> Any:
        context = ray.get_runtime_context()
        if context.get_actor_id() is not None and context.was_current_actor_reconstructed:
            time.sleep(seconds)
        return OpenAIBackend(base_url=list(urls), max_concurrency=8)

    return build


@pytest.mark.parametrize("killed", [1, 2], ids=["one-worker", "both-workers"])
def test_sends_refused_by_a_slow_restart_are_no_losses(ray_address: str, killed: int) -> None:
    prompts = [{"id": f"p{i}", "prompt": f"Say the number {i}."} for i in range(COUNT)]
    results = []
    with running(token_time=0.04) as a, running(token_time=0.04) as b:
        for result in batch.run(prompts, slow_restarts(a.base_url, b.base_url), ray=ray_address, workers=2):
            results.append(result)
            if len(results) == 50:
                # Both: the second dies while the first is restarting.
                victims = streaming_workers(a.port, b.port)[:killed]
                for victim in victims:
                    kill(victim)
        asked = Counter(r.prompt for s in (a, b) for r in s.chat_requests)
    assert not any(alive(victim) for victim in victims)
    assert Counter(r["id"] for r in results) == Counter(p["id"] for p in prompts)
    assert all(r["error"] is None and r["output"] == echo_of(r) for r in results), [
        r["error"] for r in results if r["error"]
    ][:3]
    # The dead workers' prompts ran again, once per death at most.
    assert 0 < sum(1 for n in asked.values() if n > 1) and max(asked.values()) <= 1 + killed
