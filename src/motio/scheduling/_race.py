"""Racing stragglers: the policy the batch engine and Ray's workers share.

At the end of a batch the last requests run alone while servers idle: one
slow server, or a few long generations, set the wall time. When nothing is
left to dispatch and a server has room, a request that has run longer than
most of its kind is sent again to another server; the first answer wins
and the other request is closed (the batch layer does that). What decides
*which* and *how many* is here, free of any backend or batch type:

- **Kind** (:func:`race_kind`): requests are compared with their own kind
  only, so that a prompt asking for 2,000 tokens is never taken for a
  straggler among prompts asking for 20: the requested ``max_tokens`` (or
  ``max_completion_tokens``; None when not given) and the prompt's length
  in characters, bucketed by powers of two (``bit_length``: 100 and 120
  characters are one kind, 100 and 300 are not).
- **Recent p95** (:class:`RecentLatency`): per kind, the service times
  (from the request going out to its last byte; the wait for a slot in
  motio's own gate left out) of the last :data:`WINDOW` answers. With
  fewer than :data:`MIN_SAMPLES` of its kind, a request is judged by every
  kind's recent answers together; with fewer than that in all, not at all.
- **Straggler** (:func:`straggler_after`): in service longer than its
  kind's recent p95, and at least :data:`MIN_STRAGGLER_SECONDS` (a race
  costs a whole generation; shaving milliseconds off a loopback answer is
  not worth one).
- **Budget** (:class:`RaceBudget`): at most ``fraction`` of the batch's
  prompts (``floor``: 5% of 30 prompts is one race) are sent again; on Ray
  one budget for the whole cluster (the coordinator holds it).
- **Overloads** (:func:`overloaded_lately`): no race while servers answer
  429/503/529 (a racer would only add to the queue): racing waits until
  :data:`OVERLOAD_HOLD` seconds have passed without a new one, read from
  when each server last pushed back (``EndpointSnapshot.overloaded_at``,
  the record ``generate(hedge=...)`` pauses on too).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from .._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_HEDGE_BUDGET",
    "MIN_SAMPLES",
    "MIN_STRAGGLER_SECONDS",
    "OVERLOAD_HOLD",
    "WINDOW",
    "RaceBudget",
    "RaceKind",
    "RecentLatency",
    "check_hedge_budget",
    "overloaded_lately",
    "prompt_chars",
    "race_kind",
    "straggler_after",
]

#: The share of a batch's prompts that may be sent a second time (``--hedge-budget``).
DEFAULT_HEDGE_BUDGET = 0.05
#: Answers per kind the recent p95 is read from.
WINDOW = 256
#: Answers of a kind (else of every kind together) before its p95 means anything.
MIN_SAMPLES = 20
#: No request is raced before this long in service, whatever its kind's p95.
MIN_STRAGGLER_SECONDS = 0.5
#: Seconds without a new 429/503/529 before racing resumes.
OVERLOAD_HOLD = 2.0

#: ``(max_tokens, prompt length bucket)``: what a request is compared with.
RaceKind = tuple[int | None, int]


def check_hedge_budget(value: object) -> float:
    """``value`` as a budget fraction.

    Raises:
        ConfigurationError: not a number from 0 to 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigurationError(f"hedge_budget must be a fraction from 0 to 1 (0: no racing), got {value!r}")
    return float(value)


def prompt_chars(request: str | Sequence[Mapping[str, Any]]) -> int:
    """Characters of a prompt: the string, or every message's text content."""
    if isinstance(request, str):
        return len(request)
    total = 0
    for message in request:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):  # content parts: their text
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return total


def race_kind(max_tokens: object, chars: int) -> RaceKind:
    """The kind of a request (see the module docstring)."""
    tokens = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None
    return tokens, chars.bit_length()


def straggler_after(p95: float) -> float:
    """Seconds in service after which a request whose kind's p95 is ``p95`` is a straggler."""
    return max(p95, MIN_STRAGGLER_SECONDS)


class RecentLatency:
    """Per kind, the recent answers' service times; their p95 on demand.

    Recording is an append to two bounded deques (it runs once per answer);
    the p95 sorts at most :data:`WINDOW` values and is asked only while
    racing is possible, at the end of a batch.
    """

    __slots__ = ("_all", "_by_kind")

    def __init__(self) -> None:
        self._by_kind: dict[Hashable, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=WINDOW)

    def record(self, kind: Hashable, seconds: float) -> None:
        """One answer of ``kind`` took ``seconds`` in service."""
        window = self._by_kind.get(kind)
        if window is None:
            window = self._by_kind[kind] = deque(maxlen=WINDOW)
        window.append(seconds)
        self._all.append(seconds)

    def p95(self, kind: Hashable) -> float | None:
        """The recent p95 of ``kind`` (else of every kind); None with too few answers."""
        window = self._by_kind.get(kind)
        if window is None or len(window) < MIN_SAMPLES:
            window = self._all
        if len(window) < MIN_SAMPLES:
            return None
        ordered = sorted(window)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class RaceBudget:
    """How many requests may be sent a second time: ``floor(fraction x prompts)``.

    Args:
        fraction: the share of the batch (0: none).
    """

    __slots__ = ("fraction", "spent")

    def __init__(self, fraction: float) -> None:
        self.fraction = check_hedge_budget(fraction)
        self.spent = 0

    def allowed(self, total: int) -> int:
        """Races a batch of ``total`` prompts may spend."""
        return math.floor(self.fraction * total + 1e-9)

    def take(self, total: int) -> bool:
        """Spend one race if a batch of ``total`` prompts has one left."""
        return self.take_of(self.allowed(total))

    def take_of(self, allowed: int) -> bool:
        """Spend one race if fewer than ``allowed`` were spent."""
        if self.spent >= allowed:
            return False
        self.spent += 1
        return True


def overloaded_lately(last_overloads: Iterable[float], now: float) -> bool:
    """Whether a server pushed back within :data:`OVERLOAD_HOLD` seconds of
    ``now``, given when each last did (``time.monotonic()``; 0.0: never)."""
    return any(last and now - last < OVERLOAD_HOLD for last in last_overloads)
