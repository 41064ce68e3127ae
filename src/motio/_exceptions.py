"""Every error motio raises on its own account derives from one root.

    MotioError
    ├── ChunkTimeoutError (also a TimeoutError): a stream went quiet too long
    ├── ConfigurationError (also a ValueError): bad option, model file, URL...
    │   ├── UnsupportedOptionError: a request field this backend cannot honour
    │   └── MissingColumn: a template names a column the dataset lacks
    ├── BackendClosedError (also a RuntimeError): a backend used after close()
    ├── BatchAborted: a batch cannot go on; ``cause`` says why (run-wide, not
    │   one prompt's failure)
    ├── MixedFormats: a prompts file mixes motio's lines and OpenAI Batch lines
    ├── ResultsFileLocked: another process is writing the same results file
    ├── NotAResultsFile: a file to resume holds lines that are not motio results
    ├── ClusterUnreachable: the Ray cluster named could not be joined
    ├── WorkerLost: a prompt's Ray worker died under it, MAX_LOSSES times
    ├── InvalidOutput: an answer was still not valid JSON for the schema
    │   after the re-asks allowed; carries the last answer and why
    ├── _RemoteFailure: a whole-run failure a Ray worker saw, carried to the
    │   driver as a BatchAborted's cause (internal)
    └── BackendError: a model backend failed; carries provider/model/base_url
        ├── BackendConnectionError: the server could not be reached
        ├── BackendTimeoutError (also a TimeoutError): a request took too long
        │   ├── ConnectTimeoutError: no connection within connect_timeout
        │   ├── FirstTokenTimeoutError: no content within first_token_timeout
        │   ├── BackendChunkTimeoutError (also a ChunkTimeoutError): a
        │   │   backend's stream went quiet for chunk_timeout
        │   └── TotalTimeoutError: the generation outlived total_timeout
        ├── StreamError: the server sent a malformed or truncated stream,
        │   or reported an error in it (its message, type and code kept)
        └── APIStatusError: the server answered with an HTTP error status
            ├── BadRequestError (400, 422)
            ├── AuthenticationError (401, 403)
            ├── NotFoundError (404)
            ├── RateLimitError (429)
            └── ServerError (5xx)

The batch errors are importable from ``motio.batch`` (``BatchAborted``,
``MixedFormats``, ``ResultsFileLocked``, ``NotAResultsFile``), and from
``motio.batch._ray``, which imports Ray, for the Ray ones (``ClusterUnreachable``,
``WorkerLost``). ``MissingColumn`` and ``InvalidOutput`` (datasets and
structured outputs) are importable from ``motio`` and ``motio.data``.
Foreign errors (aiohttp's, the OS's, llama.cpp's) are translated at the
backend boundary and chained with ``raise ... from exc`` so the original
stays visible.
Errors produced by the user's own callbacks or generators are passed through
unchanged: motio does not wrap what it did not cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "MotioError",
    "ChunkTimeoutError",
    "ConfigurationError",
    "UnsupportedOptionError",
    "MissingColumn",
    "InvalidOutput",
    "BackendClosedError",
    "BackendError",
    "BackendConnectionError",
    "BackendTimeoutError",
    "ConnectTimeoutError",
    "FirstTokenTimeoutError",
    "BackendChunkTimeoutError",
    "TotalTimeoutError",
    "StreamError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
]


class MotioError(Exception):
    """Root of every error raised by motio itself."""


class ChunkTimeoutError(MotioError, TimeoutError):
    """No chunk arrived from a stream within ``chunk_timeout`` seconds.

    Attributes:
        timeout: the limit that expired, in seconds.
        chunks: how many chunks had arrived before the stream went quiet.
    """

    timeout: float | None  # always a number here; None only in BackendTimeoutError's subclasses

    def __init__(self, message: str, *, timeout: float, chunks: int) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.chunks = chunks


class ConfigurationError(MotioError, ValueError):
    """An option, path or URL given to motio cannot work."""


class UnsupportedOptionError(ConfigurationError):
    """A chat-completions field the backend cannot honour (``n`` > 1 on a
    thunk that holds one text, ``tools`` on the embedded model...).

    Raised instead of dropping the field: a request that silently lost its
    ``tools`` or ``response_format`` would answer something else.

    Attributes:
        option: the field's name.
        backend: the backend class that refused it.
    """

    def __init__(self, message: str, *, option: str, backend: str) -> None:
        super().__init__(message)
        self.option = option
        self.backend = backend


class MissingColumn(ConfigurationError):
    """A prompt template (or the id column) names a column the dataset lacks.

    Raised when the template is checked against the dataset's columns,
    before any request is sent.

    Attributes:
        column: the column asked for.
        columns: the columns the dataset has, in its order.
        what: who asked for it (``"the template"``, ``"id_column"``), for the message.
    """

    def __init__(self, column: str, columns: Sequence[str], *, what: str = "the template") -> None:
        import difflib  # here: 10 ms to import, paid only when a column is missing

        listed = ", ".join(repr(name) for name in columns) or "none"
        close = difflib.get_close_matches(column, list(columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(
            f"the column {column!r} named by {what} is not in the data{hint}; its columns: {listed}"
        )
        self.column = column
        self.columns = tuple(columns)
        self.what = what


class InvalidOutput(MotioError):
    """An answer was not valid JSON, or broke the schema, on every try allowed.

    Attributes:
        output: the last answer, as the model wrote it.
        message: why it is not valid (the JSON error or the schema's complaint).
        attempts: how many answers were asked for (1 + the re-asks).
    """

    def __init__(self, output: str, message: str, *, attempts: int) -> None:
        tries = "1 answer" if attempts == 1 else f"{attempts} answers"
        super().__init__(f"no valid answer for the schema after {tries}; the last: {message}")
        self.output = output
        self.message = message
        self.attempts = attempts


class BackendClosedError(MotioError, RuntimeError):
    """A backend was asked to generate (or check) after ``close()``/``aclose()``.

    A RuntimeError as well: using a closed object is a programming error,
    not a failure of the model. Create a new backend instead.
    """


class BackendError(MotioError):
    """A model backend failed.

    Attributes:
        provider: backend kind, such as ``"openai"`` or ``"llamacpp"``.
        model: the model asked for, where known.
        base_url: the server's base URL, for HTTP backends.
        status_code: the HTTP status, for :class:`APIStatusError`.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        base_url: str | None = None,
        status_code: int | None = None,
    ) -> None:
        # Not super(): in BackendChunkTimeoutError the next class in line is
        # ChunkTimeoutError, whose constructor takes other arguments.
        MotioError.__init__(self, message)
        self.provider = provider
        self.model = model
        self.base_url = base_url
        self.status_code = status_code


