"""One generation's HTTP exchange: retries before the first token, four timeouts.

What a batch meets on real servers, and what this module does about it:

- 429/5xx/529 answers, reset connections, connect timeouts before any content:
  retried (``RetryPolicy``: exponential backoff with full jitter, or the
  server's ``Retry-After``/``retry-after-ms``), each retry logged at INFO on
  the ``motio`` logger and recorded in ``mot.generation.attempts``. Never
  after content reached the thunk: a retry could repeat or change text the
  consumer already has, so the thunk fails with the partial text kept.
- Four timeouts, one meaning each: ``connect`` (TCP+TLS, aiohttp's own),
  ``first_token`` (request sent to the first *content* chunk: queueing and
  prefill), ``chunk`` (between content chunks, enforced by the core's
  watchdog on the text items this stream yields), ``total`` (the whole
  generation, retries and their waits included). Bytes that are not content
  (SSE comments, role-only or empty deltas, keep-alives) yield nothing, so
  they neither reset the chunk timeout nor satisfy the first-token one.
- The time between attempts is spent outside the stream, so it never counts
  against the chunk timeout; it does count against the total timeout.
- A server's error event mid-stream: the text of the same network read that
  came before it reaches the thunk first (``ErrorAfterText``: the stream
  yields it, then raises). A whole JSON answer where a stream was asked (a
  server or proxy that ignores ``stream``) is the complete answer.
- Several servers (``_endpoints.py``): each attempt takes its slot on the
  server the router picks. A connection failure before any content (refused
  included: that server is gone, the others may not be) is sent at once to a
  server in rotation that this generation has not failed on, outside the
  retry budget but recorded in ``attempts``; other retries prefer a server
  not yet failed on. Whatever server gave content keeps the generation.
  A 404 from one server while others remain is a server started with
  another model: it leaves rotation (``Endpoints.mark_out``) and the request goes
  at once to another, as for a connection failure.
- ``avoid_servers=`` (a batch running a prompt again after its stream broke
  on a server): those servers are taken only when no other is in rotation.

A streamed generation runs in two phases, matching the core's contract that
an opener coroutine is not watched by ``chunk_timeout`` but its stream is:

    open_stream():   attempt loop -> slot, rate limit, POST, read until the
                     first content (under first_token/total) -> _SSEStream
    _SSEStream:      one text item per network read that carried content
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from ..._exceptions import (
    APIStatusError,
    BackendChunkTimeoutError,
    BackendError,
    ChunkTimeoutError,
    MotioError,
    NotFoundError,
    StreamError,
    TotalTimeoutError,
)
from .._base import Fold
from .._deadlines import Deadlines, chunk_timeout_error
from .._errors import Where, copy_error
from ._errors import ErrorAfterText, broken_stream_error, server_error_event, translate
from ._retry import OVERLOAD_STATUSES, RETRYABLE_STATUSES, Attempts
from ._sse import SSEDecoder

if TYPE_CHECKING:
    import aiohttp

    from ..._thunk import GenerationMeta, ModelOutputThunk
    from ._endpoints import Endpoint, Endpoints
    from ._http import HTTPClient
    from ._loopclients import LoopClient
    from ._ratelimit import Reservation
    from ._retry import RetryPolicy

__all__ = ["Exchange", "HTTPFold", "Host"]

_log = logging.getLogger("motio")
_FIRST_TOKEN_HINT = (
    "of sending the request (the server may be queueing or still reading the prompt); "
    "raise first_token_timeout= or lower the concurrency"
)
_BODY_STALLED = "the answer's body stalled for"
R = TypeVar("R")
# Shared by every generation that has not failed on any server: no list each.
_NONE_TRIED: list[Any] = []


class HTTPFold(Fold, Protocol):
    """A ``Fold`` of an HTTP answer, as an ``Exchange`` drives it.

    ``fold`` takes a block of SSE events (one network read's worth, whole
    events only) and returns its text: None for a read without output, ``""``
    for output that is not text (it counts as content all the same). It
    raises ``ErrorAfterText`` for a server's error event that came after some
    text of the same read, and ``StreamError`` for a malformed stream.

    Attributes:
        where: the error context (the Exchange sets it to the server of the
            attempt that answers).
        meta: the thunk's ``generation`` (set by ``bind``).
    """

    where: Where
    meta: GenerationMeta

    def fold_whole(self, body: bytes) -> str:
        """Fold a whole (non-streamed) answer's JSON body; its text."""

    def fold_whole_instead_of_stream(self, body: bytes) -> str | None:
        """Fold a whole JSON answer that came where a stream was asked (a
        server or proxy that ignores ``stream``); its text, if any."""

    def text_so_far(self) -> str:
        """The text the thunk holds (kept as a broken stream's ``partial_text``)."""


