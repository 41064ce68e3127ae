"""AnthropicBackend: Anthropic's native Messages API on the shared HTTP parts.

The protocol only: ``HTTPBackend`` (``backends/http/``) gives it several
servers, retries (429, and 529 ``overloaded_error``, with ``retry-after``),
the four timeouts, rpm/tpm, ``max_concurrency="auto"`` and what Ray workers
share. Here are the three things that differ from OpenAI's API:

- the request: ``POST /messages`` with ``x-api-key`` and
  ``anthropic-version`` headers; system messages go to the top-level
  ``system`` field, ``max_tokens`` is required (``DEFAULT_MAX_TOKENS`` when
  not given), ``stop`` is ``stop_sequences`` (``messages_body``);
- the stream: named SSE events (``message_start``, ``content_block_delta``
  with ``text_delta``, ``message_delta`` with ``usage`` and
  ``stop_reason``, ``message_stop``, ``error``), folded by ``MessagesFold``;
- what the answer reports, said as the other backends say it: usage as
  ``prompt_tokens``/``completion_tokens``/``total_tokens``, stop reasons as
  finish reasons (``end_turn`` and ``stop_sequence`` are ``stop``,
  ``max_tokens`` is ``length``: ``FINISH_REASONS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .._exceptions import UnsupportedOptionError
from .._feed import DEFAULT_CHUNK_TIMEOUT
from .._fields import CHAT_FIELDS
from ._base import DEFAULT_FIRST_TOKEN_TIMEOUT, Messages
from ._errors import Where
from .http import DEFAULT_CONCURRENCY_BOUND, HTTP_OPTIONS, HTTPBackend
from .http import server_error_event, stream_error
from .http import BoundFold, ErrorEvent, parse_events

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._thunk import ModelOutputThunk
    from .http import TLSOption

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "FINISH_REASONS",
    "AnthropicBackend",
    "MessagesFold",
    "messages_body",
    "refuse_unsupported",
]

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
#: The ``anthropic-version`` header sent unless the constructor is given another.
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` when none is given: the Messages API refuses a request without it.
DEFAULT_MAX_TOKENS = 4096
#: Anthropic's ``stop_reason`` as the finish reason the other backends report.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The chat-completions fields the Messages API has no equivalent for: refused,
# never dropped, since a request that silently lost them answers something else.
_REFUSED = CHAT_FIELDS - {"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
                          "metadata", "model", "user", "service_tier", "n"}  # fmt: skip
_SYSTEM_ROLES = ("system", "developer")


# -- the request ------------------------------------------------------------------


def refuse_unsupported(options: dict[str, Any], backend: str = "AnthropicBackend") -> None:
    """Raise for a chat-completions field the Messages API cannot honour
    (``seed``, ``tools`` in OpenAI's shape, ``logprobs``, ``n`` > 1...);
    those given as None (or False, or ``n=1``) are dropped.

    Raises:
        UnsupportedOptionError: the first such field, by name.
    """
    for key in sorted(_REFUSED.intersection(options)):
        value = options.pop(key)
        if value is None or value is False:
            continue
        raise UnsupportedOptionError(
            f"{backend} cannot honour {key}={value!r:.80}: Anthropic's Messages API has no such "
            "field; leave it out (or send a field of Anthropic's own through extra_body)",
            option=key,
            backend=backend,
        )
    n = options.pop("n", None)
    if n is not None and n != 1:
        raise UnsupportedOptionError(
            f"{backend} cannot honour n={n!r}: the Messages API answers one message per request",
            option="n",
            backend=backend,
        )


def messages_body(messages: Messages, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /messages`` body (without ``model`` unless given) from motio's messages and options.

    System (and ``developer``) messages become the top-level ``system``
    field, joined by a blank line if several; ``max_tokens`` (or
    ``max_completion_tokens``) defaults to ``DEFAULT_MAX_TOKENS``; ``stop``
    becomes ``stop_sequences``; ``user`` becomes ``metadata.user_id``; the
    other options (``temperature``, ``top_p``, ``top_k``, ``metadata``...)
    are sent as given, and ``extra_body`` merged in last.

    Raises:
        UnsupportedOptionError: a field the Messages API cannot honour
            (``refuse_unsupported``), or a message whose role it has not.
    """
    refuse_unsupported(options)
    options = {key: value for key, value in options.items() if value is not None}
    extra = options.pop("extra_body", None)
    max_tokens = options.pop("max_tokens", None) or options.pop("max_completion_tokens", None)
    options.pop("max_completion_tokens", None)
    body: dict[str, Any] = {"max_tokens": max_tokens or DEFAULT_MAX_TOKENS}
    system, turns = _split_system(messages)
    if system:
        body["system"] = system
    body["messages"] = turns
    body["stream"] = stream
    _rename(options)
    body.update(options)
    if extra:
        body.update(extra)
    return body


def _split_system(messages: Messages) -> tuple[str, list[dict[str, Any]]]:
    """The system text (joined) and the user/assistant turns.

    Raises:
        UnsupportedOptionError: a role the Messages API has not (``tool``...).
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.append(_text(message.get("content")))
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": message.get("content")})
        else:
            raise UnsupportedOptionError(
                f"AnthropicBackend cannot send a message with role {role!r}: the Messages API takes "
                "user and assistant turns, and system text in its system field",
                option="messages",
                backend="AnthropicBackend",
            )
    return "\n\n".join(system), turns


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _rename(options: dict[str, Any]) -> None:
    """OpenAI's names for what the Messages API calls otherwise."""
    stop = options.pop("stop", None)
    if stop is not None and "stop_sequences" not in options:
        options["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    user = options.pop("user", None)
    if user is not None:
        options["metadata"] = {"user_id": user, **(options.get("metadata") or {})}


# -- the answer -------------------------------------------------------------------


class MessagesFold(BoundFold):
    """Folds a Messages API answer (named SSE events, or one ``message``)
    into the thunk's text and ``generation`` metadata (an ``HTTPFold``).

    Runs on the producer task: every error raised here is the thunk's, a
    foreign one turned into ``StreamError`` first.
    """

    __slots__ = (
        "_keep", "_done", "_usage", "_message",
    )  # fmt: skip

    def __init__(self, loads: Callable[[bytes], Any], where: Where, stream: bool, keep: bool = False) -> None:
        super().__init__(where, loads, stream)
        self._keep = keep
        self._done = False
        self._usage: dict[str, Any] = {}
        # Keeping the whole answer: the message as message_start opened it,
        # its blocks grown by their deltas.
        self._message: dict[str, Any] | None = None

    def fold(self, block: bytes) -> str | None:
        """Fold one network read's SSE events; their text, if any.

        Returns:
            The text; ``""`` for a read that generated only something else
            (a tool's input, thinking) while keeping the whole answer; else None.

        Raises:
            ErrorAfterText, StreamError: an ``error`` event (after this read's
                text), or a malformed event.
        """
        texts: list[str] = []
        generated = False
        for payload in parse_events(block):
            event = self._decode(payload, texts)
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta")
                if type(delta) is dict and delta.get("type") == "text_delta":
                    if text := delta.get("text"):
                        texts.append(text)
                else:
                    generated = self._keep
            elif kind == "error":
                raise self._error_after(texts, event.get("error"))
            else:
                self._fold_other(kind, event)
            if self._message is not None:
                _grow(self._message, kind, event)
        self._pieces += len(texts)
        return "".join(texts) if texts else ("" if generated else None)

    def _decode(self, payload: bytes | ErrorEvent, texts: list[str]) -> dict[str, Any]:
        """An event's data as an object; an ``event: error`` raised after ``texts``."""
        if isinstance(payload, ErrorEvent):
            raise self._error_after(texts, self._error_event_body(payload.data))
        try:
            event = self._loads(payload)
        except ValueError as exc:
            raise stream_error(f"an event is not JSON: {payload[:200]!r}", self.where) from exc
        if type(event) is not dict:
            raise stream_error(f"an event is not a JSON object: {payload[:200]!r}", self.where)
        return event

    def _fold_other(self, kind: Any, event: dict[str, Any]) -> None:
        """The events around the text: where the message starts, how it ends."""
        try:
            if kind == "message_start":
                self._start(event["message"])
            elif kind == "message_delta":
                self._end(event.get("delta") or {}, event.get("usage"))
            elif kind == "message_stop":
                self._done = True
        except (KeyError, TypeError, AttributeError) as exc:
            raise stream_error(f"unexpected {kind} event {event!r:.200}", self.where) from exc

    def _start(self, message: dict[str, Any]) -> None:
        meta = self.meta
        meta.response_id = message.get("id")
        meta.model = message.get("model") or meta.model
        self._count(message.get("usage"))
        if self._keep and self._stream:  # a whole message is kept as it came (fold_whole)
            self._message = {**message, "content": list(message.get("content") or ())}

    def _end(self, delta: dict[str, Any], usage: Any) -> None:
        reason = delta.get("stop_reason")
        if reason:
            self.meta.finish_reasons.append(FINISH_REASONS.get(reason, reason))
        self._count(usage)

    def _count(self, usage: Any) -> None:
        """Usage as the other backends report it; later events update earlier ones."""
        if not isinstance(usage, dict):
            return
        self._usage.update((k, v) for k, v in usage.items() if isinstance(v, int))
        self.meta.usage = openai_usage(self._usage)

    def fold_whole(self, body: bytes) -> str:
        """Fold a non-streamed ``message``; its text.

        Raises:
            StreamError: the body is not a message, or is an error.
        """
        message = self._decode(body, [])
        if message.get("type") == "error" or "error" in message:
            raise server_error_event(message.get("error"), self.where)
        content = message.get("content")
        if not isinstance(content, list):
            raise stream_error(f"not a message: {body[:200]!r}", self.where)
        self._start(message)
        self._end(message, None)
        self._done = True
        if self._keep:
            self.meta.response = message  # kept exactly as it came
        texts = (b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text")
        return "".join(str(text or "") for text in texts)

    def fold_whole_instead_of_stream(self, body: bytes) -> str | None:
        """Fold a whole ``message`` that came where a stream was asked."""
        self._stream = False
        return self.fold_whole(body) or None

    def finish(self, mot: ModelOutputThunk[Any]) -> None:
        """Complete the metadata; a stream cut short (no ``message_stop``
        nor stop reason) is an error.

        Raises:
            StreamError: the stream ended early.
        """
        meta = mot.generation
        if self._stream and not self._done and not meta.finish_reasons:
            raise stream_error("the stream ended before message_stop or a stop_reason", self.where)
        if self._message is not None:
            meta.response = self._message
        if meta.usage is None and self._stream:
            meta.usage = {"prompt_tokens": None, "completion_tokens": self._pieces, "total_tokens": None}


def openai_usage(usage: Mapping[str, int]) -> dict[str, int | None]:
    """Anthropic's usage in the keys every backend reports; the prompt
    counts its cached tokens too, as OpenAI's ``prompt_tokens`` does."""
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    prompt = sum(usage.get(k, 0) for k in parts) if "input_tokens" in usage else None
    completion = usage.get("output_tokens")
    total = None if prompt is None or completion is None else prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


# What each kind of delta grows in its content block, keeping the whole answer
# (the same field in the delta and the block; a tool's input comes as JSON text).
_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature",
                 "input_json_delta": "partial_json"}  # fmt: skip


def _grow(message: dict[str, Any], kind: Any, event: dict[str, Any]) -> None:
    """Apply one event to the message being kept (a streamed answer, whole)."""
    blocks: list[dict[str, Any]] = message["content"]
    if kind == "content_block_start":
        blocks.append(dict(event.get("content_block") or {}))
    elif kind == "content_block_delta" and blocks:
        delta = event.get("delta") or {}
        field = _DELTA_FIELDS.get(str(delta.get("type")))
        if field is not None:
            block = _block(blocks, event)
            block[field] = str(block.get(field) or "") + str(delta.get(field) or "")
    elif kind == "content_block_stop" and blocks and "partial_json" in _block(blocks, event):
        block = _block(blocks, event)
        block["input"] = _json_or_text(block.pop("partial_json"))
    elif kind == "message_delta":
        message.update(event.get("delta") or {})
        message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}


def _block(blocks: list[dict[str, Any]], event: dict[str, Any]) -> dict[str, Any]:
    """The content block an event names by ``index`` (the last one otherwise)."""
    index = event.get("index")
    return blocks[index] if type(index) is int and 0 <= index < len(blocks) else blocks[-1]


def _json_or_text(text: str) -> Any:
    import json

    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


# -- the backend ------------------------------------------------------------------


class AnthropicBackend(HTTPBackend):
    """Messages from Anthropic's API (``POST /v1/messages``), streamed or whole.

    Everything but the protocol is ``HTTPBackend``'s, as for
    ``OpenAIBackend``: several servers, retries of 429 and 529
    (``overloaded_error``) honouring ``retry-after``, the four timeouts,
    rpm/tpm, ``max_concurrency="auto"`` (which backs off on 529 as on 429),
    checks (``GET /v1/models``) and Ray's shared limits.

    ``generate`` takes motio's options: system messages become the
    ``system`` field, ``max_tokens`` defaults to ``DEFAULT_MAX_TOKENS`` (the
    API requires one), ``stop`` is sent as ``stop_sequences``; ``top_k``,
    ``metadata``, ``stop_sequences`` and ``extra_body`` (merged into the
    body) are Anthropic's own. Chat-completions fields without an
    equivalent (``seed``, ``logprobs``, OpenAI-shaped ``tools``, ``n`` > 1)
    raise ``UnsupportedOptionError``.

    Args:
        model: the model name (``claude-...``); None asks the server
            (``GET /models``) and uses the first it lists.
        base_url: the API root, with ``/v1``; default
            ``$ANTHROPIC_BASE_URL`` or ``https://api.anthropic.com/v1``. A
            list spreads requests over several servers (see ``HTTPBackend``).
        api_key: default ``$ANTHROPIC_API_KEY``; sent as ``x-api-key``.
        anthropic_version: the ``anthropic-version`` header.
        headers, ssl, max_concurrency, concurrency_bound, connect_timeout,
        first_token_timeout, chunk_timeout, total_timeout, max_retries,
        rpm, tpm: as for ``HTTPBackend``.

    Raises:
        ConfigurationError: a bad limit, timeout, URL or ``ssl=``.
    """

    provider = "anthropic"
    response_format_style = None  # the Messages API has no response_format
    default_base_url = DEFAULT_BASE_URL
    base_url_env = "ANTHROPIC_BASE_URL"
    api_key_env = "ANTHROPIC_API_KEY"
    options: ClassVar[frozenset[str]] = HTTP_OPTIONS | CHAT_FIELDS | {"top_k", "stop_sequences", "extra_body"}
    chat_path: ClassVar[str] = "/messages"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        anthropic_version: str = ANTHROPIC_VERSION,
        headers: Mapping[str, str] | None = None,
        max_concurrency: int | Literal["auto"] | None = None,
        concurrency_bound: int = DEFAULT_CONCURRENCY_BOUND,
        connect_timeout: float = 5.0,
        first_token_timeout: float | None = DEFAULT_FIRST_TOKEN_TIMEOUT,
        chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
        total_timeout: float | None = None,
        max_retries: int = 2,
        rpm: float | None = None,
        tpm: float | None = None,
        ssl: TLSOption = None,
        metrics_url: str | Sequence[str] | Literal[False] | None = None,
        prefix_routing: bool | None = None,
    ) -> None:
        # Before the base's constructor: it asks auth_headers() for every request's headers.
        self.anthropic_version = anthropic_version
        super().__init__(
            model, base_url=base_url, api_key=api_key, headers=headers, max_concurrency=max_concurrency,
            concurrency_bound=concurrency_bound, connect_timeout=connect_timeout,
            first_token_timeout=first_token_timeout, chunk_timeout=chunk_timeout, total_timeout=total_timeout,
            max_retries=max_retries, rpm=rpm, tpm=tpm, ssl=ssl, metrics_url=metrics_url,
            prefix_routing=prefix_routing,
        )  # fmt: skip

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """``x-api-key`` and ``anthropic-version``: never a Bearer token."""
        return {"x-api-key": api_key, "anthropic-version": self.anthropic_version}

    def _take_options(self, options: dict[str, Any]) -> None:
        """Refuse what the Messages API would drop, before anything is parsed.

        Raises:
            UnsupportedOptionError: see ``refuse_unsupported``.
        """
        refuse_unsupported(options, type(self).__name__)

    def request_body(self, messages: Messages, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
        """The Messages API body (``messages_body``); ``max_tokens`` set in
        ``options`` too, so the tpm estimate counts what was asked."""
        body = messages_body(messages, stream, options)
        options["max_tokens"] = body["max_tokens"]
        return body

    def new_fold(self, where: Where, stream: bool, keep: bool) -> MessagesFold:
        """The fold of Anthropic's events (``MessagesFold``)."""
        return MessagesFold(self._loads, where, stream, keep)
