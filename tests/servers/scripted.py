"""A scripted, fault-injecting OpenAI-compatible (and Anthropic) server for the test suite.

Without it, every test of retries, timeouts, rate limits and adaptive
concurrency would need its own half-built fake, and each fake would misbehave
in its own slightly wrong way (a "stall" that still sends keep-alive bytes, a
"drop" that ends the body cleanly, a concurrency count that drops a request
only after the client already saw its end). This is the one server that does
exactly what each test asks, byte by byte, and records what it saw.

Quick start::

    from tests.servers.scripted import running, ok, status, stall_after

    with running(capacity=4, overflow="reject", retry_after=1) as server:
        server.script(status(503), stall_after(2))   # the next two chat requests
        ...                                          # point a client at server.base_url
        server.wait_for(lambda s: s.disconnects >= 1, timeout=10)
        [first, second, third] = server.chat_requests
        assert first.status == 503 and second.disconnected and third.status == 200

The server is real HTTP/1.1 on a real socket on 127.0.0.1, written on raw
asyncio streams (so it can misbehave at byte level), with its own event loop
in a daemon thread: the loop under test and the server never share a loop.
Connections are kept alive (many requests each) unless the client sends
``Connection: close``; request bodies may use Content-Length or chunked
encoding; streamed answers use chunked encoding, one HTTP chunk per SSE event.

Endpoints
---------
- ``GET /v1/models``: the ``models`` given to the constructor.
- ``POST /v1/chat/completions``: streamed or not, in the shapes OpenAI and
  vLLM use: a role chunk (``{"role": "assistant", "content": ""}``) first,
  one chunk per content token, a finish chunk with ``finish_reason``, a usage
  chunk (``choices: []``) when ``stream_options.include_usage``, then
  ``data: [DONE]``. The answer's ``model`` is the request's.
- ``POST /v1/messages``: Anthropic's Messages API (below).
- Anything else: 404 with an OpenAI-style error body (Anthropic's with an
  ``anthropic-version`` header).

Tools and logprobs
------------------
A request with ``tools`` is answered with one tool call of the first tool
(``id`` ``"call_0"``, arguments ``{"prompt": <last user message>}``),
``finish_reason`` ``"tool_calls"``. Streamed, the call comes as deltas split
over several chunks, as OpenAI and vLLM send them: the first delta carries
``index``, ``id``, ``type``, ``function.name`` and the first piece of
the arguments, the
next ones ``index`` and a piece of ``function.arguments``; the message's
content is null. A request with ``logprobs: true`` gets, on each content
chunk's choice, ``logprobs.content`` for its token (``top_logprobs`` entries
when asked). Non-streamed, the same answer comes as one ``chat.completion``
whose every field (message, tool calls, the concatenated logprobs, usage)
is what a client assembling the stream exactly would get, so tests can
compare the two.

With ``api_key`` set, every request without ``Authorization: Bearer <key>``
gets 401 (``basic_auth=("user", "password")``: without that Basic auth).

Anthropic's Messages API
------------------------
``POST /v1/messages`` is a chat request like the others (same choice of
behaviour, capacity, records, counters: ``chat_requests`` holds both kinds,
``record.anthropic`` tells them apart) answered in Anthropic's shapes.
Streamed, one named SSE event per HTTP chunk (``event: <type>`` then
``data: {"type": <type>, ...}``): ``message_start`` (``message`` with ``id``
``"msg_scripted"``, ``model``, empty ``content``, ``usage.input_tokens``, and
``output_tokens: 1`` as Anthropic sends it), ``content_block_start`` (a
``text`` block, index 0), ``ping``, one ``content_block_delta`` per token
(``delta: {"type": "text_delta", "text": ...}``), ``content_block_stop``,
``message_delta`` (``delta.stop_reason`` ``"end_turn"``, ``"max_tokens"`` or
``"stop_sequence"`` with ``delta.stop_sequence``; ``usage.output_tokens``)
and ``message_stop``; no ``[DONE]``. Non-streamed: one ``message`` JSON
(``content: [{"type": "text", "text": ...}]``, ``stop_reason``,
``stop_sequence``, ``usage: {"input_tokens", "output_tokens"}``). The
default answer is the same echo; prompt tokens count the ``system`` field
too; a token (whitespace-stripped) equal to one of ``stop_sequences`` ends
the answer before it, with ``stop_reason: "stop_sequence"``. ``ok``'s
``finish_reason`` "stop"/"length" become "end_turn"/"max_tokens", any other
value is sent as the stop_reason itself. ``GET /v1/models`` with an
``anthropic-version`` header answers Anthropic's list
(``{"data": [{"type": "model", "id": ...}], "has_more": false, "first_id",
"last_id"}``).

Refusals, in this order: a body that is not a JSON object gets 400; with
``api_key`` set, a request without ``x-api-key: <key>`` gets 401
``authentication_error`` (a Bearer token does not count); without an
``anthropic-version`` header, 400; without an integer ``max_tokens``, 400
``invalid_request_error``. Every error body has Anthropic's shape,
``{"type": "error", "error": {"type": ..., "message": ...}}`` with the type
of the status (400 ``invalid_request_error``, 401 ``authentication_error``,
404 ``not_found_error``, 429 ``rate_limit_error``, 500 ``api_error``, 529
``overloaded_error``...), so ``status(529, {"retry-after": "1"})`` is
Anthropic's overload answer. Every answer names its request in
``request-id`` (OpenAI's: ``x-request-id``).

The behaviours below apply as they do to OpenAI requests, in Anthropic's
events: "the role chunk" is ``message_start``, ``content_block_start`` and
``ping``; a content chunk is a ``content_block_delta``; ``[DONE]`` is
``message_stop``. ``trickle_chunks`` sends ``ping`` events;
``malformed_after`` a ``content_block_delta`` whose data is not JSON;
``error_event`` an ``event: error`` with ``{"type": "error", "error":
<error>}`` (default ``{"type": "overloaded_error", "message":
"Overloaded"}``), after which the stream ends (no ``message_stop``), as
Anthropic's does; ``no_done`` ends without ``message_delta`` and
``message_stop`` [``stop_reason: null``, no usage]. Tool calls and logprobs
are OpenAI's only.

TLS
---
``tls=<ssl.SSLContext>`` (a server-side context holding the certificate)
serves HTTPS on the same port; ``base_url`` is then ``https://...``.

The default answer
------------------
``"echo: " + <last user message>``, cut into whitespace-led tokens
(``"echo:", " hello", " there"``) and cut to ``max_tokens`` (or
``max_completion_tokens``) tokens; ``finish_reason`` is ``"length"`` when it
was cut and ``"stop"`` otherwise. The non-streamed content is the streamed
chunks' concatenation; usage counts the same tokens (prompt tokens are the
whitespace-led tokens of every message's content). With ``chunks=N`` the
answer is ``" tok0" ... " tok{N-1}"`` instead (benchmarks; the whole body is
built once and cached).

Choosing what happens to each chat request
------------------------------------------
In this order: ``server.rule(record)`` if it returns a behaviour (a
content-based choice: by prompt, model, header...), else the next behaviour
queued with ``server.script(*behaviours)`` (consumed one per chat request, in
arrival order), else ``default`` (``ok()`` unless given). Requests the
capacity limit rejects consume nothing. A factory whose arguments all have
defaults may be passed uncalled: ``server.script(reset_before_headers)``.

========================  ===============================================
behaviour                 on the wire (streamed; non-streamed in brackets)
========================  ===============================================
``ok(chunks, delay)``     the answer (``chunks`` texts, or the default
                          answer), ``delay`` s before each content chunk
                          (default: the server's ``token_time``); after
                          the server's ``service_time``. ``usage=False``
                          omits the usage chunk (an older server);
                          ``finish_reason`` overrides stop/length
                          [the whole body after ``delay`` x tokens]
``status(code, ...)``     that status, OpenAI-style error JSON unless
                          ``body``; ``headers`` e.g. ``{"Retry-After": "1"}``
                          or ``{"retry-after-ms": "250"}``
``reset_before_headers``  request read, then the socket closed with RST
                          (``SO_LINGER`` 0): the client sees a reset
``stall_before_headers``  request read, then nothing until the client
                          disconnects (at most ``max_wait``, then closed)
``stall_after(k)``        headers, the role chunk and ``k`` content chunks,
                          then nothing until the client disconnects (``k=0``:
                          headers only) [headers, then nothing]
``trickle(interval)``     headers, then an SSE comment (``b": ping"``) every
                          ``interval`` s, never a chunk, until the client
                          disconnects; ``after=k`` sends ``k`` content
                          chunks first [one space of body per interval]
``trickle_chunks(...)``   the same with chunks that carry no content:
                          ``delta={}`` (default), ``{"role": "assistant"}``
                          or ``{"content": ""}``
``drop_after(k)``         ``k`` content chunks, then the connection closed
                          mid-body (no terminating HTTP chunk; ``rst=True``
                          resets it) [half the body, then closed]
``malformed_after(k)``    ``k`` content chunks, then a data line that is not
                          JSON, then [DONE] [a body that is not JSON]
``error_event(after=1)``  ``after`` content chunks, then
                          ``data: {"error": {...}}`` and [DONE] [200 with
                          the error object as the body]; ``coalesce=True``:
                          role, chunks and error event in one HTTP chunk
                          (one network read for the client); ``gap=s``:
                          each event written on its own, ``s`` s apart;
                          ``named=True``: an ``event: error`` line too
``ignore_stream(chunks)`` the whole ``chat.completion`` body (Content-Type
                          application/json) even when a stream was asked,
                          as a server or proxy that ignores ``stream`` does
``no_done``               the answer's content chunks, then the body ends
                          cleanly without finish chunk, usage or [DONE]
                          [``finish_reason: null``, no usage]
``slow_first_token(s)``   headers and the role chunk, ``s`` s of nothing,
                          then the normal answer (``before_headers=True``:
                          the wait comes before the headers) [wait, answer]
``gather(n)``             headers, role chunk and the first content chunk,
                          then wait until ``n`` gathered streams wait
                          together (at most ``max_wait``), then the rest:
                          proves that ``n`` streams really were concurrent
``hold_after(k)``         headers, the role chunk and ``k`` content chunks,
                          then wait until ``server.release()`` (at most
                          ``max_wait``), then the rest: a test can change
                          the server while streams are open [wait, answer]
========================  ===============================================

JSON answers (structured-output tests)
--------------------------------------
Two rules (``running(rule=...)`` or ``server.rule = ...``) answer chat
requests in JSON, counting the answers per prompt (the conversation's first
user message, which a re-ask keeps: it appends the invalid answer and the
complaint after it):

- ``invalid_json_then_valid(k=1)``: the first ``k`` answers to each prompt
  are not JSON (``"not JSON: <prompt>"``), the next ones are
  ``{"answer": <prompt>}`` (as two content chunks);
- ``never_valid_json()``: every answer is ``"not JSON: <prompt>"``.

Both are a :class:`JsonAnswers`: ``rule.attempts`` maps each prompt to the
answers it got, ``JsonAnswers.valid(prompt)`` is the JSON value of a valid
answer. Other requests (``GET /v1/models``) are left to the server.

Capacity (server-wide; ``configure()`` changes it at run time)
--------------------------------------------------------------
``capacity=N`` admits at most N chat requests at once. Beyond that,
``overflow="reject"`` answers 429 (with ``Retry-After: <retry_after>`` unless
it is None, and ``retry-after-ms`` if ``retry_after_ms`` is set; an
Anthropic request gets 529 ``overloaded_error`` with the same headers);
``overflow="queue"`` holds the rest in FIFO order before their first byte,
so time to first token grows with the queue, as vLLM's does. A request
leaves its slot just *before* its last bytes are written, so a client that
starts its next request when it sees the end never finds the slot still
taken. ``service_time`` is spent in the slot before an ``ok`` answer's first
byte, ``token_time`` before each of its content chunks.

Records and waits
-----------------
``server.requests`` (every request) and ``server.chat_requests`` are copies
of ``RequestRecord``: arrival and end on the server's clock
(``server.now()``, ``time.monotonic``), method, path, lower-cased headers,
parsed JSON body, the behaviour applied, status sent, content chunks sent,
whether the client disconnected before the response ended, the connection
it came on. Counters: ``connections_accepted``, ``connections_open``,
``max_connections_open``, ``in_flight`` / ``max_in_flight`` (chat requests
open at once, queued ones included), ``serving`` / ``max_serving`` (admitted
past the capacity limit), ``queued`` / ``max_queued``, ``rejected``,
``disconnects``, ``completed``. ``server.wait_for(lambda s: ..., timeout)``
waits on a condition notified at every change and raises AssertionError on
timeout. ``server.errors`` lists the server's own failures (a bug in a
behaviour, a rule that raised); leaving ``running()`` or the ``with`` block
raises if there are any.

A client disconnect is seen while the server waits (stalls, trickles,
delays, the capacity queue: end of file or reset on the read side) and
while it writes (ConnectionResetError, BrokenPipeError). A client that
half-closes its side while waiting for an answer is taken as gone too.

As a process (benchmarks)
-------------------------
``python -m tests.servers.scripted --port 0 --capacity 64 --overflow queue
--retry-after 1 --service-time 0.05 --chunks 20`` prints ``PORT <n>`` when
ready, and on SIGTERM or SIGINT stops, prints ``STATS <json counters>`` and
exits 0. It keeps no records unless ``--records``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import dataclasses
import http
import inspect
import json
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Self, cast

__all__ = [
    "MAX_WAIT",
    "Behaviour",
    "DropAfter",
    "ErrorEvent",
    "Gather",
    "HoldAfter",
    "IgnoreStream",
    "JsonAnswers",
    "MalformedAfter",
    "NoDone",
    "Ok",
    "RequestRecord",
    "ResetBeforeHeaders",
    "Rule",
    "ScriptedServer",
    "SlowFirstToken",
    "StallAfter",
    "StallBeforeHeaders",
    "Status",
    "Trickle",
    "close_connections",
    "drop_after",
    "error_event",
    "gather",
    "hold_after",
    "ignore_stream",
    "invalid_json_then_valid",
    "malformed_after",
    "never_valid_json",
    "no_done",
    "ok",
    "reset_before_headers",
    "running",
    "slow_first_token",
    "stall_after",
    "stall_before_headers",
    "start_tracked_server",
    "status",
    "trickle",
    "trickle_chunks",
]

# Upper bound of every wait inside the server, so a broken test cannot hang it.
MAX_WAIT = 120.0

Overflow = Literal["reject", "queue"]

# ---------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one chat request (the subclasses below)."""


