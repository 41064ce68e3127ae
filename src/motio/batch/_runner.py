"""What runs a batch's records: one interface, two runners.

:class:`~motio.batch._engine.Engine` runs the records in this process,
``tasks`` at a time; :class:`~motio.batch._ray.RayPool` sends them to Ray
actors in shards. Both take the records and a callback and deliver each
prompt's result line once, so the batch job (``_job.py``) runs either
without asking which one it holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ._records import PromptRecord

if TYPE_CHECKING:
    from ..backends import EndpointSnapshot

__all__ = ["OnResult", "Records", "Runner"]

#: The prompts of a batch: a plain iterator, or an async one for a source
#: that blocks (a pipe read in a thread must not be read on the event loop).
Records = Iterator[PromptRecord] | AsyncIterator[PromptRecord]

#: Called with each finished prompt's result line and its ``Attempts`` (or
#: None); it may raise to stop the batch (for example when a write fails).
OnResult = Callable[[dict[str, Any], Any], None]


class Runner(Protocol):
    """Runs a batch's records and hands back each result line once."""

    async def run(self, records: Records, on_result: OnResult) -> None:
        """Run every record, calling ``on_result`` once per prompt, on this loop.

        Raises:
            BatchAborted: a run-wide failure (the server gone, the key
                refused); the prompts it abandoned never reached ``on_result``.
            Exception: whatever ``on_result`` raised, after stopping the rest.
        """
        ...

    def endpoint_snapshot(self) -> list[EndpointSnapshot]:
        """Per server, the requests in flight and what it served (empty without servers)."""
        ...

    def adaptive_limit(self) -> int | None:
        """Where an adaptive concurrency limit stands now; None when there is
        none to show here (a fixed limit, or one the Ray actors hold)."""
        ...
