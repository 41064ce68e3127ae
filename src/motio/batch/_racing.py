"""Racing a batch's stragglers on idle servers: the engine's side.

When nothing is left to dispatch (the engine's records are spent, or the
Ray driver said so) and a server has room, a request in service longer
than its kind's recent p95 (``motio.scheduling._race`` decides what is a
straggler, the budget and the overload hold) is sent again to another
server (``avoid_servers=`` its own). The first *successful* answer wins:

- the racer first: the original request is closed (its connection dropped:
  the server sees the client leave) and the racer's line is written;
- the original first: the racer is cancelled, which closes its request the
  same way;
- a failure wins nothing: the other request runs on, and only when both
  fail is the original's failure written.

Exactly once is untouched: the racer never delivers a line; the prompt's
own task returns one line, the winner's, as it always returned one. A run
killed mid-race wrote neither, and the rerun runs the prompt again.

A raced prompt's line says so: ``"raced": true`` and ``"race_won"`` (true
when the racer's answer is the one written; its ``latency_ms`` then counts
from the original request, and ``retries``/``attempts`` are the racer's).
A Batch API line gets ``"raced": true`` at top level, as it gets
``attempts``. The run's summary counts raced prompts and wins.

Racing exists only when it can happen (several servers, a budget above 0):
otherwise the engine's per-prompt path is exactly what it was. When it
exists, a prompt costs one small object and a latency sample more; the
racing loop (one task) runs only once nothing is left to dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..scheduling import (
    RaceBudget,
    RecentLatency,
    overloaded_lately,
    prompt_chars,
    race_kind,
    straggler_after,
)
from ._formats import own_view

if TYPE_CHECKING:
    from .._thunk import ModelOutputThunk
    from ..backends import Backend, EndpointSnapshot
    from ._records import PromptRecord

__all__ = ["Raced", "Racing", "TakeRace"]

#: ``take(prompts)``: spend one race of a batch of ``prompts``, True if one was left.
TakeRace = Callable[[int], Awaitable[bool]]
Answer = tuple[dict[str, Any], Any]

# The racing loop looks again at least this often (room, overloads, new stragglers)...
_POLL = 0.25
# ...and at most this often.
_MIN_POLL = 0.01
_ORIGINAL, _RACER = "original", "racer"


class Raced(Protocol):
    """What racing asks of the engine it races for (``Engine``; named here
    so that this module does not import the engine that imports it)."""

    backend: Backend
    defaults: dict[str, Any]

    async def generate(self, record: PromptRecord, hooks: Any = None) -> Answer: ...

    def options_for(self, record: PromptRecord) -> dict[str, Any]: ...


class _Flight:
    """One prompt in flight while racing may happen; the engine's hooks for
    its own runs (``Engine.generate``'s ``hooks``)."""

    __slots__ = ("closing", "failure", "kind", "mot", "raced", "racer", "record", "started", "winner")

    def __init__(self, record: PromptRecord, kind: Any, started: float) -> None:
        self.record = record
        self.kind = kind
        self.started = started
        self.mot: ModelOutputThunk[Any] | None = None
        self.racer: asyncio.Task[None] | None = None
        self.winner: str | None = None
        self.raced: Answer | None = None  # the racer's answer
        self.failure: Exception | None = None  # a whole-run failure the racer met
        self.closing: asyncio.Future[None] | None = None

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        return options

    def running(self, mot: ModelOutputThunk[Any]) -> None:
        self.mot = mot
        if self.winner is _RACER or self.failure is not None:
            # Lost while between two runs (a re-run after a broken stream): stop this one at once.
            self.closing = asyncio.ensure_future(mot.aclose())

    def server(self) -> str | None:
        return None if self.mot is None else self.mot.generation.base_url

    def service(self, now: float) -> float | None:
        """Seconds since its request went out (motio's own queue left out); None: not sent yet."""
        mot = self.mot
        queued = None if mot is None else mot.generation.queued_ms
        return None if queued is None else now - self.started - queued / 1000.0

    async def close(self) -> None:
        """Close the original request (the racer won, or the run is over)."""
        if self.mot is not None:
            await self.mot.aclose()


class _RacerRun:
    """The engine's hooks for a racer: sent away from the original's server."""

    __slots__ = ("avoid",)

    def __init__(self, avoid: str) -> None:
        self.avoid = avoid

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        avoided = tuple(options.get("avoid_servers", ()))
        return {**options, "avoid_servers": (*avoided, self.avoid)}

    def running(self, mot: ModelOutputThunk[Any]) -> None:
        """Nothing: a racer that lost is cancelled, which closes its request."""


class Racing:
    """A batch engine's racing of stragglers (see the module docstring).

    It stands where the engine's ``generate`` stands (the same
    ``generate``, ``options_for`` and ``backend``, so the schema and the
    cache wrap it as they wrap the engine).

    Args:
        engine: the engine whose prompts are raced.
        fraction: the budget, a share of the batch's prompts.
        take: spends one race (on Ray, the coordinator's budget, one for
            every worker); None: this engine's own budget.
    """

    def __init__(self, engine: Raced, fraction: float, take: TakeRace | None = None) -> None:
        self.engine = engine
        self.backend = engine.backend
        self._budget = RaceBudget(fraction)
        self._take: TakeRace = take or self._take_here
        self._latency = RecentLatency()
        self._flights: set[_Flight] = set()
        self._racers: set[asyncio.Task[None]] = set()
        self._dispatched = 0
        self._total: int | None = None  # the batch's prompts, when told (Ray's driver)
        self._drained = False
        self._spent = False
        self._changed = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def options_for(self, record: PromptRecord) -> dict[str, Any]:
        """The engine's options for ``record``."""
        return self.engine.options_for(record)

    async def generate(self, record: PromptRecord) -> Answer:
        """``Engine.generate``, raced when it straggles; one line whatever happens.

        Raises:
            BatchAborted: the failure was the run's (met by either request).
        """
        flight = _Flight(record, self._kind(record), asyncio.get_running_loop().time())
        self._flights.add(flight)
        self._dispatched += 1
        if self._drained and (self._loop is None or self._loop.done()):
            self._start_loop()
        try:
            answer = await self.engine.generate(record, flight)
            if flight.racer is not None:
                return await self._settle(flight, answer)
            self._sample(flight, answer[0])
            return answer
        except BaseException:
            if flight.racer is not None:
                flight.racer.cancel()  # its request closes with it
            raise
        finally:
            self._flights.discard(flight)
            if self._drained:
                self._changed.set()  # the racing loop: a server may have room now

    def drain(self, total: int | None = None) -> None:
        """Nothing is left to dispatch: race stragglers from now on (idempotent).

        Args:
            total: the batch's prompts (Ray: the driver's count, every
                worker's); None: those this engine ran.
        """
        if total is not None:
            self._total = total
        self._drained = True
        if self._loop is None or self._loop.done():
            self._start_loop()

    async def stop(self) -> None:
        """Stop racing: the loop and any racer still running (its request closed).
        The next run of the engine races again only once it is drained."""
        self._drained = False
        tasks = [t for t in (self._loop, *self._racers) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- the racing loop ----------------------------------------------------------

    def _start_loop(self) -> None:
        if not self._spent:
            self._loop = asyncio.ensure_future(self._race_stragglers())

    async def _race_stragglers(self) -> None:
        changed = self._changed
        while self._flights and not self._spent:
            changed.clear()
            delay = await self._launch_due()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await changed.wait()

    async def _launch_due(self) -> float:
        """Race the stragglers a server has room for; seconds until the next look."""
        now = asyncio.get_running_loop().time()
        servers = self.backend.endpoint_snapshot()
        if overloaded_lately((s.overloaded_at for s in servers), time.monotonic()):
            return _POLL
        room = _room(servers)
        if not room:
            return _POLL
        due, wake = self._stragglers(now)
        for flight in due:
            own = flight.server()
            target = max(
                (url for url in room if url != own and room[url] > 0), key=room.__getitem__, default=None
            )
            if target is None or own is None:
                continue
            if not await self._take(self._total or self._dispatched):
                self._spent = True
                return 0.0
            if flight in self._flights and flight.winner is None:
                room[target] -= 1
                self._launch(flight, own)
        return max(wake, _MIN_POLL)

    def _stragglers(self, now: float) -> tuple[list[_Flight], float]:
        """The flights past their kind's threshold, most overdue first; and
        seconds until the next one is due (at most ``_POLL``)."""
        thresholds: dict[Any, float | None] = {}
        due: list[tuple[float, _Flight]] = []
        wake = _POLL
        for flight in self._flights:
            service = flight.service(now) if flight.racer is None else None
            if service is None:
                continue
            if flight.kind not in thresholds:
                p95 = self._latency.p95(flight.kind)
                thresholds[flight.kind] = None if p95 is None else straggler_after(p95)
            after = thresholds[flight.kind]
            if after is None:
                continue
            if service >= after:
                due.append((service / after, flight))
            else:
                wake = min(wake, after - service)
        due.sort(key=lambda item: item[0], reverse=True)
        return [flight for _, flight in due], wake

    def _launch(self, flight: _Flight, own: str) -> None:
        task = asyncio.ensure_future(self._race(flight, own))
        flight.racer = task
        self._racers.add(task)
        task.add_done_callback(self._racer_done)

    def _racer_done(self, task: asyncio.Task[None]) -> None:
        self._racers.discard(task)
        self._changed.set()

    async def _race(self, flight: _Flight, own: str) -> None:
        try:
            answer = await self.engine.generate(flight.record, _RacerRun(own))
        except Exception as exc:  # noqa: BLE001 - the run's failure: the original's task raises it
            flight.failure = exc
            await flight.close()
            return
        flight.raced = answer
        if flight.winner is None and _succeeded(answer):
            flight.winner = _RACER
            await flight.close()

    async def _settle(self, flight: _Flight, answer: Answer) -> Answer:
        """The line of a raced prompt whose original request ended: the winner's.

        Raises:
            Exception: the whole-run failure the racer met.
        """
        racer = flight.racer
        assert racer is not None
        if flight.winner is None and _succeeded(answer):
            flight.winner = _ORIGINAL
            racer.cancel()
        # Won, lost or failed, the racer ends here: a lost one is closing its
        # request; after a failed original, the racer may still answer.
        await asyncio.wait((racer,))
        if flight.failure is not None:
            raise flight.failure
        raced = flight.raced
        won = flight.winner is _RACER and raced is not None
        if won:
            assert raced is not None
            answer = raced
        return _marked(answer, won, flight.started)

    # -- per prompt -----------------------------------------------------------------

    def _kind(self, record: PromptRecord) -> Any:
        own = record.body if record.body is not None else record.options
        tokens = own.get("max_tokens", own.get("max_completion_tokens")) if own else None
        if tokens is None:
            tokens = self.engine.defaults.get("max_tokens")
        return race_kind(tokens, prompt_chars(record.request))

    def _sample(self, flight: _Flight, result: dict[str, Any]) -> None:
        own = own_view(result)
        if own.get("error") is None and own.get("latency_ms") is not None:
            seconds = (own["latency_ms"] - (own.get("queued_ms") or 0.0)) / 1000.0
            self._latency.record(flight.kind, seconds)

    async def _take_here(self, total: int) -> bool:
        return self._budget.take(total)


def _room(servers: list[EndpointSnapshot]) -> dict[str, int]:
    """Free slots per server in rotation that has any."""
    room = {}
    for s in servers:
        free = (1 << 30) if s.limit is None else s.limit - s.in_flight
        if s.in_rotation and free > 0:
            room[s.base_url] = free
    return room


def _succeeded(answer: Answer) -> bool:
    return own_view(answer[0]).get("error") is None


def _marked(answer: Answer, won: bool, started: float) -> Answer:
    """The line of a raced prompt: ``raced``, ``race_won``, and the latency
    from the original request when the racer's answer is the one written."""
    result, attempts = answer
    own = own_view(result)
    own["raced"] = True
    own["race_won"] = won
    if own is not result:  # a Batch API line: its own keys, and this one
        result["raced"] = True
    if won:
        own["latency_ms"] = round((asyncio.get_running_loop().time() - started) * 1000, 1)
    return result, attempts
