"""One batch job: what ``motio run`` and ``motio.batch.run`` both do around a runner.

The steps, in the order that writes nothing before it must:

1. ``BatchJob(...)``: with ``ray``, the Ray workers start at once, so that
   their start-up (a process each, the backend's imports) overlaps the
   driver's own check of the servers;
2. :meth:`BatchJob.open_results`: lock, create or repair the results file
   (or take a stream); what it holds is what the run skips;
3. :meth:`BatchJob.start`: pick the runner for the driver's backend: the
   engine on it in this process, or the Ray workers, given the limits it
   found (``Backend.limits_to_share``);
4. :meth:`BatchJob.run`: the prompts not answered yet (:func:`pending`)
   through the runner (``Runner``: the engine and the workers alike), each
   result appended once and counted (when the job keeps stats);
5. :meth:`BatchJob.close`: stop the workers, release the results file.

Whether the backend is remote (a server, which can vanish mid-run) is
``Backend.remote``, read by each engine from its own backend; nothing here
asks a backend's kind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .._threaded import ThreadedIterator
from ..scheduling import DEFAULT_HEDGE_BUDGET, POOL_FACTOR, check_hedge_budget
from ._engine import Engine
from ._order import grouped, window_for
from ._records import PromptRecord
from ._results import ResultsFile, ResultsStream, ResumeState
from ._runner import OnResult, Records, Runner
from ._share import SharePlan
from ._stats import RunStats

if TYPE_CHECKING:
    from ..backends import Backend
    from ._ray import RayPool
    from ._structured import Answering

__all__ = ["BatchJob", "OnRay", "fill", "pending"]


@dataclass(frozen=True, slots=True)
class OnRay:
    """Run the batch on Ray workers (the cluster already joined).

    Attributes:
        build: builds the backend in each worker (picklable, no arguments).
        actors: how many workers; None: one per CPU of the cluster.
        env: environment variables the workers need (an API key).
    """

    build: Callable[[], Any]
    actors: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)


class BatchJob:
    """One batch, from the results file to the stats (see the module docstring).

    Args:
        options: ``generate`` options for every prompt (a line's own win).
        defaults: options for motio's own lines only (see ``Engine``).
        ray: run on Ray workers; None: in this process.
        in_flight: prompts in flight in this process (the engine's tasks);
            None: enough to fill the backend's limit on every server
            (:func:`fill`). ``POOL_FACTOR`` times that when the backend
            routes by prefix, so that some wait for a slot and the router
            chooses which. With ``ray``, the workers' shares decide.
        stats: the counters to add to (the command's, counted while it
            planned); None: nothing counted (a batch of millions from
            Python would otherwise keep every latency in memory).
        answering: the output schema and the response cache around each
            prompt (``_structured.py``); None: neither. With ``ray``, each
            worker builds its own from its recipe (the cache's file shared).
        hedge_budget: the share of the prompts that may be sent again to
            race a straggler at the end (``_racing.py``; 0: no racing);
            with ``ray``, one budget for every worker.

        prefix_routing: None: as the backend routes (``Backend.prefix_routing``:
            on for several servers); when it routes by prefix, prompts are
            also dispatched grouped by prefix (``_order.py``). False: off,
            True: on (given several servers), set on the backend (and the
            workers' copies).

    Raises:
        ConfigurationError: ``hedge_budget`` is not a fraction from 0 to 1.
    """

    def __init__(
        self,
        *,
        options: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        ray: OnRay | None = None,
        in_flight: int | None = None,
        stats: RunStats | None = None,
        answering: Answering | None = None,
        hedge_budget: float = DEFAULT_HEDGE_BUDGET,
        prefix_routing: bool | None = None,
    ) -> None:
        self.prefix_routing = prefix_routing
        self._window = 0  # records read ahead to group by prefix (0: file order)
        self._servers: tuple[str, ...] = ()  # whose turns the groups take
        self.options, self.defaults = dict(options or {}), dict(defaults or {})
        self.hedge_budget = check_hedge_budget(hedge_budget)
        self.answering = answering
        self.in_flight = in_flight
        self.stats = stats
        self.results: ResultsFile | ResultsStream | None = None
        self.runner: Runner | None = None
        self.pool: RayPool | None = None if ray is None else self._start_pool(ray)
        self._workers_stopped = False

    def _start_pool(self, ray: OnRay) -> RayPool:
        from ._ray import RayPool, actor_count

        answering = None if self.answering is None else self.answering.recipe()
        return RayPool(
            ray.build,
            ray.actors or actor_count(),
            options=self.options,
            defaults=self.defaults,
            env=ray.env,
            answering=answering,
            hedge_budget=self.hedge_budget,
        )

    def open_results(self, output: str | Path | BinaryIO) -> ResultsFile | ResultsStream:
        """Open where the results go: a results file (locked, its torn last
        line cut off; what it holds is skipped) or a binary stream such as
        stdout's buffer (nothing to resume from).

        Raises:
            ResultsFileLocked: another process holds the file.
            NotAResultsFile: the file holds something else.
            OSError: it cannot be created, read or written.
        """
        if isinstance(output, (str, Path)):
            self.results = ResultsFile.open(output)
        else:
            self.results = ResultsStream(output)
        return self.results

    async def start(self, backend: Backend, *, checked: bool = True) -> Runner:
        """The runner for ``backend``: the engine on it, or the Ray workers sharing its limits.

        Args:
            backend: the driver's backend (opened; the job never closes it).
            checked: whether ``backend.check()`` already ran. The workers
                need its findings (the model) before they share its limits.

        The run's clock (``stats.started``) starts here.

        Raises:
            UnsupportedOptionError: an output schema the backend cannot ask for.
        """
        if self.stats is not None:
            self.stats.started = time.perf_counter()
        if self.prefix_routing is not None:
            backend.prefix_routing = self.prefix_routing
        if self.answering is not None:
            self.answering.check_backend(backend)
            if self.answering.cache is not None and backend.model is None and not checked:
                # The cache keys name the model: a server's must be known before the first.
                await backend.check()
                checked = True
        if self.pool is None:
            tasks = fill(backend) if self.in_flight is None else self.in_flight
            if backend.prefix_routing:
                # Those waiting for a slot are what the router chooses among.
                tasks *= POOL_FACTOR
            self._window = window_for(tasks) if backend.prefix_routing else 0
            self._servers = SharePlan.of(backend, 1).servers
            self.runner = Engine(
                backend,
                tasks=tasks,
                options=self.options,
                defaults=self.defaults,
                answering=self.answering,
                hedge_budget=self.hedge_budget,
            )
            return self.runner
        if backend.remote and not checked:
            await backend.check()  # fails fast, and names the model once for every worker
        self.pool.share(SharePlan.of(backend, self.pool.plan.actors))
        self._window = window_for(fill(backend)) if backend.prefix_routing else 0
        self._servers = self.pool.plan.servers
        self.runner = self.pool
        return self.pool

    async def run(
        self,
        records: Iterator[PromptRecord],
        on_result: OnResult | None = None,
        *,
        blocking: bool = False,
        write_failed: Callable[[OSError], BaseException] | None = None,
    ) -> RunStats | None:
        """Run every record the results do not hold yet; each result once.

        Each result is appended to the results (if opened), counted in
        :attr:`stats` (if kept), then handed to ``on_result``.

        Args:
            records: the prompts, read lazily (a generator of millions is fine).
            on_result: called after each result was written and counted.
            blocking: ``records`` may block (a pipe): read them in a thread,
                so that a slow producer never stalls the streams in flight.
            write_failed: the error to raise when appending fails (the
                ``OSError`` itself when not given).

        Returns:
            :attr:`stats`, every result of this run counted.

        Raises:
            RuntimeError: :meth:`start` did not come first.
            BatchAborted: the run could not go on; what it answered stands.
            Exception: whatever ``on_result`` raised.
        """
        runner = self.runner
        if runner is None:
            raise RuntimeError("BatchJob.start(backend) must come before run()")
        state = ResumeState() if self.results is None else self.results.state
        todo = pending(records, state)
        if self._window and not blocking:  # a pipe is sent as it arrives, never held back
            todo = grouped(todo, self._window, self._servers)
        source: Records = ThreadedIterator(todo, asyncio.get_running_loop()) if blocking else todo
        try:
            await runner.run(source, self._deliver(runner, on_result, write_failed))
        finally:
            if isinstance(source, ThreadedIterator):
                await source.abandon()  # a reader blocked on a pipe exits with its read
        return self.stats

    def _deliver(
        self,
        runner: Runner,
        on_result: OnResult | None,
        write_failed: Callable[[OSError], BaseException] | None,
    ) -> OnResult:
        results, stats = self.results, self.stats

        def deliver(result: dict[str, Any], attempts: Any) -> None:
            if results is not None:
                try:
                    results.append(result)
                except OSError as exc:
                    if write_failed is None:
                        raise
                    raise write_failed(exc) from exc
            if stats is not None:
                stats.record(result, attempts)
                limit = runner.adaptive_limit()
                if limit is not None:
                    stats.concurrency = limit
            if on_result is not None:
                on_result(result, attempts)

        return deliver

    def stop_workers(self) -> None:
        """Stop the Ray workers, if any (their in-flight requests end). Idempotent."""
        if self.pool is not None and not self._workers_stopped:
            self._workers_stopped = True
            self.pool.close()

    def close(self) -> None:
        """Stop the workers and release the results file. Idempotent."""
        self.stop_workers()
        if self.results is not None:
            self.results.close()


def pending(records: Iterator[PromptRecord], state: ResumeState) -> Iterator[PromptRecord]:
    """The records still to run, read lazily: neither answered nor failed in ``state``.

    ``state`` grows while the run writes results; that never hides a pending
    prompt, because each id occurs once (the prompts file reports duplicates
    as problems; ``motio.batch.run`` refuses them).
    """
    for record in records:
        if not (record.key in state.done or record.key in state.failed):
            yield record


def fill(backend: Backend) -> int:
    """Prompts in flight that fill the backend's limit on every server."""
    plan = SharePlan.of(backend, 1)
    if plan.servers:
        return plan.in_flight_per_worker()
    limit = backend.max_concurrency
    return limit if isinstance(limit, int) and limit > 0 else 1
