"""The prompts-file parser: every bad line named, good lines untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motio.batch._records import InputProblem, PromptRecord, id_key, parse_line, scan_prompts


def write_lines(path: Path, *lines: str | bytes) -> Path:
    data = b"".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    path.write_bytes(data)
    return path


def test_prompt_and_messages_lines_parse(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    path = write_lines(
        tmp_path / "p.jsonl",
        '{"id": "a", "prompt": "hello", "max_tokens": 8, "temperature": 0}\n',
        json.dumps({"messages": messages, "note": "extra keys are allowed"}) + "\n",
    )
    first, second = list(scan_prompts(path))
    assert first == PromptRecord("a", 1, "hello", {"max_tokens": 8, "temperature": 0})
    assert second == PromptRecord("line-2", 2, messages, {})


def test_id_defaults_to_line_n_and_blank_lines_keep_numbering(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", "\n", '{"prompt": "x"}\n', "   \n", '{"prompt": "y"}')
    assert [(r.id, r.line) for r in scan_prompts(path)] == [("line-2", 2), ("line-4", 4)]


def test_utf8_bom_on_first_line_is_ignored(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", b'\xef\xbb\xbf{"id": 1, "prompt": "x"}\n')
    assert [r.id for r in scan_prompts(path)] == [1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param('{"id": 1, "prompt": "x"', "malformed JSON", id="truncated-json"),
        pytest.param("not json", "malformed JSON", id="garbage"),
        pytest.param('["prompt"]', "expected a JSON object, got an array", id="array"),
        pytest.param('{"id": 1}', "missing 'prompt' or 'messages'", id="missing-request"),
        pytest.param('{"prompt": ""}', "'prompt' must be a non-empty string", id="empty-prompt"),
        pytest.param('{"prompt": 3}', "'prompt' must be a non-empty string", id="number-prompt"),
        pytest.param('{"prompt": "a", "messages": []}', "both", id="both"),
        pytest.param('{"messages": []}', "'messages' must be a non-empty list", id="no-messages"),
        pytest.param('{"messages": [{"content": "x"}]}', "messages[0]", id="message-no-role"),
        pytest.param('{"messages": [{"role": "user"}]}', "messages[0]", id="message-no-content"),
        pytest.param('{"id": null, "prompt": "x"}', "'id' must be", id="null-id"),
        pytest.param('{"id": true, "prompt": "x"}', "'id' must be", id="bool-id"),
        pytest.param('{"id": 1.5, "prompt": "x"}', "'id' must be", id="float-id"),
        pytest.param('{"prompt": "x", "max_tokens": 0}', "'max_tokens'", id="zero-max-tokens"),
        pytest.param('{"prompt": "x", "max_tokens": "9"}', "'max_tokens'", id="str-max-tokens"),
        pytest.param('{"prompt": "x", "temperature": -1}', "'temperature'", id="neg-temperature"),
    ],
)
def test_bad_line_is_a_problem_with_its_line_number(line: str, message: str) -> None:
    problem = parse_line(line, 7)
    assert isinstance(problem, InputProblem)
    assert problem.line == 7
    assert message in problem.message
    assert str(problem).startswith("line 7: ")


def test_invalid_utf8_is_reported_and_later_lines_still_parse(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", b'{"prompt": "\xff"}\n', b'{"prompt": "ok"}\n')
    problem, record = list(scan_prompts(path))
    assert isinstance(problem, InputProblem) and "UTF-8" in problem.message
    assert isinstance(record, PromptRecord) and record.id == "line-2"


def test_duplicate_id_reported_on_later_line_first_one_kept(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        '{"id": "x", "prompt": "first"}\n',
        '{"id": "y", "prompt": "other"}\n',
        '{"id": "x", "prompt": "again"}\n',
    )
    items = list(scan_prompts(path))
    assert [type(i).__name__ for i in items] == ["PromptRecord", "PromptRecord", "InputProblem"]
    assert items[0].request == "first"  # type: ignore[union-attr]
    assert str(items[2]) == 'line 3: duplicate id "x" (first used on line 1); skipped'


def test_default_ids_never_collide_with_explicit_integer_ids(tmp_path: Path) -> None:
    lines = [f'{{"id": {i}, "prompt": "p"}}\n' for i in range(1, 5)] + ['{"prompt": "no id"}\n']
    path = write_lines(tmp_path / "p.jsonl", *lines)
    records = list(scan_prompts(path))
    assert all(isinstance(r, PromptRecord) for r in records)
    assert [r.id for r in records] == [1, 2, 3, 4, "line-5"]  # type: ignore[union-attr]


def test_an_explicit_id_spelled_like_a_default_is_a_duplicate(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", '{"id": "line-2", "prompt": "a"}\n', '{"prompt": "b"}\n')
    record, problem = list(scan_prompts(path))
    assert isinstance(record, PromptRecord) and isinstance(problem, InputProblem)
    assert problem.line == 2


def test_int_and_string_ids_are_distinct() -> None:
    assert id_key(1) != id_key("1")
    assert id_key("é") == '"é"'


def test_scan_is_lazy(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", *(f'{{"prompt": "p{i}"}}\n' for i in range(1000)))
    lines = scan_prompts(path)
    assert next(lines).line == 1  # type: ignore[union-attr]
    lines.close()  # type: ignore[attr-defined]