class BoundFold:
    """What every ``HTTPFold`` holds alike: the server it speaks for, the
    thunk it folds into (``bind``), the JSON decoder, whether it streams, the
    content pieces counted so far; and a server's error event raised after
    the text before it. A protocol's fold subclasses it."""

    __slots__ = ("where", "meta", "_mot", "_loads", "_stream", "_pieces")

    where: Where
    meta: GenerationMeta

    def __init__(self, where: Where, loads: Callable[[bytes], Any], stream: bool) -> None:
        self.where = where
        self.meta = None  # type: ignore[assignment]  # bind() sets it
        self._mot: ModelOutputThunk[Any] | None = None
        self._loads = loads
        self._stream = stream
        self._pieces = 0

    def bind(self, mot: ModelOutputThunk[Any]) -> None:
        """Fold into ``mot``: called before its producer first runs."""
        self._mot = mot
        self.meta = mot.generation

    def text_so_far(self) -> str:
        """The text the thunk holds (kept as a broken stream's ``partial_text``)."""
        return "" if self._mot is None else self._mot.text

    def _error_after(self, texts: list[str], error: Any) -> Exception:
        """The server's error event, raised once the text of the same read
        that came before it has reached the thunk (the rare path)."""
        exc = server_error_event(error, self.where)
        text = "".join(texts)
        self._pieces += len(texts)
        if self._stream:
            exc.partial_text = self.text_so_far() + text
        return ErrorAfterText(text, exc) if text else exc

    def _error_event_body(self, data: bytes) -> Any:
        """What an SSE event named ``error`` says: its ``error`` object (both
        APIs wrap it so), the object itself, or its text."""
        try:
            decoded = self._loads(data)
        except ValueError:
            return data.decode("utf-8", "replace")
        return decoded.get("error", decoded) if isinstance(decoded, dict) else decoded


