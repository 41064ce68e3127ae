"""Folding OpenAI-shaped chat payloads into a thunk's metadata.

Both backends see the same shape: llama-cpp-python's generator yields the
very dicts an OpenAI-compatible server streams. The OpenAI backend's fast
path (typed structs, one decode per network read) and its fold are in
``openai/_chat.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fold_chunk", "USAGE_KEYS"]

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def fold_chunk(meta: Any, chunk: dict[str, Any], *, take_model: bool = True) -> str | None:
    """Record a chunk's (or a whole completion's) metadata; return its text.

    Works for streamed chunks (``choices[].delta``) and for a non-streamed
    completion (``choices[].message``). Only choice 0 is read: motio asks
    for one. ``take_model``: record the model name the payload reports (a
    server's exact model version) over the one asked for.

    Raises:
        KeyError, TypeError, AttributeError: the chunk is not shaped like one.
    """
    if meta.response_id is None:
        meta.response_id = chunk.get("id")
        if take_model:
            meta.model = chunk.get("model") or meta.model
    usage = chunk.get("usage")
    if usage:
        meta.usage = {key: usage.get(key) for key in USAGE_KEYS}
    text = None
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        part = choice.get("delta") or choice.get("message") or {}
        text = part.get("content")
        if reason := choice.get("finish_reason"):
            meta.finish_reasons.append(reason)
    return text
