"""OpenAIBackend: any OpenAI-compatible chat server, streamed at raw-SSE speed.

The protocol on ``HTTPBackend`` (``backends/http/``): the chat-completions
body (every field of it, and ``extra_body`` merged in as the openai SDK
does), usage asked with ``stream_options``, and the fold of its chunks
(``_chat.py``: one msgspec call per network read on the fast path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..._exceptions import BadRequestError
from ..._feed import DEFAULT_CHUNK_TIMEOUT
from ..._fields import CHAT_FIELDS
from .._base import DEFAULT_FIRST_TOKEN_TIMEOUT, Messages
from .._errors import Where
from ..http._backend import DEFAULT_CONCURRENCY_BOUND, HTTP_OPTIONS, HTTPBackend
from ._chat import ChatFold

if TYPE_CHECKING:
    from collections.abc import Mapping

    import aiohttp

    from ..http._http import HTTPClient
    from ..http._tls import TLSOption

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_USAGE_PLEASE = {"include_usage": True}


class OpenAIBackend(HTTPBackend):
    """Chat completions from an OpenAI-compatible server.

    The shared parts (several servers, retries, timeouts, limits, checks)
    are ``HTTPBackend``'s; this class is the protocol: the body of
    ``POST /chat/completions``, ``Authorization: Bearer``, usage asked with
    ``stream_options`` (dropped for a server that refuses it), and the fold
    of its chunks (``_chat.py``).

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
    default_base_url = DEFAULT_BASE_URL
    base_url_env = "OPENAI_BASE_URL"
    api_key_env = "OPENAI_API_KEY"
    options: ClassVar[frozenset[str]] = HTTP_OPTIONS | CHAT_FIELDS | {"extra_body"}

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
        super().__init__(
            model, base_url=base_url, api_key=api_key, headers=headers, max_concurrency=max_concurrency,
            concurrency_bound=concurrency_bound, connect_timeout=connect_timeout,
            first_token_timeout=first_token_timeout, chunk_timeout=chunk_timeout, total_timeout=total_timeout,
            max_retries=max_retries, rpm=rpm, tpm=tpm, ssl=ssl,
        )  # fmt: skip
        # Cleared the first time a server rejects stream_options (older servers).
        self._ask_usage = True

    def request_body(self, messages: Messages, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
        """The chat-completions body: every field given, ``extra_body`` merged in."""
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

    def new_fold(self, where: Where, stream: bool, keep: bool) -> ChatFold:
        """The fold of chat-completion chunks (``_chat.py``)."""
        return ChatFold(self._loads, where, stream, keep)

    def ask_usage(self, body: dict[str, Any]) -> None:
        """``stream_options.include_usage``, unless a server refused it once."""
        if self._ask_usage:
            body["stream_options"] = _USAGE_PLEASE

    async def send(self, client: HTTPClient, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        """POST the body; once more without ``stream_options`` for a server that refuses it.

        Raises:
            APIStatusError: the server's error status, with its message.
            aiohttp.ClientError, OSError, TimeoutError: for the caller to classify.
        """
        try:
            return await client.post(self.chat_path, body, where)
        except BadRequestError as exc:
            if "stream_options" not in body or "stream_options" not in str(exc):
                raise
        # An older server that rejects stream_options: ask once more
        # without it and count the chunks for usage instead.
        self._ask_usage = False
        del body["stream_options"]
        return await client.post(self.chat_path, body, where)