class Host(Protocol):
    """What an ``Exchange`` asks of the backend it serves (``HTTPBackend``).

    Attributes:
        model: the backend's model (None until asked of a server).
        retry_policy: how many retries, how long between them.
        router: the servers, their health and routing (``Endpoints``).
    """

    model: str | None
    retry_policy: RetryPolicy

    @property
    def router(self) -> Endpoints:
        """The servers, their health and routing."""

    async def take_slot(
        self, tokens: int, avoid: Sequence[Endpoint], shun: Sequence[Endpoint], key: int | None
    ) -> tuple[Endpoint, Reservation | None]:
        """A concurrency slot on a server (by prefix ``key``, if not None), then the rate limiter's go."""

    def give_slot(
        self,
        endpoint: Endpoint,
        reservation: Reservation | None,
        usage: dict[str, Any] | None,
        finished: bool,
    ) -> None:
        """Give the slot back; correct the token budget from the answer's usage."""

    async def loop_client(self, endpoint: Endpoint) -> LoopClient:
        """``endpoint``'s client on the running loop."""

    async def prepare(
        self, entry: LoopClient, body: dict[str, Any], fold: HTTPFold, endpoint: Endpoint
    ) -> None:
        """Make ``body`` ready to send to ``endpoint`` (its model, the fold's server)."""

    def ask_usage(self, body: dict[str, Any]) -> None:
        """Ask a streamed answer for its usage, where the protocol must be asked."""

    async def send(self, client: HTTPClient, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        """POST ``body``; the response with its body unread."""


class _Held:
    """What one attempt holds until its answer is read or abandoned."""

    __slots__ = ("endpoint", "reservation", "entry", "response", "released")

    def __init__(self, endpoint: Endpoint, reservation: Any) -> None:
        self.endpoint = endpoint
        self.reservation = reservation
        self.entry: Any = None
        self.response: aiohttp.ClientResponse | None = None
        self.released = False


class _Retry(Exception):
    """One attempt failed in a way worth another try (never escapes this module)."""

    def __init__(
        self,
        error: BackendError,
        retry_after: float | None,
        overload: bool,
        *,
        failover: bool = False,
        same_server: bool = True,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.overload = overload
        # A connection failure with several servers: another server may serve at once.
        self.failover = failover
        # False for a refused connection: only another server may help.
        self.same_server = same_server


class Exchange:
    """The request of one generation, from the first attempt to the last byte.

    Args:
        host: whose clients, servers, rate limiter and retry policy to use.
        body: the JSON body (``model`` is filled in by the backend).
        fold: folds the answer into the thunk's text and metadata.
        deadlines: this generation's limits (its ``Request``).
        tokens: the rate limiter's up-front estimate of tokens used.
    """

    __slots__ = (
        "_host", "_body", "_fold", "_deadlines", "_tokens", "attempts",
        "_endpoint", "_tried", "_failovers", "_shun", "_key",
    )  # fmt: skip

    def __init__(
        self,
        host: Host,
        body: dict[str, Any],
        fold: HTTPFold,
        deadlines: Deadlines,
        tokens: int,
    ) -> None:
        self._host = host
        self._body = body
        self._fold = fold
        self._deadlines = deadlines
        self._tokens = tokens
        self.attempts = Attempts()
        self._endpoint: Endpoint | None = None  # the server of the current attempt
        self._tried: list[Endpoint] = _NONE_TRIED  # servers this generation failed on
        self._failovers = 0  # attempts sent to another server outside the retry budget
        self._shun: list[Endpoint] = _NONE_TRIED  # servers to take only when no other is in rotation
        self._key: int | None = None  # the prompt's prefix key, when routing by prefix

    def shun(self, servers: list[Endpoint]) -> None:
        """Send every attempt to another server than ``servers`` while one is
        in rotation, waiting for its room if need be (``avoid_servers=``)."""
        self._shun = servers or _NONE_TRIED

    def route_by(self, key: int) -> None:
        """Send every attempt to the server that holds this prefix key, within
        the router's slack (``HTTPBackend(prefix_routing=...)``)."""
        self._key = key

    # -- the two entry points: the thunk's opener coroutine --------------------

    async def open_stream(self) -> _SSEStream:
        """Attempt until the first content arrives; return the stream of the rest."""
        return await self._with_retries(self._open_once)

    async def complete(self) -> str:
        """Attempt until a whole (non-streamed) answer arrives; return its text."""
        return await self._with_retries(self._complete_once)

    # -- attempts ----------------------------------------------------------------

    async def _with_retries(self, once: Callable[[], Awaitable[R]]) -> R:
        self._deadlines.start()
        self._fold.meta.attempts = self.attempts
        policy = self._host.retry_policy
        while True:
            try:
                return await once()
            except _Retry as failure:
                self.attempts.record_failure(failure.error)
                if failure.overload:
                    _overloaded(self._failed_endpoint())
                if self._host.router.several and self._fail_over(failure):
                    continue
                if self.attempts.retries - self._failovers >= policy.max_retries:
                    self._give_up(failure.error)
                wait = policy.delay(self.attempts.retries - self._failovers + 1, failure.retry_after)
                self._check_total_allows(wait, failure.error)
                _log.info(
                    "%s: retrying in %.2f s (attempt %d of %d) after %s",
                    self._fold.where.base_url,
                    wait,
                    self.attempts.count + 1,
                    policy.max_retries + 1,
                    _short(failure.error),
                )
                self.attempts.record_wait(wait)
                await asyncio.sleep(wait)

    def _failed_endpoint(self) -> Endpoint:
        assert self._endpoint is not None
        return self._endpoint

    def _fail_over(self, failure: _Retry) -> bool:
        """Note the server just failed on; True to try another at once.

        Raises:
            BackendError: a refused connection with no other server to try.
        """
        if self._tried is _NONE_TRIED:
            self._tried = []
        self._tried.append(self._failed_endpoint())
        if not failure.failover:
            return False  # a status: retried as usual, on another server if there is one
        if self._host.router.can_fail_over(self._tried):
            _log.info(
                "%s: trying another server (attempt %d) after %s",
                self._fold.where.base_url,
                self.attempts.count + 1,
                _short(failure.error),
            )
            self.attempts.record_wait(0.0)
            self._failovers += 1
            return True
        if not failure.same_server:
            raise failure.error
        return False

    def _give_up(self, error: BackendError) -> NoReturn:
        if self.attempts.retries == 0:
            raise error
        final = copy_error(error, f"{error} (gave up after {self.attempts.count} attempts)")
        raise final from error

    async def _take_slot(self) -> _Held:
        """A server's slot and the rate-limit place, the wait recorded in ``queued_ms``."""
        loop = asyncio.get_running_loop()
        waited = loop.time()
        endpoint, reservation = await self._host.take_slot(self._tokens, self._tried, self._shun, self._key)
        self._endpoint = endpoint
        meta = self._fold.meta
        meta.queued_ms = (meta.queued_ms or 0.0) + (loop.time() - waited) * 1000.0
        return _Held(endpoint, reservation)

    async def _open_once(self) -> _SSEStream:
        decoder = SSEDecoder()

        async def first_content(response: aiohttp.ClientResponse) -> str | ErrorAfterText | None:
            return await _first_content(response, decoder, self._fold)

        held, first = await self._attempt(first_content, stream=True)
        return _SSEStream(held, decoder, self._fold, first, self)

    async def _complete_once(self) -> str:
        fold = self._fold

        async def whole_text(response: aiohttp.ClientResponse) -> str:
            return fold.fold_whole(await _read_body(response, self._deadlines, fold.where))

        held, text = await self._attempt(whole_text, stream=False)
        self._release(held, settle=True)
        return text

    async def _attempt(
        self, read: Callable[[aiohttp.ClientResponse], Awaitable[R]], *, stream: bool
    ) -> tuple[_Held, R]:
        """One request: a slot, the POST, and ``read`` of its answer up to the
        first content, under the first-token and total limits. Failures come
        out classified: ``_Retry`` for what another attempt may cure."""
        host, fold = self._host, self._fold
        held = await self._take_slot()
        endpoint = held.endpoint
        started = asyncio.get_running_loop().time()
        try:
            held.entry = entry = await host.loop_client(endpoint)
            await host.prepare(entry, self._body, fold, endpoint)
            if stream:
                host.ask_usage(self._body)
            entry.acquire()
            started = asyncio.get_running_loop().time()
            async with self._deadlines.scope(self._deadlines.first_token, started) as scope:
                try:
                    held.response = response = await host.send(entry.client, self._body, fold.where)
                    fold.meta.request_id = _request_id(response)
                    host.router.answered(endpoint)
                    result = await read(held.response)
                except TimeoutError:
                    if scope.expired():
                        raise
                    self._classify_and_raise()
                except MotioError as exc:
                    self._classify_motio(exc)
                except Exception:
                    self._classify_and_raise()
        except TimeoutError as exc:
            self._release(held)
            raise self._deadlines.expired(
                "first_token", self._deadlines.first_token, started, self._fold.where, hint=_FIRST_TOKEN_HINT
            ) from exc
        except BaseException:
            self._release(held)
            raise
        if endpoint.adaptive is not None:
            endpoint.adaptive.record_first_token(asyncio.get_running_loop().time() - started)
        if self._key is not None:  # its prefix is in that server's cache now: release the prompts held for it
            host.router.warmed(endpoint, self._key, cached=True)
        return held, result

    def _release(self, held: _Held, *, settle: bool = False, keep_connection: bool = False) -> None:
        """Give back what an attempt held (idempotent)."""
        if held.released:
            return
        held.released = True
        if held.response is not None:
            if keep_connection:
                held.response.release()  # read to its end: the connection serves the next request
            else:
                # Read to the end, the connection went back to the pool already;
                # otherwise this drops it, and the server sees the client leave.
                held.response.close()
        if held.entry is not None:
            held.entry.release()
        if self._key is not None:  # ended before its first token, maybe: release the prompts held for it
            self._host.router.warmed(held.endpoint, self._key, cached=False)
        self._host.give_slot(
            held.endpoint, held.reservation, self._fold.meta.usage if settle else None, settle
        )

    # -- classification ----------------------------------------------------------

    def _classify_motio(self, exc: MotioError) -> NoReturn:
        router = self._host.router
        if isinstance(exc, NotFoundError) and router.several:
            # One server of several without the model (started with another):
            # the others may have it, and nothing was sent to the thunk yet.
            # It leaves rotation (until a probe finds the model listed again)
            # only for the backend's model: a model only this request names
            # (an OpenAI Batch line's own) says nothing of the server.
            if self._body.get("model") == self._host.model:
                router.mark_out(self._failed_endpoint())
            raise _Retry(exc, None, overload=False, failover=True, same_server=False) from None
        if isinstance(exc, APIStatusError):
            router.answered(self._failed_endpoint())  # an answer: that server is up
        if isinstance(exc, APIStatusError) and exc.status_code in RETRYABLE_STATUSES:
            overload = exc.status_code in OVERLOAD_STATUSES
            raise _Retry(exc, exc.retry_after, overload) from None
        raise exc

    def _classify_and_raise(self) -> NoReturn:
        """Translate the exception being handled; retry it if it is transient."""
        import sys

        exc = sys.exc_info()[1]
        assert isinstance(exc, Exception)
        error = translate(exc, self._fold.where)
        if error is None:
            raise exc
        error.__cause__ = exc
        transient, refused = _transient(exc), _refused(exc)
        endpoint = self._failed_endpoint()
        if refused and (endpoint.adaptive is None or endpoint.adaptive.in_flight > 1):
            # A server that refuses connections while others are in flight
            # is at its limit (a full accept queue): a congestion signal.
            _overloaded(endpoint)
        router = self._host.router
        if (transient or refused) and router.several:
            router.failed(endpoint, refused=refused)
            raise _Retry(error, None, overload=False, failover=True, same_server=transient) from exc
        if transient:
            raise _Retry(error, None, overload=False) from exc
        raise error from exc

    # -- deadlines ---------------------------------------------------------------

    def total_expired(self) -> TotalTimeoutError:
        """The total limit passed, the attempts made said."""
        attempts = f" (retries and their waits included; {self.attempts.count} attempt(s))"
        return self._deadlines.total_error(self._fold.where, attempts)

    def _check_total_allows(self, wait: float, error: BackendError) -> None:
        deadline = self._deadlines.total_at
        if deadline is not None and asyncio.get_running_loop().time() + wait >= deadline:
            raise self.total_expired() from error

    @property
    def deadlines(self) -> Deadlines:
        """This generation's limits (the total deadline once started)."""
        return self._deadlines

    @property
    def fold(self) -> HTTPFold:
        """What folds the answer into the thunk."""
        return self._fold


class _SSEStream:
    """The rest of a streamed answer: one text item per read that carried content.

    Reads that carry no content (keep-alive comments, role-only or empty
    deltas, usage) yield nothing, so the core's chunk watchdog sees only
    content. Closing it early drops the connection (the server sees the
    client leave); reading it to the end returns the connection to the pool.
    It implements the core's ``Source`` protocol.
    """

    __slots__ = ("_held", "_read", "_decoder", "_fold", "_first", "_exchange", "_deadlines")

    def __init__(
        self,
        held: _Held,
        decoder: SSEDecoder,
        fold: HTTPFold,
        first: str | ErrorAfterText | None,
        exchange: Exchange,
    ) -> None:
        assert held.response is not None
        self._held = held
        self._read = held.response.content.readany
        self._decoder = decoder
        self._fold = fold
        # The first text; or, rarely, text then an error, or an error to raise next.
        self._first: str | ErrorAfterText | StreamError | None = first
        self._exchange = exchange
        self._deadlines = exchange.deadlines

    def __aiter__(self) -> _SSEStream:
        return self

    async def __anext__(self) -> str:
        first = self._first
        if first is not None:
            self._first = None
            return first if type(first) is str else self._deliver(first)  # type: ignore[arg-type]
        fold = self._fold
        while not self._held.released:
            try:
                raw = await self._next_read()
            except Exception as exc:
                await self.aclose()
                raise self._broken(exc) from exc
            if not raw:
                return self._last(self._decoder.flush())
            if block := self._decoder.feed(raw):
                try:
                    text = fold.fold(block)
                except ErrorAfterText as pending:
                    return self._deliver(pending)
                except BaseException:
                    await self.aclose()
                    raise
                # "" is output that is not text (a tool call's deltas): an item all the same.
                if text is not None:
                    return text
        raise StopAsyncIteration

    def _last(self, block: bytes) -> str:
        """The stream's end: the text of an unterminated last event, if any."""
        try:
            text = self._fold.fold(block) if block else None
        except ErrorAfterText as pending:
            return self._deliver(pending)
        except BaseException:
            self._exchange._release(self._held)
            raise
        # Read to its end: keep the connection for the next request.
        self._exchange._release(self._held, settle=True, keep_connection=True)
        if text is None:
            raise StopAsyncIteration
        return text

    def _deliver(self, pending: ErrorAfterText | StreamError) -> str:
        """A server's error event, after the text of the read it came in:
        that text now, the error at the next step. The connection is dropped
        at once (the server said the answer is over)."""
        self._exchange._release(self._held)
        if isinstance(pending, ErrorAfterText):
            self._first = pending.error
            return pending.text
        raise pending

    async def _next_read(self) -> bytes:
        deadline = self._deadlines.total_at
        if deadline is None:
            return await self._read()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._read()
        except TimeoutError as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise self._exchange.total_expired() from exc
            raise

    def _broken(self, exc: Exception) -> BaseException:
        if isinstance(exc, MotioError):
            return exc
        where = self._fold.where
        error = translate(exc, where, mid_stream=True)
        if error is None:
            return exc
        if isinstance(error, StreamError):
            partial = self._fold.text_so_far()
            error = broken_stream_error(exc, where, delivered=len(partial))
            error.partial_text = partial
        return error

    def timeout_error(self, error: ChunkTimeoutError) -> BackendChunkTimeoutError:
        """The core's chunk timeout, with this backend's context (see ``_feed``)."""
        return chunk_timeout_error(error, self._fold.where)

    async def aclose(self) -> None:
        """Stop early: drop the connection and give the slot back. Idempotent."""
        self._exchange._release(self._held)

    # Dropping the connection never waits on the server: abandoning (the
    # core's chunk timeout) is closing.
    abandon = aclose


async def _first_content(
    response: aiohttp.ClientResponse, decoder: SSEDecoder, fold: HTTPFold
) -> str | ErrorAfterText | None:
    """Read until a read carries content; that text, or None if the answer ended first.

    A whole JSON answer where a stream was asked (a server or proxy that
    ignores ``stream``) is the complete answer: folded at once. A server's
    error event after some text comes back as that text and the error.

    Raises:
        StreamError: a malformed stream, or a server's error before any text;
            foreign errors for the caller to classify.
    """
    if _is_json(response):
        return fold.fold_whole_instead_of_stream(await response.read()) or None
    read = response.content.readany
    try:
        while True:
            raw = await read()
            if not raw:
                block = decoder.flush()
                return (fold.fold(block) if block else None) or None
            if block := decoder.feed(raw):
                text = fold.fold(block)
                if text is not None:
                    return text
    except ErrorAfterText as pending:
        return pending


def _is_json(response: aiohttp.ClientResponse) -> bool:
    # The raw header, not aiohttp's content_type: that parses it (and copies
    # its parameters) on every response, and this runs on every request.
    ctype = response.headers.get("Content-Type")
    return ctype is not None and ctype[:16].lower() == "application/json" and ctype[16:17] in ("", ";", " ")


async def _read_body(response: aiohttp.ClientResponse, deadlines: Deadlines, where: Where) -> bytes:
    """A whole body, each gap between reads bounded by the chunk timeout."""
    parts: list[bytes] = []
    read = response.content.readany
    loop = asyncio.get_running_loop()
    while True:
        since = loop.time()
        try:
            # Not the total: the request's own scope bounds this read by it already.
            async with asyncio.timeout(deadlines.chunk):
                raw = await read()
        except TimeoutError as exc:
            raise deadlines.expired(
                "chunk", deadlines.chunk, since, where, hint=_BODY_STALLED, seen=len(parts)
            ) from exc
        if not raw:
            return b"".join(parts)
        parts.append(raw)


def _overloaded(endpoint: Endpoint) -> None:
    """A congestion signal from ``endpoint``, for its adaptive controller if
    it has one, for hedging (``_hedge.py``), which pauses after one, and for
    racing (its count, in the snapshot)."""
    endpoint.overloaded_at = time.monotonic()
    endpoint.overloads += 1
    if endpoint.adaptive is not None:
        endpoint.adaptive.record_overload()


def _transient(exc: BaseException) -> bool:
    """A failure before any content that another attempt may not meet."""
    import aiohttp

    # A TLS failure (an untrusted certificate, https to a plain-http port) is
    # as certain as a wrong name: never retried.
    permanent = (aiohttp.ClientConnectorDNSError, aiohttp.InvalidURL, aiohttp.ClientSSLError)
    if _refused(exc) or isinstance(exc, permanent):
        return False
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError))


def _refused(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError)


def _short(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    return f"HTTP {status}" if status else type(error).__name__


def _request_id(response: aiohttp.ClientResponse) -> str | None:
    # OpenAI and vLLM send x-request-id; Anthropic sends request-id.
    headers = response.headers
    return headers.get("x-request-id") or headers.get("request-id")
