"""OpenAI Batch files in motio.batch: request lines in, output lines out, resume on both shapes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from motio import BadRequestError
from motio.backends import LlamaCppBackend
from motio.batch import (
    Engine,
    InputProblem,
    MixedFormats,
    PromptFormat,
    PromptRecord,
    ResultsFile,
    batch_line,
    batch_options,
    inspect_results,
    own_view,
    result_outcome,
    scan_prompts,
)

CHAT = "/v1/chat/completions"


def batch_request(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> str:
    body.setdefault("messages", [{"role": "user", "content": f"hello {custom_id}"}])
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + "\n"


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(lines))
    return path


def test_batch_request_lines_become_records_with_their_body(tmp_path: Path) -> None:
    line = batch_request("r1", model="m1", response_format={"type": "json_object"})
    path = write(tmp_path / "b.jsonl", line)
    [record] = scan_prompts(path)
    assert isinstance(record, PromptRecord)
    assert record.id == "r1" and record.fmt is PromptFormat.OPENAI_BATCH
    assert record.body is not None and record.body["model"] == "m1"
    assert record.request == [{"role": "user", "content": "hello r1"}]
    assert pickle.loads(pickle.dumps(record)) == record  # Ray workers receive records


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (batch_request("e", url="/v1/embeddings"), "url '/v1/embeddings' is not supported"),
        (batch_request("e", url="/v1/completions"), "url '/v1/completions' is not supported"),
        (json.dumps({"custom_id": "x", "method": "GET", "url": CHAT, "body": {}}), "method 'GET'"),
        (json.dumps({"custom_id": 5, "url": CHAT, "body": {}}), "'custom_id' must be"),
        (json.dumps({"custom_id": "x", "url": CHAT, "body": []}), "'body' must be a JSON object"),
        (json.dumps({"custom_id": "x", "url": CHAT, "body": {"messages": []}}), "body.messages"),
    ],
    ids=["embeddings", "completions", "get", "int-custom-id", "body-list", "no-messages"],
)
def test_a_bad_batch_line_is_reported_and_the_others_run(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "b.jsonl", batch_request("a"), line.rstrip("\n") + "\n", batch_request("b"))
    first, problem, last = scan_prompts(path)
    assert isinstance(problem, InputProblem) and problem.line == 2 and message in problem.message
    assert isinstance(first, PromptRecord) and isinstance(last, PromptRecord)


def test_a_duplicate_custom_id_is_reported_on_the_later_line(tmp_path: Path) -> None:
    path = write(tmp_path / "b.jsonl", batch_request("a"), batch_request("a"))
    first, problem = scan_prompts(path)
    assert isinstance(first, PromptRecord)
    assert isinstance(problem, InputProblem) and "duplicate id" in problem.message and problem.line == 2


@pytest.mark.parametrize("own_first", [True, False], ids=["own-then-batch", "batch-then-own"])
def test_a_file_mixing_both_shapes_names_the_first_line_that_differs(tmp_path: Path, own_first: bool) -> None:
    own, batch = '{"id": "x", "prompt": "hi"}\n', batch_request("y")
    lines = [own, "not json\n", own.replace('"x"', '"z"'), batch] if own_first else [batch, own]
    path = write(tmp_path / "mixed.jsonl", *lines)
    with pytest.raises(MixedFormats) as caught:
        list(scan_prompts(path))
    assert caught.value.line == (4 if own_first else 2) and caught.value.first_line == 1
    assert f"line {caught.value.line} is" in str(caught.value)


def test_own_lines_forward_chat_completion_fields_and_ignore_other_keys(tmp_path: Path) -> None:
    fields = {"response_format": {"type": "json_object"}, "tools": [{"type": "function"}], "stop": ["\n"],
              "top_p": 0.5, "logprobs": True, "max_tokens": 3}  # fmt: skip
    path = write(tmp_path / "p.jsonl", json.dumps({"id": 1, "prompt": "p", "note": "mine", **fields}) + "\n")
    [record] = scan_prompts(path)
    assert isinstance(record, PromptRecord) and record.options == fields and record.fmt is PromptFormat.MOTIO


def test_a_batch_body_is_sent_as_given_and_the_command_line_only_fills_in() -> None:
    body = {"model": "m", "messages": [], "stream": True, "max_completion_tokens": 7, "top_k": 3, "n": 2}
    fill = {"max_tokens": 512, "temperature": 0.2, "seed": 1, "extra_body": {"top_k": 9, "x": 1}}
    options = batch_options(body, fill)
    assert options == {"temperature": 0.2, "seed": 1, "model": "m", "max_completion_tokens": 7, "n": 2,
                       "extra_body": {"top_k": 3, "x": 1}, "keep_response": True}  # fmt: skip


def test_engine_defaults_apply_to_own_lines_only() -> None:
    backend = LlamaCppBackend("/nowhere.gguf")  # builds no model: never asked to generate here
    engine = Engine(backend, options={"seed": 1}, defaults={"max_tokens": 512})
    own = PromptRecord("a", 1, "hi", {"temperature": 0})
    batch = PromptRecord("b", 2, [], {}, PromptFormat.OPENAI_BATCH, {"messages": [], "model": "m"})
    assert engine.options_for(own) == {"max_tokens": 512, "seed": 1, "temperature": 0}
    assert engine.options_for(batch) == {"seed": 1, "model": "m", "keep_response": True}


def test_batch_output_lines_have_the_batch_api_shape() -> None:
    own = {"id": "r", "output": "hi", "error": None, "latency_ms": 5.0}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    ok = batch_line("r", own, body, None)
    assert list(ok) == ["id", "custom_id", "response", "error"] and ok["id"].startswith("batch_req_")
    assert ok["response"] == {"status_code": 200, "request_id": "chatcmpl-1", "body": body}
    # The server's x-request-id, when it sent one, is the request's id.
    assert batch_line("r", own, body, None, "req_42")["response"]["request_id"] == "req_42"
    assert own_view(ok) is own and json.loads(json.dumps(ok)) == dict(ok)  # `own` is never written
    assert pickle.loads(pickle.dumps(ok)).own == own
    failed = batch_line("r", own, None, BadRequestError("bad tools", status_code=400))
    assert failed["error"] == {"code": "BadRequestError", "message": "bad tools"}
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["message"] == "bad tools"
    assert result_outcome(ok)[:2] == ('"r"', True) and result_outcome(failed)[:2] == ('"r"', False)


def test_resume_reads_batch_output_lines(tmp_path: Path) -> None:
    own = {"id": "x", "output": "", "error": None}
    response = {"status_code": 500, "request_id": None, "body": {}}
    served_error = {"id": "batch_req_3", "custom_id": "c", "response": response, "error": None}
    out = tmp_path / "out.jsonl"
    results = ResultsFile.open(out)
    try:
        results.append(batch_line("a", own, {"id": "1"}, None))
        results.append(batch_line("b", own, None, TimeoutError("slow")))
        results.append(served_error)
    finally:
        results.close()
    state = inspect_results(out)
    assert state.done == {'"a"'} and state.failed == {'"b"', '"c"'} and state.formats == {"openai-batch"}
    again = ResultsFile.open(out)
    try:
        assert again.drop_failed({'"b"'}) == 1
    finally:
        again.close()
    assert inspect_results(out).failed == {'"c"'}


def test_a_batch_line_says_attempts_only_when_the_prompt_ran_more_than_once() -> None:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    once = batch_line("r", {"id": "r", "output": "hi", "error": None, "attempts": 1}, body, None)
    again = batch_line("r", {"id": "r", "output": "hi", "error": None, "attempts": 2}, body, None)
    assert list(once) == ["id", "custom_id", "response", "error"]
    assert list(again) == ["id", "custom_id", "response", "error", "attempts"] and again["attempts"] == 2
    assert result_outcome(again) == ('"r"', True, "openai-batch")  # resume reads it as before
