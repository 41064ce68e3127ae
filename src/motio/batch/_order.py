"""Dispatch order: prompts grouped by prefix within a read-ahead window.

With several servers each caching a few prefixes (vLLM's automatic prefix
caching), a file in which prompt groups interleave makes every server's
cache churn: by the time a group's next prompt comes, its prefix was
evicted. Routing by prefix key (``backends/http/_endpoints.py``) sends a
group to one server; this module makes the group arrive there together,
while every server gets work all the time.

The records are read ``window`` ahead and held by prefix key
(``motio.scheduling.prefix_key``), in one lane per server: the server the
router makes the key's home (its first choice by rendezvous hashing on the
same base URLs, unless that server homes ``KEY_SLACK`` more keys than the
mean). Once the window is full, each record read lets one out: the lanes
take turns, and a lane sends its oldest group's records one after the
other until the group is spent, the next group's first record ``STAGGER``
records before the end (so that its prefix is computed and cached when the
rest comes). So each server is sent its groups one at a time, and all
servers are sent work at the same pace. At the end every record left goes
out the same way.

Each record is emitted exactly once; memory holds at most ``window``
records; prompts with no shared prefix go out nearly in file order. The
window is ``WINDOW_FACTOR`` times the prompts in flight (``window_for``),
between ``MIN_WINDOW`` and ``MAX_WINDOW``.

Resume, exactly-once and failover are unchanged: results are keyed by id,
and this only changes the order in which pending records are read.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence

from ..scheduling import KEY_SLACK, prefix_key, server_seed, weight
from ._records import PromptRecord

__all__ = ["MAX_WINDOW", "MIN_WINDOW", "STAGGER", "WINDOW_FACTOR", "agrouped", "grouped", "window_for"]

#: Records read ahead per prompt in flight.
WINDOW_FACTOR = 4
# Keys whose lane is remembered (as the router remembers their homes).
_HOMES_KEPT = 4096
#: A group's first record goes this many of its server's records ahead of
#: the rest: prompts of one prefix a server admits together all miss its
#: cache (none is computed yet), those admitted after the first one's
#: prefill hit it.
STAGGER = 8
#: The window's bounds, in records (a prompt of a few KB each: MAX_WINDOW is tens of MB at most).
MIN_WINDOW = 256
MAX_WINDOW = 8192


def window_for(in_flight: int) -> int:
    """The read-ahead window for ``in_flight`` prompts in flight."""
    return max(MIN_WINDOW, min(MAX_WINDOW, WINDOW_FACTOR * in_flight))


class _Window:
    """Records held by prefix key, one lane per server, groups in the order of their oldest record."""

    __slots__ = ("seeds", "lanes", "turn", "held", "size", "started", "homes", "counts")

    def __init__(self, size: int, servers: Sequence[str]) -> None:
        self.seeds = [server_seed(url) for url in servers]
        self.lanes: list[dict[int, deque[PromptRecord]]] = [{} for _ in range(max(1, len(servers)))]
        self.turn = 0
        self.held = 0
        self.size = max(1, size)
        self.started: set[int] = set()  # groups held that sent a record already
        self.homes: dict[int, int] = {}  # a key's lane, as the router gives it a home
        self.counts = [0] * len(self.lanes)  # keys homed per lane

    def lane_of(self, key: int) -> dict[int, deque[PromptRecord]]:
        """The lane of the server the router makes ``key``'s home: its first
        choice unless that one homes ``KEY_SLACK`` more keys than the mean."""
        seeds = self.seeds
        if len(seeds) < 2:
            return self.lanes[0]
        lane = self.homes.get(key)
        if lane is None:
            if len(self.homes) >= _HOMES_KEPT:
                self.homes.clear()
                self.counts = [0] * len(self.lanes)
            cap = math.ceil((1 + KEY_SLACK) * (len(self.homes) + 1) / len(seeds))
            ranked = sorted(range(len(seeds)), key=lambda i: weight(key, seeds[i]), reverse=True)
            lane = self.homes[key] = next((i for i in ranked if self.counts[i] < cap), ranked[0])
            self.counts[lane] += 1
        return self.lanes[lane]

    def add(self, record: PromptRecord) -> PromptRecord | None:
        """Hold ``record``; the record to send now, once the window is full."""
        key = prefix_key(record.request)
        lane = self.lane_of(key)
        group = lane.get(key)
        if group is None:
            lane[key] = deque((record,))
        else:
            group.append(record)
        self.held += 1
        return self.next() if self.held >= self.size else None

    def next(self) -> PromptRecord:
        """The next record of the next lane holding any (at least one must be held)."""
        lanes = self.lanes
        while True:
            lane = lanes[self.turn]
            self.turn = (self.turn + 1) % len(lanes)
            if lane:
                self.held -= 1
                return self._next_of(lane)

    def _next_of(self, lane: dict[int, deque[PromptRecord]]) -> PromptRecord:
        """The lane's next record: its oldest group's; the next group's first
        once the oldest has ``STAGGER`` records left, so that it is in the
        server's cache when the rest of its group comes."""
        keys = iter(lane)  # dicts keep insertion order: the oldest group first
        key = next(keys)
        if key in self.started and len(lane[key]) <= STAGGER:
            following = next(keys, None)
            if following is not None and following not in self.started:
                return self._take(lane, following)
        return self._take(lane, key)

    def _take(self, lane: dict[int, deque[PromptRecord]], key: int) -> PromptRecord:
        group = lane[key]
        record = group.popleft()
        self.started.add(key)
        if not group:
            del lane[key]
            self.started.discard(key)
        return record


def grouped(
    records: Iterator[PromptRecord], window: int, servers: Sequence[str] = ()
) -> Iterator[PromptRecord]:
    """``records``, each once, grouped by prefix key within ``window`` records,
    the groups of ``servers`` (their base URLs) taking turns."""
    held = _Window(window, servers)
    for record in records:
        out = held.add(record)
        if out is not None:
            yield out
    while held.held:
        yield held.next()


async def agrouped(
    records: AsyncIterator[PromptRecord], window: int, servers: Sequence[str] = ()
) -> AsyncIterator[PromptRecord]:
    """``grouped`` for an async iterator of records."""
    held = _Window(window, servers)
    async for record in records:
        out = held.add(record)
        if out is not None:
            yield out
    while held.held:
        yield held.next()
