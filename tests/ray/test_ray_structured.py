"""Structured outputs and the response cache on Ray workers: each worker
builds its own validator and cache connection from the driver's recipe."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from motio import batch
from motio.backends import OpenAIBackend
from tests.cli.conftest import assert_clean, complete_lines, run_motio, write_prompts
from tests.servers.scripted import invalid_json_then_valid, running

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def test_schema_and_cache_from_python_on_ray(tmp_path: Path, ray_address: str) -> None:
    cache = tmp_path / "cache.sqlite3"
    texts = [f"Say the number {i}." for i in range(40)]
    with running(rule=invalid_json_then_valid()) as server:
        build = functools.partial(OpenAIBackend, base_url=server.base_url, max_concurrency=8)
        run = functools.partial(
            batch.run, texts, build, ray=ray_address, workers=2, response_format=SCHEMA, cache=cache
        )
        first = list(run())
        sent = len(server.chat_requests)
        again = list(run())
        assert len(server.chat_requests) == sent == 80  # one re-ask each, then nothing sent
    for result in first:
        number = int(result["id"].removeprefix("line-")) - 1
        assert result["parsed"] == {"answer": f"Say the number {number}."} and result["reasks"] == 1
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in first)
    assert all(r["cached"] is True and r["parsed"] for r in again)


def test_the_command_on_ray_counts_reasks_and_cached_answers(tmp_path: Path, ray_address: str) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    cache = tmp_path / "cache.sqlite3"
    summaries = []
    with running(rule=invalid_json_then_valid()) as server:
        for out in ("a.jsonl", "b.jsonl"):
            done = run_motio(
                "run", prompts, "-o", tmp_path / out, "--base-url", server.base_url, f"--ray={ray_address}",
                "--workers", "2", "--json-schema", schema, "--cache", cache,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert_clean(done.stderr)
            summaries.append(done.stderr)
        assert len(server.chat_requests) == 60
    assert "invalid answers: 30 (30 re-asks; 0 prompts left with InvalidOutput)" in summaries[0]
    assert "from the cache: 0 of 30 answers" in summaries[0]
    assert "invalid answers: 0 (0 re-asks; 0 prompts left with InvalidOutput)" in summaries[1]
    assert "from the cache: 30 of 30 answers" in summaries[1]
    first = {line["id"]: line for line in complete_lines(tmp_path / "a.jsonl")}
    assert len(first) == 30 and all(line["reasks"] == 1 and line["parsed"] for line in first.values())
