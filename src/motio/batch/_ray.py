"""A batch on a Ray cluster: async worker actors, one writer, every result once.

Imported only when a batch is asked to run on Ray (``--ray``, or
``motio.batch.run(..., ray=...)``): ``import motio`` never imports Ray.

The shape, and why:

- **Workers are async actors**, each running the same :class:`Engine` the
  command runs, hundreds of prompts in flight on its own event loop. One
  Ray task per prompt would cost a task's overhead (about a millisecond of
  scheduling, serialisation and a process hop) per prompt, more than a
  loopback generation itself.
- **The driver reads the prompts as a stream** and sends them in shards of
  about one worker's concurrency, a few shards in flight per worker so that
  none idles while the next is on its way. Nothing holds the whole file.
- **Results stream back** from each shard (Ray's streaming generators) in
  small batches as they finish, and the driver, the only writer, appends
  each to the results file the moment it arrives. A killed driver therefore
  loses only what was still on its way, and those prompts are unanswered in
  the file, so the rerun runs them.
- **Exactly once:** the driver writes an id only if it has not written it;
  a shard whose worker died is sent again without the prompts whose results
  already arrived. A prompt in flight on a dying worker is run again (at
  most ``MAX_LOSSES`` times, then recorded as failed, so a prompt that
  kills its worker cannot loop forever); its result is written once.
- **A death counts once:** a shard is in flight on a worker only once the
  worker said it started it (the first object its stream sends). A send
  that failed before that (the worker was dead or restarting) is no loss:
  the shard goes back to the queue for any live worker, and the dead
  worker's feeder waits, bounded, until it answers again before sending it
  more. Otherwise one death would be counted again for every shard sent to
  the worker while Ray restarts it.
- **Limits are the cluster's:** one coordinator actor holds the rate
  limiter and, per server, the adaptive controller; workers hold shares
  (see ``_share.py``).
- **Racing stragglers** (``_racing.py``): only the driver knows when
  nothing is left to dispatch; it then tells every worker (``drained``,
  with the batch's prompt count; a shard sent later carries it too), and
  each races its own in-flight stragglers. The budget is the cluster's:
  the coordinator counts the races of every worker (``take_race``), so two
  workers do not each spend 5% of the batch. Each id is still written once:
  a worker returns one line per prompt, raced or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from itertools import islice
from typing import Any, cast

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from .._exceptions import MotioError
from ..backends import Backend
from ..backends.http import AdaptiveConcurrency, EndpointSnapshot, RateLimiter, Reservation, SharedGate
from ..backends.http._adaptive import Signals
from ..backends.http._metrics import SCRAPE_INTERVAL
from ..scheduling import RaceBudget
from ._engine import BatchAborted, Engine, OnResult, build_result
from ._records import PromptRecord
from ._runner import Records
from ._share import SharePlan
from ._structured import AnsweringRecipe

__all__ = [
    "MAX_LOSSES",
    "ClusterUnreachable",
    "RayPool",
    "WorkerLost",
    "actor_count",
    "connect",
    "disconnect",
]

#: How often a prompt may be in flight on a worker that died before it is recorded as failed.
MAX_LOSSES = 3
#: Prompts on a worker at once, in shards: one running, the next ones
#: already there. Counted in prompts, not shards: a shard whose last
#: prompts straggle holds only their places (see ``RayPool._feed``).
_SHARDS_AHEAD = 3
#: How often a worker sends back what finished.
_FLUSH_SECONDS = 0.05
#: How often a worker reports its servers' signals and takes its shares.
_SYNC_SECONDS = 0.1
# Seconds after which a worker that has not reported holds nothing (it died).
_SILENT_WORKER = 2.0
#: How long an address may take to accept a TCP connection before it counts as unreachable.
_REACH_TIMEOUT = 3.0
#: How long a dead worker may take to come back (Ray restarts it) before it is fed no more.
_REVIVE_TIMEOUT = 60.0
#: The pause between two probes of a worker whose restart refused the last one.
_PROBE_PAUSE = 0.2
#: What a worker's stream sends first, with the worker's process id: the shard runs there from now on.
_STARTED = "started"
#: How long the driver waits for the workers to take "nothing left to dispatch".
_DRAINED_TIMEOUT = 10.0

BackendFactory = Callable[[], Any]


class ClusterUnreachable(MotioError):
    """The Ray cluster named could not be joined."""


class WorkerLost(MotioError):
    """A prompt was in flight on a worker that died, ``MAX_LOSSES`` times."""


class _RemoteFailure(MotioError):
    """A whole-run failure a worker saw (its message, carried to the driver)."""


# -- joining a cluster -----------------------------------------------------------------


def connect(address: str | None) -> bool:
    """Start a local Ray instance (``address`` None) or join a cluster.

    Returns:
        True if this call connected (and :func:`disconnect` should undo it);
        False if Ray was already initialised in this process (a notebook's).

    Raises:
        ClusterUnreachable: nothing answers at the address (checked with a
            bounded TCP connect first: Ray itself retries for minutes).
    """
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    try:
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False if address in (None, "local") else None,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnreachable(f"cannot join the Ray cluster at {address}: {_first_line(exc)}") from exc
    return True


def disconnect() -> None:
    """Leave the cluster (a local instance this process started stops)."""
    with contextlib.suppress(Exception):
        ray.shutdown()


def actor_count() -> int:
    """How many Ray workers (actors) by default: one per CPU of the cluster (at least one)."""
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return max(1, int(resources.get("CPU", 1)))


def _check_reachable(address: str) -> None:
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(
            f"--ray {address}: expected HOST:PORT, 'auto', or nothing (a local instance)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=_REACH_TIMEOUT):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {address}: {reason}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the coordinator: the cluster's limits -----------------------------------------------


class Coordinator:
    """One per batch: the rate limiter and, per server, the adaptive controller.

    The controller judges the whole cluster's requests: workers send their
    first-token times, refusals, requests in flight and (each reading its
    server's metrics page, when it has one) the server's counts; one
    reading every ``SCRAPE_INTERVAL`` is judged, with every worker's
    requests in flight as ours. Each first-token time comes with the
    controller's epoch the worker had applied when it sent the request
    (``report`` answers every limit with its epoch), so that those sent
    before a change are dropped however late their report arrives.
    """

    def __init__(self, plan: SharePlan) -> None:
        self._limiter = RateLimiter(plan.rpm, plan.tpm) if plan.rate_limited else None
        self._controllers = (
            {url: AdaptiveConcurrency(initial=plan.initial, maximum=plan.bound) for url in plan.servers}
            if plan.adaptive
            else {}
        )
        self._actors = plan.actors
        # Per server, per worker (process id): its requests in flight, and when it said so.
        self._held: dict[str, dict[int, tuple[int, float]]] = {url: {} for url in self._controllers}
        self._read_at: dict[str, float] = {}
        self._tickets: dict[int, Reservation] = {}
        self._next = 0
        self._races = RaceBudget(0.0)  # its spent count: races of every worker

    async def acquire(self, tokens: int) -> int:
        """Wait for the budget of one request; a ticket to settle it with."""
        assert self._limiter is not None
        reservation = await self._limiter.acquire(tokens)
        self._next += 1
        self._tickets[self._next] = reservation
        return self._next

    def settle(self, ticket: int, actual_tokens: int | None) -> None:
        reservation = self._tickets.pop(ticket, None)
        if reservation is not None:
            reservation.settle(actual_tokens)

    def report(self, worker: int, signals: dict[str, Signals]) -> dict[str, tuple[int, int]]:
        """Feed a worker's signals to the controllers; every server's limit
        now, with its epoch (the worker tags its next samples with it)."""
        now = time.monotonic()
        for url, signal in signals.items():
            controller, held = self._controllers[url], self._held[url]
            held[worker] = (signal.in_flight, now)
            for _ in range(signal.overloads):
                controller.record_overload()
            for seconds, epoch, age in signal.first_tokens:
                # Each judged by when it came and the limit it was sent at:
                # a report carries a tenth of a second's samples at once.
                controller.record_first_token(seconds, epoch=epoch, age=age)
            # Every worker reads the page; the controller takes one reading
            # a scrape interval, as it would in one process.
            if signal.load is not None and now - self._read_at.get(url, -SCRAPE_INTERVAL) >= SCRAPE_INTERVAL:
                self._read_at[url] = now
                # A worker silent for a while has died (its replacement has another id).
                ours = sum(n for n, at in held.values() if now - at < _SILENT_WORKER)
                controller.record_load(signal.load, ours=ours, slack=self._actors)
        return {url: (controller.limit, controller.epoch) for url, controller in self._controllers.items()}

    def take_race(self, allowed: int) -> bool:
        """Spend one race of the batch's budget (``allowed`` for every worker together)."""
        return self._races.take_of(allowed)


class _RemoteReservation:
    __slots__ = ("_coordinator", "_settled", "_ticket", "tokens")

    def __init__(self, coordinator: Any, ticket: int, tokens: int) -> None:
        self._coordinator, self._ticket, self.tokens = coordinator, ticket, tokens
        self._settled = False

    def settle(self, actual_tokens: int | None) -> None:
        if not self._settled:
            self._settled = True
            self._coordinator.settle.remote(self._ticket, actual_tokens)


class _RemoteLimiter:
    """The backend's rate limiter, as a proxy to the coordinator's."""

    def __init__(self, coordinator: Any, plan: SharePlan) -> None:
        self._coordinator = coordinator
        self.rpm, self.tpm = plan.rpm, plan.tpm

    async def acquire(self, tokens: int = 0) -> _RemoteReservation:
        ref = self._coordinator.acquire.remote(tokens)
        try:
            ticket = await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # a wait given up is never charged
            raise
        return _RemoteReservation(self._coordinator, ticket, tokens)


# -- the workers ----------------------------------------------------------------------


class BatchWorker:
    """Runs shards of prompts through its own backend, streaming results back."""

    def __init__(
        self,
        factory: BackendFactory,
        options: tuple[dict[str, Any], dict[str, Any]],
        coordinator: str,
        answering: AnsweringRecipe | None = None,
        hedge_budget: float = 0.0,
    ) -> None:
        # Built now, while the driver still checks the servers: the imports
        # and set-up overlap with it instead of delaying the first shard.
        self._backend = factory()
        self._hedge_budget = hedge_budget
        self._drained: int | None = None  # the batch's prompts, once the driver has no more
        self._options, self._coordinator_name = options, coordinator
        self._answering = answering
        self._coordinator: Any = None
        self._plan = SharePlan(1)
        self._engine: Engine | None = None
        self._gates: dict[str, SharedGate] = {}
        self._sync: asyncio.Task[None] | None = None
        self._setting_up = asyncio.Lock()
        _tune_gc()

    def pid(self) -> int:
        """This worker's process id; it answers only once the worker is up (a probe)."""
        return os.getpid()

    async def run_shard(
        self, records: list[PromptRecord], plan: SharePlan, drained: int | None = None
    ) -> Any:
        """Streams ``(_STARTED, process id)``, then ``(results, server
        loads)``; ``results`` are ``(key, result, attempts)``. A whole-run
        failure is streamed as ``("abort", message)``. ``drained``: the
        batch's prompt count once nothing is left to dispatch (see :meth:`drained`)."""
        engine = await self._ready(plan)
        if drained is not None:
            await self.drained(drained)
        # Before any prompt starts: from here on, a death of this worker is
        # a loss for the shard's prompts (see RayPool._run_shard).
        yield _STARTED, os.getpid()
        finished: list[tuple[str, dict[str, Any], Any]] = []

        async def one(record: PromptRecord) -> None:
            result, attempts = await engine.answer(record)
            finished.append((record.key, result, attempts))

        async def all_of_them() -> None:
            async with asyncio.TaskGroup() as group:
                for record in records:
                    group.create_task(one(record))

        work = asyncio.ensure_future(all_of_them())
        try:
            while True:
                # What finished goes back every _FLUSH_SECONDS, batched: one
                # streamed object per result would cost Ray's per-object
                # overhead thousands of times a second.
                done, _ = await asyncio.wait((work,), timeout=_FLUSH_SECONDS)
                if finished:
                    batch, finished[:] = list(finished), []
                    yield batch, self._loads()
                if done:
                    break
            failure = _whole_run_failure(work)
            if failure is not None:
                yield "abort", failure
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work

    async def drained(self, total: int) -> None:
        """The driver has nothing left to dispatch: race this worker's stragglers
        (a batch of ``total`` prompts, for the budget). Async: the racing
        loop is a task on this worker's loop. Kept for an engine not built yet."""
        self._drained = total
        if self._engine is not None and self._engine.racing is not None:
            self._engine.racing.drain(total)

    async def _take_race(self, total: int) -> bool:
        """One race of the cluster's budget, from the coordinator (False if it is gone)."""
        allowed = RaceBudget(self._hedge_budget).allowed(total)
        with contextlib.suppress(RayActorError, ActorUnavailableError):
            return bool(await self._coordinator.take_race.remote(allowed))
        return False

    async def _ready(self, plan: SharePlan) -> Engine:
        async with self._setting_up:  # the first shards arrive together
            if self._engine is None:
                await self._set_up(plan)
        assert self._engine is not None
        return self._engine

    async def _set_up(self, plan: SharePlan) -> None:
        # The plan comes with every shard, so a restarted worker has it too;
        # the coordinator exists only when there is something to coordinate
        # (an actor process costs a second of CPU to start).
        self._plan = plan
        racing = _races(plan, self._hedge_budget)
        if plan.rate_limited or plan.adaptive or racing:
            self._coordinator = ray.get_actor(self._coordinator_name)
        self._share(self._backend)
        options, defaults = self._options
        # The worker's own schema validator and cache connection, from the driver's recipe.
        answering = None if self._answering is None else self._answering.open()
        self._engine = Engine(
            self._backend,
            options=options,
            defaults=defaults,
            answering=answering,
            hedge_budget=self._hedge_budget if racing else 0.0,
            take_race=self._take_race,
        )
        if self._drained is not None and self._engine.racing is not None:
            self._engine.racing.drain(self._drained)
        if self._plan.adaptive and self._gates:
            self._sync = asyncio.ensure_future(self._sync_limits())

    def _share(self, backend: Backend) -> None:
        plan = self._plan
        if not plan.servers:  # the driver's backend had nothing to share
            return
        if backend.model is None:
            backend.model = plan.model
        backend.prefix_routing = plan.prefix_routing  # routed alike in every worker
        # The proxy has what the backend asks of a RateLimiter (rpm, tpm, acquire).
        limiter = cast(RateLimiter, _RemoteLimiter(self._coordinator, plan)) if plan.rate_limited else None
        gates: dict[str, Any] = {}
        if plan.adaptive:
            self._gates = {url: SharedGate(plan.share(plan.initial), plan.bound) for url in plan.servers}
            gates = dict(self._gates)
        elif isinstance(plan.concurrency, int):
            from ..backends.http import Gate

            gates = {url: Gate(plan.share(plan.concurrency)) for url in plan.servers}
        backend.share_limits(limiter=limiter, gates=gates)

    async def _sync_limits(self) -> None:
        while True:
            signals = {url: gate.drain() for url, gate in self._gates.items()}
            with contextlib.suppress(RayActorError, ActorUnavailableError):
                limits = await self._coordinator.report.remote(os.getpid(), signals)
                for url, (limit, epoch) in limits.items():
                    self._gates[url].set_limit(self._plan.share(limit), epoch)
            await asyncio.sleep(_SYNC_SECONDS)

    def _loads(self) -> list[EndpointSnapshot]:
        assert self._engine is not None
        return self._engine.backend.endpoint_snapshot()


def _tune_gc() -> None:
    """Collect garbage rarely in a worker, as ``motio run`` does in its process.

    Hundreds of requests in flight keep hundreds of thousands of objects
    alive, and the default thresholds walk them all every few hundred
    requests (measured: half the command's CPU at 2,000 in flight). motio's
    objects form no cycles; a worker process is motio's own to tune.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 50_000), max(gen1, 20), max(gen2, 100))
    gc.freeze()  # what is loaded now (Ray, aiohttp, motio) lives as long as the worker


# Ray restarts a dead worker (and its backend) as often as it dies; what a
# death costs the prompts it held is counted by the driver (MAX_LOSSES),
# once per death (RayPool._unanswered).
_WorkerActor: Any = ray.remote(max_restarts=-1, max_task_retries=0)(BatchWorker)
_CoordinatorActor: Any = ray.remote(num_cpus=0)(Coordinator)


def _races(plan: SharePlan, hedge_budget: float) -> bool:
    """Whether the workers may race stragglers: a budget, and several servers to race on."""
    return hedge_budget > 0 and len(plan.servers) > 1


def _whole_run_failure(work: asyncio.Future[None]) -> str | None:
    error = work.exception()
    if error is None:
        return None
    if isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    if isinstance(error, BatchAborted):
        return _first_line(error)
    raise error


# -- the driver --------------------------------------------------------------------------


class _Actor:
    __slots__ = ("dead", "down", "freed", "gone", "handle", "loads", "outstanding", "revival")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        # Each incarnation's (process id's) last report. Its counts start
        # from zero when Ray restarts the worker: a dead one's report stays,
        # at zero in flight, so that what it served still counts.
        self.loads: dict[int, list[EndpointSnapshot]] = {}
        self.dead: set[int] = set()
        # After a death: one probe, shared while it runs; True when it answers.
        self.revival: asyncio.Task[bool] | None = None
        self.gone = False  # did not come back within _REVIVE_TIMEOUT: fed no more
        self.down = False  # a shard of it died since it last answered: revive before feeding
        self.outstanding = 0  # prompts sent to it and not answered yet
        self.freed = asyncio.Event()  # some of them were answered (or went back to the queue)

    def free(self, prompts: int) -> None:
        if prompts:
            self.outstanding -= prompts
            self.freed.set()

    async def room_for(self, prompts: int, most: int) -> None:
        """Until ``prompts`` more keep this worker within ``most`` outstanding."""
        while self.outstanding and self.outstanding + prompts > most:
            self.freed.clear()
            await self.freed.wait()

    def report(self, pid: int, loads: list[EndpointSnapshot]) -> None:
        if pid not in self.dead:  # a late report of a dead one is not in flight any more
            self.loads[pid] = loads

    def died(self, pid: int) -> None:
        self.dead.add(pid)
        self.loads[pid] = [dataclasses.replace(s, in_flight=0) for s in self.loads.get(pid, [])]


class RayPool:
    """The driver's side: workers started, shards fed, results delivered once.

    Two steps, so that the workers' start-up (a process each, Ray and the
    backend imported) overlaps the driver's check of the servers: the
    constructor starts the workers; :meth:`share` gives them the limits
    that check found, before :meth:`run`.

    It is a ``Runner`` (``_runner.py``), as the in-process :class:`Engine` is.

    Args:
        factory: builds the backend in each worker (picklable, no arguments);
            each worker's engine asks its own backend whether it is remote.
        actors: how many workers (Ray actors).
        options: ``generate`` options for every prompt (a line's own win).
        defaults: options for motio's own lines only (see :class:`Engine`).
        env: environment variables the workers need (an API key).
        answering: the output schema and the response cache, built again
            in each worker (``_structured.py``); None: neither.
        hedge_budget: the share of the batch's prompts that may be sent
            again to race stragglers, for every worker together.
    """

    def __init__(
        self,
        factory: BackendFactory,
        actors: int,
        *,
        options: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        answering: AnsweringRecipe | None = None,
        hedge_budget: float = 0.0,
    ) -> None:
        self.plan = SharePlan(actors)
        self.hedge_budget = hedge_budget
        self._dispatched = 0  # prompts sent to workers (not counting shards sent again)
        self._drained: int | None = None  # the batch's prompts, once nothing is left to dispatch
        self.shard_size = 1
        self.rerun = 0
        # Found by name, not handed over: an actor handle among a restartable
        # actor's arguments would pin them in the object store (ray#53727).
        self._coordinator_name = f"motio-coordinator-{uuid.uuid4().hex}"
        self._coordinator: Any = None
        self._shared = False
        actor_class = _WorkerActor.options(
            num_cpus=min(1.0, actor_count() / actors),
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": dict(env)} if env else None,
        )
        self._actors = [
            _Actor(
                actor_class.remote(
                    factory,
                    (dict(options or {}), dict(defaults or {})),
                    self._coordinator_name,
                    answering,
                    hedge_budget,
                )
            )
            for _ in range(actors)
        ]
        self._source: Iterator[PromptRecord] = iter(())
        self._arrivals: asyncio.Queue[PromptRecord | None] | None = None
        self._again: deque[list[PromptRecord]] = deque()
        self._losses: dict[str, int] = {}
        self._delivered: set[str] = set()
        self._running = 0
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()  # every shard answered: feeders waiting on a revival stop

    def share(self, plan: SharePlan) -> None:
        """Start the coordinator of the limits ``plan`` says the workers share."""
        self.plan = plan
        self.shard_size = plan.in_flight_per_worker()
        self._shared = True
        if plan.rate_limited or plan.adaptive or _races(plan, self.hedge_budget):
            self._coordinator = _CoordinatorActor.options(name=self._coordinator_name).remote(plan)

    def endpoint_snapshot(self) -> list[EndpointSnapshot]:
        """Per server, the sum over workers of their last report (the same
        shape as ``OpenAIBackend.endpoint_snapshot``, for the progress line)."""
        merged: dict[str, EndpointSnapshot] = {}
        for actor in self._actors:
            for loads in actor.loads.values():
                for s in loads:
                    m = merged.get(s.base_url)
                    merged[s.base_url] = s if m is None else _added(m, s)
        if not self.plan.servers:
            return list(merged.values())
        # Every server from the start (the progress line is laid out once),
        # at zero until a worker reports it.
        return [merged.get(url) or EndpointSnapshot(url, 0, None, True, 0, 0, 0) for url in self.plan.servers]

    def adaptive_limit(self) -> int | None:
        """None: each worker's gates hold their share of the limit, not this process."""
        return None

    async def run(self, records: Records, on_result: OnResult) -> None:
        """Run every record on the workers; ``on_result`` once per id, on this loop.

        Raises:
            BatchAborted: a worker found the whole run unable to go on.
            Exception: whatever ``on_result`` raised.
        """
        if not self._shared:
            raise RuntimeError("RayPool.share(plan) must come before run()")
        try:
            async with asyncio.TaskGroup() as group:
                if isinstance(records, AsyncIterator):
                    self._arrivals = asyncio.Queue(self.shard_size * len(self._actors) * _SHARDS_AHEAD)
                    group.create_task(self._pump(records, self._arrivals))
                else:
                    self._source = records
                for actor in self._actors:
                    group.create_task(self._feed(actor, on_result, group))
        except* Exception as failed:
            raise failed.exceptions[0] from None
        finally:
            for actor in self._actors:
                if actor.revival is not None:
                    actor.revival.cancel()

    def close(self) -> None:
        """Stop the workers and the coordinator (their in-flight requests end)."""
        handles = [w.handle for w in self._actors]
        if self._coordinator is not None:
            handles.append(self._coordinator)
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)

    # -- feeding ------------------------------------------------------------------------

    async def _feed(self, actor: _Actor, on_result: OnResult, group: asyncio.TaskGroup) -> None:
        """Keep ``actor`` fed: a shard more whenever its unanswered prompts
        leave room for one within ``_SHARDS_AHEAD`` shards' worth.

        Counted in prompts, not shards: a shard returns only when its last
        prompt is answered, so a few stragglers (a hung request, a long
        generation) each pinned a whole shard's place. Enough of them and
        no shard was sent any more, and the batch never reached its end
        (where racing would have raced them).
        """
        most = self.shard_size * _SHARDS_AHEAD
        while True:
            if actor.down and not await self._revived(actor):
                return
            await actor.room_for(self.shard_size, most)
            if actor.down:
                continue  # it died while this waited: revive it first
            shard = await self._take()
            if shard is None:
                await self._announce_drained()
                if self._running == 0:
                    self._finished.set()
                    self._changed.set()
                    return
                # Input is done, but a shard elsewhere may yet come back from
                # a dead worker: wait until one ends.
                self._changed.clear()
                await self._changed.wait()
                continue
            actor.outstanding += len(shard)
            self._running += 1
            group.create_task(self._shard(actor, shard, on_result))

    async def _shard(self, actor: _Actor, shard: list[PromptRecord], on_result: OnResult) -> None:
        try:
            answered = await self._run_shard(actor, shard, on_result)
        finally:
            self._running -= 1
            self._changed.set()
        if not answered:
            actor.down = True  # its feeder waits until it answers again
            actor.freed.set()

    async def _revived(self, actor: _Actor) -> bool:
        """After ``actor`` died: wait until it answers again (Ray restarts it).

        Its shards went back to the queue, for any live worker; sending this
        one more before it is back would only be refused.

        Returns:
            True to feed it again; False when the batch ended meanwhile, or
            it did not come back within ``_REVIVE_TIMEOUT`` (then it is fed
            no more).

        Raises:
            BatchAborted: no worker is left.
        """
        if actor.revival is None or actor.revival.done():
            actor.revival = asyncio.ensure_future(_probe(actor.handle))
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait((actor.revival, finished), return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
        if self._finished.is_set():
            return False
        if actor.revival.result():
            actor.down = False
            return True
        actor.gone = True
        if all(w.gone for w in self._actors):
            raise BatchAborted(
                MotioError(f"every Ray worker died and none came back within {_REVIVE_TIMEOUT:.0f} s")
            )
        return False

    async def _take(self) -> list[PromptRecord] | None:
        if self._again:
            return self._again.popleft()
        if self._arrivals is None:
            shard = list(islice(self._source, self.shard_size)) or None
        else:
            shard = await self._take_arrived(self._arrivals)
        if shard is not None:
            self._dispatched += len(shard)
        return shard

    async def _announce_drained(self) -> None:
        """Nothing is left to dispatch: every worker races its stragglers from now on (said once).

        A worker dead at this moment learns it with its next shard instead.
        """
        if self._drained is not None or not _races(self.plan, self.hedge_budget):
            return
        self._drained = self._dispatched
        calls = [_awaited(w.handle.drained.remote(self._drained)) for w in self._actors if not w.gone]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), _DRAINED_TIMEOUT)

    async def _take_arrived(self, arrivals: asyncio.Queue[PromptRecord | None]) -> list[PromptRecord] | None:
        # A pipe (stdin) delivers at its own pace: a shard is whatever has
        # arrived, at least one prompt, so none waits for a shard to fill.
        first = await arrivals.get()
        if first is None:
            arrivals.put_nowait(None)  # the end, for the other feeders too
            return None
        shard = [first]
        while len(shard) < self.shard_size and not arrivals.empty():
            record = arrivals.get_nowait()
            if record is None:
                arrivals.put_nowait(None)
                break
            shard.append(record)
        return shard

    @staticmethod
    async def _pump(
        records: AsyncIterator[PromptRecord], arrivals: asyncio.Queue[PromptRecord | None]
    ) -> None:
        async for record in records:
            await arrivals.put(record)  # bounded: a fast pipe waits for the workers
        await arrivals.put(None)

    async def _run_shard(self, actor: _Actor, shard: list[PromptRecord], on_result: OnResult) -> bool:
        """Run ``shard`` on ``actor``, delivering its results.

        Returns:
            True if the worker answered the shard; False if it died or
            refused it (its unanswered prompts are queued again).
        """
        waiting = {record.key: record for record in shard}
        stream = actor.handle.run_shard.options(num_returns="streaming").remote(
            shard, self.plan, self._drained
        )
        pid: int | None = None  # the worker's process, once it started the shard
        ended = False
        try:
            async for ref in stream:
                item = await ref
                if item[0] == _STARTED:
                    pid = item[1]
                    continue
                if item[0] == "abort":
                    raise BatchAborted(_RemoteFailure(item[1]))
                batch, loads = item
                if pid is not None:  # always: the worker sends _STARTED first
                    actor.report(pid, loads)
                left = len(waiting)
                for key, result, attempts in batch:
                    if waiting.pop(key, None) is not None and key not in self._delivered:
                        self._delivered.add(key)
                        on_result(result, attempts)
                actor.free(left - len(waiting))
            ended = True
        except RayActorError:  # ActorUnavailableError too: what a dying worker's streams raise
            if pid is not None:
                actor.died(pid)
            self._unanswered(list(waiting.values()), on_result, lost=pid is not None)
            return False
        except RayTaskError as exc:
            raise MotioError(f"a worker failed: {_first_line(exc)}") from exc
        finally:
            actor.free(len(waiting))  # answered elsewhere, or queued again
            if not ended:  # cancelled, or failed: stop what the worker still runs of it
                with contextlib.suppress(Exception):
                    ray.cancel(stream)
        return True

    def _unanswered(self, records: list[PromptRecord], on_result: OnResult, *, lost: bool) -> None:
        """Queue again the prompts of a shard its worker did not answer.

        Only a shard the worker had started (``lost``) counts a loss for its
        prompts: one refused by a dead or restarting worker never ran there.
        A prompt lost ``MAX_LOSSES`` times is recorded as failed instead, so
        that one that kills its worker cannot loop forever.
        """
        again = []
        for record in records:
            if not lost:
                again.append(record)
                continue
            losses = self._losses[record.key] = self._losses.get(record.key, 0) + 1
            if losses < MAX_LOSSES:
                if losses == 1:  # prompts run again, not sends
                    self.rerun += 1
                again.append(record)
            elif record.key not in self._delivered:
                self._delivered.add(record.key)
                error = WorkerLost(f"in flight on a worker that died {losses} times; not run again")
                on_result(build_result(record, None, 0.0, error), None)
        if again:
            self._again.append(again)


async def _probe(handle: Any) -> bool:
    """Whether the worker answers within ``_REVIVE_TIMEOUT``.

    A call to a worker Ray is restarting waits for it or is refused
    (``ActorUnavailableError``), depending on the moment: refused, ask again.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _REVIVE_TIMEOUT
    while (left := deadline - loop.time()) > 0:
        try:
            await asyncio.wait_for(_awaited(handle.pid.remote()), left)
        except TimeoutError:
            return False
        except RayActorError:
            await asyncio.sleep(min(_PROBE_PAUSE, left))
            continue
        return True
    return False


async def _awaited(ref: Any) -> Any:
    return await ref


def _added(a: EndpointSnapshot, b: EndpointSnapshot) -> EndpointSnapshot:
    limit = None if a.limit is None or b.limit is None else a.limit + b.limit
    return EndpointSnapshot(
        a.base_url,
        a.in_flight + b.in_flight,
        limit,
        a.in_rotation or b.in_rotation,
        a.served + b.served,
        a.tokens + b.tokens,
        max(a.failures, b.failures),
        a.overloads + b.overloads,
        max(a.overloaded_at, b.overloaded_at),
    )
