"""HTTPBackend: what every backend of HTTP servers shares; a protocol is a subclass.

The transport is aiohttp (``_http.py``): one session per event loop, kept
alive connections, no pool cap below ``max_concurrency``. The openai SDK is
not used: its typed stream builds a pydantic object per chunk (about seven
times the cost of reading raw SSE bytes and decoding them with msgspec), and
its httpx pool slows down as open connections grow, which at thousands of
concurrent streams was the whole budget.

Data flow of one streamed generation::

    generate() -> _open(): request_body(), new_fold(), Exchange
    Exchange:     (_exchange.py) per attempt: a concurrency slot and the rate
                  limiter, POST, read until the first content; retried
                  before any content on 429/5xx/529/reset connections
    _SSEStream:   one text item per network read that carried content
    the fold:     the protocol's: decodes and folds each read's events

What the backend shares between generations (and event loops, and threads):
per server, the per-loop HTTP clients and the concurrency gate (fixed or
adaptive); for all of them, the rate limiter and the retry policy. Given
several servers (``base_url=[...]``), each attempt goes to the least loaded
one in rotation (``_endpoints.py``).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from ..._exceptions import ConfigurationError, MotioError, NotFoundError
from ..._feed import DEFAULT_CHUNK_TIMEOUT
from ...scheduling import HedgePolicy, prefix_key
from .._base import (
    COMMON_OPTIONS,
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    Backend,
    Fold,
    Messages,
    Request,
    SharedLimits,
    check_timeout,
)
from .._errors import Where
from .._gate import Gate
from ._endpoints import Endpoint, Endpoints, EndpointSnapshot, each_checked, first_passing
from ._errors import translate
from ._exchange import Exchange, HTTPFold
from ._hedge import hedge_delay, open_hedged
from ._http import HTTPClient, json_codec
from ._loopclients import LoopClient, LoopClients
from ._retry import RetryPolicy
from ._tls import TLS, TLSOption
from ._urls import ServerURL, mask_url

if TYPE_CHECKING:
    import aiohttp

    from ._adaptive import AdaptiveConcurrency
    from ._metrics import FetchText
    from ._ratelimit import RateLimiter, Reservation

__all__ = ["DEFAULT_CONCURRENCY_BOUND", "HTTP_OPTIONS", "HTTPBackend"]

# The key sent when none is given: local servers (llama.cpp, vLLM, Ollama) ignore it.
_PLACEHOLDER_KEY = "sk-no-key-required"
#: Upper bound of ``max_concurrency="auto"``.
DEFAULT_CONCURRENCY_BOUND = 256
# Where "auto" starts: low enough not to swamp a small server on the first
# round, and slow start doubles it each round until the server pushes back.
_AUTO_INITIAL = 16
# Seconds a probe of a server out of rotation may take.
_PROBE_TIMEOUT = 5.0

#: The options of ``generate`` every HTTP backend takes; a protocol adds its fields.
HTTP_OPTIONS = COMMON_OPTIONS | {
    "keep_response", "first_token_timeout", "total_timeout", "avoid_servers", "hedge",
}  # fmt: skip


class HTTPBackend(Backend):
    """A backend of HTTP servers: what every protocol over them shares.

    Everything but the protocol is here: several servers (``base_url=[...]``,
    routed by load, failed over, rotated out and probed back), the
    per-loop aiohttp clients, TLS and proxies, credentials in URLs, the
    concurrency gate (fixed or ``"auto"``), the rate limiter, retries, the
    four timeouts, checks (``GET <base_url>/models``), the limits Ray
    workers share, the recipe of a copy and ``aclose``. A protocol is a
    subclass that sets a few class attributes and implements two methods,
    ``request_body`` and ``new_fold`` (``OpenAIBackend`` in ``backends/openai/``):

    Class attributes:
        provider: the backend's name (the registry's), in errors and
            ``mot.generation.provider``.
        default_base_url: the API root when none is given nor in ``base_url_env``.
        base_url_env: the environment variable of the default API root.
        api_key_env: the environment variable of the API key.
        options: ``generate``'s options (``HTTP_OPTIONS``: the common ones,
            the timeouts, ``keep_response``, ``avoid_servers``; plus the
            protocol's own fields).
        chat_path: where generations are POSTed, under the API root.
        models_path: what ``check()`` and probes GET: an answer
            ``{"data": [{"id": model}, ...]}`` (an empty list passes).

    Hooks:
        auth_headers(api_key) -> dict[str, str]: the headers that carry the
            key (default ``Authorization: Bearer <key>``); a server whose
            URL carries credentials gets them as ``Authorization`` (Basic).
        request_body(messages, stream, options) -> dict: the JSON body of a
            generation, without the model (``prepare`` adds
            ``body.setdefault("model", model)``). ``options`` are
            ``generate``'s remaining ones (the protocol's fields).
        new_fold(where, stream, keep) -> HTTPFold: the fold of one
            generation's answer: SSE network reads (``fold``), a whole JSON
            body (``fold_whole``), a whole body where a stream was asked
            (``fold_whole_instead_of_stream``). It must set
            ``meta.usage`` with ``total_tokens`` for ``tpm`` to be corrected.
        ask_usage(body) -> None (optional): ask a streamed answer for its
            usage where the protocol needs asking (OpenAI: ``stream_options``).
        send(client, body, where) -> response (optional): POST the body
            (default: to ``chat_path``); override to retry a refused option.

    Retries (429, 408, 409, 5xx and 529; reset connections), the server's
    ``retry-after``, the error classes of statuses and broken streams are
    the same for every protocol (``_exchange.py``, ``_retry.py``, ``_errors.py``).

    Args:
        model: the model name; None asks the server (``GET /models``) and
            uses the first it lists.
        base_url: the API root; default ``$<base_url_env>`` or ``default_base_url``.
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
            ``generate(..., hedge=True)`` (or a number of seconds) sends a
            second request to another server when the first has brought no
            content after the recent p95 time to first token (or those
            seconds); the first to bring content wins and the other is
            closed (``_hedge.py``; off by default).
        api_key: default ``$<api_key_env>``, else a placeholder that local
            servers accept. Sent as ``auth_headers`` says to every
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
            rest wait without holding a connection. An int, ``"auto"``
            (adapt to what the server serves: see ``_adaptive.py``; between
            1 and ``concurrency_bound``), or None for no cap.
        concurrency_bound: the upper bound of ``"auto"``.
        metrics_url: where ``"auto"`` reads how full each server is (its
            Prometheus page: vLLM's, SGLang's, TGI's or llama.cpp's running
            and waiting requests), to hold it at capacity with nothing
            waiting. None (default): ``<origin>/metrics`` of each base URL,
            tried once; a server without such a page is judged by its
            first-token latency instead, silently. False: never read them.
            A URL, or a list of one per base URL: those pages.
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
            reached the thunk (429, 408, 409, 5xx, 529, reset connections,
            connect timeouts), with exponential backoff and full jitter, or the
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
        prefix_routing: given several servers, send prompts that share a
            start (system prompt, first user message: see
            ``motio.scheduling.prefix_key``) to the same server, so that its
            prefix cache serves them, unless that server is more than a
            slack above the least loaded (bounded-load consistent hashing;
            ``_endpoints.py``). None (default): on when there are several
            servers; False: off (least loaded only). A batch also
            dispatches prompts grouped by prefix when it is on.

    Raises:
        ConfigurationError: a bad limit, timeout, URL or ``ssl=``; an
            ``api_key=`` (or an ``Authorization`` header) that no server
            would get, every URL carrying its own credentials.
    """

    remote = True
    default_concurrency = "auto"
    hedging = True
    default_base_url: ClassVar[str]
    base_url_env: ClassVar[str]
    api_key_env: ClassVar[str]
    options: ClassVar[frozenset[str]] = HTTP_OPTIONS
    chat_path: ClassVar[str] = "/chat/completions"
    models_path: ClassVar[str] = "/models"
    base_url: str
    retry_policy: RetryPolicy

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
        metrics_url: str | Sequence[str] | Literal[False] | None = None,
        prefix_routing: bool | None = None,
    ) -> None:
        for timeout in (connect_timeout, first_token_timeout, chunk_timeout, total_timeout):
            check_timeout(timeout)
        self.model = model
        servers = [ServerURL.parse(url) for url in self._base_urls(base_url)]
        # Only the masked form is kept where anything may show it.
        self.base_urls = tuple(server.shown for server in servers)
        self.base_url = self.base_urls[0]
        _check_credentials(servers, api_key, headers)
        self._api_key = api_key or os.environ.get(self.api_key_env) or _PLACEHOLDER_KEY
        self._headers = {**self.auth_headers(self._api_key), "User-Agent": "motio", **(headers or {})}
        self._tls = TLS(ssl)
        self.max_concurrency = max_concurrency
        self.concurrency_bound = concurrency_bound
        self._limiter = _make_limiter(rpm, tpm)
        self.retry_policy = RetryPolicy(max_retries=_positive_int("max_retries", max_retries + 1) - 1)
        self.first_token_timeout = first_token_timeout
        self.chunk_timeout = chunk_timeout
        self.total_timeout = total_timeout
        pages = _metrics_urls(metrics_url, servers)
        self._endpoints = Endpoints(
            [
                self._endpoint(server, max_concurrency, concurrency_bound, connect_timeout, page)
                for server, page in zip(servers, pages, strict=True)
            ],
            self._probe,
            hold_prefixes=True,  # the exchange reports each keyed request's first token
        )
        self._all_own_credentials = all(server.basic_auth for server in servers)
        # Only between several servers: with one there is nothing to choose.
        self._by_prefix = self._endpoints.several and prefix_routing is not False
        self._clients = self._endpoints.all[0].clients
        for endpoint in self._endpoints.all:
            # A backend dropped without close(): close its clients on their own
            # loops instead of leaving sockets for the garbage collector.
            weakref.finalize(self, endpoint.clients.close_all_elsewhere)
        self._model_lock = threading.Lock()
        self._loads = json_codec()[1]
        self._last_where: Where | None = None
        #: When ``generate(hedge=...)`` sends its second request (``motio.scheduling``).
        self.hedge_policy = HedgePolicy()

    def _endpoint(
        self,
        server: ServerURL,
        max_concurrency: int | str | None,
        bound: int,
        connect_timeout: float,
        metrics_url: tuple[str, bool] | None,
    ) -> Endpoint:
        gate, adaptive = _make_gate(max_concurrency, bound)
        headers = self._headers
        if server.basic_auth is not None:
            headers = {**headers, "Authorization": server.basic_auth}
        factory = functools.partial(HTTPClient, server.target, headers, connect_timeout, None, self._tls)
        endpoint = Endpoint(server.shown, gate, adaptive, LoopClients(factory))
        if adaptive is not None and metrics_url is not None:
            from ._metrics import MetricsScraper

            url, given = metrics_url
            adaptive.scraper = MetricsScraper(url, _fetch_text(endpoint), adaptive.record_load, given=given)
        return endpoint

    def _where(self) -> Where:
        # One shared Where while the model stays the same: no object per request.
        where = self._last_where
        if where is None or where.model != self.model:
            where = self._last_where = Where(self.provider, self.model, self.base_url)
        return where

    @property
    def router(self) -> Endpoints:
        """The servers, their health and the routing between them (for ``Exchange``)."""
        return self._endpoints

    # -- the protocol's hooks -----------------------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry ``api_key`` (here ``Authorization: Bearer``)."""
        return {"Authorization": f"Bearer {api_key}"}

    @abc.abstractmethod
    def request_body(self, messages: Messages, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of one generation, without its model.

        Args:
            messages: the chat messages (``to_messages``'s).
            stream: whether the answer is streamed.
            options: ``generate``'s remaining options (the protocol's fields;
                the body may take them).

        Raises:
            UnsupportedOptionError, ConfigurationError: what the protocol
                cannot send.
        """

    @abc.abstractmethod
    def new_fold(self, where: Where, stream: bool, keep: bool) -> HTTPFold:
        """The fold of one generation's answer (see ``HTTPFold``).

        Args:
            where: the error context (server, model) for its errors.
            stream: whether the answer is streamed.
            keep: keep the whole answer in ``mot.generation.response``.
        """

    def ask_usage(self, body: dict[str, Any]) -> None:
        """Ask a streamed answer for its usage (nothing here: sent unasked)."""

    async def send(self, client: HTTPClient, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        """POST the body to ``chat_path``; return the response with its body unread.

        Raises:
            APIStatusError: the server's error status, with its message.
            aiohttp.ClientError, OSError, TimeoutError: for the caller to classify.
        """
        return await client.post(self.chat_path, body, where)

    # -- the template's step ------------------------------------------------------

    def _open(self, request: Request) -> tuple[Any, Fold]:
        options = request.options
        avoid = options.pop("avoid_servers", None)
        hedge = options.pop("hedge", None)
        body = self.request_body(request.messages, request.stream, options)
        tokens = self._token_estimate(request.messages, options)
        if hedge is not None and hedge is not False:
            return self._open_hedged(request, body, tokens, avoid, hedge)
        fold = self.new_fold(self._where(), request.stream, request.keep)
        exchange = Exchange(self, body, fold, request, tokens)
        if avoid:
            exchange.shun(self._servers_named(avoid))
        if self._by_prefix:
            exchange.route_by(prefix_key(request.messages))
        return (exchange.open_stream() if request.stream else exchange.complete()), fold

    def _open_hedged(
        self, request: Request, body: dict[str, Any], tokens: int, avoid: object, hedge: object
    ) -> tuple[Any, Fold]:
        """``_open`` for ``generate(hedge=...)`` (``_hedge.py``).

        Raises:
            ConfigurationError: a ``hedge=`` that is not True, False, None or seconds.
        """
        after = hedge_delay(hedge)
        shun = self._servers_named(avoid) if avoid else []
        where, stream, keep = self._where(), request.stream, request.keep

        def new_fold() -> HTTPFold:
            return self.new_fold(where, stream, keep)

        return open_hedged(self, self.hedge_policy, new_fold, request, body, tokens, shun, after)

    def _base_urls(self, base_url: str | Sequence[str] | None) -> tuple[str, ...]:
        """The API roots, without trailing slashes; at least one, no repeats.

        Raises:
            ConfigurationError: an empty list, or a URL that is not a str.
        """
        if base_url is None or isinstance(base_url, str):
            return ((base_url or os.environ.get(self.base_url_env) or self.default_base_url).rstrip("/"),)
        urls = tuple(dict.fromkeys(_one_url(url) for url in base_url))
        if not urls:
            raise ConfigurationError("base_url: an empty list; give at least one server URL")
        return urls

    @property
    def prefix_routing(self) -> bool:
        """Whether prompts are routed by their prefix key (several servers,
        ``prefix_routing`` not False; see ``Backend.prefix_routing``)."""
        return self._by_prefix

    @prefix_routing.setter
    def prefix_routing(self, on: bool) -> None:
        self._by_prefix = self._endpoints.several and bool(on)

    @property
    def adaptive_concurrency(self) -> AdaptiveConcurrency | None:
        """With ``max_concurrency="auto"`` and one server, the controller
        (``limit``, ``snapshot()``); with several, see ``endpoint_snapshot()``."""
        return None if self._endpoints.several else self._endpoints.all[0].adaptive

    def endpoint_snapshot(self) -> list[EndpointSnapshot]:
        """Per server, in the order given: requests in flight, limit, whether
        in rotation, generations served and their tokens (a read-only copy)."""
        return self._endpoints.snapshot()

    def recipe(self) -> Callable[[], HTTPBackend]:
        """As ``Backend.recipe``, with the API key as resolved here: a copy
        built in another process may not see this environment.

        Raises:
            ConfigurationError: ``ssl=`` is an ``ssl.SSLContext``, which does
                not pickle (give the CA bundle's path instead).
        """
        constructor: Callable[..., HTTPBackend] = super().recipe()  # type: ignore[assignment]
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
            scraper = None if endpoint.adaptive is None else endpoint.adaptive.scraper
            endpoint.gate = gate
            endpoint.adaptive = gate if isinstance(gate, AdaptiveConcurrency) else None
            if scraper is not None and endpoint.adaptive is not None:
                # The share reads the server's counts and hands them on.
                endpoint.adaptive.scraper = scraper
                scraper.set_callback(endpoint.adaptive.record_load)

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
        self,
        tokens: int,
        avoid: Sequence[Endpoint],
        shun: Sequence[Endpoint] = (),
        key: int | None = None,
    ) -> tuple[Endpoint, Reservation | None]:
        """A concurrency slot on a server (not one in ``avoid`` while another
        has room, nor one in ``shun`` while another is in rotation; the one
        holding prefix ``key`` within the slack, if given), then the rate
        limiter's go."""
        endpoint = await self._endpoints.acquire(avoid, shun, key)
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

    async def loop_client(self, endpoint: Endpoint) -> LoopClient:
        # Checked again here: a generation may have waited for its slot while
        # the backend was closed, and must not open a new client then.
        self._ensure_open()
        return await endpoint.clients.get()

    async def prepare(
        self, entry: LoopClient, body: dict[str, Any], fold: HTTPFold, endpoint: Endpoint
    ) -> None:
        if self.model is None:
            await self._ask_model(entry.client, endpoint)
        if fold.where.model != self.model or fold.where.base_url is not endpoint.base_url:
            # asked the server since generate(), or another server's attempt
            fold.where = endpoint.where(self.provider, self.model)
            fold.meta.base_url = endpoint.base_url
        # A model the caller named (a Batch line's own) is sent as given.
        body.setdefault("model", self.model)

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
            return _model_ids(await client.get_json(self.models_path, where))
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
            if endpoint.adaptive is not None and endpoint.adaptive.scraper is not None:
                await endpoint.adaptive.scraper.cancel()
            await endpoint.clients.aclose()


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


def _metrics_urls(
    given: str | Sequence[str] | Literal[False] | None, servers: Sequence[ServerURL]
) -> list[tuple[str, bool] | None]:
    """Per server, its metrics page and whether it was given (None: none read).

    Raises:
        ConfigurationError: a ``metrics_url=`` that is not False, None, a URL
            or a list of one URL per base URL.
    """
    from ._metrics import metrics_url_of

    if given is False:
        return [None] * len(servers)
    if given is None:
        return [(metrics_url_of(server.target), False) for server in servers]
    urls = [given] if isinstance(given, str) else given
    if (
        isinstance(urls, Sequence)
        and len(urls) == len(servers)
        and all(isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls)
    ):
        return [(url.strip(), True) for url in urls]
    raise ConfigurationError(
        f"metrics_url must be None (find <origin>/metrics), False (never), or one http(s) URL per "
        f"base URL ({len(servers)}), got {given!r}"
    )


def _fetch_text(endpoint: Endpoint) -> FetchText:
    """GET a page with ``endpoint``'s client on the running loop: its status and text."""

    async def fetch(url: str) -> tuple[int, str]:
        entry = await endpoint.clients.get()
        entry.acquire()
        client: HTTPClient = entry.client
        try:
            return await client.get_text(url)
        finally:
            entry.release()

    return fetch


def _make_limiter(rpm: float | None, tpm: float | None) -> RateLimiter | None:
    if rpm is None and tpm is None:
        return None
    from ._ratelimit import RateLimiter

    return RateLimiter(rpm, tpm)
