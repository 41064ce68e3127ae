"""Streaming parser for the prompts file of ``motio run``.

The file is read one line at a time, never whole, so a file of millions of
prompts costs memory only for the ids seen so far (needed to catch duplicates).
Each non-blank line becomes either a :class:`PromptRecord` or an
:class:`InputProblem` that names the line, so one bad line never stops the
others from running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["InputProblem", "PromptRecord", "default_id", "id_key", "parse_line", "scan_prompts"]

# Per-line keys that override the command-line generation options.
_OVERRIDES = ("max_tokens", "temperature")


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """One valid input line.

    Attributes:
        id: the line's ``id``, or ``"line-N"`` (N its 1-based line number)
            when it has none: a string, so it cannot collide with an explicit
            integer id (an explicit ``"line-N"`` on another line would: the
            later one is reported as a duplicate).
        line: the 1-based line number in the prompts file.
        request: the ``prompt`` string or the ``messages`` list.
        options: per-line ``max_tokens``/``temperature`` overrides.
    """

    id: str | int
    line: int
    request: str | list[dict[str, Any]]
    options: dict[str, Any]

    @property
    def key(self) -> str:
        """The id as resume and duplicate checks see it (JSON text)."""
        return id_key(self.id)


@dataclass(frozen=True, slots=True)
class InputProblem:
    """A line that cannot run, and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def id_key(value: object) -> str:
    """The identity used for resume and duplicate checks.

    JSON text rather than ``str()``, so that the ids ``1`` and ``"1"`` stay
    distinct, exactly as they are distinct in the files.
    """
    return json.dumps(value, ensure_ascii=False)


def scan_prompts(path: str | Path) -> Iterator[PromptRecord | InputProblem]:
    """Parse the prompts file lazily, in file order.

    Blank lines are skipped. A repeated id is reported on the later line and
    that line is skipped; the first occurrence runs.

    Raises:
        OSError: the file cannot be opened or read.
    """
    first_line_of: dict[str, int] = {}
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            item = _decode_and_parse(raw, number)
            if item is None:
                continue
            if isinstance(item, PromptRecord):
                item = _check_unique(item, first_line_of)
            yield item


def _decode_and_parse(raw: bytes, number: int) -> PromptRecord | InputProblem | None:
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # editors on Windows like to start files with a BOM
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InputProblem(number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    if not text.strip():
        return None
    return parse_line(text, number)


def _check_unique(record: PromptRecord, first_line_of: dict[str, int]) -> PromptRecord | InputProblem:
    first = first_line_of.setdefault(record.key, record.line)
    if first != record.line:
        return InputProblem(record.line, f"duplicate id {record.key} (first used on line {first}); skipped")
    return record


def parse_line(text: str, number: int) -> PromptRecord | InputProblem:
    """Parse one non-blank line of the prompts file."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputProblem(number, f"malformed JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(obj, dict):
        return InputProblem(number, f"expected a JSON object, got {_json_type(obj)}")
    problem = _check_id(obj) or _check_request(obj) or _check_overrides(obj)
    if problem:
        return InputProblem(number, problem)
    request = obj["prompt"] if "prompt" in obj else obj["messages"]
    options = {name: obj[name] for name in _OVERRIDES if obj.get(name) is not None}
    return PromptRecord(obj["id"] if "id" in obj else default_id(number), number, request, options)


def default_id(line: int) -> str:
    """The id of a prompt line that has none."""
    return f"line-{line}"


def _check_id(obj: dict[str, Any]) -> str | None:
    if "id" not in obj:
        return None
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"'id' must be a string or an integer, got {_json_type(value)}"
    return None


def _check_request(obj: dict[str, Any]) -> str | None:
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt and has_messages:
        return "has both 'prompt' and 'messages'; give one of them"
    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return "'prompt' must be a non-empty string"
        return None
    if has_messages:
        return _check_messages(obj["messages"])
    return "missing 'prompt' or 'messages'"


def _check_messages(messages: object) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '\'messages\' must be a non-empty list of {"role": ..., "content": ...} objects'
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or "content" not in message
        ):
            return f"messages[{index}] must be an object with a string 'role' and a 'content'"
    return None


def _check_overrides(obj: dict[str, Any]) -> str | None:
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return "'max_tokens' must be a positive integer"
    temperature = obj.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0
    ):
        return "'temperature' must be a number >= 0"
    return None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