class BackendConnectionError(BackendError):
    """The backend's server could not be reached (refused, DNS, reset)."""


class BackendTimeoutError(BackendError, TimeoutError):
    """A request to the backend did not complete within its timeout.

    Attributes:
        timeout: the limit that expired, in seconds, where one applies.
    """

    timeout: float | None

    def __init__(self, message: str, *, timeout: float | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.timeout = timeout


class ConnectTimeoutError(BackendTimeoutError):
    """No TCP (and TLS) connection to the server within ``connect_timeout``."""


class FirstTokenTimeoutError(BackendTimeoutError):
    """No content within ``first_token_timeout`` of sending the request
    (queueing and prompt processing on the server included)."""


class BackendChunkTimeoutError(BackendTimeoutError, ChunkTimeoutError):
    """A backend's stream sent no content for ``chunk_timeout`` seconds.

    Both a :class:`ChunkTimeoutError` (what the core raises for any quiet
    stream) and a :class:`BackendTimeoutError` (so it carries the backend's
    provider, model and base URL).
    """

    def __init__(self, message: str, *, timeout: float, chunks: int, **context: Any) -> None:
        BackendTimeoutError.__init__(self, message, timeout=timeout, **context)
        self.chunks = chunks


class TotalTimeoutError(BackendTimeoutError):
    """The whole generation, retries and their waits included, outlived ``total_timeout``."""


class StreamError(BackendError):
    """The server sent a stream motio could not decode, cut it short, or
    reported an error inside it.

    Attributes:
        partial_text: the text delivered before a stream broke or reported
            an error mid-answer (such a stream is never retried), else None.
        message, type, code, param: what the server's error event said
            (``data: {"error": {"message": ..., "type": ..., "code": ...}}``,
            as OpenAI and vLLM send it); None for a stream that broke or
            could not be decoded.
        body: that ``error`` object as the server sent it, else None.
    """

    partial_text: str | None = None
    body: Any = None
    message: str | None = None
    code: Any = None
    param: Any = None
    type: Any = None  # last: a class attribute named `type` shadows the builtin below it


class APIStatusError(BackendError):
    """The server answered with an HTTP error status.

    Attributes:
        retry_after: seconds the server asked to wait (``Retry-After`` or
            ``retry-after-ms``), else None.
    """

    retry_after: float | None = None


class BadRequestError(APIStatusError):
    """400/422: the server rejected the request's parameters."""


class AuthenticationError(APIStatusError):
    """401/403: the API key is missing, wrong or not allowed."""


class NotFoundError(APIStatusError):
    """404: unknown model or wrong base URL path."""


class RateLimitError(APIStatusError):
    """429: the server asks to slow down."""


class ServerError(APIStatusError):
    """5xx: the server failed while handling the request."""
