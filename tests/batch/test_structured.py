"""``motio.batch.run(..., response_format=..., cache=...)``: schemas, pydantic models, the cache.

Against the scripted server's JSON rules (tests/servers/scripted.py), and the
real embedded model (SmolLM2) for the grammar path.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from motio import ConfigurationError, UnsupportedOptionError, batch
from motio.backends import AnthropicBackend, LlamaCppBackend, OpenAIBackend
from motio.batch import Engine, PromptRecord
from motio.batch._structured import Answering, cache_body
from motio.data import Parsed, ResponseCache, output_schema
from tests.data.test_imports import loaded_after
from tests.servers.scripted import ScriptedServer, invalid_json_then_valid, never_valid_json, running

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def served(server: ScriptedServer) -> OpenAIBackend:
    return OpenAIBackend(base_url=server.base_url)


def prompts(count: int) -> list[str]:
    return [f"Say the number {i}." for i in range(count)]


@pytest.mark.parametrize(
    "response_format",
    [
        SCHEMA,
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
    ],
    ids=["json-schema", "response-format"],
)
def test_a_schema_or_a_response_format(response_format: dict[str, Any]) -> None:
    with running(rule=invalid_json_then_valid()) as server, served(server) as backend:
        results = list(batch.run(prompts(3), backend, response_format=response_format))
        sent = server.chat_requests
    assert len(sent) == 6
    assert all(r.body["response_format"]["json_schema"]["schema"] == SCHEMA for r in sent)
    for result in results:
        number = int(result["id"].removeprefix("line-")) - 1
        assert result["parsed"] == {"answer": f"Say the number {number}."}
        assert result["reasks"] == 1 and result["error"] is None


def test_a_pydantic_model() -> None:
    pydantic = pytest.importorskip("pydantic")
    answer_model = pydantic.create_model("Answer", answer=(str, ...))
    with running(rule=invalid_json_then_valid()) as server, served(server) as backend:
        [result] = batch.run(prompts(1), backend, response_format=answer_model)
        [first, _] = server.chat_requests
    assert result["parsed"] == {"answer": "Say the number 0."}
    assert first.body["response_format"]["json_schema"]["name"] == "Answer"


def test_invalid_output_after_max_invalid() -> None:
    with running(rule=never_valid_json()) as server, served(server) as backend:
        [result] = batch.run(prompts(1), backend, response_format=SCHEMA, max_invalid=1)
        assert len(server.chat_requests) == 2
    assert result["error"]["type"] == "InvalidOutput"
    assert result["output"] == "not JSON: Say the number 0." and result["parsed"] is None


def test_reask_false_sends_the_same_messages() -> None:
    with running(rule=invalid_json_then_valid()) as server, served(server) as backend:
        [result] = batch.run(prompts(1), backend, response_format=SCHEMA, reask=False)
        assert [len(r.body["messages"]) for r in server.chat_requests] == [1, 1]
    assert result["parsed"] == {"answer": "Say the number 0."}


def test_cache_from_python(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite3"
    with running() as server, OpenAIBackend(base_url=server.base_url) as backend:
        first = list(batch.run(prompts(5), backend, cache=cache))
        again = list(batch.run(prompts(5), backend, cache=cache))
        assert len(server.chat_requests) == 5
    assert all("cached" not in r for r in first) and all(r["cached"] is True for r in again)
    assert sorted(r["output"] for r in first) == sorted(r["output"] for r in again)


def test_cache_true_is_the_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with running() as server, OpenAIBackend(base_url=server.base_url) as backend:
        list(batch.run(prompts(2), backend, cache=True))
        list(batch.run(prompts(2), backend, cache=True))
        assert len(server.chat_requests) == 2
    with ResponseCache(tmp_path / "motio" / "responses.sqlite3") as opened:
        assert len(opened) == 2


def test_refusals() -> None:
    with running() as server:
        with AnthropicBackend(base_url=server.base_url, api_key="k", model="m") as anthropic:
            with pytest.raises(UnsupportedOptionError, match="cannot be asked for a JSON schema"):
                list(batch.run(prompts(1), anthropic, response_format=SCHEMA))
        build = functools.partial(OpenAIBackend, base_url=server.base_url)
        with pytest.raises(ConfigurationError, match="output schema"):
            list(batch.run(prompts(1), build, response_format=42))
        assert server.chat_requests == []


def test_the_cache_key_is_what_is_asked() -> None:
    with running() as server, OpenAIBackend(base_url=server.base_url, model="m") as backend:
        engine = Engine(backend, options={"max_tokens": 5, "chunk_timeout": 3, "extra_body": {"top_k": 2}})
        body = cache_body(engine, PromptRecord("a", 1, "hi", {"temperature": 0.5}))
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "top_k": 2,
    }


def test_a_plain_batch_loads_no_schema_nor_cache_machinery() -> None:
    code = """
from motio import batch
from motio.batch import Engine
assert Engine.__init__ is not None
"""
    assert loaded_after(code) == []


def test_the_engine_without_answering_calls_generate_itself() -> None:
    with running() as server, OpenAIBackend(base_url=server.base_url) as backend:
        plain = Engine(backend)
        checked = Engine(backend, answering=Answering(output_schema(SCHEMA)))
    # No step between the engine and generate() when there is nothing to check.
    assert plain.answer == plain.generate
    assert checked.answer != checked.generate


def test_the_embedded_model_answers_in_the_schema(smollm2_path: Path) -> None:
    # The grammar path: llama.cpp is given the schema as json_object + schema,
    # so every answer parses and validates (or is re-asked, then reported).
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
        "required": ["sentiment"],
        "additionalProperties": False,
    }
    texts = ["I love this film.", "This was awful.", "What a great day!"]
    with LlamaCppBackend(model_path=smollm2_path) as backend:
        results = list(batch.run(texts, backend, response_format=schema, options={"max_tokens": 48}))
    assert len(results) == 3
    validator = output_schema(schema)
    for result in results:
        if result["error"] is None:
            assert result["parsed"] == json.loads(result["output"])
            assert result["parsed"]["sentiment"] in ("positive", "negative")
            checked = validator.validate(result["output"])
            assert isinstance(checked, Parsed) and checked.value == result["parsed"]
        else:
            assert result["error"]["type"] == "InvalidOutput" and result["reasks"] == 2
    assert any(result["error"] is None for result in results)


def test_the_apis_default_bound_is_motio_datas() -> None:
    from motio.batch._api import DEFAULT_MAX_INVALID
    from motio.data import DEFAULT_MAX_INVALID as DATA_DEFAULT

    assert DEFAULT_MAX_INVALID == DATA_DEFAULT == 2
