"""When and how long to wait before trying a failed request again.

- Which failures: ``RETRYABLE_STATUSES`` (408, 409, 429, 500, 502, 503,
  504, and 529, Anthropic's "overloaded") and transient connection failures before any content (decided by the
  caller, who knows whether content was delivered).
- How long: the server's own word first (``retry-after-ms``, then
  ``Retry-After`` in seconds or as an HTTP date), capped by
  ``max_retry_after`` and lengthened by up to 10% of random jitter, so the
  clients a server told "come back at 12:00:01" do not all arrive in the
  same millisecond (never shorter: the server said *at least*); otherwise exponential backoff with full jitter
  (uniform in ``[0, min(max_delay, base_delay * 2**(n-1))]``), which spreads
  a burst of clients that failed together instead of sending them back in
  lockstep (AWS Architecture Blog, "Exponential Backoff And Jitter").
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..._exceptions import ConfigurationError

__all__ = ["OVERLOAD_STATUSES", "RETRYABLE_STATUSES", "Attempts", "RetryPolicy", "retry_after_seconds"]

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
#: The statuses of a server that says it is over its capacity: a congestion
#: signal for ``max_concurrency="auto"`` besides a retry (529: Anthropic's
#: ``overloaded_error``).
OVERLOAD_STATUSES: frozenset[int] = frozenset({429, 503, 529})

# A server's Retry-After is honoured with up to this much extra, so clients
# told the same instant do not all come back in the same millisecond.
_RETRY_AFTER_JITTER = 0.1


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks to wait, from ``retry-after-ms`` or ``Retry-After``.

    Header names are matched case-insensitively, for aiohttp's
    ``CIMultiDictProxy`` and for plain dicts alike. ``retry-after-ms`` (a
    float of milliseconds, sent by OpenAI and Azure) wins when parsable.

    Args:
        headers: the response headers.
        now: the current Unix time, for an HTTP-date ``Retry-After``;
            ``time.time()`` by default.

    Returns:
        The wait in seconds (0.0 for a negative value or a date in the past),
        or None when neither header is present or parsable.
    """
    millis = _number(_header(headers, "retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000.0)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    return _seconds_until(value, time.time() if now is None else now)


def _number(value: str | None) -> float | None:
    """A finite float, or None ("nan" and "inf" are not waits)."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _seconds_until(http_date: str, now: float) -> float | None:
    import email.utils  # only for the rare HTTP-date form; it costs an import

    try:
        when = email.utils.parsedate_to_datetime(http_date.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" parses to a naive datetime; HTTP dates are always UTC, and
        # .timestamp() would read a naive one as local time.
        import datetime

        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # A plain dict with other capitalisation (aiohttp's headers are case-insensitive already).
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait in between.

    Raises:
        ConfigurationError: a negative ``max_retries`` or a non-positive delay.
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ConfigurationError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")

    def delay(
        self, retry_number: int, retry_after: float | None, *, random: Callable[[], float] = _random.random
    ) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first).

        Args:
            retry_number: which retry this is, from 1.
            retry_after: what the server asked for (``retry_after_seconds``), if anything.
            random: a source of floats in [0, 1), for tests.

        Returns:
            With ``retry_after``: ``min(retry_after, max_retry_after)`` plus up
            to 10% of that as jitter. Without: full jitter, uniform in
            ``[0, min(max_delay, base_delay * 2**(retry_number - 1))]``.

        Raises:
            ValueError: ``retry_number`` below 1.
        """
        if retry_number < 1:
            raise ValueError(f"retry_number counts from 1, got {retry_number}")
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after)
            return wait + wait * _RETRY_AFTER_JITTER * random()
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry_number - 1))
        return float(ceiling * random())


@dataclass(slots=True)
class Attempts:
    """The requests made for one generation (``mot.generation.attempts``).

    Attributes:
        count: requests made so far.
        statuses: per failed attempt, its HTTP status (None: a connection failure).
        waits: seconds waited before each retry.
        errors: per failed attempt, a short description.
    """

    count: int = 1
    statuses: list[int | None] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        """Requests made after the first."""
        return self.count - 1

    def record_failure(self, error: BaseException) -> None:
        """Note a failed attempt: its HTTP status (if any) and a short description."""
        status = getattr(error, "status_code", None)
        self.statuses.append(status)
        self.errors.append(f"HTTP {status}" if status else f"{type(error).__name__}: {str(error)[:100]}")

    def record_wait(self, seconds: float) -> None:
        """A retry follows after ``seconds``."""
        self.waits.append(seconds)
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        """The attempts as JSON-ready data (waits rounded to milliseconds)."""
        return {
            "count": self.count,
            "retries": self.retries,
            "statuses": list(self.statuses),
            "waits": [round(w, 3) for w in self.waits],
            "errors": list(self.errors),
        }
