"""Scheduling shared by the backends and the batch engine.

It imports nothing from ``motio.backends`` or ``motio.batch``: both import it.

- ``_race``: racing stragglers at the end of a batch: a request's kind, the
  recent p95 per kind, the budget of extra requests, the overload hold.
"""

from ._race import (
    DEFAULT_HEDGE_BUDGET,
    MIN_SAMPLES,
    MIN_STRAGGLER_SECONDS,
    OVERLOAD_HOLD,
    WINDOW,
    OverloadWatch,
    RaceBudget,
    RaceKind,
    RecentLatency,
    check_hedge_budget,
    prompt_chars,
    race_kind,
    straggler_after,
)

__all__ = [
    "DEFAULT_HEDGE_BUDGET",
    "MIN_SAMPLES",
    "MIN_STRAGGLER_SECONDS",
    "OVERLOAD_HOLD",
    "WINDOW",
    "OverloadWatch",
    "RaceBudget",
    "RaceKind",
    "RecentLatency",
    "check_hedge_budget",
    "prompt_chars",
    "race_kind",
    "straggler_after",
]
