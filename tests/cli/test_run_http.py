"""``motio run`` end to end against a loopback OpenAI-compatible server.

The server (tests/servers/scripted.py) is real HTTP and reports what it saw, so
these tests can prove concurrency caps, disconnects on Ctrl-C and resumes
deterministically and in well under a second of generation each.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.servers.scripted import (
    RequestRecord,
    ScriptedServer,
    Status,
    gather,
    hold_after,
    ok,
    running,
    stall_after,
    status,
)

from .conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    ids_of,
    interrupt,
    motio_env,
    run_motio,
    start_motio,
    wait_for_results,
    write_prompts,
)


def test_full_run_writes_one_complete_line_per_prompt(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "a", "prompt": "alpha"}\n'
        '{"id": 7, "messages": [{"role": "system", "content": "s"}, '
        '{"role": "user", "content": "beta"}], "max_tokens": 5}\n'
        '{"prompt": "gamma", "temperature": 0.5}\n'
    )
    out = tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = complete_lines(out)
    assert sorted(map(str, ids_of(lines))) == ["7", "a", "line-3"]
    by_id = {line["id"]: line for line in lines}
    assert by_id["a"]["output"] == "echo: alpha"
    assert by_id[7]["output"] == "echo: beta"
    assert by_id["line-3"]["output"] == "echo: gamma"  # id defaults to "line-N"
    for line in lines:
        assert list(line) == [
            "id",
            "output",
            "finish_reason",
            "usage",
            "ttfb_ms",
            "queued_ms",
            "latency_ms",
            "model",
            "retries",
            "attempts",
            "error",
        ]
        assert line["error"] is None and line["finish_reason"] == "stop"
        assert line["attempts"] == 1  # run once: no stream broke
        assert line["model"] == "scripted-model"
        assert line["usage"]["completion_tokens"] == 2  # "echo:", " <word>"
        assert 0 <= line["ttfb_ms"] <= line["latency_ms"]
    # Summary on stderr (stderr is a pipe here, so no progress bar).
    assert "3 of 3 prompts" in done.stderr and "3 ok, 0 failed" in done.stderr
    assert "latency p50" in done.stderr and "first token p50" in done.stderr
    assert "tokens/s" in done.stderr
    assert "\x1b[" not in done.stderr  # no terminal escapes into a pipe
    assert done.stdout == ""


def test_second_run_skips_everything_done(tmp_path: Path, server: ScriptedServer) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 4), tmp_path / "out.jsonl"
    assert run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-q").returncode == 0
    again = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert again.returncode == 0, again.stderr
    assert "4 already done" in again.stderr and "0 of 0 prompts" in again.stderr
    assert len(server.chat_requests) == 4
    assert sorted(ids_of(complete_lines(out))) == [f"p{i}" for i in range(4)]


def test_quiet_prints_nothing_on_success(tmp_path: Path, server: ScriptedServer) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize("cap", [1, 3])
def test_concurrency_cap_is_reached_and_never_exceeded(tmp_path: Path, cap: int) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", cap * 4), tmp_path / "out.jsonl"
    with running(default=gather(cap)) as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", str(cap), "-q")
        requests, max_in_flight = len(server.chat_requests), server.max_in_flight
    assert done.returncode == 0, done.stderr
    assert requests == cap * 4
    # The server holds each round until `cap` requests are in flight together,
    # so reaching the cap is guaranteed and exceeding it would show.
    assert max_in_flight == cap
    assert len(complete_lines(out)) == cap * 4


def test_bad_input_lines_are_named_and_the_rest_still_runs(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"id": "ok1", "prompt": "one"}\n'
        '{"id": "broken", "prompt": "two"\n'
        '{"id": "nothing"}\n'
        '{"id": "ok1", "prompt": "again"}\n'
        "\n"
        '{"id": "ok2", "messages": [{"role": "user", "content": "three"}]}\n'
        '{"id": "bad-mt", "prompt": "x", "max_tokens": -3}\n'
    )
    out = tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 1
    assert_clean(done.stderr)
    assert f"{prompts}:2: malformed JSON" in done.stderr
    assert f"{prompts}:3: missing 'prompt' or 'messages'" in done.stderr
    assert f'{prompts}:4: duplicate id "ok1" (first used on line 1)' in done.stderr
    assert f"{prompts}:7: 'max_tokens' must be a positive integer" in done.stderr
    assert "4 bad input lines" in done.stderr
    lines = complete_lines(out)
    assert sorted(ids_of(lines)) == ["ok1", "ok2"]
    assert {line["output"] for line in lines} == {"echo: one", "echo: three"}


def test_failed_prompts_are_recorded_and_retried_only_when_asked(tmp_path: Path) -> None:
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": i, "prompt": "please fail" if i in (1, 3) else f"fine {i}"}) + "\n"
            for i in range(5)
        )
    )
    failing = True

    def fail_marked(request: RequestRecord) -> Status | None:
        return status(500) if failing and "please fail" in request.prompt else None

    with running(rule=fail_marked) as server:
        url = server.base_url
        first = run_motio("run", prompts, "-o", out, "--base-url", url)
        assert first.returncode == 1
        assert_clean(first.stderr)
        assert "3 ok, 2 failed" in first.stderr
        errors = {line["id"]: line["error"] for line in complete_lines(out)}
        assert errors[0] is None and errors[1]["type"] == "ServerError"
        assert "500" in errors[1]["message"] or "asked to fail" in errors[1]["message"]

        failing = False
        skipped = run_motio("run", prompts, "-o", out, "--base-url", url)
        assert skipped.returncode == 1  # failures remain, and are not retried silently
        assert "2 failed before (re-run them with --retry-errors)" in skipped.stderr
        retried = run_motio("run", prompts, "-o", out, "--base-url", url, "--retry-errors")
        assert retried.returncode == 0, retried.stderr
    lines = complete_lines(out)
    assert sorted(ids_of(lines)) == [0, 1, 2, 3, 4]  # each id exactly once
    assert all(line["error"] is None for line in lines)


def test_server_dying_mid_run_stops_the_run_instead_of_failing_every_prompt(
    tmp_path: Path,
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 30), tmp_path / "out.jsonl"
    with running(default=stall_after(1)) as server:
        server.script(*[ok()] * 2)
        proc = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        wait_for_results(out, 2, proc)
        server.wait_for(lambda s: len(s.chat_requests) == 4, EVENT_TIMEOUT)
        server.crash()
        code, _, err = finish(proc, timeout=EVENT_TIMEOUT)
    assert code == 3, err
    assert_clean(err)
    assert "2 new results saved in" in err and "run the same command again to resume" in err
    lines = complete_lines(out)
    # Only what was answered is recorded: the two streams the crash cut were
    # abandoned, not failed, so they get no line and the rerun runs them. The
    # server hangs by arrival order, which is not prompt order (p0's connection
    # may reach it after p2's), so which two were answered is not fixed.
    assert len(lines) == 2 and set(ids_of(lines)) <= {"p0", "p1", "p2", "p3"}
    assert all(line["error"] is None for line in lines)
    with running() as server:
        again = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        assert again.returncode == 0, again.stderr
        assert len(server.chat_requests) == 28
    assert sorted(ids_of(complete_lines(out))) == sorted(f"p{i}" for i in range(30))  # each once


def test_a_key_revoked_mid_run_stops_the_run_and_records_only_answers(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 10), tmp_path / "out.jsonl"
    args = ("run", prompts, "-o", out, "-c", "2", "--api-key-env", "MY_KEY", "--max-retries", "0")
    with running(api_key="old-key", default=hold_after(1)) as server:
        server.script(ok(), ok())
        proc = start_motio(*args, "--base-url", server.base_url, env=motio_env(MY_KEY="old-key"))
        server.wait_for(lambda s: len(s.chat_requests) == 4, EVENT_TIMEOUT)  # p2, p3 held
        server.api_key = "new-key"  # revoked: every later request gets 401
        server.release()
        code, _, err = finish(proc, timeout=EVENT_TIMEOUT)
    assert code == 3, err
    assert_clean(err)
    assert "run the same command again to resume" in err
    lines = complete_lines(out)
    # Answered before the revocation: p0, p1, and p2/p3 unless the first 401
    # came while one was still being read (then it was abandoned, not failed).
    # The 401s themselves are not results.
    assert {"p0", "p1"} <= set(ids_of(lines)) <= {"p0", "p1", "p2", "p3"}
    assert len(lines) == len(set(ids_of(lines)))
    assert all(line["error"] is None for line in lines)
    with running(api_key="new-key") as server:
        again = run_motio(*args, "--base-url", server.base_url, env=motio_env(MY_KEY="new-key"))
        assert again.returncode == 0, again.stderr
    assert sorted(ids_of(complete_lines(out))) == sorted(f"p{i}" for i in range(10))  # each once


def test_unreachable_server_fails_fast_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prompts, out = write_prompts(tmp_path / "p.jsonl", 50), tmp_path / "out.jsonl"
    started = time.monotonic()
    done = run_motio("run", prompts, "-o", out, "--base-url", f"http://127.0.0.1:{port}/v1")
    assert time.monotonic() - started < 30
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("motio: error: ")
    assert f"127.0.0.1:{port}" in done.stderr
    assert complete_lines(out) == []


def test_bad_api_key_fails_fast_and_key_comes_from_the_environment(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    with running(api_key="right-key") as server:
        args = ("run", prompts, "-o", out, "--base-url", server.base_url, "--api-key-env", "MY_KEY")
        wrong = run_motio(*args, env=motio_env(MY_KEY="wrong-key"))
        assert wrong.returncode == 3
        assert wrong.stderr.count("\n") == 1 and wrong.stderr.startswith("motio: error: ")
        assert "401" in wrong.stderr or "key" in wrong.stderr.lower()
        assert "wrong-key" not in wrong.stderr
        unset = run_motio(*args)
        assert unset.returncode == 2
        assert "MY_KEY" in unset.stderr and "not set" in unset.stderr
        right = run_motio(*args, env=motio_env(MY_KEY="right-key"))
        assert right.returncode == 0, right.stderr
    assert len(complete_lines(out)) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("run", "missing.jsonl", "-o", "out.jsonl"), "'missing.jsonl' not found", id="missing-prompts"
        ),
        pytest.param(("run", ".", "-o", "out.jsonl"), "is not a file", id="prompts-is-dir"),
        pytest.param(
            ("run", "p.jsonl", "-o", "no/such/dir/out.jsonl"), "does not exist", id="missing-out-dir"
        ),
        pytest.param(("run", "p.jsonl", "-o", "p.jsonl"), "must not be the prompts file", id="out-is-input"),
        pytest.param(
            ("run", "p.jsonl", "-o", "o.jsonl", "--backend", "llamacpp", "--base-url", "http://x/v1"),
            "need --backend openai",
            id="url-for-llamacpp",
        ),
    ],
)
def test_unusable_paths_and_options_fail_fast_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_prompts(tmp_path / "p.jsonl", 1)
    done = run_motio(*args)
    assert done.returncode == 2
    assert done.stderr.startswith("motio: error: ") and done.stderr.count("\n") == 1
    assert message in done.stderr


def test_ctrl_c_cancels_in_flight_keeps_results_and_says_how_to_resume(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 6), tmp_path / "out.jsonl"
    with running(default=stall_after(1)) as server:
        server.script(*[ok()] * 2)
        proc = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        wait_for_results(out, 2, proc)
        # Both workers are now stuck in streams that will never end.
        server.wait_for(lambda s: len(s.chat_requests) == 4, EVENT_TIMEOUT)

        # Meanwhile a second run on the same results file is refused.
        second = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert second.returncode == 2 and "another motio process" in second.stderr

        code, _, err = interrupt(proc)
        assert code == 130, err
        assert_clean(err)
        assert "interrupted: 2 new results saved" in err
        assert "run the same command again to resume" in err
        # Cancellation reached the source: the server saw both streams dropped.
        server.wait_for(lambda s: s.disconnects == 2, EVENT_TIMEOUT)
    assert len(complete_lines(out)) == 2

    with running() as server:
        resumed = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert resumed.returncode == 0, resumed.stderr
        assert len(server.chat_requests) == 4
    assert sorted(ids_of(complete_lines(out))) == [f"p{i}" for i in range(6)]


def test_kill_9_mid_run_then_resume_gives_every_id_once(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 8), tmp_path / "out.jsonl"
    with running(default=stall_after(1)) as server:
        server.script(*[ok()] * 3)
        proc = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        wait_for_results(out, 3, proc)
        proc.kill()
        finish(proc)
    # What a crash in the middle of a write would leave behind.
    with out.open("ab") as tail:
        tail.write(b'{"id": "p7", "output": "torn')

    with running() as server:
        resumed = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert resumed.returncode == 0, resumed.stderr
        assert "cut off a torn last line" in resumed.stderr
        assert len(server.chat_requests) == 5
    data = out.read_bytes()
    assert data.endswith(b"\n")
    assert sorted(ids_of(complete_lines(out))) == [f"p{i}" for i in range(8)]
