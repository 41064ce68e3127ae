"""OpenAIBackend: any OpenAI-compatible chat server, streamed at raw-SSE speed.

The protocol on ``HTTPBackend`` (``backends/http/``): the chat-completions
body (every field of it, and ``extra_body`` merged in as the openai SDK
does), usage asked with ``stream_options``, and the fold of its chunks
(``_chat.py``: one msgspec call per network read on the fast path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..._exceptions import BadRequestError
from ..._fields import CHAT_FIELDS
from .._base import Messages
from .._errors import Where
from ..http import HTTP_OPTIONS, HTTPBackend
from ._chat import ChatFold

if TYPE_CHECKING:
    import aiohttp

    from ..http import HTTPClient

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_USAGE_PLEASE = {"include_usage": True}


class OpenAIBackend(HTTPBackend):
    """Chat completions from an OpenAI-compatible server.

    The shared parts (several servers, retries, timeouts, limits, checks)
    are ``HTTPBackend``'s, and so are the arguments (see its docstring);
    this class is the protocol: the body of ``POST /chat/completions``
    (every chat-completions field, ``extra_body`` merged in), usage asked
    with ``stream_options`` (dropped for a server that refuses it), and the
    fold of its chunks (``_chat.py``).

    Args:
        model: the model name; None asks the server (``GET /models``) and
            uses the first it lists.
        base_url: the API root (or a list of them: several servers serving
            the same model); default ``$OPENAI_BASE_URL`` or OpenAI's.
        api_key: default ``$OPENAI_API_KEY``, else a placeholder that local
            servers accept; sent as ``Authorization: Bearer <key>`` to every
            server whose URL carries no credentials (those get theirs as
            HTTP Basic auth).
        headers, ssl, max_concurrency, concurrency_bound, connect_timeout,
        first_token_timeout, chunk_timeout, total_timeout, max_retries,
        rpm, tpm: as ``HTTPBackend``'s.

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
    # Cleared on the backend the first time a server rejects stream_options
    # (older servers): later requests do not ask again.
    _ask_usage = True

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
