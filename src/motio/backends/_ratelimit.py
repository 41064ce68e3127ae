"""Requests and tokens per minute, one budget for the whole process.

A backend is used from ``run_sync``'s loop, from ``asyncio.run`` in threads,
from notebooks: a limit that holds per event loop would let N loops send N
times the budget. So the state here sits behind a ``threading.Lock`` and a
caller waits with ``asyncio.sleep`` on its own loop, holding no thread and
blocking no loop.

Why not aiolimiter: its ``AsyncLimiter`` keeps its waiters as futures of the
loop that first used it and is not thread-safe (it assumes one loop), which
is exactly the sharing this budget must survive.

The algorithm is GCRA ("reserve ahead"): each budget keeps the time at which
it is next free (``ready``). A request of cost ``c`` is scheduled at
``max(now, ready - burst)`` and pushes ``ready`` by ``c / rate``; the caller
sleeps until its scheduled time. Every caller is therefore served in the
order it asked, and over any window the budget is never exceeded by more than
the burst, which is one second's worth of rate (at least one request): a
server's per-minute limit is usually enforced over shorter windows too.

``tpm`` is charged up front with an estimate (``estimate_tokens``: prompt
characters / 4 plus ``max_tokens``) and corrected with ``settle`` once the
answer's usage is known, so a long batch converges on the real token rate.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._exceptions import ConfigurationError

__all__ = ["RateLimiter", "Reservation", "estimate_tokens"]


def estimate_tokens(messages: Sequence[Mapping[str, Any]], max_tokens: int | None) -> int:
    """Tokens a request may use: its prompt (4 characters a token) plus ``max_tokens``."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, Mapping))
    return math.ceil(chars / 4) + (max_tokens or 0)


class _Bucket:
    """One GCRA budget: ``rate`` units per second, ``burst`` units at once."""

    __slots__ = ("rate", "burst", "ready")

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, self.rate)  # one second's worth
        self.ready = 0.0

    def start_for(self, cost: float, now: float) -> float:
        """When a request of ``cost`` may start (not yet booked)."""
        return max(now, self.ready - (self.burst - min(cost, self.burst)) / self.rate)

    def book(self, cost: float, start: float) -> None:
        self.ready = max(self.ready, start) + cost / self.rate

    def refund(self, cost: float) -> None:
        self.ready -= cost / self.rate


class Reservation:
    """A request's place in the budget; ``settle`` corrects its token count."""

    __slots__ = ("_limiter", "_tokens", "_settled")

    def __init__(self, limiter: RateLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._settled = False

    def settle(self, actual_tokens: int | None) -> None:
        """The request used ``actual_tokens`` (None: keep the estimate). Idempotent."""
        if self._settled:
            return
        self._settled = True
        if actual_tokens is not None:
            self._limiter._adjust_tokens(actual_tokens - self._tokens)


class RateLimiter:
    """Requests per minute and tokens per minute, shared by every loop and thread.

    Args:
        rpm: requests per minute, or None for no request limit.
        tpm: tokens per minute, or None for no token limit.

    Raises:
        ConfigurationError: a limit that is not a positive number.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number per minute, got {value!r}")
        self.rpm = rpm
        self.tpm = tpm
        self._lock = threading.Lock()
        self._requests = _Bucket(rpm) if rpm is not None else None
        self._tokens = _Bucket(tpm) if tpm is not None else None

    async def acquire(self, tokens: int = 0) -> Reservation:
        """Wait until one request of ``tokens`` tokens fits both budgets.

        A cancelled wait gives its place back.
        """
        start = self._book(tokens)
        delay = start - time.monotonic()
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self._unbook(tokens)
                raise
        return Reservation(self, tokens)

    def _book(self, tokens: int) -> float:
        with self._lock:
            now = time.monotonic()
            start = now
            if self._requests is not None:
                start = max(start, self._requests.start_for(1, now))
            if self._tokens is not None and tokens:
                start = max(start, self._tokens.start_for(tokens, now))
            if self._requests is not None:
                self._requests.book(1, start)
            if self._tokens is not None and tokens:
                self._tokens.book(tokens, start)
            return start

    def _unbook(self, tokens: int) -> None:
        with self._lock:
            if self._requests is not None:
                self._requests.refund(1)
            if self._tokens is not None and tokens:
                self._tokens.refund(tokens)

    def _adjust_tokens(self, difference: int) -> None:
        if self._tokens is None or not difference:
            return
        with self._lock:
            if difference > 0:
                self._tokens.ready = max(self._tokens.ready, time.monotonic()) + difference / self._tokens.rate
            else:
                self._tokens.refund(-difference)
