"""``motio run`` on OpenAI Batch files, pass-through fields, and pipes, end to end.

The scripted loopback server records every body it receives and answers
tools with tool-call deltas over several chunks and logprobs per chunk, so
these tests can check that bodies arrive as written and that the output
lines' ``response.body`` equals what the server answers the same request
without streaming.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.servers.scripted import ScriptedServer, ok, running, stall_after, status

from .conftest import (
    COMMAND_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    motio_argv,
    motio_env,
    run_motio,
    start_motio,
    wait_for_results,
)

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def request_line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": f"question {custom_id}"}])
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def write_jsonl(path: Path, objects: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objects))
    return path


def non_streamed(server: ScriptedServer, body: dict[str, Any]) -> dict[str, Any]:
    """What the server answers ``body`` without streaming: the reference object."""
    request = urllib.request.Request(
        server.base_url + "/chat/completions",
        data=json.dumps({**body, "stream": False}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def assert_batch_output_line(line: dict[str, Any]) -> None:
    assert list(line) == ["id", "custom_id", "response", "error"], line
    assert line["id"].startswith("batch_req_")
    assert list(line["response"]) == ["status_code", "request_id", "body"]


REQUESTS = [
    request_line("plain", model="model-a"),
    request_line("json", model="model-b", response_format={"type": "json_object"}, seed=4, top_k=20),
    request_line("tools", model="model-a", tools=TOOLS, tool_choice="auto"),
    request_line("logprobs", model="model-c", logprobs=True, top_logprobs=2, max_completion_tokens=2),
    request_line("embed", url="/v1/embeddings"),
]


def test_a_batch_file_runs_with_every_field_passed_through_and_batch_output(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts, out = write_jsonl(tmp_path / "batch.jsonl", REQUESTS), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 1, done.stderr  # the embeddings line is unsupported; the others ran
    assert_clean(done.stderr)
    assert "batch.jsonl:5: url '/v1/embeddings' is not supported" in done.stderr
    assert "format: OpenAI Batch" in done.stderr and "4 of 4 prompts" in done.stderr
    sent = {r.body["messages"][0]["content"].split()[-1]: r.body for r in server.chat_requests}
    for written in REQUESTS[:4]:
        body = sent[written["custom_id"]]
        assert {key: body[key] for key in written["body"]} == written["body"]  # as written
        assert "max_tokens" not in body  # no motio default forced into a Batch body
    lines = {line["custom_id"]: line for line in complete_lines(out)}
    assert sorted(lines) == ["json", "logprobs", "plain", "tools"]
    for written in REQUESTS[:4]:
        line = lines[written["custom_id"]]
        assert_batch_output_line(line)
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"] == non_streamed(server, written["body"])
    # request_id is the server's x-request-id for the request that answered.
    answered = {f"req_scripted_{r.index}" for r in server.chat_requests if r.status == 200}
    assert all(line["response"]["request_id"] in answered for line in lines.values())
    [call] = lines["tools"]["response"]["body"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert lines["logprobs"]["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert lines["json"]["response"]["body"]["model"] == "model-b"


def test_a_file_mixing_both_shapes_is_an_error_naming_the_line(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts = tmp_path / "mixed.jsonl"
    prompts.write_text(json.dumps(request_line("a")) + "\n" + '{"id": "b", "prompt": "hi"}\n')
    done = run_motio("run", prompts, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url)
    assert done.returncode == 2, done.stderr
    assert "line 2 is a motio line but line 1 is an OpenAI Batch one" in done.stderr
    assert not (tmp_path / "out.jsonl").exists() and not server.chat_requests


def test_a_duplicate_custom_id_runs_once_and_is_reported(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_jsonl(tmp_path / "b.jsonl", [request_line("a"), request_line("b"), request_line("a")])
    out = tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 1
    assert 'b.jsonl:3: duplicate id "a" (first used on line 1); skipped' in done.stderr
    assert sorted(line["custom_id"] for line in complete_lines(out)) == ["a", "b"]


def test_errors_are_batch_errors_and_retry_errors_reruns_them(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "b.jsonl", [request_line(f"r{i}") for i in range(3)])
    out = tmp_path / "out.jsonl"
    with running(rule=lambda r: status(400) if "r1" in r.prompt else None) as server:
        first = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert first.returncode == 1, first.stderr
    failed = [line for line in complete_lines(out) if line["error"] is not None]
    assert [line["custom_id"] for line in failed] == ["r1"]
    assert failed[0]["error"]["code"] == "BadRequestError" and failed[0]["error"]["message"]
    assert failed[0]["response"]["status_code"] == 400
    with running() as server:
        skipped = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert skipped.returncode == 1 and "1 failed before" in skipped.stderr and not server.chat_requests
        retried = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "--retry-errors")
        assert retried.returncode == 0, retried.stderr
        assert len(server.chat_requests) == 1
    lines = complete_lines(out)
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
    assert all(line["error"] is None for line in lines)


def test_kill_9_mid_run_then_resume_in_batch_format_gives_every_custom_id_once(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "b.jsonl", [request_line(f"p{i}", model="m") for i in range(8)])
    out = tmp_path / "out.jsonl"
    with running(default=stall_after(1)) as server:
        server.script(*[ok()] * 3)
        proc = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        wait_for_results(out, 3, proc)
        proc.kill()
        finish(proc)
    with out.open("ab") as tail:
        tail.write(b'{"id":"batch_req_0","custom_id":"p7","respo')  # a write cut short
    with running() as server:
        resumed = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert resumed.returncode == 0, resumed.stderr
        assert "cut off a torn last line" in resumed.stderr
        assert len(server.chat_requests) == 5
    lines = complete_lines(out)
    assert sorted(line["custom_id"] for line in lines) == [f"p{i}" for i in range(8)]
    for line in lines:
        assert_batch_output_line(line)


def test_a_results_file_of_the_other_shape_is_refused(tmp_path: Path, server: ScriptedServer) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "output": "x", "error": null}\n')
    prompts = write_jsonl(tmp_path / "b.jsonl", [request_line("a")])
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 2 and "holds motio results but the prompts are OpenAI Batch" in done.stderr


def test_own_lines_pass_fields_through_and_keep_tool_calls_and_logprobs(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"id": "t", "prompt": "weather", "tools": TOOLS, "note": "not sent"}) + "\n"
        + json.dumps({"id": "l", "prompt": "hi", "logprobs": True, "stop": ["x"], "top_p": 0.5}) + "\n"
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "--extra-body", '{"top_k": 5}')
    assert done.returncode == 0, done.stderr
    assert "format: motio" in done.stderr
    bodies = {r.body["messages"][0]["content"]: r.body for r in server.chat_requests}
    assert bodies["weather"]["tools"] == TOOLS and "note" not in bodies["weather"]
    assert bodies["hi"]["stop"] == ["x"] and bodies["hi"]["top_p"] == 0.5 and bodies["hi"]["top_k"] == 5
    assert bodies["weather"]["max_tokens"] == 512  # motio's default for its own lines
    lines = {line["id"]: line for line in complete_lines(out)}
    assert lines["t"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"prompt": "weather"}'}
    assert lines["t"]["finish_reason"] == "tool_calls" and lines["t"]["output"] == ""
    assert [entry["token"] for entry in lines["l"]["logprobs"]["content"]] == ["echo:", " hi"]


def test_stdin_and_stdout_in_a_shell_pipeline(tmp_path: Path, server: ScriptedServer) -> None:
    prompts = write_jsonl(tmp_path / "b.jsonl", [request_line(f"q{i}") for i in range(5)])
    motio = " ".join(map(shlex.quote, motio_argv("run", "-", "-o", "-", "--base-url", server.base_url)))
    sorted_out = shlex.quote(str(tmp_path / "sorted.jsonl"))
    pipeline = f"cat {shlex.quote(str(prompts))} | {motio} | sort > {sorted_out}"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        capture_output=True, text=True, env=motio_env(), timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert "5 of 5 prompts" in done.stderr and "format: OpenAI Batch" in done.stderr  # stderr only
    lines = [json.loads(line) for line in (tmp_path / "sorted.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"q{i}" for i in range(5)]
    for line in lines:
        assert_batch_output_line(line)


def test_stdin_with_a_results_file_resumes_and_stdout_refuses_to(
    tmp_path: Path, server: ScriptedServer
) -> None:
    text = "".join(json.dumps({"id": f"s{i}", "prompt": f"p{i}"}) + "\n" for i in range(4))
    out = tmp_path / "out.jsonl"
    first = run_motio("run", "-", "-o", out, "--base-url", server.base_url, input=text[: len(text) // 2])
    assert first.returncode == 0, first.stderr
    again = run_motio("run", "-", "-o", out, "--base-url", server.base_url, input=text)
    assert again.returncode == 0, again.stderr
    assert "2 already done" in again.stderr
    assert sorted(line["id"] for line in complete_lines(out)) == ["s0", "s1", "s2", "s3"]
    assert len(server.chat_requests) == 4
    refused = run_motio("run", "-", "-o", "-", "--retry-errors", "--base-url", server.base_url, input=text)
    assert refused.returncode == 2 and "there is no resume" in refused.stderr and refused.stdout == ""
    empty = run_motio("run", "-", "-o", "-", "--base-url", server.base_url, input="")
    assert empty.returncode == 0 and "nothing to do" in empty.stderr and empty.stdout == ""


def test_a_slow_producer_on_stdin_never_stalls_the_prompts_in_flight(
    tmp_path: Path, server: ScriptedServer
) -> None:
    out = tmp_path / "out.jsonl"
    proc = start_motio("run", "-", "-o", out, "--base-url", server.base_url, "-c", "4", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request_line("first")) + "\n")
    proc.stdin.flush()
    # The next line comes only once the first is answered: a read of stdin
    # on the event loop would hold the first generation, and this would hang.
    wait_for_results(out, 1, proc)
    proc.stdin.write(json.dumps(request_line("second")) + "\n")
    code, _, err = finish(proc)  # closes stdin: the end of the input
    assert code == 0, err
    assert [line["custom_id"] for line in complete_lines(out)] == ["first", "second"]


def test_stdout_closed_by_the_next_command_stops_the_run_cleanly(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": "x"}) + "\n" for i in range(300)))
    motio = " ".join(map(shlex.quote, motio_argv("run", prompts, "-o", "-", "--base-url", server.base_url)))
    done = subprocess.run(
        ["bash", "-c", f"{motio} | head -1; echo motio exit ${{PIPESTATUS[0]}} >&2"],
        capture_output=True, text=True, env=motio_env(), timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert json.loads(done.stdout)["output"] == "echo: x"
    assert "stdout was closed (the next command of the pipe exited)" in done.stderr
    assert "motio exit 1" in done.stderr
    assert_clean(done.stderr)
