"""Requests and tokens per minute, one budget for the whole process.

A backend is used from ``run_sync``'s loop, from ``asyncio.run`` in threads,
from notebooks: a limit that holds per event loop would let N loops send N
times the budget. So the state here sits behind a ``threading.Lock`` and a
caller waits on its own loop (a future plus a timer), holding no thread and
blocking no loop; whoever frees the budget wakes the next caller with
``call_soon_threadsafe``.

Why not aiolimiter: its ``AsyncLimiter`` is written for one event loop. Its
waiters are futures of the loop that created them, woken by timers of that
loop, and it keeps no lock; since 1.2 it warns "This AsyncLimiter instance is
being re-used across loops. Please create a new limiter per event loop"
(``aiolimiter/leakybucket.py``). A per-loop limiter is exactly the N-times
budget above. It also refuses an ``amount`` above its capacity, where a
prompt larger than one second of ``tpm`` must still go, alone.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept
as one number per budget): ``ready`` is the time at which the budget is
next empty. A request of cost ``c`` fits at time ``t`` when
``t >= ready - (burst - c) / rate``, and sending it moves ``ready`` to
``max(ready, t) + c / rate``. The burst is one second's worth of rate (at
least one request): a server's per-minute limit is usually enforced over
shorter windows too. A cost above the burst waits for an empty bucket and
overdraws it, so the budget still holds on average.

Callers queue first come, first served. Only the head of the queue computes
when it fits and sleeps until then; it is charged when it *goes*, not when it
asks. So a cancelled waiter was never charged (nothing to give back but its
place, which the next in line takes at once), and a refund from ``settle``
can never let a newcomer overtake, or bunch up with, callers already
waiting. Reserving ahead (charging on arrival, sleeping a fixed time) would
be simpler, but a refund or cancellation would then leave the sleepers
behind it on their old, later times while the newcomers take the freed
earlier ones, and the two groups would go out together, over the burst.

Over any window of ``w`` seconds the requests sent are therefore at most
``burst + rate * w``.

``tpm`` is charged with an estimate (``estimate_tokens``: prompt characters
/ 4 plus ``max_tokens``, the way hosted APIs count a request against their
own limit up front) and corrected with ``Reservation.settle`` once the
answer's usage is known, so a long batch converges on the real token rate.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from ..._exceptions import ConfigurationError
from ..._loops import wake

__all__ = ["RateLimiter", "Reservation", "estimate_tokens"]


def estimate_tokens(messages: Sequence[Mapping[str, Any]], max_tokens: int | None) -> int:
    """Tokens a request may use, before the server says.

    The prompt is counted at four characters a token (OpenAI's rule of thumb
    for English): the string ``content`` of each message and the ``text`` of
    each part of a list ``content`` (images and other parts are not counted).
    The answer is counted as ``max_tokens`` in full, as hosted APIs do.

    Args:
        messages: chat messages, as sent to the server.
        max_tokens: the request's ``max_tokens``; None counts as 0.

    Returns:
        ``ceil(characters / 4) + (max_tokens or 0)``.
    """
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(_text_length(part) for part in content)
    return math.ceil(chars / 4) + (max_tokens or 0)


def _text_length(part: object) -> int:
    text = part.get("text") if isinstance(part, Mapping) else None
    return len(text) if isinstance(text, str) else 0


class _Bucket:
    """One GCRA budget: ``rate`` units per second, ``burst`` units at once."""

    __slots__ = ("burst", "rate", "ready")

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, self.rate)  # one second's worth, at least one request
        self.ready = -math.inf  # empty: a fresh limiter grants its whole burst

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0.0: it fits now)."""
        fits_at = self.ready - (self.burst - min(cost, self.burst)) / self.rate
        return max(0.0, fits_at - now)

    def charge(self, cost: float, now: float) -> None:
        self.ready = max(self.ready, now) + cost / self.rate

    def refund(self, cost: float, now: float) -> None:
        # Never below "empty now": unused budget does not pile up as credit.
        self.ready = max(min(self.ready, now), self.ready - cost / self.rate)


class _Waiter:
    """A caller in the queue; ``wake`` is the future its task is parked on."""

    __slots__ = ("loop", "tokens", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop, tokens: int) -> None:
        self.loop = loop
        self.tokens = tokens
        self.wake: asyncio.Future[None] | None = None

    def nudge(self) -> None:
        """Make the waiter look again (the lock is held); any thread."""
        if self.wake is None:
            return
        try:
            self.loop.call_soon_threadsafe(wake, self.wake)
        except RuntimeError:
            pass  # its loop is closed: its task is gone and will not look again


