"""Running prompt records through one backend: the batch engine.

The command (``motio run``), the Python API and distributed workers all need
the same thing: take records from an iterator, keep a fixed number of them in
flight on one backend, turn each finished generation into a result line, and
stop the whole batch, without recording anything, when a failure is not one
prompt's but the run's (the server is gone, the key was refused). This module
is that, and nothing about files, terminals or processes.

Only ``tasks`` tasks ever exist, however long the iterator is, so a batch
of millions of prompts costs memory for the prompts in flight only.

A prompt whose stream broke after content had started (the connection
broke, the server died, a stall) is run again from its start, preferring
another server, at most ``backend.max_reruns`` times (``max_retries`` of a
server backend). ``generate()`` itself never re-sends after content reached
its thunk, since a consumer may have shown that text; in a batch the engine
is the only consumer and writes nothing before the end, so running the
prompt again from scratch repeats nothing anyone saw. Only the last run's
text is written, and the line's ``attempts`` says how many runs it took.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .._exceptions import (
    AuthenticationError,
    BackendChunkTimeoutError,
    BackendConnectionError,
    BackendTimeoutError,
    MotioError,
    StreamError,
)
from .._fields import CHAT_FIELDS, MOTIO_FIELDS
from ._formats import batch_line
from ._records import OPENAI_BATCH, PromptRecord
from ._runner import OnResult, Records

if TYPE_CHECKING:
    from .._thunk import ModelOutputThunk
    from ..backends import Backend, EndpointSnapshot
    from ._racing import Racing, TakeRace
    from ._structured import Answering

__all__ = ["BatchAborted", "Engine", "OnResult", "RunHooks", "build_result"]

# A mid-run check of a server that may have died: it either answers at once or is gone.
_CHECK_TIMEOUT = 10.0
# Failures of one request that may mean the whole server is gone.
_CONNECTION_CLASS = (BackendConnectionError, StreamError, BackendTimeoutError)
# Failures after content started that running the prompt again may cure: the
# connection broke or the stream stalled. Not a total timeout: that is the
# caller's bound on the whole generation, which a re-run would only extend.
_BROKEN_MID_ANSWER = (StreamError, BackendConnectionError, BackendChunkTimeoutError)

_log = logging.getLogger("motio")


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


class RunHooks(Protocol):
    """What one prompt's runs tell whoever races it (``_racing.py``)."""

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options of its runs (a racer's: away from the original's server)."""
        ...

    def running(self, mot: ModelOutputThunk[Any]) -> None:
        """A run started: its thunk (closed by the other request if that one wins)."""
        ...


class Engine:
    """Generates results for prompt records on one backend (a ``Runner``).

    Args:
        backend: an opened backend; the engine never closes it. A server
            backend (``backend.remote``) can vanish mid-run: a
            connection-class failure then triggers a check of the server,
            and a failed check aborts the batch. Only then are prompts
            whose stream broke mid-answer run again (``backend.max_reruns``
            times at most).
        tasks: how many prompts :meth:`run` keeps in flight (one task each).
        options: ``generate`` keyword options for every record; a record's
            own fields take precedence (an OpenAI Batch body's included:
            these options fill only what it leaves out). ``extra_body``
            is merged under a Batch body's own extra fields.
        defaults: options for motio's own lines only, under ``options``
            (``max_tokens=512`` for the command): a Batch body is sent as
            the Batch API would send it, without motio's defaults.
        answering: the output schema and the response cache around each
            prompt (``_structured.py``); None: neither.
        hedge_budget: the share of the prompts that may be sent a second
            time to race a straggler (``_racing.py``); racing exists only
            with several servers and a budget above 0.
        take_race: spends one race of that budget (Ray: the coordinator's,
            one for every worker); None: this engine's own.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        tasks: int = 1,
        options: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        answering: Answering | None = None,
        hedge_budget: float = 0.0,
        take_race: TakeRace | None = None,
    ) -> None:
        self.backend = backend
        self.tasks = tasks
        self.options = dict(options or {})
        self.defaults = {**(defaults or {}), **self.options}
        # Only a server can vanish; the embedded model's failures are its prompts'.
        self.remote = backend.remote
        self.max_reruns = backend.max_reruns if self.remote else 0
        # Per prompt: generate() itself, or through the schema and the cache
        # (_structured.py); without them no step is added to a prompt's path.
        self.answer: Callable[[PromptRecord], Awaitable[tuple[dict[str, Any], Any]]]
        self.answer = self.generate if answering is None else partial(answering.answer, self)
        # Racing only where it can happen: otherwise the per-prompt path is the above.
        self.racing: Racing | None = None
        if hedge_budget > 0 and len(backend.endpoint_snapshot()) > 1:
            from ._racing import Racing

            self.racing = racing = Racing(self, hedge_budget, take_race)
            self.answer = racing.generate if answering is None else partial(answering.answer, racing)

    async def run(self, records: Records, on_result: OnResult) -> None:
        """Run every record with ``tasks`` in flight, calling ``on_result`` for each.

        ``records`` may be an async iterator: one whose source blocks (a pipe
        on stdin, read in a thread) must not be read on the event loop, where
        a slow producer upstream would stall every stream in flight.

        Raises:
            BatchAborted: a run-wide failure; the other tasks were cancelled
                and none of the abandoned prompts reached ``on_result``.
            Exception: whatever ``on_result`` raised, after cancelling the others.
        """
        if self.tasks < 1:
            return
        lock = asyncio.Lock()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.tasks):
                    if isinstance(records, AsyncIterator):
                        group.create_task(self._work_async(records, lock, on_result))
                    else:
                        group.create_task(self._work(records, on_result))
        except* Exception as failed:
            # One task's failure cancelled the rest; the first is the cause,
            # the others are only its echo (the same server, the same disk).
            raise failed.exceptions[0] from None
        finally:
            if self.racing is not None:
                await self.racing.stop()

    async def _work(self, records: Iterator[PromptRecord], on_result: OnResult) -> None:
        # One shared synchronous iterator is safe across tasks: next() never
        # awaits, so no two tasks are ever inside it at once.
        for record in records:
            result, attempts = await self.answer(record)
            on_result(result, attempts)
        if self.racing is not None:
            self.racing.drain()  # nothing left to dispatch

    async def _work_async(
        self, records: AsyncIterator[PromptRecord], lock: asyncio.Lock, on_result: OnResult
    ) -> None:
        while True:
            # One reader at a time: an async iterator (ThreadedIterator, an
            # async generator) serves one waiting consumer, not several.
            async with lock:
                try:
                    record = await anext(records)
                except StopAsyncIteration:
                    if self.racing is not None:
                        self.racing.drain()  # nothing left to dispatch
                    return
            result, attempts = await self.answer(record)
            on_result(result, attempts)

    def endpoint_snapshot(self) -> list[EndpointSnapshot]:
        """The backend's servers (``Backend.endpoint_snapshot``)."""
        return self.backend.endpoint_snapshot()

    def adaptive_limit(self) -> int | None:
        """Where the backend's adaptive concurrency stands now (None: a fixed limit)."""
        adaptive = self.backend.adaptive_concurrency
        return None if adaptive is None else adaptive.limit

    async def generate(
        self, record: PromptRecord, hooks: RunHooks | None = None
    ) -> tuple[dict[str, Any], Any]:
        """One record's result line and its ``Attempts`` (None if no request was made).

        A run that broke mid-answer is run again (see the module docstring);
        the line is the last run's, with ``attempts`` the number of runs.
        ``hooks``: a raced prompt's (``_racing.py``); None: not raced.

        Raises:
            BatchAborted: the failure was the run's, not this prompt's.
        """
        options = self.options_for(record)
        if hooks is not None:
            options = hooks.options(options)
        started = time.perf_counter()
        runs = 1
        while True:
            mot: ModelOutputThunk[Any] | None = None
            error: Exception | None = None
            try:
                mot = await self.backend.generate(record.request, stream=True, **options)
                if hooks is not None:
                    hooks.running(mot)
                await mot.avalue()
            except Exception as exc:  # noqa: BLE001 - any failure of one prompt is its result
                error = exc
            finally:
                # On cancellation this is what stops the generation at its source
                # (the HTTP response or the llama.cpp thread) before the loop exits.
                if mot is not None:
                    await mot.aclose()
            ended = time.perf_counter()
            if error is None:
                break
            # Before any re-run: a server that is gone stops the batch (the
            # prompt stays unrecorded, for the resume), as for any prompt.
            await self._abort_if_fatal(error)
            if runs > self.max_reruns or not _broke_mid_answer(mot, error):
                break
            runs += 1
            options = _avoiding(options, mot, record, error, runs)
        attempts = None if mot is None else mot.generation.attempts
        return build_result(record, mot, (ended - started) * 1000, error, runs), attempts

    def options_for(self, record: PromptRecord) -> dict[str, Any]:
        """The ``generate`` options of one record: its own fields over the engine's."""
        if record.fmt == OPENAI_BATCH and record.body is not None:
            return batch_options(record.body, self.options)
        return {**self.defaults, **record.options} if record.options else self.defaults

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