@dataclass(frozen=True)
class Ok(Behaviour):
    chunks: tuple[str, ...] | None = None
    delay: float | None = None
    usage: bool = True
    finish_reason: str | None = None


@dataclass(frozen=True)
class Status(Behaviour):
    code: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


@dataclass(frozen=True)
class ResetBeforeHeaders(Behaviour):
    pass


@dataclass(frozen=True)
class StallBeforeHeaders(Behaviour):
    max_wait: float = MAX_WAIT


@dataclass(frozen=True)
class StallAfter(Behaviour):
    k: int
    max_wait: float = MAX_WAIT


@dataclass(frozen=True)
class Trickle(Behaviour):
    interval: float
    keepalive: bytes  # one whole SSE block, sent every interval
    after: int = 0
    max_wait: float = MAX_WAIT


@dataclass(frozen=True)
class DropAfter(Behaviour):
    k: int
    rst: bool = False


@dataclass(frozen=True)
class MalformedAfter(Behaviour):
    k: int
    line: bytes = b'data: {"choices": [{"delta": \n\n'


@dataclass(frozen=True)
class ErrorEvent(Behaviour):
    after: int = 1
    error: str | None = None  # the error object's JSON; None: the wire's default (see the docstring)
    coalesce: bool = False
    gap: float = 0.0
    named: bool = False


@dataclass(frozen=True)
class IgnoreStream(Behaviour):
    chunks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NoDone(Behaviour):
    pass


@dataclass(frozen=True)
class SlowFirstToken(Behaviour):
    seconds: float
    before_headers: bool = False


@dataclass(frozen=True)
class Gather(Behaviour):
    n: int
    max_wait: float = 60.0


@dataclass(frozen=True)
class HoldAfter(Behaviour):
    k: int
    max_wait: float = MAX_WAIT


def ok(
    chunks: Iterable[str] | None = None,
    delay: float | None = None,
    *,
    usage: bool = True,
    finish_reason: str | None = None,
) -> Ok:
    """A normal answer: ``chunks`` (default: the default answer), ``delay`` s per chunk."""
    return Ok(None if chunks is None else tuple(chunks), delay, usage, finish_reason)


def status(code: int, headers: Mapping[str, str] | None = None, body: bytes | str | Any = None) -> Status:
    """HTTP ``code`` with ``headers``; ``body`` bytes, text, JSON-able, or an OpenAI error."""
    if body is not None and not isinstance(body, bytes):
        body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return Status(code, tuple((headers or {}).items()), body)


def reset_before_headers() -> ResetBeforeHeaders:
    """Read the request, then reset the connection (RST) without a byte of answer."""
    return ResetBeforeHeaders()


def stall_before_headers(max_wait: float = MAX_WAIT) -> StallBeforeHeaders:
    """Read the request, then send nothing until the client leaves (or ``max_wait``)."""
    return StallBeforeHeaders(max_wait)


def stall_after(k: int, max_wait: float = MAX_WAIT) -> StallAfter:
    """Headers and ``k`` content chunks, then nothing until the client leaves."""
    return StallAfter(k, max_wait)


def trickle(
    interval: float = 0.1, comment: bytes = b": ping", *, after: int = 0, max_wait: float = MAX_WAIT
) -> Trickle:
    """An SSE ``comment`` line every ``interval`` s, never a chunk (after ``after`` chunks)."""
    return Trickle(interval, comment + b"\n\n", after, max_wait)


