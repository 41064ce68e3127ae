"""Scheduling policy shared by the backend layer and the batch layer.

Nothing here sends a request: these are the decisions (when to send a
second request, how many may be sent, which are stragglers) that
``motio.backends`` and ``motio.batch`` act on. The package imports neither
of them; both import it.

- ``_hedge``: ``generate(hedge=...)``'s policy: the recent percentile of
  first-token times (``RecentPercentile``), the cap on second requests
  (``HedgeBudget``) and the pause while servers push back (``HedgePolicy``).
- ``_race``: racing stragglers at the end of a batch: a request's kind, the
  recent p95 per kind, the budget of extra requests, the overload hold.
- ``_prefix``: a prompt's prefix key (``prefix_key``) and the servers' ranks
  for a key (``server_seed``, ``weight``: rendezvous hashing), for
  prefix-aware routing over several servers, with its slacks.

Both modules name the fewest samples their percentile needs
``MIN_SAMPLES``; here they are ``HEDGE_MIN_SAMPLES`` and ``RACE_MIN_SAMPLES``.
"""

from __future__ import annotations

from ._hedge import (
    DEFAULT_HEDGE_DELAY,
    HEDGE_FRACTION,
    HEDGE_PERCENTILE,
    HEDGE_RESERVE,
    OVERLOAD_PAUSE,
    HedgeBudget,
    HedgePolicy,
    HedgeStats,
    RecentPercentile,
)
from ._hedge import MIN_SAMPLES as HEDGE_MIN_SAMPLES
from ._race import (
    DEFAULT_HEDGE_BUDGET,
    MIN_STRAGGLER_SECONDS,
    OVERLOAD_HOLD,
    WINDOW,
    RaceBudget,
    RaceKind,
    RecentLatency,
    check_hedge_budget,
    overloaded_lately,
    prompt_chars,
    race_kind,
    straggler_after,
)
from ._prefix import (
    KEY_CHARS,
    KEY_SLACK,
    POOL_FACTOR,
    PREFIX_HOLD,
    PREFIX_SLACK,
    SHARE_SLACK,
    prefix_key,
    server_seed,
    weight,
)
from ._race import MIN_SAMPLES as RACE_MIN_SAMPLES

__all__ = [
    "DEFAULT_HEDGE_BUDGET",
    "DEFAULT_HEDGE_DELAY",
    "HEDGE_FRACTION",
    "HEDGE_MIN_SAMPLES",
    "HEDGE_PERCENTILE",
    "HEDGE_RESERVE",
    "KEY_CHARS",
    "KEY_SLACK",
    "MIN_STRAGGLER_SECONDS",
    "OVERLOAD_HOLD",
    "OVERLOAD_PAUSE",
    "POOL_FACTOR",
    "PREFIX_HOLD",
    "PREFIX_SLACK",
    "RACE_MIN_SAMPLES",
    "SHARE_SLACK",
    "WINDOW",
    "HedgeBudget",
    "HedgePolicy",
    "HedgeStats",
    "RaceBudget",
    "RaceKind",
    "RecentLatency",
    "RecentPercentile",
    "check_hedge_budget",
    "overloaded_lately",
    "prefix_key",
    "prompt_chars",
    "race_kind",
    "server_seed",
    "straggler_after",
    "weight",
]
