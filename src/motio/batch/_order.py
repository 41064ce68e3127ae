"""Dispatch order: prompts grouped by prefix within a read-ahead window.

With several servers each caching a few prefixes (vLLM's automatic prefix
caching), a file in which prompt groups interleave makes every server's
cache churn: by the time a group's next prompt comes, its prefix was
evicted. Routing by prefix key (``backends/http/_endpoints.py``) sends a
group to one server; this module makes the group arrive together.

The records are read ``window`` ahead and held by prefix key
(``motio.scheduling.prefix_key``); when the window is full, the group of
the oldest record held goes out whole, then the window fills again. At the
end every group left goes out, oldest first. So each record is emitted
exactly once, memory holds at most ``window`` records, and a record waits
at most for the window to turn over (prompts with no shared prefix go out
nearly in file order, one group each). The window is ``WINDOW_FACTOR``
times the prompts in flight (``window_for``), between ``MIN_WINDOW`` and
``MAX_WINDOW``: a group met in one window is sent while its server still
holds its prefix.

Resume, exactly-once and failover are unchanged: results are keyed by id,
and this only changes the order in which pending records are read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from ..scheduling import prefix_key
from ._records import PromptRecord

__all__ = ["MAX_WINDOW", "MIN_WINDOW", "WINDOW_FACTOR", "agrouped", "grouped", "window_for"]

#: Records read ahead per prompt in flight.
WINDOW_FACTOR = 4
#: The window's bounds, in records (a prompt of a few KB each: MAX_WINDOW is tens of MB at most).
MIN_WINDOW = 256
MAX_WINDOW = 8192


def window_for(in_flight: int) -> int:
    """The read-ahead window for ``in_flight`` prompts in flight."""
    return max(MIN_WINDOW, min(MAX_WINDOW, WINDOW_FACTOR * in_flight))


class _Window:
    """Records held by prefix key, groups in the order of their oldest record."""

    __slots__ = ("groups", "held", "size")

    def __init__(self, size: int) -> None:
        self.groups: dict[int, list[PromptRecord]] = {}
        self.held = 0
        self.size = max(1, size)

    def add(self, record: PromptRecord) -> list[PromptRecord] | None:
        """Hold ``record``; the oldest group, once the window is full."""
        key = prefix_key(record.request)
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = [record]
        else:
            group.append(record)
        self.held += 1
        return self.oldest() if self.held >= self.size else None

    def oldest(self) -> list[PromptRecord]:
        """Take out the group of the oldest record held (dicts keep insertion order)."""
        key = next(iter(self.groups))
        group = self.groups.pop(key)
        self.held -= len(group)
        return group


def grouped(records: Iterator[PromptRecord], window: int) -> Iterator[PromptRecord]:
    """``records``, each once, grouped by prefix key within ``window`` records."""
    held = _Window(window)
    for record in records:
        group = held.add(record)
        if group is not None:
            yield from group
    while held.groups:
        yield from held.oldest()


async def agrouped(records: AsyncIterator[PromptRecord], window: int) -> AsyncIterator[PromptRecord]:
    """``grouped`` for an async iterator of records."""
    held = _Window(window)
    async for record in records:
        group = held.add(record)
        if group is not None:
            for one in group:
                yield one
    while held.groups:
        for one in held.oldest():
            yield one