def trickle_chunks(
    interval: float = 0.1,
    delta: Mapping[str, Any] | None = None,
    *,
    after: int = 0,
    max_wait: float = MAX_WAIT,
) -> Trickle:
    """A chunk without content (``delta``, default ``{}``) every ``interval`` s."""
    chunk = _chunk("chatcmpl-scripted", "scripted-model", dict(delta or {}))
    return Trickle(interval, _event(chunk), after, max_wait)


def drop_after(k: int, *, rst: bool = False) -> DropAfter:
    """``k`` content chunks, then the connection closed mid-body (reset if ``rst``)."""
    return DropAfter(k, rst)


def malformed_after(k: int, line: bytes = MalformedAfter.line) -> MalformedAfter:
    """``k`` content chunks, then ``line`` (not JSON), then [DONE]."""
    return MalformedAfter(k, line)


def error_event(
    after: int = 1,
    error: Mapping[str, Any] | None = None,
    *,
    coalesce: bool = False,
    gap: float = 0.0,
    named: bool = False,
) -> ErrorEvent:
    """``after`` content chunks, then a ``{"error": error}`` event and [DONE].

    On Anthropic's wire: ``event: error`` with ``{"type": "error", "error":
    error}`` (default ``overloaded_error``), and the stream ends there.

    ``coalesce``: the role chunk, the content chunks and the error event in
    one HTTP chunk, one write. ``gap``: each event its own write, ``gap`` s
    after the one before (the client reads them apart). ``named``: the
    event is ``event: error`` (an SSE event name) as well.
    """
    text = None if error is None else json.dumps(dict(error))
    return ErrorEvent(after, text, coalesce, gap, named)


def ignore_stream(chunks: Iterable[str] | None = None) -> IgnoreStream:
    """The whole ``chat.completion`` JSON body, even when a stream was asked."""
    return IgnoreStream(None if chunks is None else tuple(chunks))


def no_done() -> NoDone:
    """The answer's content chunks, then a clean end without finish_reason or [DONE]."""
    return NoDone()


def slow_first_token(seconds: float, *, before_headers: bool = False) -> SlowFirstToken:
    """Wait ``seconds`` before the first content chunk (or the headers), then answer."""
    return SlowFirstToken(seconds, before_headers)


def gather(n: int, max_wait: float = 60.0) -> Gather:
    """After the first content chunk, wait until ``n`` gathered streams wait together."""
    return Gather(n, max_wait)


def hold_after(k: int = 1, max_wait: float = MAX_WAIT) -> HoldAfter:
    """After ``k`` content chunks, wait for ``server.release()``, then the rest."""
    return HoldAfter(k, max_wait)


# ---------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One request as the server saw it; times are on ``ScriptedServer.now()``."""

    index: int  # arrival order among all requests, from 0
    connection: int  # the connection it came on, from 1 in accept order
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON body, None when there was none
    arrived: float  # when the whole request had been read
    started: float | None = None  # when it left the capacity queue
    first_byte: float | None = None  # when the first byte of the answer was written
    ended: float | None = None  # when the answer ended (before its last write)
    behaviour: Behaviour | None = None
    status: int | None = None
    chunks: int = 0  # content chunks sent (streams only)
    disconnected: bool = False  # the client left before the answer ended
    rejected: bool = False  # a 429 from the capacity limit

    @property
    def chat(self) -> bool:
        """A chat request: OpenAI's ``/chat/completions`` or Anthropic's ``/messages``."""
        return self.method == "POST" and self.path.split("?")[0].endswith(("/chat/completions", "/messages"))

    @property
    def anthropic(self) -> bool:
        """Anthropic's API: ``POST .../messages``, or any other non-chat request with ``anthropic-version``."""
        path = self.path.split("?")[0]
        if self.method == "POST" and path.endswith("/messages"):
            return True
        return not self.chat and "anthropic-version" in self.headers

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def stream(self) -> bool:
        return bool(isinstance(self.body, dict) and self.body.get("stream"))

    @property
    def prompt(self) -> str:
        """The last user message's text ("" if none)."""
        return _last_user_text(self.body)


Rule = Callable[[RequestRecord], "Behaviour | Callable[[], Behaviour] | None"]


