"""AnswerCheck: answers validated, re-asked with the reason up to max_invalid, then InvalidOutput."""

from __future__ import annotations

from pathlib import Path

import pytest

from motio import InvalidOutput
from motio.backends import LlamaCppBackend
from motio.data import DEFAULT_MAX_INVALID, AnswerCheck, Parsed, Template, output_schema

LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}},
    "required": ["label"],
    "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Classify: great film"}]


def test_an_invalid_answer_is_asked_again_with_the_reason_then_the_valid_one_is_parsed() -> None:
    check = AnswerCheck(output_schema(LABEL), PROMPT)
    assert check.messages is PROMPT
    assert check.check("positive!") is None
    assert check.messages[:1] == PROMPT and check.messages[1] == {"role": "assistant", "content": "positive!"}
    assert "not valid JSON" in check.messages[2]["content"]
    assert check.check('{"label": "good"}') is None
    assert len(check.messages) == 3  # only the last wrong answer is shown, the conversation does not grow
    assert "'good' is not one of ['pos', 'neg']" in check.messages[2]["content"]
    assert check.check('{"label": "pos"}') == Parsed({"label": "pos"})
    assert (check.attempts, check.invalid, check.reasks) == (3, 2, 2)


def test_past_the_bound_invalid_output_carries_the_last_answer() -> None:
    check = AnswerCheck(output_schema(LABEL), PROMPT, max_invalid=1, reask=False)
    assert check.check("no") is None
    assert check.messages is PROMPT  # without reask the same messages go again
    with pytest.raises(InvalidOutput) as caught:
        check.check('{"label": "meh"}')
    assert caught.value.output == '{"label": "meh"}' and caught.value.attempts == 2
    assert caught.value.message == "$.label: 'meh' is not one of ['pos', 'neg']"
    assert DEFAULT_MAX_INVALID == 2
    with pytest.raises(ValueError, match="max_invalid"):
        AnswerCheck(output_schema(LABEL), PROMPT, max_invalid=-1)


@pytest.mark.integration
def test_on_the_embedded_model_valid_under_grammar_invalid_without_then_reported(smollm2_path: Path) -> None:
    schema = output_schema(LABEL)
    messages = Template("Classify the sentiment of this review: {text}").render(
        {"text": "I loved every minute."}
    )
    backend = LlamaCppBackend(smollm2_path)
    try:
        guided = AnswerCheck(schema, messages)
        answer = backend.generate_sync(
            guided.messages, response_format=schema.llamacpp_response_format(), max_tokens=32, temperature=0
        ).value
        assert isinstance(guided.check(answer), Parsed) and guided.reasks == 0, answer
        # Without the grammar, SmolLM2 answers in prose: re-asked once, then reported.
        free = AnswerCheck(schema, messages, max_invalid=1)
        with pytest.raises(InvalidOutput) as caught:
            while (
                free.check(backend.generate_sync(free.messages, max_tokens=24, temperature=0).value) is None
            ):
                assert free.messages[-1]["role"] == "user" and "not valid" in free.messages[-1]["content"]
    finally:
        backend.close()
    assert caught.value.attempts == 2 and free.invalid == 2 and caught.value.output
