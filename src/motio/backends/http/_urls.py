"""Credentials in a server URL: sent as HTTP Basic auth, never shown.

``http://user:secret@host:8000/v1`` is how a server behind an
authenticating proxy is often given. aiohttp refuses such a URL next to the
session's ``Authorization`` header (a ``ValueError`` from deep inside a
request), and a URL printed as given would show the password in every error,
log line and summary. So each URL is split once, when the backend is built:

- the URL requests go to, without the credentials;
- the ``Authorization: Basic ...`` header they make;
- the URL to show, its password masked: ``http://user:***@host:8000/v1``.

Only the shown form is kept where anything may print it (``base_url``
attributes, errors, endpoint snapshots, result metadata).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from ..._exceptions import ConfigurationError

__all__ = ["ServerURL", "mask_url"]

MASK = "***"


@dataclass(frozen=True, slots=True)
class ServerURL:
    """One server's URL, split for sending and for showing.

    Attributes:
        shown: the URL with its password masked (the URL itself without one).
        target: the URL requests go to, without user or password.
        basic_auth: the ``Authorization`` header value its credentials make,
            or None when the URL carries none.
    """

    shown: str
    target: str
    basic_auth: str | None

    @classmethod
    def parse(cls, url: str) -> ServerURL:
        """Split ``url`` once.

        Raises:
            ConfigurationError: a URL with user info that does not parse
                (sent as is, its password would show in aiohttp's error).
        """
        if "@" not in url:
            return cls(url, url, None)
        parts = _split(url)
        if parts is None:
            raise ConfigurationError(f"base_url {mask_url(url)!r} is not a valid URL; check it")
        if parts.username is None and parts.password is None:
            return cls(url, url, None)
        host = parts.netloc.rpartition("@")[2]
        target = parts._replace(netloc=host).geturl()
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(mask_url(url), target, f"Basic {token}")


def mask_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``; a
    user without a password (often a token: ``https://sk-...@host``) is
    replaced whole.

    Never raises, and masks even a URL that does not parse (a bad IPv6
    host, say): whatever sits between ``//user:`` and ``@`` is hidden.
    """
    parts = _split(url)
    if parts is None:
        return _USERINFO.sub(_masked_userinfo, url) if "@" in url else url
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{MASK}" if colon else MASK
    return parts._replace(netloc=f"{shown}@{host}").geturl()


# "//user:password@" of a URL urlsplit cannot take apart; the password runs
# to the last "@" before the path, as in urlsplit's own reading.
_USERINFO = re.compile(r"//([^/:@]*)(:?)[^/]*@")


def _masked_userinfo(match: re.Match[str]) -> str:
    user, colon = match.group(1), match.group(2)
    return f"//{user}:{MASK}@" if colon else f"//{MASK}@"


def _split(url: str) -> SplitResult | None:
    if "@" not in url:  # no user info: the common case, no parsing
        return None
    try:
        return urlsplit(url)
    except ValueError:  # an unbalanced IPv6 bracket
        return None
