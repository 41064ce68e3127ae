"""TLS for HTTPBackend: which certificates a server's must chain to.

``HTTPBackend(ssl=...)`` (``OpenAIBackend``'s) takes what the ecosystem's clients take:

- None or True (default): verify against the system store, which OpenSSL
  reads from its default paths or, when set, ``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` (read when the first https connection is made, so a
  variable set after the backend was built still counts);
- a path (``str`` or ``os.PathLike``) to a PEM CA bundle: verify against
  the certificates in that file only (``motio run --ca-bundle PATH``);
- an ``ssl.SSLContext``: used as is;
- False: no verification (a test server with a self-signed certificate).

A path and False pickle, so a backend built with them can be rebuilt in
another process (``recipe()``, Ray workers); an SSLContext cannot.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Union

from ..._exceptions import ConfigurationError

if TYPE_CHECKING:
    import ssl

__all__ = ["TLS", "TLSOption"]

TLSOption = Union["ssl.SSLContext", bool, str, "os.PathLike[str]", None]


class TLS:
    """An ``ssl=`` option, checked once and resolved to what aiohttp's
    connector takes (the default context built once, on first use).

    Raises:
        ConfigurationError: an option of another type, or a CA bundle path
            that cannot be read or holds no PEM certificate.
    """

    __slots__ = ("option", "_context", "_lock")

    def __init__(self, option: Any) -> None:
        self.option = option
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        if option is None or isinstance(option, bool):
            return  # the default: nothing to load until an https connection
        import ssl

        if isinstance(option, (str, os.PathLike)):
            self._context = _context_from_bundle(os.fspath(option))
        elif not (option is None or isinstance(option, (bool, ssl.SSLContext))):
            raise ConfigurationError(
                f"ssl= takes an ssl.SSLContext, a CA bundle path, True or False; got {option!r}"
            )

    def for_connector(self) -> ssl.SSLContext | bool:
        """``ssl=`` for ``aiohttp.TCPConnector``: False, or the context to verify with.

        Raises:
            ConfigurationError: ``SSL_CERT_FILE`` names a file that cannot be read.
        """
        import ssl

        if self.option is False:
            return False
        if isinstance(self.option, ssl.SSLContext):
            return self.option
        with self._lock:
            if self._context is None:
                self._context = _default_context()
            return self._context

    def portable(self) -> Any:
        """The option, for a copy of the backend built in another process.

        Raises:
            ConfigurationError: an SSLContext, which does not pickle.
        """
        if self.option is None or isinstance(self.option, (bool, str, os.PathLike)):
            return self.option
        raise ConfigurationError(
            "this backend's ssl= is an ssl.SSLContext, which cannot be sent to another process "
            "(it does not pickle): give ssl= the path of the CA bundle (or False) instead"
        )


def _default_context() -> ssl.SSLContext:
    import ssl

    # OpenSSL itself reads SSL_CERT_FILE and SSL_CERT_DIR here, in place of
    # its default paths; a file it cannot read it skips without a word, and
    # every https request would then fail verification for no visible reason.
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile:
        _check_readable(cafile, f"SSL_CERT_FILE={cafile}")
    return _speaking_http1(ssl.create_default_context())


def _context_from_bundle(path: str) -> ssl.SSLContext:
    import ssl

    _check_readable(path, f"ssl={path!r}")
    try:
        return _speaking_http1(ssl.create_default_context(cafile=path))
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"ssl={path!r}: no PEM CA certificate in that file ({exc.reason or exc}); "
            "give the path of a PEM bundle of CA certificates"
        ) from None


def _speaking_http1(context: ssl.SSLContext) -> ssl.SSLContext:
    # As aiohttp's own default context: it speaks HTTP/1.1 only, so it must
    # not let a server pick h2 in the TLS handshake.
    context.set_alpn_protocols(["http/1.1"])
    return context


def _check_readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"{what}: cannot read the CA bundle: {exc.strerror or exc}; give a readable PEM file"
        ) from None
