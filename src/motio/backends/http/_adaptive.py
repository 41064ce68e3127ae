"""A concurrency gate whose limit finds what the server can actually serve.

A stock vLLM never answers 429: it queues without limit, so sending more at
once only shows up as a longer time to first token (TTFT). Hosted APIs and
proxies do answer 429/503. So the controller listens to both signals:

- **Overload** (429, 503, 529, or a refused connection while others are in
  flight): halve the limit, at most once per round, and remember the level
  where it happened (``ceiling``), lowered by one for every further refusal
  of the same burst: a server of capacity C refuses about L - C of L sent.
- **Latency**: each round (``limit`` first-token samples; half that in slow
  start, which must find the server's level fast) is judged by
  its 95th percentile TTFT against the best recent level (``baseline``: the
  lowest round figure of the last ``_BASELINE_ROUNDS`` rounds, so it follows
  a server whose base latency changes). A high percentile, not the median:
  a server queueing a few requests beyond its capacity delays only those
  few, and the median would not move until half of them waited.

  * p95 <= ``_TOLERANCE`` x baseline: the server keeps up. Slow start
    (before the first congestion signal) multiplies the limit by
    ``_SLOW_START_GROWTH``; afterwards the limit climbs back quickly, half the
    way per round, towards the last overload ``ceiling``, and by one
    (additive increase) above it.
    With no ceiling yet, the limit grows by one a round (additive increase).
  * p95 above: requests are queueing on the server. Decrease by the gradient
    ``_TOLERANCE x baseline / p95``, as in Netflix's concurrency-limits
    (Gradient2), clamped to ``[0.5, 0.9]``: a long queue is drained in one
    step, a short one trimmed by a tenth. Slow start ends.

After any cut the next round is not judged: its requests were sent before
the cut, so it would only report the queue the cut is already draining.

The limit stays between ``minimum`` and ``maximum``. With ``adaptive=False``
the gate is a plain cross-loop limit of ``initial``.

The gate itself is ``_gate.Gate``: shared by every event loop and thread
using a backend, FIFO, a waiter holds no thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..._exceptions import ConfigurationError
from .._gate import Gate

__all__ = ["AdaptiveConcurrency", "ConcurrencySnapshot", "SharedGate"]

#: A round's TTFT figure within this factor of the baseline counts as "no queue".
_TOLERANCE = 1.5
#: Growth per round before the first congestion signal (below TCP's 2, so
#: the first overshoot sends at most half the capacity in excess).
_SLOW_START_GROWTH = 1.5
#: How many recent rounds the baseline (lowest round median) is taken over.
_BASELINE_ROUNDS = 10
#: Fewest samples a round is judged on, however low the limit.
_MIN_ROUND = 4
#: Deepest and gentlest single cut for latency (the gradient is clamped to these).
_MAX_LATENCY_CUT = 0.5
_MIN_LATENCY_CUT = 0.9
#: Which percentile of a round's TTFT samples judges it.
_PERCENTILE = 0.95
#: Good rounds spent just below the last overload level before probing above it.
_PROBE_EVERY = 4


@dataclass(frozen=True, slots=True)
class ConcurrencySnapshot:
    """The gate at one instant, for a progress line."""

    limit: int
    in_flight: int
    waiting: int
    overloads: int


class AdaptiveConcurrency(Gate):
    """Up to ``limit`` holders at once; the limit adapts (see the module docstring).

    Raises:
        ConfigurationError: bounds that are not 1 <= minimum <= initial <= maximum.
    """

    def __init__(
        self, *, initial: int = 8, minimum: int = 1, maximum: int = 256, adaptive: bool = True
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ConfigurationError(
                f"concurrency bounds must satisfy 1 <= minimum <= initial <= maximum, "
                f"got {minimum}, {initial}, {maximum}"
            )
        super().__init__(initial)
        self.minimum, self.maximum, self.adaptive = minimum, maximum, adaptive
        self._samples: list[float] = []
        self._medians: deque[float] = deque(maxlen=_BASELINE_ROUNDS)
        self._slow_start = True
        self._ceiling: float | None = None
        self._cut_this_round = False
        self._overloads = 0
        self._good_rounds = 0
        self._probe_every = _PROBE_EVERY
        self._skip_round = False
        self._jump_back = False  # the last cut was an overload: return to below it in one step

    def snapshot(self) -> ConcurrencySnapshot:
        with self._lock:
            return ConcurrencySnapshot(self.limit, self._in_flight, len(self._waiters), self._overloads)

    # -- the signals -----------------------------------------------------------------

    def record_first_token(self, seconds: float) -> None:
        """A request got its first content ``seconds`` after it was sent."""
        if not self.adaptive:
            return
        with self._lock:
            self._samples.append(seconds)
            # Slow start judges every half round: it has not found the
            # server's level yet, and every round spent low is throughput lost.
            round_size = self.limit // 2 if self._slow_start else self.limit
            if len(self._samples) >= max(_MIN_ROUND, round_size):
                self._end_round()
                self._admit()

    def record_overload(self) -> None:
        """The server pushed back (429, 503, 529, refused under load): halve, once per round."""
        if not self.adaptive:
            return
        with self._lock:
            self._overloads += 1
            if self._cut_this_round:
                # More of the same burst: each request refused beyond the
                # first says the server holds one fewer than we sent.
                if self._ceiling is not None and self._ceiling > self.minimum + 1:
                    self._ceiling -= 1
                return
            if self._ceiling is not None and self._limit >= self._ceiling - 1:
                self._probe_every *= 2  # a probe above the known level failed again
            self._ceiling = self._limit
            self._jump_back = True
            self._limit = max(float(self.minimum), self._limit / 2)
            self._slow_start = False
            self._cut_this_round = True
            self._skip_round = True
            self._samples.clear()

    def _end_round(self) -> None:
        figure = _percentile(self._samples, _PERCENTILE)
        self._samples.clear()
        self._cut_this_round = False
        if self._skip_round:
            self._skip_round = False
            return
        self._medians.append(figure)
        baseline = min(self._medians)
        if figure <= _TOLERANCE * baseline:
            self._limit = min(float(self.maximum), self._grown())
            return
        gradient = min(_MIN_LATENCY_CUT, max(_MAX_LATENCY_CUT, _TOLERANCE * baseline / figure))
        self._ceiling = self._limit  # where the queue showed: recover towards just below it
        self._jump_back = False
        self._limit = max(float(self.minimum), self._limit * gradient)
        self._slow_start = False
        self._skip_round = True
        # The queue this round saw inflated its figure: keep it out of the
        # baseline's window, which must hold what the server does unloaded.
        self._medians.pop()
        self._medians.append(baseline)

    def _grown(self) -> float:
        if self._slow_start:
            return self._limit * _SLOW_START_GROWTH
        below = None if self._ceiling is None else self._ceiling - 1
        if below is None:
            return self._limit + 1
        if self._limit < below - 0.5:
            self._good_rounds = 0
            if self._jump_back:
                # A halving for 429s made room for the server to drain; the
                # level just below where it pushed back is known to work.
                return below
            return max(self._limit + 1, self._limit + (below - self._limit) / 2)
        self._good_rounds += 1
        if self._good_rounds < self._probe_every:
            return self._limit
        self._good_rounds = 0
        return self._limit + 1


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SharedGate(AdaptiveConcurrency):
    """One process's share of a server's limit, set from outside.

    Used where several processes send to the same server and one controller
    elsewhere owns the limit (motio's Ray workers, ``motio/batch/_ray.py``).

    Signals are kept, not acted on: :meth:`drain` hands them to whoever owns
    the cluster-wide controller, and :meth:`set_limit` applies the share it
    answers with.
    """

    def __init__(self, share: int, maximum: int) -> None:
        super().__init__(initial=share, maximum=max(share, maximum), adaptive=False)
        self._first_tokens: list[float] = []
        self._pushed_back = 0

    def record_first_token(self, seconds: float) -> None:
        with self._lock:
            self._first_tokens.append(seconds)

    def record_overload(self) -> None:
        with self._lock:
            self._pushed_back += 1
            self._overloads += 1

    def drain(self) -> tuple[list[float], int]:
        """The signals since the last call: first-token seconds, overloads."""
        with self._lock:
            signals = (self._first_tokens, self._pushed_back)
            self._first_tokens, self._pushed_back = [], 0
            return signals

    def set_limit(self, limit: int) -> None:
        """Apply a new share; waiters are let in at once if it grew."""
        with self._lock:
            self._limit = float(max(1, min(limit, self.maximum)))
            self._admit()
