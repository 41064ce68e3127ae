"""``motio run --ray``: a batch on real Ray workers against real loopback servers.

Each test's command is a separate driver process joining the session's Ray
instance (``tests/ray/conftest.py``); its workers are Ray actor processes
that a test may kill. What the servers saw is asserted with the results.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.cli.conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    interrupt,
    run_motio,
    start_motio,
    wait_for_results,
    write_prompts,
)
from tests.servers.scripted import ok, running, stall_before_headers

from .conftest import alive, streaming_workers


def each_id_once(out: Path, count: int) -> list[dict[str, Any]]:
    lines = complete_lines(out)
    counts = Counter(line["id"] for line in lines)
    assert counts == Counter(f"p{i}" for i in range(count)), (len(lines), counts.most_common(3))
    return lines


def echo_of(line: dict[str, Any]) -> str:
    return f"echo: Say the number {line['id'][1:]}."


def servers(*urls: str) -> list[str]:
    return [arg for url in urls for arg in ("--base-url", url)]


def on_ray(address: str, *urls: str) -> list[str]:
    """The arguments of a run on the session's cluster, two workers, these servers."""
    return [*servers(*urls), f"--ray={address}", "--workers", "2"]


def test_3000_prompts_on_two_workers_and_two_servers(tmp_path: Path, ray_address: str) -> None:
    count = 3000
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running() as a, running() as b:
        done = run_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url, b.base_url),
            # Every prompt sent once: a straggler raced at the end (on a busy
            # machine) would be a second request (racing: test_ray_racing.py).
            "--hedge-budget",
            "0",
        )
        shares = len(a.chat_requests), len(b.chat_requests)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = each_id_once(out, count)
    assert all(line["error"] is None and line["output"] == echo_of(line) for line in lines)
    assert sum(shares) == count and min(shares) >= count // 4, shares
    assert "ray: 2 workers" in done.stderr and f"{count} of {count} prompts" in done.stderr


def test_a_killed_worker_is_restarted_and_no_id_is_lost_or_doubled(tmp_path: Path, ray_address: str) -> None:
    count = 600
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    # 5 tokens at 40 ms each: the run lasts seconds, with prompts in flight on both workers.
    with running(token_time=0.04) as a, running(token_time=0.04) as b:
        proc = start_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url, b.base_url),
            "-c",
            "16",
        )
        try:
            wait_for_results(out, 50, proc)
            # This run's own: a process titled ray::BatchWorker may be another session's.
            victim = streaming_workers(a.port, b.port)[0]
            os.kill(victim, signal.SIGKILL)
        finally:
            code, _, err = finish(proc)
        disconnects = a.disconnects + b.disconnects
    assert code == 0, err
    assert not alive(victim)
    lines = each_id_once(out, count)
    assert all(line["error"] is None and line["output"] == echo_of(line) for line in lines)
    assert "ran again after a worker died" in err
    assert disconnects >= 1  # the dead worker's streams were cut, and the servers saw it


def test_a_server_stopped_mid_run_loses_no_prompt(tmp_path: Path, ray_address: str) -> None:
    count = 600
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"

    def answers_then_hangs(record: Any) -> Any:
        # Serves its first requests, then holds the next ones before any byte:
        # when it dies they have produced no content, so they must move.
        return ok() if record.index < 60 else stall_before_headers()

    with running(rule=answers_then_hangs) as doomed, running(token_time=0.02) as healthy:
        proc = start_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, doomed.base_url, healthy.base_url),
            "-c",
            "8",
        )
        try:
            doomed.wait_for(lambda s: s.in_flight >= 4, EVENT_TIMEOUT, "requests held by the doomed server")
            held = {r.prompt for r in doomed.chat_requests if r.status is None}
            doomed.crash()
        finally:
            code, _, err = finish(proc)
        answered = Counter(r.prompt for r in healthy.chat_requests if r.status == 200)
    assert code == 0, err
    assert_clean(err)
    lines = each_id_once(out, count)
    assert all(line["error"] is None and line["output"] == echo_of(line) for line in lines)
    assert held and all(answered[prompt] == 1 for prompt in held)
    assert "out of rotation" in err


def test_a_killed_driver_loses_nothing_and_the_rerun_writes_each_id_once(
    tmp_path: Path, ray_address: str
) -> None:
    count = 600
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running(token_time=0.04) as a, running(token_time=0.04) as b:
        argv = (
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url, b.base_url),
        )
        proc = start_motio(*argv, "-c", "16")
        wait_for_results(out, 100, proc)
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        kept = len(complete_lines(out))
        done = run_motio(*argv)
    assert done.returncode == 0, done.stderr
    each_id_once(out, count)
    # Every line the killed driver had written counts as done; nothing was lost.
    assert kept >= 100 and f"{kept} already done" in done.stderr


