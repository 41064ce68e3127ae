"""Streaming parser for the prompts file of ``motio run``.

The file is read one line at a time, never whole, so a file of millions of
prompts costs memory only for the ids seen so far (needed to catch duplicates),
kept as 8-byte digests (``_ids.IdSet``).
Each non-blank line becomes either a :class:`PromptRecord` or an
:class:`InputProblem` that names the line, so one bad line never stops the
others from running.

Two shapes of line are understood, one per file:

- motio's own: ``{"id", "prompt" | "messages", ...}``; any other field that
  is a chat-completions request field (``response_format``, ``tools``,
  ``stop``, ``logprobs``...) is forwarded, other keys are ignored;
- the OpenAI Batch API's request lines (which vLLM's ``run_batch`` reads
  too): ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
  "body": {...}}``; ``custom_id`` is the id, ``body`` is sent as given.

The first line decides the file's shape; a line of the other shape raises
:class:`MixedFormats` naming it, since a results file can hold one shape only.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import MotioError
from .._fields import CHAT_FIELDS
from ._ids import IdSet

__all__ = [
    "MOTIO",
    "OPENAI_BATCH",
    "InputProblem",
    "MixedFormats",
    "PromptFormat",
    "PromptRecord",
    "default_id",
    "id_key",
    "parse_line",
    "scan_lines",
    "scan_prompts",
]


class PromptFormat(str, enum.Enum):
    """The two shapes of prompt line (and of result line): ``PromptRecord.fmt``."""

    MOTIO = "motio"
    OPENAI_BATCH = "openai-batch"

    @property
    def label(self) -> str:
        """How the summary names it."""
        return "OpenAI Batch" if self is PromptFormat.OPENAI_BATCH else "motio"


MOTIO, OPENAI_BATCH = PromptFormat.MOTIO, PromptFormat.OPENAI_BATCH
# The one endpoint a Batch line may name (with or without the /v1 root).
_CHAT_URLS = ("/v1/chat/completions", "/chat/completions")


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
        options: the line's chat-completions fields (``max_tokens``,
            ``temperature``, ``response_format``, ``tools``...), which take
            precedence over the command line's (motio's own shape only).
        fmt: :data:`MOTIO` or :data:`OPENAI_BATCH`.
        body: an OpenAI Batch line's ``body``, to be sent as given (its
            ``messages`` are also ``request``); None for motio's own shape.
    """

    id: str | int
    line: int
    request: str | list[dict[str, Any]]
    options: dict[str, Any]
    fmt: PromptFormat = MOTIO
    body: dict[str, Any] | None = None

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


class MixedFormats(MotioError):
    """A prompts file mixes motio's own lines and OpenAI Batch lines.

    Attributes:
        line: the first line whose shape differs from the file's.
        fmt: that line's shape; ``first_fmt`` and ``first_line``: the file's.
    """

    def __init__(self, line: int, fmt: PromptFormat, first_line: int, first_fmt: PromptFormat) -> None:
        super().__init__(
            f"line {line} is {_article(fmt)} line but line {first_line} is {_article(first_fmt)} one; "
            "a prompts file holds one format (its results file holds one shape of result): split it"
        )
        self.line, self.fmt, self.first_line, self.first_fmt = line, fmt, first_line, first_fmt


def _article(fmt: PromptFormat) -> str:
    return "an OpenAI Batch" if fmt == OPENAI_BATCH else "a motio"


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
        MixedFormats: a line of the other shape than the first (raised when
            that line is reached).
    """
    with open(path, "rb") as lines:
        yield from scan_lines(lines)


def scan_lines(lines: Iterable[bytes]) -> Iterator[PromptRecord | InputProblem]:
    """:func:`scan_prompts` over lines already open (stdin, say), read once."""
    first_line_of = IdSet(lines=True)  # 12 bytes an id, not a dict of strings (see _ids)
    shape: tuple[int, PromptFormat] | None = None  # (line, format) of the first line with a shape
    for number, raw in enumerate(lines, start=1):
        parsed = _decode_and_parse(raw, number)
        if parsed is None:
            continue
        fmt, item = parsed
        if fmt is not None:
            shape = shape or (number, fmt)
            if fmt != shape[1]:
                raise MixedFormats(number, fmt, *shape)
        if isinstance(item, PromptRecord):
            item = _check_unique(item, first_line_of)
        yield item


def _decode_and_parse(
    raw: bytes, number: int
) -> tuple[PromptFormat | None, PromptRecord | InputProblem] | None:
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # editors on Windows like to start files with a BOM
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, InputProblem(number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    if not text.strip():
        return None
    return _parse(text, number)


def _check_unique(record: PromptRecord, first_line_of: IdSet) -> PromptRecord | InputProblem:
    first = first_line_of.first_line(record.key, record.line)
    if first != record.line:
        return InputProblem(record.line, f"duplicate id {record.key} (first used on line {first}); skipped")
    return record


def parse_line(text: str, number: int) -> PromptRecord | InputProblem:
    """Parse one non-blank line of the prompts file (either shape)."""
    return _parse(text, number)[1]


def _parse(text: str, number: int) -> tuple[PromptFormat | None, PromptRecord | InputProblem]:
    """The line's shape (None if it has none: not a JSON object) and what it holds."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, InputProblem(number, f"malformed JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(obj, dict):
        return None, InputProblem(number, f"expected a JSON object, got {_json_type(obj)}")
    if "custom_id" in obj or "body" in obj:
        return OPENAI_BATCH, _parse_batch(obj, number)
    return MOTIO, _parse_own(obj, number)


def _parse_own(obj: dict[str, Any], number: int) -> PromptRecord | InputProblem:
    problem = _check_id(obj) or _check_request(obj) or _check_overrides(obj)
    if problem:
        return InputProblem(number, problem)
    request = obj["prompt"] if "prompt" in obj else obj["messages"]
    # Every chat-completions field rides along; other keys are the user's own notes.
    options = {name: value for name, value in obj.items() if name in CHAT_FIELDS and value is not None}
    return PromptRecord(obj["id"] if "id" in obj else default_id(number), number, request, options)


def _parse_batch(obj: dict[str, Any], number: int) -> PromptRecord | InputProblem:
    problem = _check_batch_envelope(obj) or _check_body(obj.get("body"))
    if problem:
        return InputProblem(number, problem)
    body = obj["body"]
    return PromptRecord(obj["custom_id"], number, body["messages"], {}, OPENAI_BATCH, body)


def _check_batch_envelope(obj: dict[str, Any]) -> str | None:
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "'custom_id' must be a non-empty string"
    method = obj.get("method", "POST")
    if method != "POST":
        return f"method {method!r} is not supported (only POST); skipped"
    url = obj.get("url")
    if url not in _CHAT_URLS:
        return f"url {url!r} is not supported (only /v1/chat/completions); skipped"
    return None


def _check_body(body: object) -> str | None:
    if not isinstance(body, dict):
        return "'body' must be a JSON object (the chat completions request)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'body.messages' must be a non-empty list of messages"
    for index, message in enumerate(messages):
        # No 'content' required: an assistant message with tool_calls has none.
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"body.messages[{index}] must be an object with a string 'role'"
    return None


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
