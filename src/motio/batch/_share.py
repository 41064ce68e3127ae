"""Limits that hold for a whole cluster of workers, not for each of them.

N worker processes each sending at ``--rpm`` would send N times the allowed
rate, and N adaptive controllers each probing a server would each find
"its" capacity and together overload it. So the limits live once, in one
coordinator (a Ray actor, see ``_ray.py``), and a worker holds only:

- for requests and tokens per minute: a proxy to the coordinator's
  ``RateLimiter``, asked once per request (requests are paced by the limit
  itself, so these calls are never more frequent than the limit allows);
- per server, a ``SharedGate`` (``backends/http/_adaptive.py``): a local gate whose limit is this
  worker's share of the server's cluster-wide limit. With ``"auto"`` it
  forwards its signals (time to first token, overloads) to the coordinator's
  one controller per server, which sets the cluster-wide limit; a fixed
  limit is simply split.

This module needs no Ray and imports no backend: ``import motio.batch``
stays free of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["SharePlan"]


@dataclass(frozen=True, slots=True)
class SharePlan:
    """What a batch's workers share, read once from the driver's backend.

    Attributes:
        actors: how many Ray workers (actors) share the limits.
        servers: the servers' base URLs (empty: not a server backend, nothing to share).
        rpm, tpm: the cluster-wide rate limits (None: none).
        concurrency: per server, the cluster-wide limit (an int), ``"auto"``, or None (no cap).
        bound: the upper bound of ``"auto"``, cluster-wide.
        initial: the cluster-wide limit ``"auto"`` starts from.
        model: the model the driver's check found, so that no worker asks
            a server for it on its first request (a server that is down
            then would fail that request instead of sending it elsewhere).
        prefix_routing: whether the driver's backend routes by prefix key
            (each worker's copy then does too, ranking the servers alike).
    """

    actors: int
    servers: tuple[str, ...] = ()
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | str | None = None
    bound: int = 256
    initial: int = 16
    model: str | None = None
    prefix_routing: bool = False

    @classmethod
    def of(cls, backend: Backend, actors: int) -> SharePlan:
        """The plan for ``actors`` copies of ``backend`` (any backend; only
        one whose ``limits_to_share()`` names some has anything to share)."""
        limits = backend.limits_to_share()
        if limits is None:
            return cls(actors)
        return cls(
            actors,
            tuple(limits.servers),
            limits.rpm,
            limits.tpm,
            limits.concurrency,
            limits.bound,
            limits.initial,
            limits.model,
            backend.prefix_routing,
        )

    @property
    def adaptive(self) -> bool:
        return self.concurrency == "auto"

    @property
    def rate_limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def share(self, cluster_limit: float) -> int:
        """One worker's part of a cluster-wide limit: never 0, and the parts
        add up to at most the limit (or one each, if it is below ``actors``)."""
        return max(1, math.floor(cluster_limit / self.actors))

    def in_flight_per_worker(self) -> int:
        """Prompts a worker keeps running so that its gates can be full."""
        per_server = self.bound if self.concurrency in (None, "auto") else int(self.concurrency)
        return max(1, math.ceil(per_server * max(1, len(self.servers)) / self.actors))