def test_a_bad_line_is_reported_and_the_others_run(tmp_path: Path, ray_address: str) -> None:
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(
        '{"id": "p0", "prompt": "Say the number 0."}\n{"id": 1, "prompt": \n{"id": "p1", "prompt": "Say the number 1."}\n'
    )
    with running() as a:
        done = run_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url),
        )
    assert done.returncode == 1, done.stderr
    assert f"{prompts}:2: malformed JSON" in done.stderr
    each_id_once(out, 2)


def test_an_unreachable_cluster_is_one_line_and_exit_3(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    with running() as a:
        started = time.monotonic()
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", a.base_url, f"--ray={address}", timeout=EVENT_TIMEOUT
        )
        took = time.monotonic() - started
        assert not a.chat_requests
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and f"cannot reach the Ray cluster at {address}" in done.stderr
    assert not out.exists()
    assert took < 20  # not Ray's own minutes of retrying


def test_rpm_holds_for_all_workers_together(tmp_path: Path, ray_address: str) -> None:
    count, rpm = 50, 600  # 10 a second, a burst of 10: 4 s at the limit
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running() as a:
        done = run_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url),
            "--rpm",
            str(rpm),
        )
        arrivals = sorted(r.arrived for r in a.chat_requests)
    assert done.returncode == 0, done.stderr
    each_id_once(out, count)
    # Over any second, at most the burst plus a second's rate, 20 (and some
    # slack for a worker that stalls and then sends what it was granted):
    # two workers each at 600/min would send 40.
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= 28, busiest
    assert arrivals[-1] - arrivals[0] >= (count - 10) / 10 - 0.5


def test_adaptive_concurrency_is_one_limit_for_all_workers(tmp_path: Path, ray_address: str) -> None:
    count = 400
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    # auto:8 bounds the cluster at 8 on the server; each worker alone could reach 8.
    with running(token_time=0.01) as a:
        done = run_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url),
            "-c",
            "auto:8",
        )
        most = a.max_in_flight
    assert done.returncode == 0, done.stderr
    each_id_once(out, count)
    assert most <= 8, most


def test_ctrl_c_keeps_what_was_written_and_the_rerun_completes(tmp_path: Path, ray_address: str) -> None:
    count = 600
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running(token_time=0.04) as a:
        argv = (
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url),
        )
        proc = start_motio(*argv, "-c", "8")
        wait_for_results(out, 50, proc)
        code, _, err = interrupt(proc)
        kept = len(complete_lines(out))
        done = run_motio(*argv)
    assert code == 130, err
    assert_clean(err)
    assert f"interrupted: {kept} new results saved" in err
    assert done.returncode == 0, done.stderr
    each_id_once(out, count)


def test_ray_without_an_address_starts_a_local_instance(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 200), tmp_path / "out.jsonl"
    with running() as a:
        done = run_motio("run", prompts, "-o", out, "--base-url", a.base_url, "--ray", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    each_id_once(out, 200)
    assert "ray: 2 workers" in done.stderr


def test_an_openai_batch_file_on_ray_gives_batch_output_each_custom_id_once(
    tmp_path: Path, ray_address: str
) -> None:
    count = 300
    prompts, out = tmp_path / "b.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "scripted-model", "messages": [{"role": "user", "content": f"q{i}"}]}})
            + "\n"
            for i in range(count)
        )
    )  # fmt: skip
    with running() as a, running() as b:
        done = run_motio(
            "run",
            prompts,
            "-o",
            out,
            *on_ray(ray_address, a.base_url, b.base_url),
        )
    assert done.returncode == 0, done.stderr
    assert "format: OpenAI Batch" in done.stderr
    lines = complete_lines(out)
    assert Counter(line["custom_id"] for line in lines) == Counter(f"c{i}" for i in range(count))
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert (
            line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: q{line['custom_id'][1:]}"
        )


def test_stdin_to_stdout_on_ray(tmp_path: Path, ray_address: str) -> None:
    count = 200
    text = "".join(json.dumps({"id": f"p{i}", "prompt": f"Say the number {i}."}) + "\n" for i in range(count))
    with running() as a:
        done = run_motio(
            "run",
            "-",
            "-o",
            "-",
            *on_ray(ray_address, a.base_url),
            input=text,
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    assert all(line["output"] == echo_of(line) for line in lines)