class Reservation:
    """A request's share of the budget; ``settle`` corrects its token count."""

    __slots__ = ("_limiter", "_settled", "_tokens")

    def __init__(self, limiter: RateLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._settled = False

    @property
    def tokens(self) -> int:
        """The tokens charged for this request (the estimate, until settled)."""
        return self._tokens

    def settle(self, actual_tokens: int | None) -> None:
        """Correct the charge once the request's real usage is known.

        Fewer tokens than estimated are given back to the ``tpm`` budget, more
        are charged. Only the first call counts; later ones are ignored, so a
        request settled on every exit path is corrected once.

        Args:
            actual_tokens: the tokens the request used (the response's
                ``usage.total_tokens``), or None to keep the estimate.

        Raises:
            ConfigurationError: a negative token count.
        """
        if actual_tokens is not None and (not isinstance(actual_tokens, int) or actual_tokens < 0):
            raise ConfigurationError(f"actual_tokens must be an int >= 0 or None, got {actual_tokens!r}")
        if self._settled:
            return
        self._settled = True
        if actual_tokens is not None and actual_tokens != self._tokens:
            self._limiter._adjust_tokens(actual_tokens - self._tokens)
            self._tokens = actual_tokens


class RateLimiter:
    """Requests and tokens per minute, shared by every loop and thread.

    Args:
        rpm: requests per minute, or None for no request limit.
        tpm: tokens per minute, or None for no token limit.

    Raises:
        ConfigurationError: a limit that is not a positive, finite number.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not _is_positive_number(value):
                raise ConfigurationError(f"{name} must be a positive number per minute, got {value!r}")
        self.rpm = rpm
        self.tpm = tpm
        self._lock = threading.Lock()
        self._requests = _Bucket(rpm) if rpm is not None else None
        self._tokens = _Bucket(tpm) if tpm is not None else None
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Callers queued for the budget right now."""
        return len(self._queue)

    async def acquire(self, tokens: int = 0) -> Reservation:
        """Wait, first come first served, until one request of ``tokens`` fits.

        Args:
            tokens: the request's estimated tokens (``estimate_tokens``);
                ignored without ``tpm``.

        Returns:
            The reservation; call ``settle`` with the real usage.

        Raises:
            ConfigurationError: ``tokens`` is not an int >= 0.

        A cancelled wait was never charged; its place goes to the next in line.
        """
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ConfigurationError(f"tokens must be an int >= 0, got {tokens!r}")
        if self._requests is None and self._tokens is None:
            return Reservation(self, tokens)
        waiter = _Waiter(asyncio.get_running_loop(), tokens)
        with self._lock:
            self._queue.append(waiter)
        try:
            while (delay := self._take_or_park(waiter)) is not None:
                assert waiter.wake is not None
                await asyncio.wait((waiter.wake,), timeout=None if math.isinf(delay) else delay)
        except BaseException:
            self._leave(waiter)
            raise
        return Reservation(self, tokens)

    def _take_or_park(self, waiter: _Waiter) -> float | None:
        """Charge ``waiter`` if it is first and fits: None; else how long to park."""
        with self._lock:
            if self._queue[0] is not waiter:
                delay = math.inf  # woken when it reaches the head
            else:
                now = time.monotonic()
                delay = max(self._wait(self._requests, 1, now), self._wait(self._tokens, waiter.tokens, now))
                if delay <= 0.0:
                    self._charge(waiter.tokens, now)
                    self._queue.popleft()
                    if self._queue:
                        self._queue[0].nudge()  # the burst may admit the next one too
                    return None
            waiter.wake = waiter.loop.create_future()
            return delay

    @staticmethod
    def _wait(bucket: _Bucket | None, cost: int, now: float) -> float:
        return 0.0 if bucket is None or cost == 0 else bucket.wait(cost, now)

    def _charge(self, tokens: int, now: float) -> None:
        if self._requests is not None:
            self._requests.charge(1, now)
        if self._tokens is not None and tokens:
            self._tokens.charge(tokens, now)

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter not in self._queue:
                return
            was_head = self._queue[0] is waiter
            self._queue.remove(waiter)
            if was_head and self._queue:
                self._queue[0].nudge()

    def _adjust_tokens(self, difference: int) -> None:
        if self._tokens is None:
            return
        with self._lock:
            now = time.monotonic()
            if difference > 0:
                self._tokens.charge(difference, now)
            else:
                self._tokens.refund(-difference, now)
                if self._queue:
                    self._queue[0].nudge()  # the head may fit sooner now


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
