"""Running prompt records through one backend: the batch engine.

The command (``motio run``), the Python API and distributed workers all need
the same thing: take records from an iterator, keep a fixed number of them in
flight on one backend, turn each finished generation into a result line, and
stop the whole batch, without recording anything, when a failure is not one
prompt's but the run's (the server is gone, the key was refused). This module
is that, and nothing about files, terminals or processes.

Only ``workers`` tasks ever exist, however long the iterator is, so a batch
of millions of prompts costs memory for the prompts in flight only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import (
    AuthenticationError,
    BackendConnectionError,
    BackendTimeoutError,
    MotioError,
    StreamError,
)
from ._records import PromptRecord

if TYPE_CHECKING:
    from .._thunk import ModelOutputThunk
    from ..backends import Backend

__all__ = ["BatchAborted", "Engine", "OnResult", "build_result"]

#: Called with each finished prompt's result line and its ``Attempts`` (or
#: None); it may raise to stop the batch (for example when a write fails).
OnResult = Callable[[dict[str, Any], Any], None]

# A mid-run check of a server that may have died: it either answers at once or is gone.
_CHECK_TIMEOUT = 10.0
# Failures of one request that may mean the whole server is gone.
_CONNECTION_CLASS = (BackendConnectionError, StreamError, BackendTimeoutError)


class BatchAborted(MotioError):
    """The batch cannot go on: a failure that belongs to the run, not to one prompt.

    The prompt whose failure revealed it, and every prompt still in flight,
    were abandoned without a result: they were not answered, so a rerun
    should run them.

    Attributes:
        cause: what stopped the run (the refused key, the failed server check).
    """

    def __init__(self, cause: BaseException) -> None:
        text = str(cause).strip()
        super().__init__(text.splitlines()[0] if text else type(cause).__name__)
        self.cause = cause


class Engine:
    """Generates results for prompt records on one backend.

    Args:
        backend: an opened backend; the engine never closes it.
        options: ``generate`` keyword options for every record; a record's
            own ``options`` take precedence.
        remote: the backend is a server, which can vanish mid-run; a
            connection-class failure then triggers a check of the server,
            and a failed check aborts the batch.
    """

    def __init__(self, backend: Backend, *, options: Mapping[str, Any] | None = None, remote: bool) -> None:
        self.backend = backend
        self.options = dict(options or {})
        self.remote = remote

    async def run(self, records: Iterator[PromptRecord], workers: int, on_result: OnResult) -> None:
        """Run every record with ``workers`` in flight, calling ``on_result`` for each.

        Raises:
            BatchAborted: a run-wide failure; the other workers were cancelled
                and none of the abandoned prompts reached ``on_result``.
            Exception: whatever ``on_result`` raised, after cancelling the others.
        """
        if workers < 1:
            return
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self._work(records, on_result))
        except* Exception as failed:
            # One worker's failure cancelled the rest; the first is the cause,
            # the others are only its echo (the same server, the same disk).
            raise failed.exceptions[0] from None

    async def _work(self, records: Iterator[PromptRecord], on_result: OnResult) -> None:
        # One shared synchronous iterator is safe across tasks: next() never
        # awaits, so no two workers are ever inside it at once.
        for record in records:
            result, attempts = await self.generate(record)
            on_result(result, attempts)

    async def generate(self, record: PromptRecord) -> tuple[dict[str, Any], Any]:
        """One record's result line and its ``Attempts`` (None if no request was made).

        Raises:
            BatchAborted: the failure was the run's, not this prompt's.
        """
        options = {**self.options, **record.options} if record.options else self.options
        started = time.perf_counter()
        mot: ModelOutputThunk[Any] | None = None
        error: Exception | None = None
        try:
            mot = await self.backend.generate(record.request, stream=True, **options)
            await mot.avalue()
        except Exception as exc:  # noqa: BLE001 - any failure of one prompt is its result
            error = exc
        finally:
            # On cancellation this is what stops the generation at its source
            # (the HTTP response or the llama.cpp thread) before the loop exits.
            if mot is not None:
                await mot.aclose()
        latency_ms = (time.perf_counter() - started) * 1000
        if error is not None:
            await self._abort_if_fatal(error)
        attempts = None if mot is None else mot.generation.attempts
        return build_result(record, mot, latency_ms, error), attempts

    async def _abort_if_fatal(self, error: Exception) -> None:
        # A refused key or a vanished server is not one prompt's failure:
        # recording it for every remaining prompt would only bury the cause,
        # and the prompt was not answered, so it must stay unrecorded for the
        # rerun to pick up. Raising here (before any result) is what keeps it so.
        if isinstance(error, AuthenticationError):
            raise BatchAborted(error) from error
        if self.remote and isinstance(error, _CONNECTION_CLASS):
            try:
                await asyncio.wait_for(self.backend.check(), _CHECK_TIMEOUT)
            except (MotioError, TimeoutError) as exc:
                raise BatchAborted(exc) from exc
            # The server answers again: a failure of this prompt alone.


def build_result(
    record: PromptRecord, mot: ModelOutputThunk[Any] | None, latency_ms: float, error: BaseException | None
) -> dict[str, Any]:
    """The result line for one prompt, from its thunk's metadata."""
    generation = getattr(mot, "generation", None)
    usage = getattr(generation, "usage", None)
    finish_reasons = getattr(generation, "finish_reasons", None) or [None]
    ttfb = getattr(generation, "ttfb_ms", None)
    attempts = getattr(generation, "attempts", None)
    queued = getattr(generation, "queued_ms", None)
    result = {
        "id": record.id,
        "output": mot.value if error is None and mot is not None else None,
        "finish_reason": finish_reasons[0],
        "usage": dict(usage) if usage else None,
        "ttfb_ms": round(ttfb, 1) if ttfb is not None else None,
        "queued_ms": round(queued, 1) if queued is not None else None,
        "latency_ms": round(latency_ms, 1),
        "model": getattr(generation, "model", None),
        "retries": attempts.retries if attempts is not None else 0,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
    }
    partial = mot.text if error is not None and mot is not None else ""
    if partial:
        # A stream that broke after some text: kept, never retried (it could change).
        result["partial_output"] = partial
    return result
