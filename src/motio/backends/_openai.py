"""OpenAIBackend: any OpenAI-compatible chat server, streamed at raw-SSE speed.

The transport is aiohttp (``_http.py``): one session per event loop, kept
alive connections, no pool cap below ``max_concurrency``. The openai SDK is
not used: its typed stream builds a pydantic object per chunk (about seven
times the cost of reading raw SSE bytes and decoding them with msgspec), and
its httpx pool slows down as open connections grow, which at thousands of
concurrent streams was the whole budget.

Data flow of one streamed generation::

    generate() -> ModelOutputThunk.from_response(_open_stream(...))
    _open_stream: wait for a concurrency slot (not counted by chunk_timeout)
                  -> SlotStream(_read_sse(...))   # gives the slot back once
    _read_sse:    POST, then one block of SSE events per network read
    _ChatFold:    decodes and folds each payload into text and metadata
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from .._exceptions import BadRequestError, ConfigurationError, MotioError, NotFoundError
from .._loops import get_current_event_loop
from ._chat import batch_decoder, fold_chunk, fold_structs
from ._base import COMMON_OPTIONS, Backend, Messages, SlotStream, check_options, to_messages
from ._errors import Where, stream_error, translate
from ._http import HTTPClient, json_codec
from ._loopclients import LoopClient, LoopClients, loop_semaphore
from ._sse import ErrorEvent, SSEDecoder, data_as_json_array, parse_events

if TYPE_CHECKING:
    import aiohttp

__all__ = ["OpenAIBackend"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers (llama.cpp, vLLM, Ollama) ignore the key, but the SDK insists on one.
_PLACEHOLDER_KEY = "sk-no-key-required"

_OPTIONS = COMMON_OPTIONS | {
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "response_format",
    "extra_body",
}


_TAKE_GENERIC_PATH = object()


def _no_release() -> None:
    pass


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server.

    Args:
        model: the model name; None asks the server (``GET /models``) and
            uses the first it lists.
        base_url: the API root; default ``$OPENAI_BASE_URL`` or OpenAI's.
        api_key: default ``$OPENAI_API_KEY``, else a placeholder that local
            servers accept.
        headers: extra HTTP headers for every request.
        max_concurrency: at most this many requests in flight per event
            loop; the rest wait without holding a connection. None: no cap.
        timeout: seconds to wait for any one network read (the response's
            headers, then each piece of its body).
        connect_timeout: seconds to establish a connection.
        max_retries: accepted for compatibility; 0 by default.

    Raises:
        ConfigurationError: a bad ``max_concurrency`` or timeout.
    """

    provider = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_concurrency: int | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        max_retries: int = 0,
    ) -> None:
        _check_positive_int("max_concurrency", max_concurrency, allow_none=True)
        _check_positive_int("max_retries", max_retries + 1)
        if timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("timeout and connect_timeout must be positive numbers of seconds")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or _PLACEHOLDER_KEY
        self._headers = {"Authorization": f"Bearer {self._api_key}", "User-Agent": "motio", **(headers or {})}
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        factory = functools.partial(HTTPClient, self.base_url, self._headers, connect_timeout, timeout)
        self._clients = LoopClients(factory)
        # A backend dropped without close(): close its clients on their own
        # loops instead of leaving sockets for the garbage collector.
        weakref.finalize(self, self._clients.close_all_elsewhere)
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._semaphores = weakref.WeakKeyDictionary()
        self._model_lock = threading.Lock()
        self._loads = json_codec()[1]
        self._last_where: Where | None = None
        # Cleared the first time a server rejects stream_options (older servers).
        self._ask_usage = True

    def _where(self) -> Where:
        # One shared Where while the model stays the same: no object per request.
        where = self._last_where
        if where is None or where.model != self.model:
            where = self._last_where = Where(self.provider, self.model, self.base_url)
        return where

    async def generate(
        self, prompt_or_messages: str | Messages, *, stream: bool = True, **options: Any
    ) -> Any:
        from .. import DEFAULT_CHUNK_TIMEOUT, ModelOutputThunk

        check_options(options, _OPTIONS, type(self).__name__)
        chunk_timeout = options.pop("chunk_timeout", DEFAULT_CHUNK_TIMEOUT)
        body = _request_body(to_messages(prompt_or_messages), stream, options)
        fold = _ChatFold(self._loads, self._where(), stream)
        opener = self._open_stream(body, fold) if stream else self._complete(body, fold)
        process = fold.process_events if stream else fold.process_whole
        mot = ModelOutputThunk.from_response(
            opener, process=process, post_process=fold.finish, chunk_timeout=chunk_timeout
        )
        meta = mot.generation
        meta.provider, meta.model, meta.streaming = self.provider, self.model, stream
        return mot

    async def _open_stream(self, body: dict[str, Any], fold: _ChatFold) -> SlotStream:
        release = await self._take_slot()
        try:
            entry = await self._clients.get()
            await self._prepare(entry, body, fold)
        except BaseException:
            release()
            raise
        if self._ask_usage:
            body["stream_options"] = {"include_usage": True}
        return SlotStream(self._read_sse(entry, body, fold.where), release)

    async def _complete(self, body: dict[str, Any], fold: _ChatFold) -> bytes:
        release = await self._take_slot()
        try:
            entry = await self._clients.get()
            await self._prepare(entry, body, fold)
            entry.acquire()
            try:
                response = await self._send(entry.client, body, fold.where)
                try:
                    return await response.read()
                except Exception as exc:
                    _reraise(exc, fold.where, mid_stream=True)
                finally:
                    # Read to the end, the connection went back to the pool
                    # already; otherwise this drops it, and the server sees it.
                    response.close()
            finally:
                entry.release()
        finally:
            release()

    async def _prepare(self, entry: LoopClient, body: dict[str, Any], fold: _ChatFold) -> None:
        if self.model is None:
            await self._ask_model(entry.client)
        if fold.where.model != self.model:  # asked the server since generate()
            fold.where = self._where()
        body["model"] = self.model

    async def _read_sse(self, entry: LoopClient, body: dict[str, Any], where: Where) -> AsyncIterator[bytes]:
        """Yield each network read's complete SSE events as one block.

        Plain try blocks rather than context managers: this frame lives as
        long as the stream, and at thousands of streams every object it
        keeps alive is one more for each garbage collection to walk.
        """
        entry.acquire()
        try:
            response = await self._send(entry.client, body, where)
            finished = False
            try:
                decoder = SSEDecoder()
                read = response.content.readany
                while True:
                    try:
                        raw = await read()
                    except Exception as exc:
                        _reraise(exc, where, mid_stream=True)
                    if not raw:
                        break
                    if block := decoder.feed(raw):
                        yield block
                if block := decoder.flush():
                    yield block
                finished = True
            finally:
                # A stream read to its end keeps its connection for the next
                # request; one left early (closed thunk, timeout, error) drops
                # it, so the server sees the client leave and stops generating.
                if finished:
                    response.release()
                else:
                    response.close()
        finally:
            entry.release()

    async def _send(self, client: HTTPClient, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        """POST the body; return the response with its body unread.

        Raises:
            BackendError: translated, with the server's message for an HTTP error.
        """
        try:
            return await client.post("/chat/completions", body, where)
        except BadRequestError as exc:
            if "stream_options" not in body or "stream_options" not in str(exc):
                raise
        except MotioError:
            raise
        except Exception as exc:
            _reraise(exc, where)
        # An older server that rejects stream_options: ask once more
        # without it and count the chunks for usage instead.
        self._ask_usage = False
        del body["stream_options"]
        try:
            return await client.post("/chat/completions", body, where)
        except MotioError:
            raise
        except Exception as exc:
            _reraise(exc, where)

    async def _take_slot(self) -> Callable[[], None]:
        if self.max_concurrency is None:
            return _no_release
        sem = loop_semaphore(self._semaphores, self.max_concurrency)
        await sem.acquire()
        return sem.release

    async def _ask_model(self, client: HTTPClient) -> str:
        ids = await self._list_models(client)
        with self._model_lock:
            if self.model is None:
                if not ids:
                    raise NotFoundError(
                        f"{self._where().describe()}: the server lists no models; pass model=",
                        **self._where().fields(),
                    )
                self.model = ids[0]
        return self.model

    async def _list_models(self, client: HTTPClient) -> list[str]:
        where = self._where()
        try:
            return _model_ids(await client.get_json("/models", where))
        except MotioError:
            raise
        except Exception as exc:
            _reraise(exc, where)

    async def check(self) -> None:
        """Ask the server for its models: fails fast if it is unreachable,
        refuses the key, or does not serve ``model``.

        Raises:
            BackendConnectionError, AuthenticationError, NotFoundError,
            BackendTimeoutError: with a message saying what to check.
        """
        entry = await self._clients.get()
        entry.acquire()
        try:
            ids = await self._list_models(entry.client)
            if self.model is None:
                await self._ask_model(entry.client)
        finally:
            entry.release()
        if self.model not in ids and ids:
            shown = ", ".join(map(repr, ids[:10]))
            raise NotFoundError(
                f"{self._where().describe()}: the server does not list model {self.model!r} "
                f"(it lists {shown}); check model=",
                **self._where().fields(),
            )

    async def aclose(self) -> None:
        """Close this loop's client now and every other loop's on its own loop."""
        await self._clients.aclose()

    def close(self) -> None:
        if get_current_event_loop() is None:
            from .. import run_sync

            run_sync(self.aclose())
        self._clients.close_all_elsewhere()


def _reraise(exc: Exception, where: Where, *, mid_stream: bool = False) -> NoReturn:
    """Raise the motio error for a foreign ``exc`` (chained), or ``exc`` itself."""
    error = translate(exc, where, mid_stream=mid_stream)
    if error is None:
        raise exc
    raise error from exc


def _model_ids(listing: Any) -> list[str]:
    """The model names in a ``GET /models`` answer (``{"data": [{"id": ...}]}``)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    return [m["id"] for m in data or () if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _request_body(messages: Messages, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": messages, "stream": stream}
    for key, value in options.items():
        if value is not None:
            body[key] = value
    return body


def _check_positive_int(name: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")


class _ChatFold:
    """Folds chat completion payloads (streamed chunks or one whole answer)
    into the thunk's text and metadata. Runs on the producer task, so every
    error here becomes the thunk's error: foreign ones are turned into
    :class:`StreamError` first.
    """

    __slots__ = ("_loads", "_batch", "where", "_stream", "_done", "_pieces")

    def __init__(self, loads: Callable[[bytes], Any], where: Where, stream: bool) -> None:
        self._loads = loads
        self._batch = batch_decoder()
        self.where = where
        self._stream = stream
        self._done = False
        self._pieces = 0

    def process_events(self, mot: Any, block: bytes) -> str | None:
        """Fold a block of SSE events (one network read's worth)."""
        if self._batch is not None and (plain := data_as_json_array(block)) is not None:
            text = self._process_batch(mot.generation, *plain)
            if text is not _TAKE_GENERIC_PATH:
                return text  # type: ignore[return-value]
        return self._process_each(mot.generation, parse_events(block))

    def process_whole(self, mot: Any, body: bytes) -> str | None:
        """Fold a non-streamed completion."""
        return self._process_each(mot.generation, [body])

    def _process_batch(self, meta: Any, array: bytes, done: bool) -> object:
        """The fast path: all of a read's chunks decoded by one msgspec call."""
        try:
            chunks = self._batch(array)  # type: ignore[misc]
        except ValueError:
            # Malformed JSON or an unexpected type (content as a list of
            # parts, say): the generic path pinpoints or copes with it.
            return _TAKE_GENERIC_PATH
        texts: list[str] = []
        error = fold_structs(meta, chunks, texts)
        if error is not None:
            raise stream_error(f"the server reported an error mid-stream: {error}", self.where)
        self._done = self._done or done
        self._pieces += len(texts)
        return "".join(texts) if texts else None

    def _process_each(self, meta: Any, payloads: list[bytes | ErrorEvent]) -> str | None:
        """The generic path: one payload at a time, into dicts."""
        texts = []
        for payload in payloads:
            if payload == b"[DONE]":
                self._done = True
                continue
            chunk = self._decode(payload)
            try:
                text = fold_chunk(meta, chunk)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:
                raise stream_error(f"unexpected chunk {payload!r:.200}", self.where) from exc
            if text:
                texts.append(text)
        self._pieces += len(texts)
        return "".join(texts) if texts else None

    def _decode(self, payload: bytes | ErrorEvent) -> dict[str, Any]:
        if isinstance(payload, ErrorEvent):
            raise stream_error(f"the server sent an error event: {payload.data[:300]!r}", self.where)
        try:
            chunk = self._loads(payload)
        except ValueError as exc:
            raise stream_error(f"a chunk is not JSON: {payload[:200]!r}", self.where) from exc
        if type(chunk) is not dict:
            raise stream_error(f"a chunk is not a JSON object: {payload[:200]!r}", self.where)
        if "error" in chunk:
            raise stream_error(f"the server reported an error mid-stream: {chunk['error']}", self.where)
        return chunk

    def finish(self, mot: Any) -> None:
        meta = mot.generation
        if self._stream and not self._done and not meta.finish_reasons:
            raise stream_error("the stream ended before [DONE] or a finish_reason", self.where)
        if meta.usage is None and self._stream:
            # The server ignored stream_options: one content chunk per token
            # is what llama.cpp, vLLM and Ollama send; the prompt is unknown.
            meta.usage = {"prompt_tokens": None, "completion_tokens": self._pieces, "total_tokens": None}
