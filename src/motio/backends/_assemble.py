"""Rebuilding the non-streamed chat completion from the chunks of a stream.

motio streams every request to measure time to first token, but a caller
that wants what the server answered (an OpenAI Batch output line, tool
calls, logprobs) wants the object the server would have returned without
streaming. Dropping a tool call's later argument pieces, or the logprobs of
all but the first chunk, would hand back a different answer; this module
merges every delta instead, per choice index:

- ``content`` (and any other string field of a delta, such as ``refusal``
  or vLLM's ``reasoning_content``) concatenated; None if no chunk had one;
- ``tool_calls`` merged by their ``index``: ``id``, ``type`` and
  ``function.name`` from the deltas that carry them, ``function.arguments``
  concatenated;
- ``logprobs``: each list (``content``, ``refusal``) concatenated;
- ``finish_reason``: the last one given; top-level fields (``id``,
  ``created``, ``model``, ``system_fingerprint``...) from the chunks;
  ``usage`` from the usage chunk.

It is only built when asked for (``keep_response=True``): the plain text
path, at thousands of streams, never pays for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ResponseAssembler"]

# Keys of a chunk that are not copied to the top level as they are.
_CHUNK_OWN = ("choices", "object", "usage")
# Keys of a streamed choice that are merged, not copied.
_CHOICE_OWN = ("index", "delta", "message", "logprobs", "finish_reason")


class ResponseAssembler:
    """Folds streamed chat completion chunks (dicts) into one ``chat.completion``."""

    __slots__ = ("_top", "_choices", "_usage")

    def __init__(self) -> None:
        self._top: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None

    def add(self, chunk: dict[str, Any]) -> None:
        """Merge one chunk.

        Raises:
            TypeError, AttributeError, KeyError: the chunk is not shaped like one.
        """
        for key, value in chunk.items():
            if key not in _CHUNK_OWN and (value is not None or key not in self._top):
                self._top[key] = value
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            merged = self._choices.get(index)
            if merged is None:
                merged = self._choices[index] = _Choice(index)
            merged.add(choice)

    def result(self) -> dict[str, Any]:
        """The assembled ``chat.completion`` object."""
        body = dict(self._top)
        body["object"] = "chat.completion"
        body["choices"] = [self._choices[index].result() for index in sorted(self._choices)]
        body["usage"] = self._usage
        return body


class _Choice:
    __slots__ = ("index", "role", "texts", "fields", "tool_calls", "logprobs", "finish_reason", "other")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.texts: dict[str, list[str] | None] = {}
        self.fields: dict[str, Any] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.other: dict[str, Any] = {}

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        for key, value in delta.items():
            self._add_delta_field(key, value)
        if choice.get("logprobs") is not None:
            self._add_logprobs(choice["logprobs"])
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        for key, value in choice.items():
            if key not in _CHOICE_OWN and (value is not None or key not in self.other):
                self.other[key] = value

    def _add_delta_field(self, key: str, value: Any) -> None:
        if key == "role":
            self.role = value or self.role
        elif key == "tool_calls":
            for call in value or ():
                self._add_tool_call(call)
        elif isinstance(value, str):
            parts = self.texts.get(key)
            if parts is None:
                self.texts[key] = [value]
            else:
                parts.append(value)
        elif value is None:
            self.texts.setdefault(key, None)  # "content": null stays null unless text follows
        else:
            self.fields[key] = value  # a field that is not text (audio, say): the last wins

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        merged = self.tool_calls.setdefault(index, {"function": {"arguments": ""}})
        for key in ("id", "type"):
            if call.get(key) is not None:
                merged[key] = call[key]
        function = call.get("function") or {}
        if function.get("name") is not None:
            merged["function"]["name"] = function["name"]
        if function.get("arguments"):
            merged["function"]["arguments"] += function["arguments"]

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        if self.logprobs is None:
            self.logprobs = {}
        for key, value in logprobs.items():
            if isinstance(value, list):
                self.logprobs.setdefault(key, []).extend(value)
            elif value is not None or key not in self.logprobs:
                self.logprobs[key] = value

    def result(self) -> dict[str, Any]:
        texts = dict(self.texts)
        message: dict[str, Any] = {"role": self.role, "content": _joined(texts.pop("content", None))}
        message.update((key, _joined(parts)) for key, parts in texts.items())
        message.update(self.fields)
        if self.tool_calls:
            message["tool_calls"] = [_tool_call(self.tool_calls[i]) for i in sorted(self.tool_calls)]
        choice = {"index": self.index, "message": message, "logprobs": self.logprobs}
        choice["finish_reason"] = self.finish_reason
        choice.update(self.other)
        return choice


def _joined(parts: list[str] | None) -> str | None:
    return None if parts is None else "".join(parts)


def _tool_call(merged: dict[str, Any]) -> dict[str, Any]:
    # The non-streamed shape: id, type, function; a delta's "index" is not in it.
    call = {"id": merged.get("id"), "type": merged.get("type", "function")}
    call["function"] = {"name": merged["function"].get("name"), "arguments": merged["function"]["arguments"]}
    return call
