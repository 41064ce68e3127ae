"""Translate aiohttp's and the OS's errors into motio's, saying what to check.

Most specific first: aiohttp's ``ConnectionTimeoutError`` is both a timeout
and a client error, and a broken connection means an unreachable server
before the response started but a truncated stream after. Callers chain the
result: ``raise translate(exc, where) from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._exceptions import (
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

__all__ = ["Where", "translate", "status_error", "stream_error"]

_HINTS: dict[int, tuple[type[APIStatusError], str]] = {
    400: (BadRequestError, "check the generation options and the messages"),
    401: (AuthenticationError, "check the API key (api_key= or OPENAI_API_KEY)"),
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


@dataclass(frozen=True, slots=True)
class Where:
    """Which backend, model and server an error is about."""

    provider: str
    model: str | None
    base_url: str | None

    def fields(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url}

    def describe(self) -> str:
        server = f" at {self.base_url}" if self.base_url else ""
        return f"{self.provider} backend{server} (model {self.model!r})"


def status_error(
    status: int, detail: str, where: Where, *, retry_after: float | None = None
) -> APIStatusError:
    """The motio error for an HTTP error ``status`` with the server's ``detail``."""
    cls: type[APIStatusError]
    if status >= 500:
        cls, hint = ServerError, _SERVER_HINT
    else:
        cls, hint = _HINTS.get(status, (APIStatusError, "check the request"))
    message = f"{where.describe()}: HTTP {status}: {_shorten(detail)}; {hint}"
    error = cls(message, status_code=status, **where.fields())
    error.retry_after = retry_after
    return error


def stream_error(detail: str, where: Where) -> StreamError:
    """A malformed or truncated stream."""
    return StreamError(
        f"{where.describe()}: bad stream: {_shorten(detail)}; check that base_url points "
        "at an OpenAI-compatible server and that no proxy alters the response",
        **where.fields(),
    )


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
    if mid_stream and isinstance(exc, (aiohttp.ClientError, OSError)):
        return stream_error(f"the connection broke mid-stream ({_describe(exc)})", where)
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