def _broke_mid_answer(mot: ModelOutputThunk[Any] | None, error: Exception) -> bool:
    """Whether a run failed after content started in a way another run may not meet.

    Before content, the backend's own retries and failover have had their
    say; a failure there is the prompt's (or the server's: the check decided).
    """
    return mot is not None and mot.generation.ttfb_ms is not None and isinstance(error, _BROKEN_MID_ANSWER)


def _avoiding(
    options: dict[str, Any],
    mot: ModelOutputThunk[Any] | None,
    record: PromptRecord,
    error: Exception,
    runs: int,
) -> dict[str, Any]:
    """The options of the next run: away from the servers the prompt broke on.

    With one server, or all of them avoided, the router still takes one
    (a stream that broke on a server that answers its check runs there again).
    """
    server = None if mot is None else mot.generation.base_url
    _log.info(
        "%s: prompt %r broke mid-answer (%s); running it again from its start (run %d)",
        server or "backend", record.id, type(error).__name__, runs,
    )  # fmt: skip
    if server is None:
        return options
    avoided = tuple(options.get("avoid_servers", ()))
    return {**options, "avoid_servers": (*avoided, server)}


def batch_options(body: Mapping[str, Any], fill: Mapping[str, Any]) -> dict[str, Any]:
    """``generate`` options for an OpenAI Batch body: every field as given.

    Chat-completions fields become options; any other field (a server's own,
    such as vLLM's ``top_k`` or ``guided_json``) goes in ``extra_body``, so
    it reaches the server as written. ``fill`` (the command line) supplies
    only what the body leaves out. The whole answer is always kept: it is
    the output line's ``body``.
    """
    known = {key: value for key, value in body.items() if key in CHAT_FIELDS}
    extra = {key: value for key, value in body.items() if key not in CHAT_FIELDS and key not in MOTIO_FIELDS}
    options = {key: value for key, value in fill.items() if key != "extra_body"}
    if "max_completion_tokens" in known:
        options.pop("max_tokens", None)  # the body's limit, by its newer name
    options.update(known)
    extra = {**fill.get("extra_body", {}), **extra}
    if extra:
        options["extra_body"] = extra
    options["keep_response"] = True
    return options


