"""What every backend's errors say about where they come from, and their copies.

``Where`` names the backend, model and server of an error (the embedded model
has no server); ``copy_error`` restates an error without losing its class.
The HTTP servers' own translations (statuses, aiohttp's errors, broken
streams) are in ``http/_errors.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._exceptions import BackendError
from .http._urls import mask_url

__all__ = ["Where", "copy_error"]


@dataclass(frozen=True, slots=True)
class Where:
    """Which backend, model and server an error is about."""

    provider: str
    model: str | None
    base_url: str | None

    def fields(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url}

    def describe(self) -> str:
        # Backends build a Where from a masked URL already; masked again here
        # (errors only) so that no other caller can show a password either.
        server = f" at {mask_url(self.base_url)}" if self.base_url else ""
        return f"{self.provider} backend{server} (model {self.model!r})"


def copy_error(error: BackendError, message: str) -> BackendError:
    """``error`` again, of its class and with its attributes, saying ``message``.

    For a message that sums up more than the error knows (the attempts given
    up on, every server that failed) without losing its class: callers catch
    a ``RateLimitError`` as one whatever was said around it.
    """
    copy = type(error).__new__(type(error))
    BackendError.__init__(copy, message, provider=error.provider, model=error.model, base_url=error.base_url,
                          status_code=error.status_code)  # fmt: skip
    for name, value in vars(error).items():
        setattr(copy, name, value)
    copy.args = (message,)
    return copy
