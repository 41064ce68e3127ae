"""The HTTP client under every HTTPBackend: one aiohttp session per event loop.

Why aiohttp and not the openai SDK's httpx stack: at thousands of concurrent
streams httpcore's pool costs grow with the number of open connections (each
pool pass walks them all), so requests per second fell as concurrency rose.
aiohttp's connector hands out and takes back a connection in constant time
and parses HTTP in C (llhttp); measured side by side in
``bench/bench_backends.py``. motio reads the raw SSE bytes itself, so all it
needs from the stack is: connect, send a body, give back the body as it
arrives, and keep connections alive between requests.

What this module owns:

- building the session (auth and extra headers, no pool cap of its own:
  ``max_concurrency`` is enforced above it, so the pool must never add a
  hidden queue of its own; idle connections kept alive for reuse; TLS as
  ``_tls.py`` resolves it; the proxy the environment names);
- sending a request and turning a non-2xx answer into a motio error with
  the server's own message;
- closing a session whose loop died without ever running its cleanup.

Proxies: ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` and ``NO_PROXY`` (either
case), as urllib, requests, httpx and aiohttp's own ``trust_env`` read them.
Not through ``trust_env``: that looks the proxy up again for every request,
and ``~/.netrc`` too, each in a worker thread, which at thousands of requests
a second is the thread pool's whole capacity. A client serves one base URL,
so the answer is the same every time: it is looked up once, when the client
is made (per event loop), and given to the session.

Foreign errors (aiohttp's and the OS's) are translated in ``_errors.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import Where
from ._errors import status_error

if TYPE_CHECKING:
    import aiohttp

    from ._tls import TLS

__all__ = ["HTTPClient", "env_proxy", "json_codec"]

_log = logging.getLogger("motio")

# Idle keep-alive connections live this long: long enough to carry a batch's
# next request, short enough not to pile up sockets the server has forgotten.
_KEEPALIVE_SECONDS = 30.0
# An error body is read for its message only; a server that answers an error
# with megabytes is not given the chance to make us hold them.
_MAX_ERROR_BODY = 64 * 1024


def json_codec() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """``(dumps, loads)``: orjson's if installed (several times faster), else json's."""
    try:
        import orjson
    except ImportError:
        import json

        return (lambda obj: json.dumps(obj).encode()), json.loads
    return orjson.dumps, orjson.loads


class HTTPClient:
    """An aiohttp session bound to the loop that created it.

    Args:
        base_url: the API root, such as ``http://127.0.0.1:8000/v1``, without
            credentials (they come as ``headers``).
        headers: sent with every request (auth included).
        connect_timeout: seconds to establish a TCP (and TLS) connection.
        read_timeout: seconds to wait for any single read; None for no limit.
        tls: how to verify an https server (default: the system store).

    Raises:
        ConfigurationError: ``SSL_CERT_FILE`` names a file that cannot be read.
    """

    __slots__ = ("base_url", "_session", "_dumps", "_loads", "_urls", "_through")

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float | None,
        tls: TLS | None = None,
    ) -> None:
        import aiohttp

        self.base_url = base_url
        self._dumps, self._loads = json_codec()
        # A plain-http server needs no context: building the default one
        # loads the whole system store.
        verify: Any = True
        if tls is not None and base_url.startswith("https:"):
            verify = tls.for_connector()
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=_KEEPALIVE_SECONDS, ssl=verify
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        # Content-Type with the session's own headers: per-request headers
        # would be merged into a new multidict on every request.
        session_headers = {"Content-Type": "application/json", **headers}
        self._through: dict[str, Any] = {}
        proxy, proxy_auth = env_proxy(base_url)
        if proxy is not None:
            # aiohttp hands a session's headers to the proxy as well (in
            # CONNECT, and its Authorization as Proxy-Authorization): through
            # a proxy, the server's headers go with each request instead.
            self._through = {"headers": session_headers, "proxy": proxy}
            if proxy_auth is None:
                pass
            elif base_url.startswith("https:"):  # for the CONNECT only, not inside the tunnel
                self._through["proxy_headers"] = {"Proxy-Authorization": proxy_auth}
            else:  # a plain-http request is the proxy's to read: it says who asks
                session_headers["Proxy-Authorization"] = proxy_auth
            session_headers = {}
        self._session = aiohttp.ClientSession(
            connector=connector, headers=session_headers, timeout=timeout, auto_decompress=True
        )
        self._urls: dict[str, Any] = {}

    async def post(self, path: str, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        """POST ``body`` as JSON; the response is returned with its body unread.

        The caller must ``release()`` (read to the end) or ``close()`` (drop
        the connection, so the server sees the client leave) the response.

        Raises:
            APIStatusError: the server answered a non-2xx status (the
                response is closed).
            aiohttp.ClientError, OSError, TimeoutError: for ``_errors.translate``.
        """
        response = await self._session.post(self._url(path), data=self._dumps(body), **self._through)
        if response.status >= 300:
            raise await _status_error(response, where)
        return response

    async def get_json(self, path: str, where: Where) -> Any:
        """GET ``path`` and decode its JSON body.

        Raises:
            APIStatusError, aiohttp.ClientError, OSError, TimeoutError, ValueError.
        """
        async with self._session.get(self._url(path), **self._through) as response:
            if response.status >= 300:
                raise await _status_error(response, where)
            return self._loads(await response.read())

    async def get_text(self, url: str) -> tuple[int, str]:
        """GET an absolute ``url`` (a server's metrics page): its status, and
        its text when that is 200.

        Raises:
            aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError.
        """
        async with self._session.get(url, **self._through) as response:
            return response.status, (await response.text()) if response.status == 200 else ""

    def _url(self, path: str) -> Any:
        # A parsed URL per path, made once: parsing a URL string is a large
        # share of a short request's own CPU in aiohttp.
        url = self._urls.get(path)
        if url is None:
            import yarl

            url = self._urls[path] = yarl.URL(self.base_url + path)
        return url

    async def close(self) -> None:
        """Close the session and its connections (on its own, running loop)."""
        await self._session.close()

    def is_closed(self) -> bool:
        return bool(self._session.closed)

    def close_without_loop(self) -> None:
        """Close the sockets of a session whose loop is closed, without touching it."""
        from ._compat import close_connector_without_loop

        close_connector_without_loop(self._session.connector)


def env_proxy(url: str) -> tuple[str | None, str | None]:
    """The proxy the environment names for ``url``, and its credentials.

    ``<scheme>_proxy`` (then ``all_proxy``), either case, unless ``no_proxy``
    lists the URL's host (urllib's rules: a host, a domain suffix, ``*``).
    A proxy given without a scheme (``proxy:3128``) is taken as http.

    Returns:
        ``(proxy URL without user info, Proxy-Authorization value or None)``,
        or ``(None, None)`` to connect directly.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    # host[:port], as urllib matches NO_PROXY entries against either.
    if not proxy or not parts.hostname or proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None, None
    from ._urls import ServerURL, mask_url

    if "://" not in proxy:
        proxy = "http://" + proxy
    if not proxy.lower().startswith(("http://", "https://")):
        # socks5://... (often ALL_PROXY): aiohttp speaks to HTTP proxies only.
        # Ignored, as aiohttp's own trust_env and requests without PySocks do.
        _log.warning("motio: ignoring the proxy %s for %s: only http(s) proxies are supported",
                     mask_url(proxy), parts.scheme)  # fmt: skip
        return None, None
    proxy_url = ServerURL.parse(proxy)
    return proxy_url.target, proxy_url.basic_auth


async def _status_error(response: aiohttp.ClientResponse, where: Where) -> Exception:
    """The motio error for a non-2xx ``response``; the response is closed."""
    from ._retry import retry_after_seconds

    wait = retry_after_seconds(response.headers)
    try:
        with contextlib.suppress(Exception):
            raw = await response.content.read(_MAX_ERROR_BODY)
            return status_error(response.status, _error_detail(raw, response.reason), where, retry_after=wait)
        return status_error(response.status, response.reason or "", where, retry_after=wait)
    finally:
        response.close()


def _error_detail(raw: bytes, reason: str | None) -> str:
    """The server's own words: OpenAI's ``{"error": {"message": ...}}``, vLLM's
    and FastAPI's ``{"detail": ...}``/``{"message": ...}``, or the text."""
    import json

    text = raw.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text or (reason or "")
    if isinstance(obj, dict):
        error = obj.get("error", obj)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            if message:
                return str(message)
        elif error:
            return str(error)
        if "detail" in obj:
            return str(obj["detail"])
    return text or (reason or "")
