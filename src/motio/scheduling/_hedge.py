"""When a generation may send a second request: ``generate(hedge=...)``'s policy.

A hedged request (Dean and Barroso, "The Tail at Scale", 2013) is sent again
when its answer is later than most: waiting for the recent 95th percentile
before the second one costs about 5% more requests and cuts the tail that a
slow server or a long queue gives. Three parts, each small:

- ``RecentPercentile``: the q-th percentile of the last ``window`` samples
  (a ring of floats; sorted on demand, at most once per new sample). A
  percentile over recent samples follows a server whose speed changes.
- ``HedgeBudget``: a token bucket. Every generation that asks for a hedge
  deposits ``fraction`` of a request (up to ``reserve``); a hedge spends one.
  So hedges are at most ``fraction`` of the generations that ask, beyond a
  ``reserve`` that lets the first few hedge at all (gRPC's hedging throttle
  and Finagle's retry budget work the same way). When every server slows
  down at once (they are all overloaded), hedging stops at the cap instead
  of doubling the load.
- ``HedgePolicy``: the two together for one backend, the overload pause
  (no new hedge within ``pause`` seconds of a 429/503/529 from any of its
  servers: a server that refuses work is not helped by more of it), no
  hedge without a free slot for it (it would queue behind other requests,
  taking a slot they wait for), and counters. Thread-safe: a backend is shared by every loop and thread.

Samples are what the hedged generations saw: the time from their first
request's send to their first content, whichever request brought it. When
the second request won, that is a lower bound of the first one's time; it
is still above the delay the hedge waited (the percentile), so the
percentile it feeds stays where it was rather than drifting down.
Generations that do not ask for a hedge add nothing (they pay nothing).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HEDGE_DELAY",
    "HEDGE_FRACTION",
    "HEDGE_PERCENTILE",
    "HEDGE_RESERVE",
    "MIN_SAMPLES",
    "OVERLOAD_PAUSE",
    "HedgeBudget",
    "HedgePolicy",
    "HedgeStats",
    "RecentPercentile",
]

#: Which percentile of recent first-token times ``hedge=True`` waits for.
HEDGE_PERCENTILE = 0.95
#: Samples the percentile is taken over (the most recent).
WINDOW = 200
#: Samples needed before the percentile is trusted; until then
#: ``hedge=True`` waits ``DEFAULT_HEDGE_DELAY``.
MIN_SAMPLES = 10
#: Seconds ``hedge=True`` waits before ``MIN_SAMPLES`` first tokens were seen.
DEFAULT_HEDGE_DELAY = 1.0
#: Hedges at most this fraction of the generations that ask for one...
HEDGE_FRACTION = 0.1
#: ...beyond this many (the bucket's size, full at the start).
HEDGE_RESERVE = 10.0
#: Seconds after a server's 429/503/529 during which no hedge is sent.
OVERLOAD_PAUSE = 5.0


class RecentPercentile:
    """The ``q`` percentile (0..1) of the last ``window`` samples.

    Raises:
        ValueError: ``q`` outside 0..1, or a window below 1.
    """

    __slots__ = ("_q", "_samples", "_cached")

    def __init__(self, q: float = HEDGE_PERCENTILE, window: int = WINDOW) -> None:
        if not 0.0 <= q <= 1.0 or window < 1:
            raise ValueError(f"a percentile in 0..1 over at least one sample, got q={q!r}, window={window!r}")
        self._q = q
        self._samples: deque[float] = deque(maxlen=window)
        self._cached: float | None = None

    def add(self, value: float) -> None:
        """One more sample (the oldest leaves once the window is full)."""
        self._samples.append(value)
        self._cached = None

    def __len__(self) -> int:
        return len(self._samples)

    def value(self) -> float | None:
        """The percentile now (nearest rank), or None without samples."""
        if self._cached is None and self._samples:
            ordered = sorted(self._samples)
            self._cached = ordered[min(len(ordered) - 1, int(self._q * len(ordered)))]
        return self._cached


class HedgeBudget:
    """A token bucket of hedges (see the module docstring).

    Raises:
        ValueError: a fraction outside 0..1 or a negative reserve.
    """

    __slots__ = ("fraction", "reserve", "_credit")

    def __init__(self, fraction: float = HEDGE_FRACTION, reserve: float = HEDGE_RESERVE) -> None:
        if not 0.0 <= fraction <= 1.0 or reserve < 0:
            raise ValueError(f"a fraction in 0..1 and a reserve >= 0, got {fraction!r}, {reserve!r}")
        self.fraction = fraction
        self.reserve = reserve
        self._credit = reserve

    def deposit(self) -> None:
        """A generation asked for a hedge: ``fraction`` more, up to the reserve."""
        self._credit = min(max(self.reserve, 1.0), self._credit + self.fraction)

    def try_spend(self) -> bool:
        """Take one hedge if the budget holds one; False (nothing taken) if not."""
        if self._credit < 1.0:
            return False
        self._credit -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class HedgeStats:
    """A hedge policy's counters at one instant.

    Attributes:
        asked: generations that asked for a hedge.
        hedged: of those, how many sent a second request.
        won: of those, how many the second request won.
        over_budget: hedges not sent: the budget was spent.
        paused: hedges not sent: a server pushed back recently.
        busy: hedges not sent: no server had a free concurrency slot.
        delay: what ``hedge=True`` waits now, in seconds (streamed answers).
    """

    asked: int
    hedged: int
    won: int
    over_budget: int
    paused: int
    busy: int
    delay: float


class HedgePolicy:
    """One backend's hedging: the delay, the budget, the overload pause.

    Args:
        default_delay: seconds to wait before ``min_samples`` were seen.
        min_samples: samples before the percentile is used.
        fraction, reserve: the ``HedgeBudget``.
        pause: seconds after an overload during which nothing is hedged.
        clock: the clock overload times are on (``time.monotonic``).
    """

    def __init__(
        self,
        *,
        default_delay: float = DEFAULT_HEDGE_DELAY,
        min_samples: int = MIN_SAMPLES,
        fraction: float = HEDGE_FRACTION,
        reserve: float = HEDGE_RESERVE,
        pause: float = OVERLOAD_PAUSE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_delay = default_delay
        self.min_samples = min_samples
        self.pause = pause
        self._clock = clock
        self._lock = threading.Lock()
        self._budget = HedgeBudget(fraction, reserve)
        # Streamed answers (time to first content) and whole ones (time to
        # the whole answer) are different quantities: one percentile each.
        self._recent = {True: RecentPercentile(), False: RecentPercentile()}
        self._asked = self._hedged = self._won = self._over_budget = self._paused = self._busy = 0

    def ask(self, stream: bool) -> float:
        """A generation asks for a hedge: count it, feed the budget, and
        return the delay ``hedge=True`` waits (the recent percentile, or the
        default while samples are few)."""
        with self._lock:
            self._asked += 1
            self._budget.deposit()
            return self._delay(stream)

    def _delay(self, stream: bool) -> float:
        recent = self._recent[stream]
        value = recent.value() if len(recent) >= self.min_samples else None
        return self.default_delay if value is None else value

    def allow(self, last_overload: float | None, room: bool = True) -> bool:
        """Whether a second request may go now; spends the budget if so.

        Args:
            last_overload: when (on ``clock``) a server of the backend last
                answered 429/503/529, or None if never.
            room: whether a server the second request may go to has a free
                slot (a hedge never queues behind other requests).
        """
        with self._lock:
            if last_overload is not None and self._clock() - last_overload < self.pause:
                self._paused += 1
                return False
            if not room:
                self._busy += 1
                return False
            if not self._budget.try_spend():
                self._over_budget += 1
                return False
            self._hedged += 1
            return True

    def record(self, stream: bool, seconds: float, *, second_won: bool = False) -> None:
        """A hedged generation's first content came ``seconds`` after its
        first request was sent (``second_won``: the second request brought it)."""
        with self._lock:
            self._recent[stream].add(seconds)
            if second_won:
                self._won += 1

    def snapshot(self) -> HedgeStats:
        """The counters now."""
        with self._lock:
            return HedgeStats(
                self._asked,
                self._hedged,
                self._won,
                self._over_budget,
                self._paused,
                self._busy,
                self._delay(True),
            )
