"""Folding OpenAI-shaped chat payloads into a thunk's metadata.

Both backends see the same shape: llama-cpp-python's generator yields the
very dicts an OpenAI-compatible server streams.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

__all__ = ["fold_chunk", "fold_structs", "batch_decoder", "USAGE_KEYS"]

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


@functools.lru_cache(maxsize=1)
def batch_decoder() -> Callable[[bytes], list[Any]] | None:
    """A msgspec decoder for a JSON array of chunks into typed structs, or None.

    Decoding a whole network read's chunks in one call, into structs that
    hold only the fields motio reads, is the cheapest way through a stream:
    about half of orjson-to-dict per chunk on our measurements
    (bench/backends_json.py), and no Python call per chunk. Payloads that do
    not fit the types (content as a list of parts, say) raise
    ``msgspec.ValidationError``; callers then take the generic path.
    """
    try:
        import msgspec
    except ImportError:
        return None
    opt_str = Optional[str]  # noqa: UP045 - evaluated at run time by msgspec
    opt_int = Optional[int]  # noqa: UP045
    part = msgspec.defstruct("Part", [("content", opt_str, None)])
    choice = msgspec.defstruct(
        "Choice",
        [("index", int, 0), ("delta", Optional[part], None), ("message", Optional[part], None),  # noqa: UP045
         ("finish_reason", opt_str, None)],
    )  # fmt: skip
    usage = msgspec.defstruct("Usage", [(key, opt_int, None) for key in USAGE_KEYS])
    chunk = msgspec.defstruct(
        "Chunk",
        [("id", opt_str, None), ("model", opt_str, None), ("choices", list[choice], []),  # type: ignore[valid-type]
         ("usage", Optional[usage], None), ("error", Any, None)],  # noqa: UP045
    )  # fmt: skip
    return msgspec.json.Decoder(list[chunk]).decode  # type: ignore[valid-type]


def _fold_struct(meta: Any, chunk: Any, append: Callable[[str], None]) -> Any:
    """The general case of :func:`fold_structs` for one chunk; returns its error."""
    if chunk.error is not None:
        return chunk.error
    for choice in chunk.choices:
        if choice.index:
            continue
        part = choice.delta if choice.delta is not None else choice.message
        if part is not None and part.content:
            append(part.content)
        if choice.finish_reason:
            meta.finish_reasons.append(choice.finish_reason)
    if chunk.usage is not None:
        usage = chunk.usage
        meta.usage = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    return None


def fold_structs(meta: Any, chunks: list[Any], texts: list[str]) -> Any:
    """:func:`fold_chunk` for :func:`batch_decoder`'s structs, appending text to ``texts``.

    Returns:
        The ``error`` member of the first chunk that carries one, else None.
    """
    if meta.response_id is None and chunks:
        meta.response_id = chunks[0].id
        meta.model = chunks[0].model or meta.model
    append = texts.append
    for chunk in chunks:
        # The common chunk (one choice, a delta, nothing else) in as few
        # attribute reads as possible: this loop runs once per token.
        choices = chunk.choices
        if len(choices) == 1 and chunk.usage is None and chunk.error is None:
            choice = choices[0]
            delta = choice.delta
            if delta is not None and choice.finish_reason is None and not choice.index:
                if delta.content:
                    append(delta.content)
                continue
        error = _fold_struct(meta, chunk, append)
        if error is not None:
            return error
    return None
