"""Translate HTTP statuses, aiohttp's and the OS's errors into motio's, saying what to check.

Most specific first: aiohttp's ``ConnectionTimeoutError`` is both a timeout
and a client error, and a broken connection means an unreachable server
before the response started but a truncated stream after. Callers chain the
result: ``raise translate(exc, where) from exc``.
"""

from __future__ import annotations

from typing import Any

from ..._exceptions import (
    APIStatusError,
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadRequestError,
    ConnectTimeoutError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamError,
)
from .._errors import Where

__all__ = [
    "ErrorAfterText",
    "broken_stream_error",
    "server_error_event",
    "status_error",
    "stream_error",
    "translate",
]

_HINTS: dict[int, tuple[type[APIStatusError], str]] = {
    400: (BadRequestError, "check the generation options and the messages"),
    # The variable is each backend's api_key_env; by convention <PROVIDER>_API_KEY
    # (filled in by status_error), so the hint names the right one for each.
    401: (AuthenticationError, "check the API key (api_key= or {key_env})"),
    403: (AuthenticationError, "check that the API key may use this model"),
    404: (
        NotFoundError,
        "check the model name (GET <base_url>/models lists them) and that base_url "
        "is the API root, such as http://host:port/v1",
    ),
    422: (BadRequestError, "check the generation options and the messages"),
    429: (RateLimitError, "the server asks to slow down: lower max_concurrency or retry later"),
}
_SERVER_HINT = "the server failed while answering: check its logs, or retry later"


class ErrorAfterText(Exception):
    """Text that must reach the thunk before ``error`` is raised.

    A server's error event often arrives in the same network read as the
    content chunks before it: the stream yields ``text`` first, then raises
    ``error``. Internal to the backend: the stream never lets it escape.
    """

    def __init__(self, text: str, error: StreamError) -> None:
        super().__init__(str(error))
        self.text = text
        self.error = error


def status_error(
    status: int, detail: str, where: Where, *, retry_after: float | None = None
) -> APIStatusError:
    """The motio error for an HTTP error ``status`` with the server's ``detail``."""
    cls: type[APIStatusError]
    if status >= 500:
        cls, hint = ServerError, _SERVER_HINT
    else:
        cls, hint = _HINTS.get(status, (APIStatusError, "check the request"))
    hint = hint.replace("{key_env}", f"{where.provider.upper()}_API_KEY")
    message = f"{where.describe()}: HTTP {status}: {_shorten(detail)}; {hint}"
    error = cls(message, status_code=status, **where.fields())
    error.retry_after = retry_after
    return error


def stream_error(detail: str, where: Where) -> StreamError:
    """A malformed or truncated stream."""
    return StreamError(
        f"{where.describe()}: bad stream: {_shorten(detail)}; check that base_url points "
        f"at a server of the {where.provider} API and that no proxy alters the response",
        **where.fields(),
    )


def broken_stream_error(exc: BaseException, where: Where, *, delivered: int | None = None) -> StreamError:
    """The connection broke after the answer had started.

    Args:
        delivered: characters of content the thunk had received, if known:
            such a stream is not retried (a retry could repeat or change
            them), and they are kept as ``partial_text``.
    """
    after = ""
    if delivered is not None:
        after = f" after {delivered} characters of content had been delivered"
    kept = (
        "; not retried, since a retry could repeat or change text already delivered "
        "(the partial text is kept: mot.text, error.partial_text)"
        if delivered is not None
        else ""
    )
    return StreamError(
        f"{where.describe()}: the connection broke mid-stream ({_shorten(_describe(exc))}){after}; "
        "likely causes, most likely first: the server restarted or crashed (check its logs), "
        "a proxy or load balancer cut the stream (check its timeouts), "
        f"or base_url does not point at a server of the {where.provider} API{kept}",
        **where.fields(),
    )


def server_error_event(error: Any, where: Where) -> StreamError:
    """The error a server reported inside a stream (``data: {"error": {...}}``,
    or an event named ``error``), carrying its ``message``, ``type`` and ``code``.

    Args:
        error: the ``error`` member as decoded (an object, as OpenAI and vLLM
            send it; anything else is taken as the message).
    """
    fields = error if isinstance(error, dict) else {"message": error}
    message = fields.get("message")
    message = None if message is None else str(message)
    kind, code = fields.get("type"), fields.get("code")
    named = (("type", kind), ("code", code))
    about = ", ".join(f"{name} {value!r}" for name, value in named if value is not None)
    text = _shorten(message if message is not None else str(error))
    exc = StreamError(
        f"{where.describe()}: the server reported an error mid-stream: {text}"
        + (f" ({about})" if about else "")
        + "; the server's own failure: check its logs, or retry later",
        **where.fields(),
    )
    exc.message, exc.type, exc.code, exc.param = message, kind, code, fields.get("param")
    exc.body = error
    return exc


def translate(exc: BaseException, where: Where, *, mid_stream: bool = False) -> BackendError | None:
    """The motio error for a foreign ``exc``, or None if it is not ours to wrap.

    Args:
        mid_stream: the response had started (headers received): a broken
            connection then means a truncated stream, not an unreachable server.
    """
    import aiohttp

    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeoutError(
            f"{where.describe()}: no connection within connect_timeout ({exc}); check that the "
            "server is up and base_url is right, or raise connect_timeout=",
            **where.fields(),
        )
    if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        return BackendTimeoutError(
            f"{where.describe()}: no answer in time ({type(exc).__name__}: {exc})", **where.fields()
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return BackendConnectionError(
            f"{where.describe()}: invalid URL {str(exc)!r}; check base_url", **where.fields()
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return BackendConnectionError(
            f"{where.describe()}: the server's TLS certificate is not trusted "
            f"({_shorten(_describe(exc.certificate_error))}); give the CA bundle that signed it "
            "(ssl=PATH, motio's --ca-bundle PATH, or SSL_CERT_FILE), or ssl=False to skip verification",
            **where.fields(),
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return BackendConnectionError(
            f"{where.describe()}: the TLS handshake failed ({_shorten(_describe(exc.os_error))}); "
            "check that the server speaks https there (or give base_url as http://)",
            **where.fields(),
        )
    if mid_stream and isinstance(exc, (aiohttp.ClientError, OSError)):
        return broken_stream_error(exc, where)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return _connection_error(exc, where)
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _connection_error(exc: BaseException, where: Where) -> BackendConnectionError:
    cause = getattr(exc, "os_error", None) or exc.__cause__
    reason = _describe(cause if cause is not None else exc)
    return BackendConnectionError(
        f"{where.describe()}: cannot connect ({_shorten(reason)}); check that the server "
        "is running and that base_url (or OPENAI_BASE_URL) is right",
        **where.fields(),
    )


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