class JsonAnswers:
    """A rule answering in JSON: ``invalid`` answers per prompt that are not JSON, then valid ones.

    Args:
        invalid: how many answers to each prompt are not JSON; None: all of them.

    Attributes:
        attempts: per prompt (the first user message), the answers it got so far.
    """

    def __init__(self, invalid: int | None) -> None:
        self.invalid = invalid
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()  # the server's loop, but a test reads it from its own thread

    @staticmethod
    def valid(prompt: str) -> dict[str, str]:
        """The JSON value of a valid answer to ``prompt``."""
        return {"answer": prompt}

    def __call__(self, record: RequestRecord) -> Behaviour | None:
        if not record.chat:
            return None
        prompt = _first_user_text(record.body)
        with self._lock:
            seen = self.attempts.get(prompt, 0)
            self.attempts[prompt] = seen + 1
        if self.invalid is None or seen < self.invalid:
            return ok(["not JSON: ", prompt])
        text = json.dumps(self.valid(prompt))
        return ok([text[: len(text) // 2], text[len(text) // 2 :]])


def invalid_json_then_valid(k: int = 1) -> JsonAnswers:
    """A rule: the first ``k`` answers to each prompt are not JSON, the next ones valid."""
    return JsonAnswers(k)


def never_valid_json() -> JsonAnswers:
    """A rule: no answer is ever JSON."""
    return JsonAnswers(None)


# ---------------------------------------------------------------- wire formats

_CREATED = 1700000000
_TOKEN = re.compile(r"\s*\S+|\s+")
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                408: "timeout", 429: "rate_limit_exceeded"}  # fmt: skip


def _first_tool(body: Any) -> str | None:
    """The name of the first function tool a request offers, if any."""
    tools = body.get("tools") if isinstance(body, dict) else None
    for tool in tools or ():
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            return str(tool["function"].get("name"))
    return None


def _first_user_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages or []:
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _last_user_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _prompt_tokens(body: dict[str, Any]) -> int:
    texts = (_text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
    return sum(len(_TOKEN.findall(t)) for t in texts)


def _chunk(rid: str, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": _CREATED, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip


def _event(obj: Any) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return b"data: " + data + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error_body(code: int, message: str | None = None) -> bytes:
    kind = _ERROR_TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    error = {"message": message or f"scripted {code}", "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Status"


def _head(code: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {code} {_phrase(code)}", "server: scripted", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class _Answer:
    """The text of one answer and what the server says about it."""

    tokens: tuple[str, ...]
    finish: str
    prompt_tokens: int
    tool_call: tuple[str, str] | None = None  # (name, arguments): the answer is this call
    logprobs: int | None = None  # logprobs asked for, with this many top_logprobs
    stop_sequence: str | None = None  # the Anthropic stop sequence that ended it

    @property
    def usage(self) -> dict[str, int]:
        return _usage(self.prompt_tokens, len(self.tokens))


def _usage_chunk(model: str, answer: _Answer) -> dict[str, Any]:
    return {**_chunk("chatcmpl-scripted", model, {}), "choices": [], "usage": answer.usage}


@lru_cache(maxsize=256)
def _whole_stream(answer: _Answer, model: str, usage: bool) -> bytes:
    """The whole streamed answer as HTTP chunks, built once per answer (the fast path)."""
    rid = "chatcmpl-scripted"
    events = [_event(_chunk(rid, model, {"role": "assistant", "content": ""}))]
    events += [_event(_chunk(rid, model, {"content": t})) for t in answer.tokens]
    events.append(_event(_chunk(rid, model, {}, answer.finish)))
    if usage:
        events.append(_event(_usage_chunk(model, answer)))
    events.append(b"data: [DONE]\n\n")
    return b"".join(map(_http_chunk, events)) + b"0\r\n\r\n"


def _token_logprob(token: str, top: int) -> dict[str, Any]:
    entry = {"token": token, "logprob": -len(token) / 10, "bytes": list(token.encode())}
    return {**entry, "top_logprobs": [dict(entry, logprob=entry["logprob"] - i) for i in range(top)]}


def _logprobs(answer: _Answer, tokens: Iterable[str]) -> dict[str, Any] | None:
    if answer.logprobs is None:
        return None
    return {"content": [_token_logprob(t, answer.logprobs) for t in tokens], "refusal": None}


def _tool_call_pieces(arguments: str) -> list[str]:
    """The arguments in three pieces (some maybe empty), as a model emits them."""
    third = max(1, len(arguments) // 3)
    return [arguments[:third], arguments[third : 2 * third], arguments[2 * third :]]


def _message(answer: _Answer) -> dict[str, Any]:
    if answer.tool_call is None:
        return {"role": "assistant", "content": "".join(answer.tokens)}
    name, arguments = answer.tool_call
    call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _completion(answer: _Answer, model: str, finish: bool = True) -> dict[str, Any]:
    choice = {"index": 0, "message": _message(answer), "logprobs": _logprobs(answer, answer.tokens),
              "finish_reason": answer.finish if finish else None}  # fmt: skip
    body = {"id": "chatcmpl-scripted", "object": "chat.completion", "created": _CREATED,
            "model": model, "choices": [choice]}  # fmt: skip
    if finish:
        body["usage"] = answer.usage
    return body


# ---------------------------------------------------------------- Anthropic's wire format

ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version the Messages API documents
_OPENAI_STREAM_ERROR = '{"message": "scripted mid-stream failure", "type": "server_error", "code": 500}'
_ANTHROPIC_STREAM_ERROR = '{"type": "overloaded_error", "message": "Overloaded"}'
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                          403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                          429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
                          529: "overloaded_error"}  # fmt: skip
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}  # OpenAI's finish_reason -> stop_reason


def _a_error_body(code: int, message: str | None = None) -> bytes:
    kind = _ANTHROPIC_ERROR_TYPES.get(code, "api_error" if code >= 500 else "invalid_request_error")
    error = {"type": kind, "message": message or f"scripted {code}"}
    return json.dumps({"type": "error", "error": error}).encode()


def _a_event(obj: dict[str, Any]) -> bytes:
    """One named SSE event, as Anthropic sends them: ``event: <type>`` then its data."""
    return _a_event_raw(obj["type"], json.dumps(obj).encode())


def _a_event_raw(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _a_prompt_tokens(body: dict[str, Any]) -> int:
    system = body.get("system")
    return _prompt_tokens(body) + len(_TOKEN.findall(_text_of(system)))


def _a_stop_sequence(tokens: tuple[str, ...], body: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """The tokens before the first one (whitespace-stripped) in ``stop_sequences``, and that one."""
    stops = body.get("stop_sequences") or ()
    for i, token in enumerate(tokens):
        if token.strip() in stops:
            return tokens[:i], token.strip()
    return tokens, None


def _a_message(answer: _Answer, model: str, finish: bool = True) -> dict[str, Any]:
    """The non-streamed ``message`` (``finish=False``: no stop_reason nor usage, as cut short)."""
    body: dict[str, Any] = {
        "id": "msg_scripted", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "".join(answer.tokens)}],
        "stop_reason": _STOP_REASONS.get(answer.finish, answer.finish) if finish else None,
        "stop_sequence": answer.stop_sequence if finish else None,
    }  # fmt: skip
    if finish:
        body["usage"] = {"input_tokens": answer.prompt_tokens, "output_tokens": len(answer.tokens)}
    return body


def _a_opening(answer: _Answer, model: str) -> list[bytes]:
    """``message_start`` (the message without content), ``content_block_start``, ``ping``."""
    usage = {"input_tokens": answer.prompt_tokens, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": 1}  # fmt: skip
    message = {**_a_message(answer, model, finish=False), "content": [], "usage": usage}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    return [
        _a_event({"type": "message_start", "message": message}),
        _a_event(block),
        _a_event({"type": "ping"}),
    ]


def _a_delta(token: str) -> bytes:
    return _a_event(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}
    )


def _a_tail(answer: _Answer, usage: bool) -> list[bytes]:
    """``content_block_stop``, ``message_delta`` (stop_reason, output_tokens), ``message_stop``."""
    stop = {
        "stop_reason": _STOP_REASONS.get(answer.finish, answer.finish),
        "stop_sequence": answer.stop_sequence,
    }
    delta: dict[str, Any] = {"type": "message_delta", "delta": stop}
    if usage:
        delta["usage"] = {"output_tokens": len(answer.tokens)}
    return [_a_event({"type": "content_block_stop", "index": 0}), _a_event(delta), _A_STOP]


_A_STOP = _a_event({"type": "message_stop"})
_A_PING = _a_event({"type": "ping"})


@lru_cache(maxsize=256)
def _a_whole_stream(answer: _Answer, model: str, usage: bool) -> bytes:
    events = [*_a_opening(answer, model), *map(_a_delta, answer.tokens), *_a_tail(answer, usage)]
    return b"".join(map(_http_chunk, events)) + b"0\r\n\r\n"


def _a_models(models: Sequence[str]) -> bytes:
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models
    ]
    page = {"data": data, "has_more": False, "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None}  # fmt: skip
    return json.dumps(page).encode()


# ---------------------------------------------------------------- HTTP requests


class _BadRequest(Exception):
    """The client sent something that is not HTTP/1.1 as this server reads it."""


@dataclass
class _Parsed:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Parsed | None:
    """Read one request; None at a clean end of the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("connection closed inside a request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, version = lines[0].split(" ")
    except ValueError as exc:
        raise _BadRequest(f"bad request line {lines[0]!r}") from exc
    headers = {}
    for line in filter(None, lines[1:]):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return _Parsed(method, path, headers, body, keep_alive)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError as exc:
        raise _BadRequest("bad content-length") from exc
    return await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError as exc:
            raise _BadRequest(f"bad chunk size {line!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers: nothing here needs them
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


# ---------------------------------------------------------------- connections


class _Connection:
    """One client connection: a reader task parses requests ahead and notices the client leave.

    Reading in its own task is what lets a stalled answer see the client go
    (end of file or reset) without reading, and so losing, the bytes of a
    next request the client may already have sent.
    """

    def __init__(self, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.id = cid
        self.reader = reader
        self.writer = writer
        self.gone = asyncio.Event()
        self.requests: asyncio.Queue[_Parsed | _BadRequest | None] = asyncio.Queue()
        self.reading = asyncio.get_running_loop().create_task(self._read_all())

    async def _read_all(self) -> None:
        try:
            while (request := await _read_request(self.reader, self.writer)) is not None:
                self.requests.put_nowait(request)
        except _BadRequest as exc:
            self.requests.put_nowait(exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the client left mid-request or reset the connection
        finally:
            self.gone.set()
            self.requests.put_nowait(None)

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True (at once) if the client leaves meanwhile."""
        if seconds <= 0 or self.gone.is_set():
            return self.gone.is_set()
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def write(self, data: bytes) -> bool:
        """Write and drain; False if the client is gone (it never raises for that)."""
        if self.gone.is_set():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.gone.set()
            return False
        return True

    def abort(self, *, rst: bool = False) -> None:
        if rst:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout turns close() into a reset.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        # Not awaited: this runs in a finally that cancellation may be unwinding,
        # and the reader task ends on its own once the transport is closed.
        self.reading.cancel()
        self.writer.close()


# ---------------------------------------------------------------- one exchange


class _Exchange:
    """One request and its answer: buffers what a behaviour writes, flushes at waits."""

    def __init__(
        self, server: ScriptedServer, conn: _Connection, record: RequestRecord, request: _Parsed
    ) -> None:
        self.server = server
        self.conn = conn
        self.record = record
        body = record.body if isinstance(record.body, dict) else {}
        self.body: dict[str, Any] = body
        self.model = str(body.get("model") or server.models[0])
        self.anthropic = record.anthropic
        # Anthropic always streams its usage; OpenAI only when asked.
        self.include_usage = self.anthropic or bool((body.get("stream_options") or {}).get("include_usage"))
        self.pending: list[bytes] = []
        self.client_left = False
        self.finished = False  # the last bytes are buffered
        self.slot = False  # holds a capacity slot
        self.close_after = not request.keep_alive  # the client asked for Connection: close

    # Writing.

    def head(self, code: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.server._update(self.record, status=code)
        # As both APIs do: every answer names its request.
        name = "request-id" if self.anthropic else "x-request-id"
        headers = [*headers, (name, f"req_scripted_{self.record.index}")]
        if self.close_after:
            headers = [*headers, ("connection", "close")]
        self.pending.append(_head(code, headers))

    def sse_head(self) -> None:
        self.head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                        ("transfer-encoding", "chunked")])  # fmt: skip

    def event(self, data: bytes, *, content: int = 0) -> None:
        self.pending.append(_http_chunk(data))
        if content:
            self.server._update(self.record, chunks=self.record.chunks + content)

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> None:
        data = _event(_chunk("chatcmpl-scripted", self.model, delta, finish))
        self.event(data, content=bool(delta.get("content")))

    def role(self) -> None:
        if self.anthropic:
            self.pending.extend(map(_http_chunk, _a_opening(self.answer(), self.model)))
            return
        self.chunk({"role": "assistant", "content": ""})

    async def flush(self) -> bool:
        """Write what is buffered; False (and the client counted gone) if it left."""
        if not self.pending:
            self.client_left = self.client_left or self.conn.gone.is_set()
            return not self.client_left
        data, self.pending = b"".join(self.pending), []
        if self.record.first_byte is None:
            self.server._update(self.record, first_byte=self.server.now())
        if not await self.conn.write(data):
            self.client_left = True
            return False
        return True

    async def pause(self, seconds: float) -> bool:
        """Flush, then wait; False if the client left (the caller gives up)."""
        if not await self.flush():
            return False
        if await self.conn.sleep(seconds):
            self.client_left = True
            return False
        return True

    async def wait_for_client_to_leave(self, max_wait: float) -> bool:
        """Flush, then wait; closes the connection if the client stays ``max_wait``."""
        if await self.pause(max_wait):
            self.conn.abort()
        return False

    async def finish(self, last: bytes) -> bool:
        """Release the request (slot, in-flight count) *then* write its last bytes."""
        self.pending.append(last)
        self.finished = True
        self.server._release(self)
        return await self.flush()

    async def json(self, code: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bool:
        self.head(code, [("content-type", "application/json"), ("content-length", str(len(body))), *headers])
        return await self.finish(body)

    # The answer.

    def answer(self, chunks: tuple[str, ...] | None = None) -> _Answer:
        prompt = _a_prompt_tokens(self.body) if self.anthropic else _prompt_tokens(self.body)
        limit = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        if chunks is None and self.server.chunks is not None:
            chunks = tuple(f" tok{i}" for i in range(self.server.chunks))
        if chunks is None:
            chunks = tuple(_TOKEN.findall("echo: " + _last_user_text(self.body)))
        tokens, stop_sequence = _a_stop_sequence(chunks, self.body) if self.anthropic else (chunks, None)
        if stop_sequence is not None:
            return _Answer(tokens, "stop_sequence", prompt, stop_sequence=stop_sequence)
        logprobs = int(self.body.get("top_logprobs") or 0) if self.body.get("logprobs") else None
        if _first_tool(self.body) is not None and not self.anthropic:
            return self._tool_answer(prompt, logprobs)
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            return _Answer(tokens[:limit], "length", prompt, None, logprobs)
        return _Answer(tokens, "stop", prompt, None, logprobs)

    def _tool_answer(self, prompt: int, logprobs: int | None) -> _Answer:
        name = _first_tool(self.body)
        assert name is not None
        arguments = json.dumps({"prompt": _last_user_text(self.body)})
        return _Answer(tuple(_tool_call_pieces(arguments)), "tool_calls", prompt, (name, arguments), logprobs)

    def content(self, tokens: Iterable[str], answer: _Answer | None = None) -> None:
        for token in tokens:
            if self.anthropic:
                self.event(_a_delta(token), content=bool(token))
            elif answer is None or (answer.tool_call is None and answer.logprobs is None):
                self.chunk({"content": token})
            else:
                self.rich_chunk(answer, token)

    def rich_chunk(self, answer: _Answer, token: str) -> None:
        """A content chunk with logprobs, or a piece of a tool call's arguments."""
        first = self.record.chunks == 0
        if answer.tool_call is None:
            delta: dict[str, Any] = {"content": token}
        elif first:
            name = answer.tool_call[0]
            delta = {"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                                     "function": {"name": name, "arguments": token}}]}  # fmt: skip
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": token}}]}
        chunk = _chunk("chatcmpl-scripted", self.model, delta)
        chunk["choices"][0]["logprobs"] = _logprobs(answer, [token])
        self.event(_event(chunk))
        self.server._update(self.record, chunks=self.record.chunks + 1)

    def rich_role(self, answer: _Answer) -> None:
        if self.anthropic:
            self.role()
            return
        self.chunk({"role": "assistant", "content": None if answer.tool_call else ""})

    def tail(self, answer: _Answer, usage: bool) -> bytes:
        if self.anthropic:
            return b"".join(map(_http_chunk, _a_tail(answer, usage))) + b"0\r\n\r\n"
        events = [_event(_chunk("chatcmpl-scripted", self.model, {}, answer.finish))]
        if usage and self.include_usage:
            events.append(_event(_usage_chunk(self.model, answer)))
        events.append(b"data: [DONE]\n\n")
        return b"".join(map(_http_chunk, events)) + b"0\r\n\r\n"

    def whole_stream(self, answer: _Answer, usage: bool) -> bytes:
        if self.anthropic:
            return _a_whole_stream(answer, self.model, usage)
        return _whole_stream(answer, self.model, usage and self.include_usage)

    def completion(self, answer: _Answer, finish: bool = True) -> bytes:
        """The non-streamed answer's body: a ``chat.completion`` or an Anthropic ``message``."""
        make = _a_message if self.anthropic else _completion
        return json.dumps(make(answer, self.model, finish)).encode()

    def error_body(self, code: int, message: str | None = None) -> bytes:
        return (_a_error_body if self.anthropic else _error_body)(code, message)

    def end_of_stream(self) -> bytes:
        """The last event and the terminating HTTP chunk: ``[DONE]``, or Anthropic's ``message_stop``."""
        return _http_chunk(_A_STOP if self.anthropic else b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def error_data(self, b: ErrorEvent) -> bytes:
        """The error object of ``b`` wrapped as this wire wraps it."""
        if self.anthropic:
            return b'{"type": "error", "error": ' + (b.error or _ANTHROPIC_STREAM_ERROR).encode() + b"}"
        return b'{"error": ' + (b.error or _OPENAI_STREAM_ERROR).encode() + b"}"

    def error_event(self, b: ErrorEvent) -> bytes:
        """The mid-stream error event of ``b`` (Anthropic's is always named ``error``)."""
        if self.anthropic:
            return _a_event_raw("error", self.error_data(b))
        return (b"event: error\n" if b.named else b"") + b"data: " + self.error_data(b) + b"\n\n"


# ---------------------------------------------------------------- behaviours played


async def _play_ok(x: _Exchange, b: Ok) -> bool:
    if not await x.pause(x.server.service_time):
        return False
    return await _answer(x, b, x.answer(b.chunks))


async def _answer(x: _Exchange, b: Ok, answer: _Answer, *, started: bool = False) -> bool:
    """The answer from wherever it stands (``started``: headers and role chunk already out)."""
    delay = b.delay if b.delay is not None else x.server.token_time
    if b.finish_reason is not None:
        answer = dataclasses.replace(answer, finish=b.finish_reason)
    if not x.record.stream:
        # As long as the stream would take, all of it before the first byte.
        if not await x.pause(delay * len(answer.tokens)):
            return False
        return await x.json(200, x.completion(answer))
    rich = answer.tool_call is not None or answer.logprobs is not None
    if delay <= 0 and not started and not rich:
        # Every chunk in one write: the benchmarks' fast path.
        x.server._update(x.record, chunks=len(answer.tokens))
        x.sse_head()
        return await x.finish(x.whole_stream(answer, b.usage))
    if not started:
        x.sse_head()
        x.rich_role(answer)
    for token in answer.tokens:
        if not await x.pause(delay):
            return False
        x.content([token], answer)
    return await x.finish(x.tail(answer, b.usage))


async def _play_status(x: _Exchange, b: Status) -> bool:
    body = b.body if b.body is not None else x.error_body(b.code)
    return await x.json(b.code, body, b.headers)


async def _play_reset(x: _Exchange, b: ResetBeforeHeaders) -> bool:
    x.conn.abort(rst=True)
    return False


async def _play_stall_before_headers(x: _Exchange, b: StallBeforeHeaders) -> bool:
    return await x.wait_for_client_to_leave(b.max_wait)


def _start_stream(x: _Exchange, k: int) -> _Answer:
    """Headers, and if ``k`` > 0 the role chunk and ``k`` content chunks (buffered)."""
    answer = x.answer()
    x.sse_head()
    if k > 0:
        x.rich_role(answer)
        x.content((answer.tokens * k)[:k], answer)  # repeat a short answer rather than send fewer
    return answer


async def _play_stall_after(x: _Exchange, b: StallAfter) -> bool:
    if x.record.stream:
        _start_stream(x, b.k)
    else:
        x.head(200, [("content-type", "application/json"), ("content-length", "100000")])
    return await x.wait_for_client_to_leave(b.max_wait)


async def _play_trickle(x: _Exchange, b: Trickle) -> bool:
    if x.record.stream:
        _start_stream(x, b.after)
        # On Anthropic's wire a chunk without content is its ping event.
        keepalive = _http_chunk(_A_PING if x.anthropic and not b.keepalive.startswith(b":") else b.keepalive)
    else:
        x.head(200, [("content-type", "application/json"), ("transfer-encoding", "chunked")])
        keepalive = _http_chunk(b" ")
    deadline = x.server.now() + b.max_wait
    while x.server.now() < deadline:
        if not await x.pause(b.interval):
            return False
        x.pending.append(keepalive)
    x.conn.abort()
    return False


async def _play_drop_after(x: _Exchange, b: DropAfter) -> bool:
    if x.record.stream:
        _start_stream(x, b.k)
    else:
        body = x.completion(x.answer())
        x.head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
        x.pending.append(body[: len(body) // 2])
    if await x.flush():
        x.conn.abort(rst=b.rst)
    return False


async def _play_malformed_after(x: _Exchange, b: MalformedAfter) -> bool:
    if not x.record.stream:
        return await x.json(200, b'{"id": "chatcmpl-scripted", "choices": [{"mess')
    _start_stream(x, b.k)
    x.event(b"event: content_block_delta\n" + b.line if x.anthropic else b.line)
    return await x.finish(x.end_of_stream())


async def _play_error_event(x: _Exchange, b: ErrorEvent) -> bool:
    if not x.record.stream:
        return await x.json(200, x.error_data(b))
    if b.gap > 0:
        return await _play_error_event_spread(x, b)
    _start_stream(x, b.after)
    x.event(x.error_event(b))
    if b.coalesce:
        # The head, then every event's bytes as one HTTP chunk.
        head, events = x.pending[0], [_chunk_data(c) for c in x.pending[1:]]
        x.pending = [head, _http_chunk(b"".join(events))]
    return await x.finish(_after_error(x))


def _after_error(x: _Exchange) -> bytes:
    """OpenAI-style servers still send [DONE]; Anthropic's stream ends at its error event."""
    return b"0\r\n\r\n" if x.anthropic else _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


async def _play_error_event_spread(x: _Exchange, b: ErrorEvent) -> bool:
    answer = x.answer()
    x.sse_head()
    x.role()
    for token in (answer.tokens * b.after)[: b.after]:
        if not await x.pause(b.gap):
            return False
        x.content([token])
    if not await x.pause(b.gap):
        return False
    x.event(x.error_event(b))
    return await x.finish(_after_error(x))


def _chunk_data(http_chunk: bytes) -> bytes:
    """The data of one ``_http_chunk``."""
    return http_chunk.split(b"\r\n", 1)[1][:-2]


async def _play_ignore_stream(x: _Exchange, b: IgnoreStream) -> bool:
    if not await x.pause(x.server.service_time):
        return False
    return await x.json(200, x.completion(x.answer(b.chunks)))


async def _play_no_done(x: _Exchange, b: NoDone) -> bool:
    answer = x.answer()
    if not x.record.stream:
        return await x.json(200, x.completion(answer, finish=False))
    _start_stream(x, len(answer.tokens))
    return await x.finish(b"0\r\n\r\n")


async def _play_slow_first_token(x: _Exchange, b: SlowFirstToken) -> bool:
    started = x.record.stream and not b.before_headers
    if started:
        x.sse_head()
        x.role()
    if not await x.pause(b.seconds):
        return False
    return await _answer(x, Ok(), x.answer(), started=started)


async def _play_gather(x: _Exchange, b: Gather) -> bool:
    answer = x.answer()
    if x.record.stream:
        x.sse_head()
        x.role()
        x.content(answer.tokens[:1])
    if not await x.flush() or not await x.server._gather(x, b):
        return False
    if not x.record.stream:
        return await _answer(x, Ok(), answer)
    rest = dataclasses.replace(answer, tokens=answer.tokens[1:])
    return await _answer(x, Ok(), rest, started=True)


async def _play_hold_after(x: _Exchange, b: HoldAfter) -> bool:
    answer = x.answer()
    if x.record.stream:
        x.sse_head()
        x.role()
        x.content(answer.tokens[: b.k])
    if not await x.flush() or not await x.server._hold(x, b):
        return False
    if not x.record.stream:
        return await _answer(x, Ok(), answer)
    rest = dataclasses.replace(answer, tokens=answer.tokens[b.k :])
    return await _answer(x, Ok(), rest, started=True)


_PLAYERS: dict[type[Behaviour], Callable[[_Exchange, Any], Any]] = {
    Ok: _play_ok, Status: _play_status, ResetBeforeHeaders: _play_reset,
    StallBeforeHeaders: _play_stall_before_headers, StallAfter: _play_stall_after,
    Trickle: _play_trickle, DropAfter: _play_drop_after, MalformedAfter: _play_malformed_after,
    ErrorEvent: _play_error_event, NoDone: _play_no_done, SlowFirstToken: _play_slow_first_token,
    Gather: _play_gather, HoldAfter: _play_hold_after, IgnoreStream: _play_ignore_stream,
}  # fmt: skip


def _as_behaviour(item: Any) -> Behaviour:
    if isinstance(item, Behaviour):
        return item
    if callable(item):
        made = item()
        if isinstance(made, Behaviour):
            return made
    raise TypeError(f"not a behaviour: {item!r}; use ok(), status(503), stall_after(2), ...")


# ---------------------------------------------------------------- the server


class _Unset:
    pass


_UNSET: Any = _Unset()

_COUNTERS = (
    "connections_accepted", "connections_open", "max_connections_open", "in_flight", "max_in_flight",
    "serving", "max_serving", "queued", "max_queued", "rejected", "disconnects", "completed",
)  # fmt: skip


def _counter(name: str, doc: str) -> Any:
    def read(self: ScriptedServer) -> int:
        with self._cond:
            return self._count[name]

    return property(read, doc=doc)


class ScriptedServer:
    """A scripted OpenAI-compatible server on 127.0.0.1 (see the module docstring).

    Args:
        port: the port to listen on; 0 picks a free one.
        models: the model names ``GET /v1/models`` lists (the first answers
            requests that name none).
        api_key: when set, requests need ``Authorization: Bearer <api_key>``
            (Anthropic's: ``x-api-key: <api_key>``).
        capacity: chat requests admitted at once; None for no limit.
        overflow: beyond ``capacity``, "reject" (429) or "queue" (FIFO).
        retry_after: seconds in the capacity 429's ``Retry-After``; None omits it.
        retry_after_ms: milliseconds in its ``retry-after-ms``; None omits it.
        service_time: seconds an ``ok`` answer spends before its first byte.
        token_time: seconds before each content chunk of an ``ok`` answer.
        chunks: answer with this many fixed tokens instead of the echo.
        default: the behaviour when no rule or script applies (``ok()``).
        rule: ``rule(record) -> behaviour | None``, asked first for each chat request.
        record: keep a ``RequestRecord`` per request (counters are always kept).
        basic_auth: ``(user, password)``: requests need that HTTP Basic auth.
        tls: a server-side ``ssl.SSLContext``: serve HTTPS.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        models: Sequence[str] = ("scripted-model",),
        api_key: str | None = None,
        capacity: int | None = None,
        overflow: Overflow = "reject",
        retry_after: float | None = 1.0,
        retry_after_ms: float | None = None,
        service_time: float = 0.0,
        token_time: float = 0.0,
        chunks: int | None = None,
        default: Behaviour | Callable[[], Behaviour] = ok,
        rule: Rule | None = None,
        record: bool = True,
        basic_auth: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.models = tuple(models)
        self.api_key = api_key
        self.basic_auth = basic_auth
        self.tls = tls
        self.chunks = chunks
        self.default = _as_behaviour(default)
        self.rule = rule
        self.keep_records = record
        self._requested_port = port
        self.port = 0
        self._cond = threading.Condition(threading.RLock())
        self._settings(capacity, overflow, retry_after, retry_after_ms, service_time, token_time)
        self._script: collections.deque[Behaviour] = collections.deque()
        self._records: list[RequestRecord] = []
        self._count = dict.fromkeys(_COUNTERS, 0)
        self._indices = 0
        self._errors: list[str] = []
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._gathering: list[asyncio.Future[None]] = []
        self._released: asyncio.Event | None = None  # made on the server's loop
        self._connections: set[_Connection] = set()
        self._transports: set[asyncio.Transport] = set()  # every connection's, from its first moment
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # Lifecycle.

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the server is not started: call start() or use `with running() as server`")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    def start(self) -> Self:
        """Listen and serve in a daemon thread; return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("a ScriptedServer starts once; make a new one")
        self._thread = threading.Thread(target=self._run, name="scripted-openai-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the scripted server did not start within 30 s")
        if self._startup_error is not None:
            raise RuntimeError("the scripted server failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection, stop the loop and join its thread (idempotent)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop closed meanwhile
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("the scripted server's thread did not stop within 30 s")

    def crash(self) -> None:
        """Die like a killed server: stop listening and reset every open connection."""
        self._call(self._crash)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise AssertionError(f"the scripted server failed: {self.errors}")

    # Scripting and settings.

    def script(self, *behaviours: Behaviour | Callable[[], Behaviour]) -> None:
        """Queue behaviours for the next chat requests, one each, in arrival order."""
        made = [_as_behaviour(b) for b in behaviours]
        with self._cond:
            self._script.extend(made)

    @property
    def scripted(self) -> int:
        """Behaviours queued and not yet consumed."""
        with self._cond:
            return len(self._script)

    def configure(
        self,
        *,
        capacity: int | None = _UNSET,
        overflow: Overflow = _UNSET,
        retry_after: float | None = _UNSET,
        retry_after_ms: float | None = _UNSET,
        service_time: float = _UNSET,
        token_time: float = _UNSET,
    ) -> None:
        """Change capacity settings at run time (a larger capacity admits waiters at once)."""
        given = {k: v for k, v in locals().items() if k != "self" and v is not _UNSET}
        with self._cond:
            now = {k: getattr(self, k) for k in ("capacity", "overflow", "retry_after", "retry_after_ms",
                                                   "service_time", "token_time")}  # fmt: skip
            self._settings(**{**now, **given})
        if self._loop is not None:
            self._call(self._admit_waiters)

    def _settings(
        self,
        capacity: int | None,
        overflow: Overflow,
        retry_after: float | None,
        retry_after_ms: float | None,
        service_time: float,
        token_time: float,
    ) -> None:
        if overflow not in ("reject", "queue"):
            raise ValueError(f"overflow must be 'reject' or 'queue', not {overflow!r}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 (or None for no limit), not {capacity}")
        self.capacity, self.overflow = capacity, overflow
        self.retry_after, self.retry_after_ms = retry_after, retry_after_ms
        self.service_time, self.token_time = service_time, token_time

    def reset(self) -> None:
        """Forget records, script and totals; maxima restart from the current levels."""
        with self._cond:
            self._records.clear()
            self._script.clear()
            self._errors.clear()
            for name in ("connections_accepted", "rejected", "disconnects", "completed"):
                self._count[name] = 0
            for name in ("connections_open", "in_flight", "serving", "queued"):
                self._count["max_" + name] = self._count[name]

    # Reading what happened (any thread).

    @staticmethod
    def now() -> float:
        """The server's clock (``time.monotonic``), on which records are stamped."""
        return time.monotonic()

    @property
    def requests(self) -> list[RequestRecord]:
        """Copies of every request's record, in arrival order."""
        with self._cond:
            return [copy.copy(r) for r in self._records]

    @property
    def errors(self) -> list[str]:
        """The server's own failures so far (a behaviour's bug, a rule that raised)."""
        with self._cond:
            return list(self._errors)

    @property
    def chat_requests(self) -> list[RequestRecord]:
        """Copies of the chat requests' records, in arrival order."""
        return [r for r in self.requests if r.chat]

    def snapshot(self) -> dict[str, int]:
        """Every counter at one instant."""
        with self._cond:
            return dict(self._count)

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float, what: str | None = None) -> None:
        """Wait until ``predicate(server)`` holds (re-checked at every change).

        Raises:
            AssertionError: ``timeout`` seconds passed first; says what was awaited and the counters.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or _describe(predicate)}; "
                    f"server counters: {self.snapshot()}"
                )

    connections_accepted = _counter("connections_accepted", "Connections accepted since the start.")
    connections_open = _counter("connections_open", "Connections open now.")
    max_connections_open = _counter("max_connections_open", "The most connections open at once.")
    in_flight = _counter("in_flight", "Chat requests open now (arrived, not ended), queued ones included.")
    max_in_flight = _counter("max_in_flight", "The most chat requests open at once.")
    serving = _counter("serving", "Chat requests admitted past the capacity limit now.")
    max_serving = _counter("max_serving", "The most chat requests admitted at once (at most the capacity).")
    queued = _counter("queued", "Chat requests waiting in the capacity queue now.")
    max_queued = _counter("max_queued", "The longest the capacity queue has been.")
    rejected = _counter("rejected", "Chat requests the capacity limit answered with 429 (Anthropic's: 529).")
    disconnects = _counter("disconnects", "Chat requests whose client left before their answer ended.")
    completed = _counter("completed", "Chat requests whose answer was written to its end.")

    # The loop thread.

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # noqa: BLE001 - reported to start() or kept in errors
            self._startup_error = exc
            self._note_error(f"server loop died: {exc!r}")
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, ctx: self._note_error(str(ctx)))
        self._stopping = asyncio.Event()
        listener = await start_tracked_server(
            self._serve_connection,
            self._transports,
            "127.0.0.1",
            self._requested_port,
            backlog=4096,
            limit=1 << 20,
            ssl=self.tls,
        )
        self.port = listener.sockets[0].getsockname()[1]
        self._listener = listener
        self._ready.set()
        await self._stopping.wait()
        await close_connections(listener, self._transports)

    def _crash(self) -> None:
        self._listener.close()
        for conn in list(self._connections):
            conn.abort(rst=True)

    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is None:
            raise RuntimeError("the server is not started")
        self._loop.call_soon_threadsafe(fn)

    def _note_error(self, message: str) -> None:
        with self._cond:
            self._errors.append(message)
            self._cond.notify_all()

    def _bump(self, name: str, by: int = 1) -> None:
        """Change a counter (the lock is held); keep its maximum."""
        self._count[name] += by
        peak = "max_" + name
        if peak in self._count and self._count[name] > self._count[peak]:
            self._count[peak] = self._count[name]

    def _update(self, record: RequestRecord, **fields: Any) -> None:
        with self._cond:
            for name, value in fields.items():
                setattr(record, name, value)
            self._cond.notify_all()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._cond:
            self._bump("connections_accepted")
            self._bump("connections_open")
            cid = self._count["connections_accepted"]
            self._cond.notify_all()
        conn = _Connection(cid, reader, writer)
        self._connections.add(conn)
        try:
            while isinstance(request := await conn.requests.get(), _Parsed):
                if not await self._serve_request(conn, request) or not request.keep_alive:
                    break
            if isinstance(request, _BadRequest):
                await conn.write(_head(400, [("content-length", "0"), ("connection", "close")]))
        except Exception as exc:  # noqa: BLE001 - a server bug: kept for the test to see
            self._note_error(f"connection {cid}: {exc!r}")
            conn.abort()
        except asyncio.CancelledError:
            # Only stop() cancels these. Python 3.11's start_server calls
            # task.exception() on the handler task when it ends, which raises
            # (and is reported) if the task ended cancelled.
            return
        finally:
            self._connections.discard(conn)
            conn.close()
            with self._cond:
                self._bump("connections_open", -1)
                self._cond.notify_all()

    async def _serve_request(self, conn: _Connection, request: _Parsed) -> bool:
        """Answer one request; return whether the connection can serve another."""
        record = self._arrive(conn, request)
        if record.chat:
            return await self._serve_chat(conn, record, request)
        x = _Exchange(self, conn, record, request)
        try:
            return await self._route_other(x, request)
        finally:
            self._settle(x)

    async def _route_other(self, x: _Exchange, request: _Parsed) -> bool:
        if not self._authorised(request, x.anthropic):
            return await _play_status(x, status(401, body=x.error_body(401, "Incorrect API key provided")))
        if request.method == "GET" and request.path.split("?")[0].rstrip("/").endswith("/models"):
            if x.anthropic:
                return await x.json(200, _a_models(self.models))
            data = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "scripted"}
                    for m in self.models]  # fmt: skip
            return await x.json(200, json.dumps({"object": "list", "data": data}).encode())
        return await x.json(404, x.error_body(404, f"no route {request.method} {request.path}"))

    def _arrive(self, conn: _Connection, request: _Parsed) -> RequestRecord:
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            body = None
        with self._cond:
            record = RequestRecord(
                self._indices, conn.id, request.method, request.path, request.headers, body, self.now()
            )
            self._indices += 1
            if self.keep_records:
                self._records.append(record)
            if record.chat:
                self._bump("in_flight")
            self._cond.notify_all()
        return record

    async def _serve_chat(self, conn: _Connection, record: RequestRecord, request: _Parsed) -> bool:
        x = _Exchange(self, conn, record, request)
        try:
            behaviour = self._gate(x, request)
            if behaviour is None and not await self._queue(x):
                return False
            behaviour = behaviour or self._choose(record)
            self._update(record, behaviour=behaviour, started=self.now())
            return bool(await _PLAYERS[type(behaviour)](x, behaviour))
        finally:
            self._release(x)
            self._settle(x)

    def _authorised(self, request: _Parsed, anthropic: bool = False) -> bool:
        given = request.headers.get("authorization")
        if self.basic_auth is not None:
            token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            return given == f"Basic {token}"
        if anthropic:  # Anthropic takes its key in x-api-key only, never as a Bearer token
            return self.api_key is None or request.headers.get("x-api-key") == self.api_key
        return self.api_key is None or given == f"Bearer {self.api_key}"

    def _refusal(self, x: _Exchange, request: _Parsed) -> Status | None:
        """The 400 or 401 a request gets before anything else, if any."""
        if not isinstance(x.record.body, dict):
            return status(400, body=x.error_body(400, "the body is not a JSON object"))
        if not self._authorised(request, x.anthropic):
            message = "invalid x-api-key" if x.anthropic else "Incorrect API key provided"
            return status(401, body=x.error_body(401, message))
        if not x.anthropic:
            return None
        if "anthropic-version" not in request.headers:
            return status(400, body=x.error_body(400, "anthropic-version: header is required"))
        if not isinstance(x.record.body.get("max_tokens"), int):
            return status(400, body=x.error_body(400, "max_tokens: Field required"))
        return None

    def _gate(self, x: _Exchange, request: _Parsed) -> Behaviour | None:
        """What must happen before any choice: 400, 401, a capacity 429 (529), or admission."""
        refusal = self._refusal(x, request)
        if refusal is not None:
            return refusal
        with self._cond:
            if self._waiters or (self.capacity is not None and self._count["serving"] >= self.capacity):
                if self.overflow == "queue":
                    return None
                self._bump("rejected")
                x.record.rejected = True
                return self._capacity_429(x)
            self._bump("serving")
            x.slot = True
        return self._choose(x.record)

    def _capacity_429(self, x: _Exchange) -> Status:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
        message = f"scripted capacity of {self.capacity} concurrent requests reached"
        code = 529 if x.anthropic else 429  # Anthropic says "overloaded" when it is out of capacity
        return status(code, headers, x.error_body(code, message))

    async def _queue(self, x: _Exchange) -> bool:
        """Wait in FIFO order for a slot; False if the client left meanwhile."""
        behaviour = self._choose(x.record)  # chosen at arrival, so scripts follow arrival order
        self._update(x.record, behaviour=behaviour)
        waiter = asyncio.get_running_loop().create_future()
        with self._cond:
            self._waiters.append(waiter)
            self._bump("queued")
            self._cond.notify_all()
        left = asyncio.ensure_future(x.conn.gone.wait())
        try:
            await asyncio.wait([waiter, left], return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            with self._cond:
                if waiter.done():
                    x.slot = True  # handed over by _admit_waiters
                else:
                    waiter.cancel()
                    self._waiters.remove(waiter)
                    self._bump("queued", -1)
                    self._cond.notify_all()
        if not x.slot:
            x.client_left = True
        return x.slot

    def _admit_waiters(self) -> None:
        with self._cond:
            while self._waiters and (self.capacity is None or self._count["serving"] < self.capacity):
                self._waiters.popleft().set_result(None)
                self._bump("queued", -1)
                self._bump("serving")
            self._cond.notify_all()

    def _choose(self, record: RequestRecord) -> Behaviour:
        if record.behaviour is not None:
            return record.behaviour  # chosen when it joined the queue
        if self.rule is not None:
            try:
                chosen = self.rule(copy.copy(record))
            except Exception as exc:  # noqa: BLE001 - a test bug: reported, not fatal to the server
                self._note_error(f"rule raised {exc!r} for request {record.index}")
                chosen = None
            if chosen is not None:
                return _as_behaviour(chosen)
        with self._cond:
            return self._script.popleft() if self._script else self.default

    def release(self) -> None:
        """Let every ``hold_after`` stream go on, now and from now on."""
        self._call(self._release_holds)

    def _release_holds(self) -> None:
        self._held().set()

    def _held(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released

    async def _hold(self, x: _Exchange, b: HoldAfter) -> bool:
        """Wait for ``release()``; False if the client left first."""
        released = asyncio.ensure_future(self._held().wait())
        left = asyncio.ensure_future(x.conn.gone.wait())
        try:
            await asyncio.wait([released, left], timeout=b.max_wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            left.cancel()
        if x.conn.gone.is_set() and not self._held().is_set():
            x.client_left = True
            return False
        return True

    async def _gather(self, x: _Exchange, b: Gather) -> bool:
        """Wait until ``b.n`` streams wait here together; False if the client left."""
        me = asyncio.get_running_loop().create_future()
        self._gathering.append(me)
        if len(self._gathering) >= b.n:
            for waiter in self._gathering:
                if not waiter.done():
                    waiter.set_result(None)
            self._gathering.clear()
        left = asyncio.ensure_future(x.conn.gone.wait())
        try:
            await asyncio.wait([me, left], timeout=b.max_wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            if me in self._gathering:
                self._gathering.remove(me)
        if x.conn.gone.is_set() and not me.done():
            x.client_left = True
            return False
        return True

    def _release(self, x: _Exchange) -> None:
        """The request stops counting: in flight, its capacity slot, its end time (idempotent)."""
        if x.record.ended is not None:
            return
        with self._cond:
            x.record.ended = self.now()
            if x.record.chat:
                self._bump("in_flight", -1)
                # Counted before the last write, so a client that saw the end
                # finds it counted; _settle takes it back if that write fails.
                self._bump("completed", x.finished)
            if x.slot:
                x.slot = False
                self._bump("serving", -1)
            self._cond.notify_all()
        self._admit_waiters()

    def _settle(self, x: _Exchange) -> None:
        """Count how the request ended, once its last write is done or abandoned."""
        self._release(x)
        if not x.record.chat:
            return
        with self._cond:
            if x.client_left:
                x.record.disconnected = True
                self._bump("disconnects")
                self._bump("completed", -x.finished)
            self._cond.notify_all()


def _describe(predicate: Callable[..., Any]) -> str:
    code = getattr(predicate, "__code__", None)
    return f"{predicate.__qualname__} ({code.co_filename}:{code.co_firstlineno})" if code else repr(predicate)


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    """``asyncio.start_server``'s protocol, keeping its transport in a set
    from the moment it exists until the connection is lost."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        transports: set[asyncio.Transport],
    ) -> None:
        super().__init__(reader, handler)
        self._transports = transports
        self._tracked: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transports are full ones (socket, or TLS over one).
        self._tracked = cast(asyncio.Transport, transport)
        self._transports.add(self._tracked)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tracked is not None:
            self._transports.discard(self._tracked)
        super().connection_lost(exc)


async def start_tracked_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    transports: set[asyncio.Transport],
    host: str,
    port: int,
    *,
    limit: int,
    **kwargs: Any,
) -> asyncio.Server:
    """``asyncio.start_server``, with every connection's transport in
    ``transports`` until it is lost (see ``close_connections``)."""
    loop = asyncio.get_running_loop()

    def factory() -> _TrackedProtocol:
        return _TrackedProtocol(asyncio.StreamReader(limit=limit, loop=loop), handler, transports)

    return await loop.create_server(factory, host, port, **kwargs)


async def close_connections(listener: asyncio.Server, transports: set[asyncio.Transport]) -> None:
    """Stop a server on its loop: close ``listener``, abort every transport
    in ``transports`` (``start_tracked_server``'s), let every handler start,
    then cancel every other task; return once every transport is lost.

    - Accepting stops first, and the listener closes only once asyncio's
      accept tasks (many clients at once: a Ray worker's pool) have made
      their transports: Python 3.11 attaches each to its server, and one
      made after the server closed fails half-built, its socket left open.
    - Tracked from ``connection_made``, a connection is aborted even if its
      handler never ran; that handler then starts, finds it closed, ends.
    - A handler is cancelled only once it has started: cancelled before its
      first step it would skip its own clean-up, and Python 3.11's
      ``start_server`` reports a handler task that ended cancelled.
    - An abort closes the socket a loop turn later: the loop turns until
      every transport is lost (a loop that ended first left it open).

    Each wait is on a state, and bounded.
    """
    loop = asyncio.get_running_loop()
    for sock in listener.sockets:
        loop.remove_reader(sock.fileno())
    deadline = loop.time() + 5.0
    while (accepting := _accept_tasks()) and loop.time() < deadline:
        await asyncio.wait(accepting, timeout=0.05)
    listener.close()
    for transport in list(transports):
        transport.abort()
    await _turn_until(lambda: not any(_unstarted(t) for t in asyncio.all_tasks()))
    for transport in list(transports):
        transport.abort()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _turn_until(lambda: not transports)


async def _turn_until(done: Callable[[], bool], turns: int = 100) -> None:
    """Let the loop turn until ``done()``, at most ``turns`` times."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)


def _unstarted(task: asyncio.Task[Any]) -> bool:
    """A task whose coroutine has not taken its first step yet."""
    coro = task.get_coro()
    return inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED


def _accept_tasks() -> set[asyncio.Task[Any]]:
    """asyncio's own tasks that are turning an accepted socket into a connection."""
    return {
        task for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").endswith("_accept_connection2")
    }  # fmt: skip


@contextmanager
def running(**kwargs: Any) -> Iterator[ScriptedServer]:
    """Start a ``ScriptedServer(**kwargs)``, yield it, stop it (and fail on its own errors)."""
    with ScriptedServer(**kwargs) as server:
        yield server


# ---------------------------------------------------------------- process mode


_PROCESS_DOC = "A scripted OpenAI-compatible server on 127.0.0.1; prints PORT <n> when ready."


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.scripted", description=_PROCESS_DOC)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--capacity", type=int, default=None)
    parser.add_argument("--overflow", choices=("reject", "queue"), default="reject")
    parser.add_argument("--retry-after", type=_seconds_or_none, default=1.0, help="seconds, or 'none'")
    parser.add_argument("--retry-after-ms", type=float, default=None)
    parser.add_argument("--service-time", type=float, default=0.0)
    parser.add_argument("--token-time", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=None, help="fixed answer length (default: echo)")
    parser.add_argument("--model", action="append", dest="models", help="a model name to list (repeatable)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--records", action="store_true", help="keep a record per request")
    return parser.parse_args(argv)


def _seconds_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``PORT <n>`` when ready and ``STATS {...}`` at the end."""
    args = _parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # A process started in the background inherits SIGINT as *ignored*, and
    # POSIX leaves it unspecified whether an ignored signal stays pending for
    # sigwait (Linux keeps it while blocked): restore the default first. Then
    # block both before the server thread starts (it inherits the mask), so
    # only sigwait below receives them.
    for sig in stop_signals:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = ScriptedServer(
        port=args.port, models=tuple(args.models or ("scripted-model",)), api_key=args.api_key,
        capacity=args.capacity, overflow=args.overflow, retry_after=args.retry_after,
        retry_after_ms=args.retry_after_ms, service_time=args.service_time, token_time=args.token_time,
        chunks=args.chunks, record=args.records,
    ).start()  # fmt: skip
    print("PORT", server.port, flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    print("STATS", json.dumps(server.snapshot()), flush=True)
    return 1 if server.errors else 0


if __name__ == "__main__":
    sys.exit(main())
