"""``motio run --json-schema``: answers checked, re-asked, parsed; the summary's counts.

Against the scripted server's JSON rules (tests/servers/scripted.py): one
answers each prompt first with text that is not JSON, then valid JSON; the
other never answers JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.servers.scripted import JsonAnswers, invalid_json_then_valid, never_valid_json, running

from tests.data.test_imports import loaded_after

from .conftest import assert_clean, complete_lines, run_motio, write_prompts

NOWHERE = "http://127.0.0.1:9/v1"  # never reached: these runs stop before sending
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def schema_file(tmp_path: Path, schema: dict[str, Any] = SCHEMA) -> Path:
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(schema))
    return path


def prompt_of(i: int) -> str:
    return f"Say the number {i}."


def test_one_reask_each_then_parsed(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    out = tmp_path / "out.jsonl"
    with running(rule=invalid_json_then_valid()) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url, "--json-schema", schema_file(tmp_path)
        )
        requests = server.chat_requests
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert len(requests) == 10  # one re-ask each
    by_id = {line["id"]: line for line in complete_lines(out)}
    for i in range(5):
        line = by_id[f"p{i}"]
        assert line["error"] is None
        assert line["parsed"] == JsonAnswers.valid(prompt_of(i))
        assert json.loads(line["output"]) == line["parsed"]
        assert line["reasks"] == 1
    first_keys = [list(json.loads(raw))[:3] for raw in out.read_text().splitlines()]
    assert first_keys == [["id", "output", "parsed"]] * 5
    # Each prompt's first request asks for the schema; its re-ask carries the
    # invalid answer and the complaint after the prompt.
    for record in requests:
        assert record.body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        }
    reasks = [r.body["messages"] for r in requests if len(r.body["messages"]) > 1]
    assert len(reasks) == 5
    for messages in reasks:
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"].startswith("not JSON: ")
        assert "not valid JSON" in messages[2]["content"]
    assert "invalid answers: 5 (5 re-asks; 0 prompts left with InvalidOutput)" in done.stderr
    assert "5 of 5 prompts" in done.stderr and "5 ok, 0 failed" in done.stderr


def test_usage_adds_up_every_answer(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    out = tmp_path / "out.jsonl"
    with running(rule=invalid_json_then_valid()) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url, "--json-schema", schema_file(tmp_path)
        )
    assert done.returncode == 0, done.stderr
    [line] = complete_lines(out)
    # Two answers of two chunks each: the re-ask is paid for, and counted.
    assert line["usage"]["completion_tokens"] == 4
    model = line["model"]
    prompt_tokens = line["usage"]["prompt_tokens"]
    assert f"{model}: {prompt_tokens:,} prompt + 4 completion tokens" in done.stderr


def test_invalid_output_after_the_bound(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    with running(rule=never_valid_json()) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url,
            "--json-schema", schema_file(tmp_path), "--max-invalid", "3",
        )  # fmt: skip
        requests = len(server.chat_requests)
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    assert requests == 3 * 4  # the answer and 3 re-asks each
    for line in complete_lines(out):
        assert line["error"]["type"] == "InvalidOutput"
        assert "not valid JSON" in line["error"]["message"]
        assert line["output"].startswith("not JSON: ")  # the last answer, kept
        assert line["parsed"] is None
        assert line["reasks"] == 3
    assert "invalid answers: 12 (9 re-asks; 3 prompts left with InvalidOutput)" in done.stderr
    assert "InvalidOutput" in done.stderr


def test_default_bound_is_two_reasks(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    out = tmp_path / "out.jsonl"
    with running(rule=never_valid_json()) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url, "--json-schema", schema_file(tmp_path)
        )
        assert len(server.chat_requests) == 3
    assert done.returncode == 1, done.stderr
    [line] = complete_lines(out)
    assert line["error"]["type"] == "InvalidOutput" and line["reasks"] == 2


def test_max_invalid_zero_never_reasks(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with running(rule=invalid_json_then_valid()) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url,
            "--json-schema", schema_file(tmp_path), "--max-invalid", "0",
        )  # fmt: skip
        assert len(server.chat_requests) == 2
    assert done.returncode == 1
    assert {line["error"]["type"] for line in complete_lines(out)} == {"InvalidOutput"}


def test_no_reask_feedback_sends_the_same_messages(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with running(rule=invalid_json_then_valid()) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url,
            "--json-schema", schema_file(tmp_path), "--no-reask-feedback",
        )  # fmt: skip
        requests = server.chat_requests
    assert done.returncode == 0, done.stderr
    assert len(requests) == 4
    assert all(len(r.body["messages"]) == 1 for r in requests)
    assert all(line["reasks"] == 1 and line["parsed"] for line in complete_lines(out))


def test_a_schema_breach_is_invalid_too(tmp_path: Path) -> None:
    # Valid JSON, but the schema wants an integer: every answer breaks it.
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    out = tmp_path / "out.jsonl"
    with running(rule=invalid_json_then_valid(0)) as server:
        done = run_motio(
            "run", prompts, "-o", out, "--base-url", server.base_url,
            "--json-schema", schema_file(tmp_path, schema), "--max-invalid", "1",
        )  # fmt: skip
        [first, again] = server.chat_requests
    assert done.returncode == 1
    [line] = complete_lines(out)
    assert line["error"]["type"] == "InvalidOutput"
    assert "$.answer" in line["error"]["message"] and "integer" in line["error"]["message"]
    assert "$.answer" in again.body["messages"][-1]["content"]
    # Not strict: an object without additionalProperties false (OpenAI would refuse it strict).
    assert first.body["response_format"]["json_schema"]["strict"] is False


def test_without_a_schema_lines_are_unchanged(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with running() as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert all("response_format" not in r.body for r in server.chat_requests)
    assert done.returncode == 0
    for line in complete_lines(out):
        assert not {"parsed", "reasks", "cached"} & line.keys()
    assert "invalid answers" not in done.stderr and "from the cache" not in done.stderr


def test_bad_schema_files_are_usage_errors(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    out = tmp_path / "out.jsonl"
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope")
    not_a_schema = schema_file(tmp_path, {"type": 12})
    for schema, expected in (
        (not_json, "not a JSON file"),
        (not_a_schema, "not a valid JSON schema"),
        (tmp_path / "missing.json", "cannot read"),
    ):
        done = run_motio("run", prompts, "-o", out, "--base-url", NOWHERE, "--json-schema", schema)
        assert done.returncode == 2, done.stderr
        assert "--json-schema" in done.stderr and expected in done.stderr
    assert not out.exists()


def test_flags_that_need_a_schema(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    for flag in (("--max-invalid", "1"), ("--no-reask-feedback",)):
        done = run_motio("run", prompts, "-o", tmp_path / "out.jsonl", "--base-url", NOWHERE, *flag)
        assert done.returncode == 2
        assert "need --json-schema" in done.stderr


def test_anthropic_is_refused_at_start_up(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    out = tmp_path / "out.jsonl"
    with running() as server:
        done = run_motio(
            "run", prompts, "-o", out, "--backend", "anthropic", "--base-url", server.base_url,
            "--json-schema", schema_file(tmp_path),
        )  # fmt: skip
        assert server.chat_requests == []
    assert done.returncode == 2
    assert "anthropic backend has no way to ask for a JSON schema" in done.stderr
    assert not out.exists()


def test_an_openai_batch_file_is_refused(tmp_path: Path) -> None:
    prompts = tmp_path / "batch.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    prompts.write_text(json.dumps(line))
    done = run_motio(
        "run", prompts, "-o", tmp_path / "out.jsonl", "--base-url", NOWHERE,
        "--json-schema", schema_file(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2
    assert "OpenAI Batch body is sent as written" in done.stderr


def test_a_plain_jsonl_run_loads_no_schema_machinery(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    with running() as server:
        code = (
            "from motio.cli._main import main\n"
            f"assert main(['run', {str(prompts)!r}, '-o', {str(tmp_path / 'out.jsonl')!r}, "
            f"'--base-url', {server.base_url!r}, '-q']) == 0\n"
            "import sys\nassert 'sqlite3' not in sys.modules and 'motio.data._schema' not in sys.modules"
        )
        assert loaded_after(code) == []
    assert len(complete_lines(tmp_path / "out.jsonl")) == 3


def test_the_embedded_model_with_a_schema(tmp_path: Path) -> None:
    # Offline, the default backend: the schema is llama.cpp's grammar, so each
    # answer parses and validates, or is re-asked and then reported.
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
        "required": ["sentiment"],
        "additionalProperties": False,
    }
    prompts = tmp_path / "prompts.jsonl"
    texts = ["Sentiment of: I love it.", "Sentiment of: It broke at once.", "Sentiment of: Superb."]
    prompts.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.jsonl"
    schema_path = schema_file(tmp_path, schema)
    done = run_motio("run", prompts, "-o", out, "--json-schema", schema_path, "--max-tokens", "48")
    assert done.returncode in (0, 1), done.stderr
    assert_clean(done.stderr)
    lines = complete_lines(out)
    assert sorted(line["id"] for line in lines) == [0, 1, 2]
    for line in lines:
        if line["error"] is None:
            assert json.loads(line["output"]) == line["parsed"]
            assert line["parsed"]["sentiment"] in ("positive", "negative")
        else:
            assert line["error"]["type"] == "InvalidOutput" and line["reasks"] == 2
    assert "invalid answers: " in done.stderr
    assert "SmolLM2-135M-Instruct.Q4_1: " in done.stderr and " completion tokens" in done.stderr
