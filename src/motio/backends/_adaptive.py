"""A concurrency gate whose limit finds what the server can actually serve.

A stock vLLM never answers 429: it queues without limit, so sending more at
once only shows up as a longer time to first token (TTFT). Hosted APIs and
proxies do answer 429/503. So the controller listens to both signals:

- **Overload** (429, 503, or a refused connection while others are in
  flight): halve the limit, at most once per round, and remember the level
  where it happened (``ceiling``).
- **Latency**: each round (about ``limit`` first-token samples) is judged by
  its median TTFT against the best recent level (``baseline``: the lowest
  round median of the last ``_BASELINE_ROUNDS`` rounds, so it follows a
  server whose base latency changes).

  * median <= ``_TOLERANCE`` x baseline: the server keeps up. Slow start
    (before the first congestion signal) multiplies the limit by
    ``_SLOW_START_GROWTH``; afterwards the limit climbs back quickly, half the
    way per round, towards the last overload ``ceiling``, and by one
    (additive increase) above it.
  * median above: requests are queueing on the server. Gradient decrease:
    ``limit x max(0.5, _TOLERANCE x baseline / median)``, as in Netflix's
    concurrency-limits (Gradient2), so a long queue is drained in one step
    and a short one trimmed. Slow start ends.

The limit stays between ``minimum`` and ``maximum``. With ``adaptive=False``
the gate is a plain cross-loop limit of ``initial``.

The gate itself is shared by every event loop and thread using a backend:
state under a ``threading.Lock``, waiters are futures of their own loop
(they hold no thread), woken FIFO with ``call_soon_threadsafe``; a waiter
cancelled just as a slot reached it passes the slot on.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections import deque
from dataclasses import dataclass

from .._exceptions import ConfigurationError

__all__ = ["AdaptiveConcurrency", "ConcurrencySnapshot"]

#: A round's median TTFT within this factor of the baseline counts as "no queue".
_TOLERANCE = 1.5
#: Growth per round before the first congestion signal.
_SLOW_START_GROWTH = 2.0
#: How many recent rounds the baseline (lowest round median) is taken over.
_BASELINE_ROUNDS = 10
#: Fewest samples a round is judged on, however low the limit.
_MIN_ROUND = 4
#: Deepest single cut for latency (a gradient below this is clamped).
_MAX_LATENCY_CUT = 0.5


@dataclass(frozen=True, slots=True)
class ConcurrencySnapshot:
    """The gate at one instant, for a progress line."""

    limit: int
    in_flight: int
    waiting: int
    overloads: int


class _Waiter:
    __slots__ = ("loop", "future", "granted")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


class AdaptiveConcurrency:
    """Up to ``limit`` holders at once; the limit adapts (see the module docstring).

    Raises:
        ConfigurationError: bounds that are not 1 <= minimum <= initial <= maximum.
    """

    def __init__(self, *, initial: int = 8, minimum: int = 1, maximum: int = 256, adaptive: bool = True) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ConfigurationError(
                f"concurrency bounds must satisfy 1 <= minimum <= initial <= maximum, "
                f"got {minimum}, {initial}, {maximum}"
            )
        self.minimum, self.maximum, self.adaptive = minimum, maximum, adaptive
        self._lock = threading.Lock()
        self._limit = float(initial)
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._samples: list[float] = []
        self._medians: deque[float] = deque(maxlen=_BASELINE_ROUNDS)
        self._slow_start = True
        self._ceiling: float | None = None
        self._cut_this_round = False
        self._overloads = 0

    # -- the gate ------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def snapshot(self) -> ConcurrencySnapshot:
        with self._lock:
            return ConcurrencySnapshot(self.limit, self._in_flight, len(self._waiters), self._overloads)

    async def acquire(self) -> None:
        """Wait for a slot, FIFO, without holding a thread."""
        with self._lock:
            if self._in_flight < self.limit and not self._waiters:
                self._in_flight += 1
                return
            waiter = _Waiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            self._withdraw(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; callable from any thread."""
        with self._lock:
            self._in_flight -= 1
            self._admit()

    def _withdraw(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter.granted:
                # The slot reached us as we were cancelled: pass it on.
                self._in_flight -= 1
                self._admit()
            else:
                self._waiters.remove(waiter)

    def _admit(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            waiter.granted = True
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:
                continue  # that waiter's loop is closed; nobody waits there
            self._in_flight += 1

    # -- the signals -----------------------------------------------------------------

    def record_first_token(self, seconds: float) -> None:
        """A request got its first content ``seconds`` after it was sent."""
        if not self.adaptive:
            return
        with self._lock:
            self._samples.append(seconds)
            if len(self._samples) >= max(_MIN_ROUND, self.limit):
                self._end_round()
                self._admit()

    def record_overload(self) -> None:
        """The server pushed back (429, 503, refused under load): halve, once per round."""
        if not self.adaptive:
            return
        with self._lock:
            self._overloads += 1
            if self._cut_this_round:
                return
            self._ceiling = self._limit
            self._limit = max(float(self.minimum), self._limit / 2)
            self._slow_start = False
            self._cut_this_round = True
            self._samples.clear()

    def _end_round(self) -> None:
        median = statistics.median(self._samples)
        self._samples.clear()
        self._cut_this_round = False
        self._medians.append(median)
        baseline = min(self._medians)
        if median <= _TOLERANCE * baseline:
            self._limit = min(float(self.maximum), self._grown())
        else:
            gradient = max(_MAX_LATENCY_CUT, _TOLERANCE * baseline / median)
            self._limit = max(float(self.minimum), self._limit * gradient)
            self._slow_start = False
            # The queue this round saw inflated its median: do not let it
            # become the baseline's competitor for the rounds to come.
            self._medians.pop()
            self._medians.append(baseline)

    def _grown(self) -> float:
        if self._slow_start:
            return self._limit * _SLOW_START_GROWTH
        if self._ceiling is not None and self._limit < self._ceiling - 1:
            return self._limit + (self._ceiling - self._limit) / 2
        return self._limit + 1


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
