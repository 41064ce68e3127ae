"""Scheduling policy shared by the backend layer and the batch layer.

Nothing here sends a request: these are the decisions (when to send a
second request, how many may be sent) that ``motio.backends`` and
``motio.batch`` act on. The package imports neither of them.

- ``_hedge``: ``generate(hedge=...)``'s policy: the recent percentile of
  first-token times (``RecentPercentile``), the cap on second requests
  (``HedgeBudget``) and the pause while servers push back (``HedgePolicy``).
"""

from __future__ import annotations

from ._hedge import (
    DEFAULT_HEDGE_DELAY,
    HEDGE_FRACTION,
    HEDGE_PERCENTILE,
    HEDGE_RESERVE,
    MIN_SAMPLES,
    OVERLOAD_PAUSE,
    HedgeBudget,
    HedgePolicy,
    HedgeStats,
    RecentPercentile,
)

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
