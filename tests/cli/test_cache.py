"""``motio run --cache``: a request answered before is not sent again, across runs, files and processes.

The scripted server records every request, so "sent" is counted where it
would be paid for.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from motio.data import ResponseCache
from tests.servers.scripted import ScriptedServer, invalid_json_then_valid, running, status

from .conftest import assert_clean, complete_lines, finish, motio_env, run_motio, start_motio, write_prompts


def run_cached(
    server: ScriptedServer, prompts: Path, out: Path, cache: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "--cache", cache, *extra)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    return done


def test_a_second_identical_run_sends_nothing(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 20)
    cache = tmp_path / "cache.sqlite3"
    first = run_cached(server, prompts, tmp_path / "first.jsonl", cache)
    assert len(server.chat_requests) == 20
    assert "from the cache: 0 of 20 answers" in first.stderr
    second = run_cached(server, prompts, tmp_path / "second.jsonl", cache)
    assert len(server.chat_requests) == 20  # nothing more sent
    assert "from the cache: 20 of 20 answers" in second.stderr
    before = {line["id"]: line for line in complete_lines(tmp_path / "first.jsonl")}
    # Every line begins with "id", cached or not (how a torn last line is told apart).
    assert all(raw.startswith('{"id"') for raw in (tmp_path / "second.jsonl").read_text().splitlines())
    for line in complete_lines(tmp_path / "second.jsonl"):
        assert line["cached"] is True
        assert line["output"] == before[line["id"]]["output"]
        assert line["usage"] == before[line["id"]]["usage"]
        assert line["error"] is None and line["ttfb_ms"] is None
    assert all("cached" not in line for line in before.values())
    # Answers from the cache cost nothing: no tokens counted for a model.
    assert "prompt +" not in second.stderr and "0 completion tokens" in second.stderr


def test_editing_ten_rows_sends_ten(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 100)
    cache = tmp_path / "cache.sqlite3"
    run_cached(server, prompts, tmp_path / "first.jsonl", cache)
    assert len(server.chat_requests) == 100
    lines = [json.loads(line) for line in prompts.read_text().splitlines()]
    for line in lines[::10]:
        line["prompt"] += " Edited."
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = run_cached(server, prompts, tmp_path / "second.jsonl", cache)
    sent = server.chat_requests[100:]
    assert len(sent) == 10
    assert sorted(r.prompt for r in sent) == sorted(line["prompt"] for line in lines[::10])
    assert "from the cache: 90 of 100 answers" in done.stderr
    by_id = {line["id"]: line for line in complete_lines(tmp_path / "second.jsonl")}
    assert len(by_id) == 100
    assert by_id["p0"]["output"] == "echo: Say the number 0. Edited." and "cached" not in by_id["p0"]
    assert by_id["p1"]["cached"] is True


def test_a_changed_option_is_another_request(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    cache = tmp_path / "cache.sqlite3"
    run_cached(server, prompts, tmp_path / "a.jsonl", cache, "--temperature", "0.7")
    run_cached(server, prompts, tmp_path / "b.jsonl", cache, "--temperature", "0.7")
    assert len(server.chat_requests) == 3  # temperature > 0 is cached too: reruns, not sampling
    run_cached(server, prompts, tmp_path / "c.jsonl", cache, "--temperature", "0.5")
    run_cached(server, prompts, tmp_path / "d.jsonl", cache, "--temperature", "0.5", "--max-tokens", "2")
    assert len(server.chat_requests) == 9
    run_cached(server, prompts, tmp_path / "e.jsonl", cache, "--temperature", "0.5", "--chunk-timeout", "30")
    assert len(server.chat_requests) == 9  # how long to wait is not what is asked


def test_the_schema_is_part_of_the_request_and_parsed_is_cached(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    cache = tmp_path / "cache.sqlite3"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"answer": {"type": "string"}}}))
    with running(rule=invalid_json_then_valid()) as server:
        first = run_cached(server, prompts, tmp_path / "a.jsonl", cache, "--json-schema", str(schema))
        assert len(server.chat_requests) == 8
        second = run_cached(server, prompts, tmp_path / "b.jsonl", cache, "--json-schema", str(schema))
        assert len(server.chat_requests) == 8
    assert "invalid answers: 4 (4 re-asks" in first.stderr
    assert "invalid answers: 0 (0 re-asks" in second.stderr
    for line in complete_lines(tmp_path / "b.jsonl"):
        assert line["cached"] is True and line["reasks"] == 0
        assert line["parsed"] == {"answer": f"Say the number {line['id'][1:]}."}


def test_cache_without_a_path_uses_the_default_location(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    env = motio_env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for out in ("a.jsonl", "b.jsonl"):
        # --cache alone before the prompts: the word after it is the prompts file.
        url = server.base_url
        done = run_motio("run", "--cache", prompts, "-o", tmp_path / out, "--base-url", url, env=env)
        assert done.returncode == 0, done.stderr
    assert len(server.chat_requests) == 2
    default = tmp_path / "xdg" / "motio" / "responses.sqlite3"
    assert f"from the cache: 2 of 2 answers ({default})" in done.stderr
    with ResponseCache(default) as cache:
        assert len(cache) == 2


def test_failures_are_not_cached(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    cache = tmp_path / "cache.sqlite3"
    server.rule = lambda record: status(400)
    url = server.base_url
    done = run_motio("run", prompts, "-o", tmp_path / "a.jsonl", "--base-url", url, "--cache", cache)
    assert done.returncode == 1
    server.rule = None
    run_cached(server, prompts, tmp_path / "b.jsonl", cache)
    assert [line["output"] for line in complete_lines(tmp_path / "b.jsonl")] == ["echo: Say the number 0."]
    assert len(server.chat_requests) == 2


def test_two_processes_at_once_share_the_cache(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 300)
    cache = tmp_path / "cache.sqlite3"
    with running(token_time=0.001) as server:
        procs = [
            start_motio(
                "run", prompts, "-o", tmp_path / f"out{i}.jsonl", "--base-url", server.base_url,
                "--cache", cache, "--concurrency", "16",
            )  # fmt: skip
            for i in range(2)
        ]
        for proc in procs:
            code, _, err = finish(proc)
            assert code == 0, err
            assert_clean(err)
        sent = len(server.chat_requests)
        # Each prompt is sent at most once per process, and at least once.
        assert 300 <= sent <= 600
        for i in range(2):
            lines = complete_lines(tmp_path / f"out{i}.jsonl")
            assert sorted(line["id"] for line in lines) == sorted(f"p{n}" for n in range(300))
            assert all(line["output"] == f"echo: Say the number {line['id'][1:]}." for line in lines)
        with closing(sqlite3.connect(cache)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with ResponseCache(cache) as opened:
            assert len(opened) == 300
        # Nothing lost: a third run finds every answer.
        run_cached(server, prompts, tmp_path / "third.jsonl", cache)
        assert len(server.chat_requests) == sent
