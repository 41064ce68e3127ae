"""Output schemas: response_format bodies, validation, the re-ask, InvalidOutput; on the real embedded model too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest

from motio import ConfigurationError, InvalidOutput, MotioError
from motio.backends import LlamaCppBackend
from motio.data import Invalid, OutputSchema, Parsed, Template, output_schema
from motio.data._schema import strict_compatible

LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}, "score": {"type": "integer"}},
    "required": ["label", "score"],
    "additionalProperties": False,
}


class Sentiment(pydantic.BaseModel):
    label: Literal["pos", "neg"]
    score: int


def test_the_openai_response_format_from_a_schema_file(tmp_path: Path) -> None:
    path = tmp_path / "sentiment label.json"
    path.write_text(json.dumps(LABEL), encoding="utf-8")
    schema = output_schema(path)
    assert schema.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "sentiment_label", "schema": LABEL, "strict": True},
    }
    assert schema.properties == ("label", "score")


def test_strict_is_sent_only_when_openai_would_accept_it() -> None:
    loose = {"type": "object", "properties": {"label": {"type": "string"}}}
    assert output_schema(loose).response_format()["json_schema"]["strict"] is False
    assert output_schema(loose, strict=True).strict is True
    nested_open = {
        **LABEL,
        "properties": {"inner": {"type": "object", "properties": {}}},
        "required": ["inner"],
    }
    assert not strict_compatible(nested_open)
    assert strict_compatible({"type": "array", "items": LABEL})


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": LABEL, "strict": False}},
        {"type": "json_object", "schema": LABEL},
    ],
    ids=["openai", "llama.cpp"],
)
def test_a_response_format_body_is_taken_as_its_schema(spec: dict[str, Any]) -> None:
    schema = output_schema(spec)
    assert schema.schema == LABEL
    assert schema.llamacpp_response_format() == {"type": "json_object", "schema": LABEL}


def test_a_pydantic_model_names_the_schema_and_validates_answers() -> None:
    schema = output_schema(Sentiment)
    assert schema.name == "Sentiment" and schema.model is Sentiment
    assert schema.schema == Sentiment.model_json_schema()
    parsed = schema.validate('{"label": "pos", "score": 3}')
    assert parsed == Parsed({"label": "pos", "score": 3}, Sentiment(label="pos", score=3))
    invalid = schema.validate('{"label": "maybe"}')
    assert isinstance(invalid, Invalid)
    assert (
        "$.label: Input should be 'pos' or 'neg'" in invalid.message
        and "$.score: Field required" in invalid.message
    )
    assert isinstance(schema.validate("not json"), Invalid)


def test_validation_gives_the_value_or_says_what_is_wrong_and_where() -> None:
    schema = output_schema(LABEL)
    assert schema.validate(' {"label": "neg", "score": 1}\n') == Parsed({"label": "neg", "score": 1})
    assert schema.validate('{"label": "pos"') == Invalid(
        "not valid JSON: Expecting ',' delimiter at line 1 column 16"
    )
    wrong = schema.validate('{"label": "meh", "score": "high"}')
    assert wrong == Invalid(
        "$.label: 'meh' is not one of ['pos', 'neg']; $.score: 'high' is not of type 'integer'"
    )
    assert schema.validate('{"label": "pos", "score": 1, "extra": 0}') == Invalid(
        "$: Additional properties are not allowed ('extra' was unexpected)"
    )


def test_the_reask_appends_the_answer_and_the_reason() -> None:
    messages = [{"role": "user", "content": "Classify: great"}]
    again = output_schema(LABEL).reask(
        messages, '{"label": "meh"}', "$.label: 'meh' is not one of ['pos', 'neg']"
    )
    assert again[:1] == messages and messages == [
        {"role": "user", "content": "Classify: great"}
    ]  # not changed
    assert again[1] == {"role": "assistant", "content": '{"label": "meh"}'}
    assert again[2]["role"] == "user"
    assert "$.label: 'meh' is not one of ['pos', 'neg']" in again[2]["content"]


def test_invalid_output_carries_the_last_answer_and_why() -> None:
    error = InvalidOutput('{"label": "meh"}', "$.label: 'meh' is not one of ['pos', 'neg']", attempts=3)
    assert isinstance(error, MotioError)
    assert error.output == '{"label": "meh"}' and error.attempts == 3
    assert error.message == "$.label: 'meh' is not one of ['pos', 'neg']"
    assert (
        str(error)
        == "no valid answer for the schema after 3 answers; the last: $.label: 'meh' is not one of ['pos', 'neg']"
    )


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"type": "nonsense"}, "not a valid JSON schema"),
        (42, "cannot use a int"),
        ([LABEL], "cannot use a list"),
    ],
    ids=["bad-schema", "number", "list"],
)
def test_what_is_no_schema_is_refused_before_anything_is_sent(spec: Any, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        output_schema(spec)


def test_a_schema_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not a JSON file"):
        output_schema(path)


def test_llama_cpp_makes_a_grammar_of_the_json_object_form_only() -> None:
    # What llamacpp_response_format relies on, in the installed llama-cpp-python:
    # the json_schema form would be ignored (no grammar: free text).
    from llama_cpp.llama_chat_format import _grammar_for_response_format

    schema = output_schema(LABEL)
    assert _grammar_for_response_format(schema.llamacpp_response_format()) is not None  # type: ignore[arg-type]
    assert _grammar_for_response_format(schema.response_format()) is None  # type: ignore[arg-type]


@pytest.mark.integration
def test_the_embedded_model_answers_valid_json_under_the_schemas_grammar(smollm2_path: Path) -> None:
    schema: OutputSchema = output_schema(LABEL)
    template = Template("Classify the sentiment of this review: {text}", system="Answer in JSON.")
    reviews = ["A wonderful film, I loved it.", "Dull and far too long.", "The best meal of my life."]
    backend = LlamaCppBackend(smollm2_path)
    try:
        answers = [
            backend.generate_sync(
                template.render({"text": text}),
                response_format=schema.llamacpp_response_format(),
                max_tokens=48,
                temperature=0,
            ).value
            for text in reviews
        ]
    finally:
        backend.close()
    checked = [schema.validate(answer) for answer in answers]
    assert all(isinstance(result, Parsed) for result in checked), answers
    assert {result.value["label"] for result in checked if isinstance(result, Parsed)} <= {"pos", "neg"}
