"""Percentiles of millions of latencies in a few KB: :class:`Quantiles`.

The summary's ``p50``/``p95`` used to come from every latency kept in a
list, 8 bytes and a float object (~32 bytes) per prompt. :class:`Quantiles`
keeps the first :data:`EXACT_UP_TO` values as they are (so a small run's
figures are exact, the same as NumPy's), then moves to a log-bucketed
histogram, as DDSketch does: a value v falls in bucket ``ceil(log_g(v))``
with ``g = (1 + a) / (1 - a)``, and a bucket is read back as the value
within relative error ``a`` (1%) of everything in it. Latencies from 0.1 ms
to a day fit in about 1,000 buckets, a dict of small ints: memory no longer
grows with the run. Values at or below zero (a first token "at once") are
counted apart, as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

__all__ = ["EXACT_UP_TO", "RELATIVE_ERROR", "Quantiles", "exact_percentile"]

#: Values kept exactly before the sketch takes over.
EXACT_UP_TO = 2048
#: The sketch's relative error on any percentile.
RELATIVE_ERROR = 0.01
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)


def exact_percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation, or None if empty.

    Same definition as NumPy's default, so figures compare with other tools.

    Raises:
        ValueError: ``q`` outside 0..100.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Quantiles:
    """Values added one by one; any percentile read back (exact while small, within 1% after).

    ``len()``, ``bool()``, ``append()`` and ``==`` with a list (while exact)
    behave as the list it replaces.
    """

    __slots__ = ("_buckets", "_count", "_exact", "_zeros")

    def __init__(self) -> None:
        self._exact: list[float] | None = []
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self._count = 0

    def append(self, value: float) -> None:
        """Add one value."""
        self._count += 1
        exact = self._exact
        if exact is not None:
            exact.append(value)
            if len(exact) > EXACT_UP_TO:
                self._exact = None
                for kept in exact:
                    self._bucket(kept)
            return
        self._bucket(value)

    def _bucket(self, value: float) -> None:
        if value <= 0:
            self._zeros += 1
            return
        index = math.ceil(math.log(value) / _LOG_GAMMA)
        self._buckets[index] = self._buckets.get(index, 0) + 1

    @property
    def exact(self) -> bool:
        """Whether every value is still kept (percentiles exact)."""
        return self._exact is not None

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100), or None if empty.

        Exact (NumPy's linear interpolation) while :attr:`exact`; then the
        value of the bucket holding the value at that rank (rounded down),
        within 1% of it.

        Raises:
            ValueError: ``q`` outside 0..100.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be within 0..100, got {q}")
        if self._count == 0:
            return None
        if self._exact is not None:
            return exact_percentile(self._exact, q)
        rank = (self._count - 1) * q / 100
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                return 2 * _GAMMA**index / (_GAMMA + 1)
        return 2 * _GAMMA ** max(self._buckets) / (_GAMMA + 1)  # pragma: no cover - rounding

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[float]:
        """The values, while they are kept.

        Raises:
            RuntimeError: past :data:`EXACT_UP_TO` values, only the sketch is left.
        """
        if self._exact is None:
            raise RuntimeError(f"past {EXACT_UP_TO} values only the percentiles are kept")
        return iter(self._exact)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return self._exact is not None and self._exact == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"<Quantiles of {self._count} values{'' if self.exact else ', sketched'}>"
