"""``motio run``/``chat`` against real models: embedded llama.cpp and its server.

Model text is not asserted, only structure: non-empty output, token counts
within the budget, one line per id. Budgets are tiny to keep CI quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import (
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

pytestmark = pytest.mark.integration

_TINY = ("--max-tokens", "8", "--temperature", "0", "--seed", "1")

# Two at a time against the llama_server fixtures: enough to overlap requests
# (the server queues them); the cap itself is proven in test_run_http.py.
_TWO_AT_A_TIME = ("--concurrency", "2")


def assert_results(lines: list[dict[str, Any]], ids: list[str], max_tokens: int) -> None:
    assert sorted(ids_of(lines)) == sorted(ids)
    for line in lines:
        assert line["error"] is None, line
        assert line["output"].strip()
        assert line["finish_reason"] in ("stop", "length")
        assert 1 <= line["usage"]["completion_tokens"] <= max_tokens
        assert line["model"]
        assert 0 <= line["ttfb_ms"] <= line["latency_ms"]


def test_embedded_model_full_run(tmp_path: Path, smollm2_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, *_TINY)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert_results(complete_lines(out), ["p0", "p1", "p2"], 8)
    assert "3 ok, 0 failed" in done.stderr


def test_embedded_model_chat_streams_to_stdout(smollm2_path: Path) -> None:
    done = run_motio("chat", "Say hello.", "--system", "You are terse.", *_TINY)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert done.stdout.strip() and done.stdout.endswith("\n")


def test_embedded_model_ctrl_c_then_resume(tmp_path: Path, smollm2_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 6), tmp_path / "out.jsonl"
    # A larger budget for the first run, so Ctrl-C lands mid-generation.
    proc = start_motio("run", prompts, "-o", out, "--max-tokens", "48", "--temperature", "0")
    wait_for_results(out, 1, proc)
    code, _, err = interrupt(proc)
    assert code == 130, err
    assert_clean(err)
    assert "run the same command again to resume" in err
    kept = complete_lines(out)
    assert 1 <= len(kept) < 6
    resumed = run_motio("run", prompts, "-o", out, *_TINY)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(kept)} already done" in resumed.stderr
    assert sorted(ids_of(complete_lines(out))) == [f"p{i}" for i in range(6)]


def test_llama_server_full_run(tmp_path: Path, llama_server: Any) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 4), tmp_path / "out.jsonl"
    done = run_motio(
        "run",
        prompts,
        "-o",
        out,
        "--base-url",
        llama_server.base_url,
        "--model",
        llama_server.model,
        *_TWO_AT_A_TIME,
        *_TINY,
    )
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = complete_lines(out)
    assert_results(lines, [f"p{i}" for i in range(4)], 8)
    assert {line["model"] for line in lines} == {llama_server.model}


def test_llama_server_kill_9_mid_run_then_resume(tmp_path: Path, llama_server: Any) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 12), tmp_path / "out.jsonl"
    args = ("--base-url", llama_server.base_url, *_TWO_AT_A_TIME, "--temperature", "0")
    proc = start_motio("run", prompts, "-o", out, *args, "--max-tokens", "32")
    wait_for_results(out, 2, proc)
    proc.kill()
    finish(proc)
    assert len(complete_lines(out)) < 12
    resumed = run_motio("run", prompts, "-o", out, *args, "--max-tokens", "8")
    assert resumed.returncode == 0, resumed.stderr
    lines = complete_lines(out)
    assert sorted(ids_of(lines)) == sorted(f"p{i}" for i in range(12))  # each exactly once
    assert all(line["error"] is None for line in lines)


def test_llama_server_api_key_from_environment(tmp_path: Path, llama_server_with_key: Any) -> None:
    server = llama_server_with_key
    prompts, out = write_prompts(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    args = (
        "run",
        prompts,
        "-o",
        out,
        "--base-url",
        server.base_url,
        "--api-key-env",
        "LLAMA_KEY",
        *_TWO_AT_A_TIME,
        *_TINY,
    )
    wrong = run_motio(*args, env=motio_env(LLAMA_KEY="not-the-key"))
    assert wrong.returncode == 3
    assert wrong.stderr.startswith("motio: error: ") and wrong.stderr.count("\n") == 1
    right = run_motio(*args, env=motio_env(LLAMA_KEY=server.api_key))
    assert right.returncode == 0, right.stderr
    assert len(complete_lines(out)) == 2


def test_unreachable_server_fixture_fails_fast(tmp_path: Path, closed_port_url: str) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 20), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", closed_port_url, timeout=60)
    assert done.returncode == 3
    assert done.stderr.startswith("motio: error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_embedded_model_runs_a_batch_file_and_refuses_what_it_cannot_honour(
    tmp_path: Path, smollm2_path: Path
) -> None:
    import json

    def request(custom_id: str, **body: Any) -> str:
        messages = [{"role": "user", "content": "Say hi."}]
        body = {"messages": messages, "max_tokens": 6, "temperature": 0, **body}
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
        return json.dumps(line)

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    prompts, out = tmp_path / "b.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(request("plain") + "\n" + request("tools", tools=tools) + "\n")
    done = run_motio("run", prompts, "-o", out)
    assert done.returncode == 1, done.stderr  # the tools line failed, clearly
    assert_clean(done.stderr)
    lines = {line["custom_id"]: line for line in complete_lines(out)}
    body = lines["plain"]["response"]["body"]
    assert lines["plain"]["error"] is None and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].strip() and body["usage"]["completion_tokens"] <= 6
    assert lines["tools"]["error"]["code"] == "UnsupportedOptionError"
    assert "tools" in lines["tools"]["error"]["message"]
