"""The OpenAI backend's fold: chat-completion chunks, at raw-SSE speed.

Two paths through a network read's SSE events: the fast one decodes all of
a read's chunks in one msgspec call into typed structs that hold only what
motio reads (``batch_decoder``, ``fold_structs``), with no Python call per
chunk; the generic one decodes each payload into a dict (``fold_chunk``,
shared with the embedded backend), for what the fast one cannot take
(keeping the whole answer, error events, content as a list of parts).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Optional

from .._assemble import ResponseAssembler
from .._chat import USAGE_KEYS, fold_chunk
from .._errors import Where
from ..http import stream_error
from ..http import BoundFold, ErrorEvent, data_as_json_array, parse_events

if TYPE_CHECKING:
    from ..._thunk import GenerationMeta, ModelOutputThunk

__all__ = ["ChatFold", "batch_decoder", "fold_structs"]


class _TakeGenericPath(enum.Enum):
    """The fast path cannot fold this read: take the generic one."""

    TOKEN = 0


_TAKE_GENERIC_PATH: Final = _TakeGenericPath.TOKEN


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


class ChatFold(BoundFold):
    """Folds chat completion payloads (streamed chunks or one whole answer)
    into the thunk's text and metadata. Runs on the producer task, so every
    error here becomes the thunk's error: foreign ones are turned into
    :class:`StreamError` first.
    """

    __slots__ = (
        "_batch", "_done", "_keep", "_assembler",
    )  # fmt: skip

    def __init__(self, loads: Callable[[bytes], Any], where: Where, stream: bool, keep: bool = False) -> None:
        super().__init__(where, loads, stream)
        # Keeping the whole answer needs every field of every chunk: the
        # generic path (dicts), never the fast one (structs with text only).
        self._batch = None if keep else batch_decoder()
        self._keep = keep
        self._assembler = ResponseAssembler() if keep and stream else None
        self._done = False

    def fold(self, block: bytes) -> str | None:
        """Fold a block of SSE events (one network read's worth); its text, if any."""
        if (batch := self._batch) is not None and (plain := data_as_json_array(block)) is not None:
            text = self._process_batch(batch, self.meta, *plain)
            if text is not _TAKE_GENERIC_PATH:
                return text
        return self._process_each(self.meta, parse_events(block))

    def fold_whole(self, body: bytes) -> str:
        """Fold a non-streamed completion; its text."""
        return self._process_each(self.meta, [body]) or ""

    def fold_whole_instead_of_stream(self, body: bytes) -> str | None:
        """Fold a whole ``chat.completion`` that came where a stream was asked
        (a server or proxy that ignores ``stream``): the complete answer, at
        once. Its text, if any."""
        # Kept as it came (nothing to assemble), and no [DONE] to wait for.
        self._stream = False
        self._assembler = None
        return self._process_each(self.meta, [body])

    def _process_batch(
        self, batch: Callable[[bytes], list[Any]], meta: GenerationMeta, array: bytes, done: bool
    ) -> str | None | _TakeGenericPath:
        """The fast path: all of a read's chunks decoded by one msgspec call."""
        try:
            chunks = batch(array)
        except ValueError:
            # Malformed JSON or an unexpected type (content as a list of
            # parts, say): the generic path pinpoints or copes with it.
            return _TAKE_GENERIC_PATH
        texts: list[str] = []
        error = fold_structs(meta, chunks, texts)
        if error is not None:
            raise self._error_after(texts, error)
        self._done = self._done or done
        self._pieces += len(texts)
        return "".join(texts) if texts else None

    def _process_each(self, meta: GenerationMeta, payloads: list[bytes | ErrorEvent]) -> str | None:
        """The generic path: one payload at a time, into dicts.

        Returns:
            The text; or, keeping the whole answer, ``""`` for a read that
            generated something else (tool-call deltas, reasoning): the
            model is producing, so it counts for the first-token and chunk
            timeouts and for ``ttfb_ms``; else None.
        """
        texts: list[str] = []
        generated = False
        for payload in payloads:
            if payload == b"[DONE]":
                self._done = True
                continue
            chunk = self._decode(payload, texts)
            try:
                if self._keep:
                    self._keep_chunk(meta, chunk)
                    generated = generated or _generated_besides_text(chunk)
                text = fold_chunk(meta, chunk)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:
                raise stream_error(f"unexpected chunk {payload!r:.200}", self.where) from exc
            if text:
                texts.append(text)
        self._pieces += len(texts)
        return "".join(texts) if texts else ("" if generated else None)

    def _keep_chunk(self, meta: GenerationMeta, chunk: dict[str, Any]) -> None:
        if self._assembler is not None:
            self._assembler.add(chunk)
        else:
            meta.response = chunk  # a non-streamed answer: kept exactly as it came

    def _decode(self, payload: bytes | ErrorEvent, texts: list[str]) -> dict[str, Any]:
        """A payload as a chunk; a server's error in it raised after ``texts``
        (this read's text so far)."""
        if isinstance(payload, ErrorEvent):
            raise self._error_after(texts, self._error_event_body(payload.data))
        try:
            chunk = self._loads(payload)
        except ValueError as exc:
            raise stream_error(f"a chunk is not JSON: {payload[:200]!r}", self.where) from exc
        if type(chunk) is not dict:
            raise stream_error(f"a chunk is not a JSON object: {payload[:200]!r}", self.where)
        if "error" in chunk:
            raise self._error_after(texts, chunk["error"])
        return chunk

    def finish(self, mot: ModelOutputThunk[Any]) -> None:
        meta = mot.generation
        if self._stream and not self._done and not meta.finish_reasons:
            raise stream_error("the stream ended before [DONE] or a finish_reason", self.where)
        if self._assembler is not None:
            meta.response = self._assembler.result()
        if meta.usage is None and self._stream:
            # The server ignored stream_options: one content chunk per token
            # is what llama.cpp, vLLM and Ollama send; the prompt is unknown.
            meta.usage = {"prompt_tokens": None, "completion_tokens": self._pieces, "total_tokens": None}


def _generated_besides_text(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chunk carries generated output other than ``content``."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(value for key, value in delta.items() if key not in ("role", "content")):
            return True
    return False
