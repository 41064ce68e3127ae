"""OpenAIBackend: any OpenAI-compatible chat server, streamed at raw-SSE speed.

The transport is aiohttp (``_http.py``): one session per event loop, kept
alive connections, no pool cap below ``max_concurrency``. The openai SDK is
not used: its typed stream builds a pydantic object per chunk (about seven
times the cost of reading raw SSE bytes and decoding them with msgspec), and
its httpx pool slows down as open connections grow, which at thousands of
concurrent streams was the whole budget.

Data flow of one streamed generation::

    generate() -> ModelOutputThunk.from_response(Exchange.open_stream())
    Exchange:     (_request.py) per attempt: a concurrency slot and the rate
                  limiter, POST, read until the first content; retried
                  before any content on 429/5xx/reset connections
    _SSEStream:   one text item per network read that carried content
    _ChatFold:    decodes and folds each read's payloads into text and metadata

What the backend shares between generations (and event loops, and threads):
per server, the per-loop HTTP clients and the concurrency gate (fixed or
adaptive); for all of them, the rate limiter and the retry policy. Given
several servers (``base_url=[...]``), each attempt goes to the least loaded
one in rotation (``_endpoints.py``).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

from .._exceptions import (
    BadRequestError,
    ConfigurationError,
    MotioError,
    NotFoundError,
    UnsupportedOptionError,
)
from .._feed import DEFAULT_CHUNK_TIMEOUT
from .._fields import CHAT_FIELDS, PLAIN_OPTIONS
from .._thunk import ModelOutputThunk
from ._assemble import ResponseAssembler
from ._base import COMMON_OPTIONS, Backend, Messages, SharedLimits, check_options, to_messages
from ._chat import batch_decoder, fold_chunk, fold_structs
from ._endpoints import Endpoint, Endpoints, EndpointSnapshot, each_checked, first_passing
from ._errors import ErrorAfterText, Where, server_error_event, stream_error, translate
from ._gate import Gate
from ._http import HTTPClient, json_codec
from ._loopclients import LoopClient, LoopClients
from ._request import Exchange, Timeouts
from ._retry import RetryPolicy
from ._sse import ErrorEvent, data_as_json_array, parse_events
from ._tls import TLS, TLSOption
from ._urls import ServerURL, mask_url

if TYPE_CHECKING:
    import aiohttp

    from .._thunk import GenerationMeta
    from ._adaptive import AdaptiveConcurrency
    from ._ratelimit import RateLimiter, Reservation

__all__ = ["OpenAIBackend"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The key sent when none is given: local servers (llama.cpp, vLLM, Ollama) ignore it.
_PLACEHOLDER_KEY = "sk-no-key-required"
#: Default ``first_token_timeout``: generous, since it covers the server's
#: queue and prompt processing, which on a busy server take minutes.
DEFAULT_FIRST_TOKEN_TIMEOUT = 300.0
#: Upper bound of ``max_concurrency="auto"``.
DEFAULT_CONCURRENCY_BOUND = 256
# Where "auto" starts: low enough not to swamp a small server on the first
# round, and slow start doubles it each round until the server pushes back.
_AUTO_INITIAL = 16
# Seconds a probe of a server out of rotation may take.
_PROBE_TIMEOUT = 5.0

_OPTIONS = COMMON_OPTIONS | CHAT_FIELDS | {"extra_body", "keep_response"}
_OPTIONS |= {"first_token_timeout", "total_timeout", "avoid_servers"}
_USAGE_PLEASE = {"include_usage": True}


class _TakeGenericPath(enum.Enum):
    """The fast path cannot fold this read: take the generic one."""

    TOKEN = 0


class _Unset(enum.Enum):
    """No value given (None means "no limit" here)."""

    TOKEN = 0


_TAKE_GENERIC_PATH: Final = _TakeGenericPath.TOKEN
_UNSET: Final = _Unset.TOKEN


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server.

    Args:
        model: the model name; None asks the server (``GET /models``) and
            uses the first it lists.
        base_url: the API root; default ``$OPENAI_BASE_URL`` or OpenAI's.
            A list of API roots spreads requests over several servers
            serving the same model: each attempt goes to the one with the
            fewest requests in flight (per slot of its own gate); an attempt
            that failed before any content goes to another; a server that
            refuses connections (or fails three in a row) leaves rotation
            until a probe (``GET /models``, with backoff) finds it back
            listing the model; one that answers 404 for the model (started
            with another) leaves rotation too, its request sent at once to
            another. ``generate(..., avoid_servers=[url, ...])`` takes those
            servers only when no other is in rotation (it waits for room on
            another): a batch's re-run after a stream broke there.
        api_key: default ``$OPENAI_API_KEY``, else a placeholder that local
            servers accept. Sent as ``Authorization: Bearer <key>`` to every
            server whose URL carries no credentials: user and password in a
            URL (``http://user:pw@host/v1``) are sent to that server as HTTP
            Basic auth instead, and shown masked (``http://user:***@host/v1``)
            wherever the URL is.
        headers: extra HTTP headers for every request.
        ssl: how https servers are verified: None (default) for the system
            store (or ``$SSL_CERT_FILE``/``$SSL_CERT_DIR``), the path of a
            PEM CA bundle to verify against instead, an ``ssl.SSLContext``,
            or False for no verification. Proxies come from ``HTTP_PROXY``,
            ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``.
        max_concurrency: requests in flight at once, across every event loop
            and thread using this backend (per server, given several); the
            rest wait without holding a connection. An int, ``"auto"`` (adapt to what the server serves:
            see ``_adaptive.py``; between 1 and ``concurrency_bound``), or
            None for no cap.
        concurrency_bound: the upper bound of ``"auto"``.
        connect_timeout: seconds to establish a TCP (and TLS) connection.
        first_token_timeout: seconds from sending a request to its first
            content chunk (the server's queue and prompt processing); for a
            non-streamed request, to the whole answer. None: no limit.
        chunk_timeout: seconds between content chunks (the default of
            ``generate``). Comments, keep-alives and chunks without text do
            not count as content. None: no limit.
        total_timeout: seconds for the whole generation, retries and their
            waits included. None (default): no limit.
        max_retries: retries of a request that failed before any content
            reached the thunk (429, 408, 409, 5xx, reset connections, connect
            timeouts), with exponential backoff and full jitter, or the
            server's Retry-After. 0 disables. A refused connection is not
            retried. Given several servers, a connection failure is instead
            sent at once to a server this generation has not failed on
            (counted in ``attempts``, not in this budget), and retries go
            preferably to another server. Also the bound of a batch's
            re-runs (``max_reruns``): a prompt whose stream broke after
            content is run again from its start at most this many times.
        rpm, tpm: requests and tokens per minute for this backend, shared by
            every loop and thread of the process. ``tpm`` counts the prompt
            (estimated: 4 characters a token) plus ``max_tokens`` up front,
            corrected from the answer's usage.

    Raises:
        ConfigurationError: a bad limit, timeout, URL or ``ssl=``; an
            ``api_key=`` (or an ``Authorization`` header) that no server
            would get, every URL carrying its own credentials.
    """

    provider = "openai"
    remote = True
    default_concurrency = "auto"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
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
    ) -> None:
        _check_timeouts(connect_timeout, first_token_timeout, chunk_timeout, total_timeout)
        self.model = model
        servers = [ServerURL.parse(url) for url in _base_urls(base_url)]
        # Only the masked form is kept where anything may show it.
        self.base_urls = tuple(server.shown for server in servers)
        self.base_url = self.base_urls[0]
        _check_credentials(servers, api_key, headers)
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or _PLACEHOLDER_KEY
        self._headers = {"Authorization": f"Bearer {self._api_key}", "User-Agent": "motio", **(headers or {})}
        self._tls = TLS(ssl)
        self.max_concurrency = max_concurrency
        self.concurrency_bound = concurrency_bound
        self._limiter = _make_limiter(rpm, tpm)
        self.retry_policy = RetryPolicy(max_retries=_positive_int("max_retries", max_retries + 1) - 1)
        self.first_token_timeout = first_token_timeout
        self.chunk_timeout = chunk_timeout
        self.total_timeout = total_timeout
        self._endpoints = Endpoints(
            [
                self._endpoint(server, max_concurrency, concurrency_bound, connect_timeout)
                for server in servers
            ],
            self._probe,
        )
        self._all_own_credentials = all(server.basic_auth for server in servers)
        self._clients = self._endpoints.all[0].clients
        for endpoint in self._endpoints.all:
            # A backend dropped without close(): close its clients on their own
            # loops instead of leaving sockets for the garbage collector.
            weakref.finalize(self, endpoint.clients.close_all_elsewhere)
        self._model_lock = threading.Lock()
        self._loads = json_codec()[1]
        self._last_where: Where | None = None
        # Cleared the first time a server rejects stream_options (older servers).
        self._ask_usage = True

    def _endpoint(
        self, server: ServerURL, max_concurrency: int | str | None, bound: int, connect_timeout: float
    ) -> Endpoint:
        gate, adaptive = _make_gate(max_concurrency, bound)
        headers = self._headers
        if server.basic_auth is not None:
            headers = {**headers, "Authorization": server.basic_auth}
        factory = functools.partial(HTTPClient, server.target, headers, connect_timeout, None, self._tls)
        return Endpoint(server.shown, gate, adaptive, LoopClients(factory))

    def _where(self) -> Where:
        # One shared Where while the model stays the same: no object per request.
        where = self._last_where
        if where is None or where.model != self.model:
            where = self._last_where = Where(self.provider, self.model, self.base_url)
        return where

    @property
    def adaptive_concurrency(self) -> AdaptiveConcurrency | None:
        """With ``max_concurrency="auto"`` and one server, the controller
        (``limit``, ``snapshot()``); with several, see ``endpoint_snapshot()``."""
        return None if self._endpoints.several else self._endpoints.all[0].adaptive

    def endpoint_snapshot(self) -> list[EndpointSnapshot]:
        """Per server, in the order given: requests in flight, limit, whether
        in rotation, generations served and their tokens (a read-only copy)."""
        return self._endpoints.snapshot()

    def recipe(self) -> Callable[[], OpenAIBackend]:
        """As ``Backend.recipe``, with the API key as resolved here: a copy
        built in another process may not see this environment.

        Raises:
            ConfigurationError: ``ssl=`` is an ``ssl.SSLContext``, which does
                not pickle (give the CA bundle's path instead).
        """
        constructor: Callable[..., OpenAIBackend] = super().recipe()  # type: ignore[assignment]
        self._tls.portable()
        if self._all_own_credentials:
            return constructor  # every server has its own: no key to carry
        return functools.partial(constructor, api_key=self._api_key)

    @property
    def rpm(self) -> float | None:
        """Requests per minute this backend holds to (None: no limit)."""
        return None if self._limiter is None else self._limiter.rpm

    @property
    def tpm(self) -> float | None:
        """Tokens per minute this backend holds to (None: no limit)."""
        return None if self._limiter is None else self._limiter.tpm

    def limits_to_share(self) -> SharedLimits:
        """Its servers, rate limits, concurrency and model (see ``Backend.limits_to_share``)."""
        bound = int(self.concurrency_bound)
        # Where the backend's own limit stands now ("auto" starts there too).
        initial = max((s.limit or bound) for s in self.endpoint_snapshot())
        return SharedLimits(
            self.base_urls, self.rpm, self.tpm, self.max_concurrency, bound, min(initial, bound), self.model
        )

    def share_limits(
        self, *, limiter: RateLimiter | None = None, gates: Mapping[str, Gate] | None = None
    ) -> None:
        """Take limits shared with other processes, before the first request.

        Several processes (motio's Ray workers) sending to the same servers
        must share one budget, or N of them send N times the rate: each then
        gets a ``limiter`` (anything with ``rpm``, ``tpm`` and ``acquire``,
        such as a proxy to one coordinator's ``RateLimiter``) and, per server
        base URL, the ``Gate`` whose limit is this process's share.

        Raises:
            ConfigurationError: a gate for a server this backend does not have.
        """
        from ._adaptive import AdaptiveConcurrency

        if limiter is not None:
            self._limiter = limiter
        for url, gate in (gates or {}).items():
            shown = mask_url(url.rstrip("/"))
            endpoint = next((e for e in self._endpoints.all if e.base_url == shown), None)
            if endpoint is None:
                raise ConfigurationError(f"share_limits: no server {shown!r} in {self.base_urls}")
            endpoint.gate = gate
            endpoint.adaptive = gate if isinstance(gate, AdaptiveConcurrency) else None

    async def generate(
        self, prompt_or_messages: str | Messages, *, stream: bool = True, **options: Any
    ) -> ModelOutputThunk[Any]:
        self._ensure_open()
        check_options(options, _OPTIONS, type(self).__name__)
        timeouts = Timeouts(
            _option_timeout(options, "first_token_timeout", self.first_token_timeout),
            _option_timeout(options, "chunk_timeout", self.chunk_timeout),
            _option_timeout(options, "total_timeout", self.total_timeout),
        )
        keep = _keep_response(options, type(self).__name__)
        avoid = options.pop("avoid_servers", None)
        messages = to_messages(prompt_or_messages)
        body = _request_body(messages, stream, options)
        tokens = self._token_estimate(messages, options)
        fold = _ChatFold(self._loads, self._where(), stream, keep)
        exchange = Exchange(self, body, fold, timeouts, tokens)
        if avoid:
            exchange.shun(self._servers_named(avoid))
        opener = exchange.open_stream() if stream else exchange.complete()
        mot: ModelOutputThunk[Any] = ModelOutputThunk.from_response(
            opener, post_process=fold.finish, chunk_timeout=timeouts.chunk if stream else None
        )
        fold.bind(mot)
        meta = mot.generation
        meta.provider, meta.model, meta.streaming = self.provider, self.model, stream
        meta.base_url = self.base_url
        return mot

    def _servers_named(self, urls: object) -> list[Endpoint]:
        """The servers among ``urls`` (``avoid_servers=``); others are ignored.

        Raises:
            ConfigurationError: ``urls`` is not a list of URL strings.
        """
        strings = () if isinstance(urls, str) or not isinstance(urls, Sequence) else urls
        if not strings or not all(isinstance(url, str) for url in strings):
            raise ConfigurationError(f"avoid_servers must be a list of base URLs, got {urls!r}")
        # Endpoints hold the shown form (password masked): a URL given with
        # its credentials names the same server.
        named = {mask_url(url.strip().rstrip("/")) for url in strings}
        return [e for e in self._endpoints.all if e.base_url in named]

    @property
    def max_reruns(self) -> int:
        """``max_retries``: one bound for every time a prompt is sent again
        (see ``Backend.max_reruns``)."""
        return self.retry_policy.max_retries

    def _token_estimate(self, messages: Messages, options: dict[str, Any]) -> int:
        if self._limiter is None or self._limiter.tpm is None:
            return 0
        from ._ratelimit import estimate_tokens

        return estimate_tokens(messages, options.get("max_tokens"))

    # -- what an Exchange asks of its backend ------------------------------------

    async def take_slot(
        self, tokens: int, avoid: Sequence[Endpoint], shun: Sequence[Endpoint] = ()
    ) -> tuple[Endpoint, Reservation | None]:
        """A concurrency slot on a server (not one in ``avoid`` while another
        has room, nor one in ``shun`` while another is in rotation), then
        the rate limiter's go."""
        endpoint = await self._endpoints.acquire(avoid, shun)
        if self._limiter is None:
            return endpoint, None
        try:
            return endpoint, await self._limiter.acquire(tokens)
        except BaseException:
            self.give_slot(endpoint, None, None, False)
            raise

    def give_slot(
        self,
        endpoint: Endpoint,
        reservation: Reservation | None,
        usage: dict[str, Any] | None,
        finished: bool,
    ) -> None:
        """Give the slot back; correct the token budget from the answer's usage."""
        if endpoint.gate is not None:
            endpoint.gate.release()
        self._endpoints.release(endpoint, finished, usage)
        if reservation is not None:
            reservation.settle((usage or {}).get("total_tokens"))

    @property
    def several_servers(self) -> bool:
        return self._endpoints.several

    def can_fail_over(self, tried: Sequence[Endpoint]) -> bool:
        return self._endpoints.can_fail_over(tried)

    def answered(self, endpoint: Endpoint) -> None:
        self._endpoints.answered(endpoint)

    def connection_failed(self, endpoint: Endpoint, *, refused: bool) -> None:
        self._endpoints.failed(endpoint, refused=refused)

    def model_missing(self, endpoint: Endpoint, model: object) -> None:
        """``endpoint`` answered 404 for ``model``: if that is the backend's
        model, the server serves another one, so it leaves rotation until a
        probe finds the model in its ``/models`` again. A model only one
        request names (an OpenAI Batch line's own) says nothing of the server."""
        if model == self.model:
            self._endpoints.mark_out(endpoint)

    def concurrency_sample(self, endpoint: Endpoint, seconds: float) -> None:
        if endpoint.adaptive is not None:
            endpoint.adaptive.record_first_token(seconds)

    def concurrency_overloaded(self, endpoint: Endpoint) -> None:
        if endpoint.adaptive is not None:
            endpoint.adaptive.record_overload()

    def busy(self, endpoint: Endpoint) -> bool:
        return endpoint.adaptive is None or endpoint.adaptive.in_flight > 1

    async def loop_client(self, endpoint: Endpoint) -> LoopClient:
        # Checked again here: a generation may have waited for its slot while
        # the backend was closed, and must not open a new client then.
        self._ensure_open()
        return await endpoint.clients.get()

    async def prepare(
        self, entry: LoopClient, body: dict[str, Any], fold: _ChatFold, endpoint: Endpoint
    ) -> None:
        if self.model is None:
            await self._ask_model(entry.client, endpoint)
        if fold.where.model != self.model or fold.where.base_url is not endpoint.base_url:
            # asked the server since generate(), or another server's attempt
            fold.where = endpoint.where(self.provider, self.model)
            fold.meta.base_url = endpoint.base_url
        # A model the caller named (a Batch line's own) is sent as given.
        body.setdefault("model", self.model)

    def ask_usage(self, body: dict[str, Any]) -> None:
        if self._ask_usage:
            body["stream_options"] = _USAGE_PLEASE

    async def send(self, client: HTTPClient, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        """POST the body; return the response with its body unread.

        Raises:
            APIStatusError: the server's error status, with its message.
            aiohttp.ClientError, OSError, TimeoutError: for the caller to classify.
        """
        try:
            return await client.post("/chat/completions", body, where)
        except BadRequestError as exc:
            if "stream_options" not in body or "stream_options" not in str(exc):
                raise
        # An older server that rejects stream_options: ask once more
        # without it and count the chunks for usage instead.
        self._ask_usage = False
        del body["stream_options"]
        return await client.post("/chat/completions", body, where)

    # -- models and lifecycle ----------------------------------------------------

    async def _ask_model(self, client: HTTPClient, endpoint: Endpoint) -> None:
        """No model was given: take the first ``endpoint`` lists.

        Raises:
            NotFoundError: the server lists no models.
        """
        ids = await self._list_models(client, endpoint)
        self._take_first_model(ids)
        if self.model is None:
            error = self._model_error(endpoint, ids)
            assert error is not None  # with no model, there always is one
            raise error

    async def _list_models(self, client: HTTPClient, endpoint: Endpoint) -> list[str]:
        where = endpoint.where(self.provider, self.model)
        try:
            return _model_ids(await client.get_json("/models", where))
        except MotioError:
            raise
        except Exception as exc:
            _reraise(exc, where)

    async def check(self) -> None:
        """Ask the server for its models: fails fast if it is unreachable,
        refuses the key, or does not serve ``model``. Given several servers,
        succeeds as soon as one of them passes, and brings it back into
        rotation.

        Raises:
            BackendConnectionError, AuthenticationError, NotFoundError,
            BackendTimeoutError: with a message saying what to check (with
            several servers: what each of them answered, on one line).
            BackendClosedError: the backend has been closed.
        """
        self._ensure_open()
        if not self._endpoints.several:
            await self._check_endpoint(self._endpoints.all[0])
            return
        await first_passing(self._endpoints.all, self._check_endpoint_in_rotation)

    async def check_each(self, timeout: float | None = None) -> list[tuple[str, MotioError | None]]:
        """Check every server at once (``check()``'s test, each within
        ``timeout`` seconds); those that fail leave rotation until a probe
        finds them back. A server that answers but does not list ``model``
        fails with ``NotFoundError`` (it was started with another model).
        Without a model given, the model is the first one listed by the
        first server, in the order given, that lists any: never whichever
        server happened to answer first.

        Returns:
            Per server, in the order given: its base URL and None, or the
            error it failed with (a ``BackendTimeoutError`` past ``timeout``).
        """
        listings: dict[Endpoint, list[str]] = {}

        async def list_models(endpoint: Endpoint) -> None:
            listings[endpoint] = await self._listing(endpoint)

        report = await each_checked(self._endpoints.all, list_models, timeout)
        if self.model is None:
            first = next((ids for e in self._endpoints.all if (ids := listings.get(e))), None)
            self._take_first_model(first or [])  # stays None if no server lists any
        checked: list[tuple[str, MotioError | None]] = []
        for endpoint, (url, error) in zip(self._endpoints.all, report, strict=True):
            if error is None:
                error = self._model_error(endpoint, listings[endpoint])
            if error is None:
                self._endpoints.answered(endpoint)
            else:
                self._endpoints.mark_out(endpoint)
            checked.append((url, error))
        return checked

    async def _check_endpoint_in_rotation(self, endpoint: Endpoint) -> None:
        try:
            await self._check_endpoint(endpoint)
        except Exception:
            # Not on cancellation: check() cancels the servers still being
            # asked once one passed, and a slow answer is no failure.
            self._endpoints.mark_out(endpoint)
            raise
        self._endpoints.answered(endpoint)

    async def _check_endpoint(self, endpoint: Endpoint) -> None:
        ids = await self._listing(endpoint)
        if self.model is None:
            self._take_first_model(ids)
        error = self._model_error(endpoint, ids)
        if error is not None:
            raise error

    async def _listing(self, endpoint: Endpoint) -> list[str]:
        """The models ``endpoint`` lists (``GET /models``)."""
        entry = await endpoint.clients.get()
        entry.acquire()
        try:
            return await self._list_models(entry.client, endpoint)
        finally:
            entry.release()

    def _take_first_model(self, ids: list[str]) -> None:
        """No model was given: use the first of ``ids`` (unless another server's came first)."""
        with self._model_lock:
            if self.model is None and ids:
                self.model = ids[0]

    def _model_error(self, endpoint: Endpoint, ids: list[str]) -> NotFoundError | None:
        """Why ``endpoint`` cannot serve the model, by its listing ``ids``; None if it can.

        A server that lists no models at all is given the benefit of the
        doubt (some proxies answer ``/models`` with an empty list).
        """
        if self.model is None:
            where = endpoint.where(self.provider, None)
            message = f"{where.describe()}: the server lists no models; pass model="
            return NotFoundError(message, **where.fields())
        if self.model in ids or not ids:
            return None
        shown = ", ".join(map(repr, ids[:10]))
        where = endpoint.where(self.provider, self.model)
        return NotFoundError(
            f"{where.describe()}: the server does not list model {self.model!r} "
            f"(it lists {shown}); check model=",
            **where.fields(),
        )

    async def _probe(self, endpoint: Endpoint) -> None:
        # A server out of rotation is back when it answers and lists the
        # model again (one that served another model must not rejoin just for
        # answering); bounded, since a half-dead server may accept and never answer.
        async with asyncio.timeout(_PROBE_TIMEOUT):
            await self._check_endpoint(endpoint)

    async def aclose(self) -> None:
        """Close this loop's clients now and every other loop's on its own loop;
        later generations raise ``BackendClosedError``. Idempotent."""
        self._mark_closed()
        await self._endpoints.cancel_probes()
        for endpoint in self._endpoints.all:
            await endpoint.clients.aclose()


def _error_event_body(data: bytes, loads: Callable[[bytes], Any]) -> Any:
    """What an SSE event named ``error`` says: its ``error`` object, the
    object itself, or its text."""
    try:
        decoded = loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
    if isinstance(decoded, dict):
        return decoded.get("error", decoded)
    return decoded


def _generated_besides_text(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chunk carries generated output other than ``content``."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(value for key, value in delta.items() if key not in ("role", "content")):
            return True
    return False


def _base_urls(base_url: str | Sequence[str] | None) -> tuple[str, ...]:
    """The API roots, without trailing slashes; at least one, no repeats.

    Raises:
        ConfigurationError: an empty list, or a URL that is not a str.
    """
    if base_url is None or isinstance(base_url, str):
        return ((base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),)
    urls = tuple(dict.fromkeys(_one_url(url) for url in base_url))
    if not urls:
        raise ConfigurationError("base_url: an empty list; give at least one server URL")
    return urls


def _check_credentials(
    servers: Sequence[ServerURL], api_key: str | None, headers: Mapping[str, str] | None
) -> None:
    """Refuse auth that would silently never be sent.

    HTTP has one ``Authorization`` header: a server whose URL carries
    credentials gets them as Basic auth, never the API key. A key given
    while every URL has its own would go nowhere; an ``Authorization``
    header given next to URL credentials would replace them.

    Raises:
        ConfigurationError: either case, saying what to do.
    """
    with_credentials = [server.shown for server in servers if server.basic_auth is not None]
    if not with_credentials:
        return
    if any(name.lower() == "authorization" for name in headers or ()):
        raise ConfigurationError(
            f"base_url {with_credentials[0]} carries credentials (sent as HTTP Basic auth) and "
            "headers= has an Authorization header too: a request has one; keep one of them"
        )
    if api_key and len(with_credentials) == len(servers):
        raise ConfigurationError(
            f"base_url {with_credentials[0]} carries credentials (sent as HTTP Basic auth, in place "
            "of the API key) and api_key= was given too: a request has one Authorization header; "
            "drop api_key= (or --api-key-env), or the user and password from the URL"
        )


def _one_url(url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"base_url: each server must be a URL string, got {url!r}")
    return url.strip().rstrip("/")


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
    extra = options.pop("extra_body", None)
    for key, value in options.items():
        if value is not None:
            body[key] = value
    if extra:
        # As the openai SDK does: merged into the JSON body, where a server
        # such as vLLM reads its own fields (top_k, guided_json...).
        body.update(extra)
    return body


def _keep_response(options: dict[str, Any], backend: str) -> bool:
    """Whether to keep the whole answer (``mot.generation.response``).

    By default, whenever an option may shape more than the text (``tools``,
    ``logprobs``, ``n``, ``response_format``, ``extra_body``...): what the
    server answered for them must not be dropped.

    Raises:
        UnsupportedOptionError: ``n`` > 1 with ``keep_response=False``: the
            thunk holds one text, the other choices would be lost.
    """
    keep = options.pop("keep_response", None)
    if keep is None:
        keep = any(key not in PLAIN_OPTIONS for key in options)
    n = options.get("n")
    if n is not None and n != 1 and not keep:
        raise UnsupportedOptionError(
            f"{backend}.generate(n={n!r}) with keep_response=False: the thunk holds one text "
            "(choice 0); keep the whole answer (keep_response=True, the default with n) to get "
            "every choice in mot.generation.response",
            option="n",
            backend=backend,
        )
    return bool(keep)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _make_gate(
    max_concurrency: int | str | None, bound: int
) -> tuple[Gate | AdaptiveConcurrency | None, AdaptiveConcurrency | None]:
    """(the gate requests pass, the adaptive controller if that gate is one)."""
    if max_concurrency is None:
        return None, None
    if max_concurrency == "auto":
        from ._adaptive import AdaptiveConcurrency

        bound = _positive_int("concurrency_bound", bound)
        adaptive = AdaptiveConcurrency(initial=min(_AUTO_INITIAL, bound), maximum=bound)
        return adaptive, adaptive
    return Gate(_positive_int("max_concurrency (a positive int, 'auto' or None)", max_concurrency)), None


def _make_limiter(rpm: float | None, tpm: float | None) -> RateLimiter | None:
    if rpm is None and tpm is None:
        return None
    from ._ratelimit import RateLimiter

    return RateLimiter(rpm, tpm)


def _check_timeouts(connect: float, *others: float | None) -> None:
    for value in (connect, *others):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        ):
            raise ConfigurationError(
                f"timeouts must be positive numbers of seconds (or None where allowed), got {value!r}"
            )


def _option_timeout(options: dict[str, Any], name: str, default: float | None) -> float | None:
    value: float | None | _Unset = options.pop(name, _UNSET)
    if value is _UNSET:
        return default
    _check_timeouts(1.0, value)
    return value


class _ChatFold:
    """Folds chat completion payloads (streamed chunks or one whole answer)
    into the thunk's text and metadata. Runs on the producer task, so every
    error here becomes the thunk's error: foreign ones are turned into
    :class:`StreamError` first.
    """

    __slots__ = (
        "_loads", "_batch", "where", "_stream", "_done", "_pieces", "meta", "_mot", "_keep", "_assembler",
    )  # fmt: skip

    def __init__(self, loads: Callable[[bytes], Any], where: Where, stream: bool, keep: bool = False) -> None:
        self._loads = loads
        # Keeping the whole answer needs every field of every chunk: the
        # generic path (dicts), never the fast one (structs with text only).
        self._batch = None if keep else batch_decoder()
        self._keep = keep
        self._assembler = ResponseAssembler() if keep and stream else None
        self.where = where
        self._stream = stream
        self._done = False
        self._pieces = 0
        self.meta: GenerationMeta = None  # type: ignore[assignment]  # bind() sets it
        self._mot: ModelOutputThunk[Any] | None = None

    def bind(self, mot: ModelOutputThunk[Any]) -> None:
        """Fold into ``mot``: called before its producer first runs."""
        self._mot = mot
        self.meta = mot.generation

    def text_so_far(self) -> str:
        return "" if self._mot is None else self._mot.text

    def process_events(self, block: bytes) -> str | None:
        """Fold a block of SSE events (one network read's worth); its text, if any."""
        if (batch := self._batch) is not None and (plain := data_as_json_array(block)) is not None:
            text = self._process_batch(batch, self.meta, *plain)
            if text is not _TAKE_GENERIC_PATH:
                return text
        return self._process_each(self.meta, parse_events(block))

    def process_whole(self, body: bytes) -> str:
        """Fold a non-streamed completion; its text."""
        return self._process_each(self.meta, [body]) or ""

    def process_whole_instead_of_stream(self, body: bytes) -> str | None:
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
            raise self._error_after(texts, _error_event_body(payload.data, self._loads))
        try:
            chunk = self._loads(payload)
        except ValueError as exc:
            raise stream_error(f"a chunk is not JSON: {payload[:200]!r}", self.where) from exc
        if type(chunk) is not dict:
            raise stream_error(f"a chunk is not a JSON object: {payload[:200]!r}", self.where)
        if "error" in chunk:
            raise self._error_after(texts, chunk["error"])
        return chunk

    def _error_after(self, texts: list[str], error: Any) -> Exception:
        """The server's error event, raised once the text of the same read
        that came before it has reached the thunk (the rare path)."""
        exc = server_error_event(error, self.where)
        text = "".join(texts)
        self._pieces += len(texts)
        if self._stream:
            exc.partial_text = self.text_so_far() + text
        return ErrorAfterText(text, exc) if text else exc

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