def build_result(
    record: PromptRecord,
    mot: ModelOutputThunk[Any] | None,
    latency_ms: float,
    error: BaseException | None,
    runs: int = 1,
) -> dict[str, Any]:
    """The result line for one prompt, in its prompts file's shape, from its
    (last) thunk's metadata; ``runs``: how many times the prompt was run."""
    own = _own_result(record, mot, latency_ms, error, runs)
    if record.fmt == OPENAI_BATCH:
        generation = getattr(mot, "generation", None)
        response = getattr(generation, "response", None)
        request_id = getattr(generation, "request_id", None)
        return batch_line(record.id, own, response if error is None else None, error, request_id)
    return own


def _own_result(
    record: PromptRecord,
    mot: ModelOutputThunk[Any] | None,
    latency_ms: float,
    error: BaseException | None,
    runs: int,
) -> dict[str, Any]:
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
        "attempts": runs,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
    }
    _add_answer_fields(result, getattr(generation, "response", None))
    partial = mot.text if error is not None and mot is not None else ""
    if partial:
        # The last run broke after some text (re-runs spent, or a failure
        # no re-run cures): kept for the record, never written as output.
        result["partial_output"] = partial
    return result


def _add_answer_fields(result: dict[str, Any], response: dict[str, Any] | None) -> None:
    """What the server returned besides text (tool calls, logprobs), kept when present."""
    choices = (response or {}).get("choices") or ()
    if not choices:
        return
    choice = choices[0]
    tool_calls = (choice.get("message") or {}).get("tool_calls")
    if tool_calls:
        result["tool_calls"] = tool_calls
    if choice.get("logprobs") is not None:
        result["logprobs"] = choice["logprobs"]
    if len(choices) > 1:
        result["choices"] = choices  # n > 1: every choice, not only the first's text
