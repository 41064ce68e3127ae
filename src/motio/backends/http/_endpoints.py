"""Several servers behind one backend: routed by load, dead ones rotated out.

A fleet of identical servers (vLLM replicas, llama.cpp servers on several
machines) is only worth having if a batch uses all of them and survives one
going away. Without this, a client either sticks to one server (the others
idle) or sprays requests round-robin (a slow or dead server gets its full
share anyway, and every prompt sent to a dead one fails).

- **Routing**: each attempt goes to the server in rotation with the fewest
  requests in flight relative to its concurrency limit (its own gate, fixed
  or adaptive) among those with room; ties go round-robin, so equal servers
  share evenly. When no server has room the attempt waits in one FIFO for
  the whole backend, not in one server's queue: committed to a server on
  arrival, a burst would split evenly and wait behind the slow server while
  the fast one idles. A slower server holds its requests longer, so it is
  picked less often.
- **Prefix-aware routing** (``HTTPBackend(prefix_routing=...)``): an
  attempt that carries a prefix key (``motio.scheduling.prefix_key``) goes
  to its prefix's home. A key seen for the first time is homed on the
  server it ranks first (rendezvous hashing on the base URLs, so every
  process agrees) unless that server homes ``KEY_SLACK`` more prefixes
  than the mean, then on the next (bounded loads, prefixes as the balls).
  An attempt takes its home unless the home's load is more than
  ``PREFIX_SLACK`` above the least loaded's or has taken ``SHARE_SLACK``
  more keyed attempts than the mean (then the next in its order within
  both); with no room within the slack it takes the least
  loaded with room: a free slot is never left to a key (but see holds
  below). An attempt that
  waits is queued in the one FIFO and for its home: room freed on a server
  goes to the earliest attempt waiting for that server; a server nobody
  waits for takes a whole prefix (the newest waiting, and every attempt of
  it) from a server whose pressure (in flight and waiting, per slot) is
  more than ``PREFIX_SLACK`` above its own, or from one out of rotation;
  else it takes the first waiter without a key, or leaves the room to the
  next attempt that chooses it. A batch keeps ``POOL_FACTOR`` times as many
  prompts in flight as there are slots, so that there is such a choice.
  A prefix's further prompts are *held* for a server while its first prompt
  there has no first token yet (``Endpoints(hold_prefixes=True)``, as the
  HTTP backend does: its exchange calls ``warmed`` at the first token and
  when an attempt ends): admitted together, they would all miss the cache
  and each prefill the prefix. A hold lasts at most ``PREFIX_HOLD``
  seconds, and a held prompt leaves room to the others.
- **Failover**: an attempt that failed before any content reached the thunk
  (refused, reset, connect timeout; a retryable status; a 404 from a server
  started with another model) goes to another server (``_exchange.py``
  decides when; this module only avoids the servers the attempt already
  failed on). A generation may also *shun* servers (a batch re-running a
  stream that broke there): it waits for room on another server in
  rotation rather than take one of those, since a server that just broke
  or stalled a stream is suspect while it still answers probes.
- **Rotation**: a refused connection, ``_FAILURES_TO_LEAVE`` connection
  failures in a row, or a 404 for the model takes a server out of rotation.
  It is probed later (``GET /models``, with backoff from ``_FIRST_PROBE``
  doubling to ``_LAST_PROBE``) and comes back when it answers and lists the
  model (the probe is the backend's). A probe is started by
  whichever request first sees it due, as a task on that request's loop: no
  thread or timer of its own, nothing to shut down.
- When no server is in rotation, attempts still go somewhere (the one due
  back soonest): the request fails with a connection error, and whoever
  runs the batch asks ``check()`` whether any server is left.

Health: ``_Health``, one per server; ``_TRANSITIONS`` is this graph, edge
for edge (``tests/backends/test_endpoint_health.py`` checks that they agree)::

    IN_ROTATION        -> OUT                 refused, failures in a row, a failed check, a 404 for the model
    OUT                -> PROBING             its probe is due: the next request routed starts it
    OUT                -> IN_ROTATION         it answered a request (or a check) while out
    PROBING            -> IN_ROTATION         the probe passed
    PROBING            -> OUT                 the probe failed: the next one after twice the wait
    PROBING            -> BACK_WHILE_PROBING  it answered a request while its probe runs
    BACK_WHILE_PROBING -> IN_ROTATION         the probe ended, passed or not
    BACK_WHILE_PROBING -> PROBING             it left rotation again before its probe ended

Every server starts IN_ROTATION; with one server it never leaves. Leaving
and rejoining rotation is ``_leave`` and ``_rejoin``, every move goes
through one guard, ``Endpoints._become``. A server has one probe at a time:
BACK_WHILE_PROBING remembers that a server back in rotation still has a
probe running, so that leaving again starts no second one.

Counters are kept under one lock, since a backend is shared by every loop
and thread of the process; the single-server case takes no part in
rotation, so it pays for a lock and a counter only.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...scheduling import KEY_SLACK, PREFIX_HOLD, PREFIX_SLACK, SHARE_SLACK, server_seed, weight

if TYPE_CHECKING:
    from .._errors import Where
    from .._gate import Gate
    from ._adaptive import AdaptiveConcurrency
    from ._loopclients import LoopClients

__all__ = [
    "Endpoint",
    "EndpointSnapshot",
    "Endpoints",
    "each_checked",
    "first_passing",
    "none_passed",
    "short_reason",
]

#: Connection failures in a row (resets, timeouts) that take a server out of
#: rotation; one refused connection is enough (nothing listens there).
_FAILURES_TO_LEAVE = 3
#: Seconds before the first probe of a server that left rotation, and the cap
#: of the doubling that follows each failed probe.
_FIRST_PROBE = 0.5
_LAST_PROBE = 15.0
# How deep the line is searched for a waiter without a prefix key (a
# shunning re-run) when the room freed suits no one by key.
_SCAN = 64
#: Attempts by prefix key a server may take over its share (``SHARE_SLACK``
#: above the mean) before the bound applies: a small batch is not spread.
_SHARE_FLOOR = 16
#: Keys whose ranking of the servers is remembered (a batch's prefixes repeat).
_RANKINGS_KEPT = 4096

Probe = Callable[["Endpoint"], Coroutine[Any, Any, None]]
Check = Probe


class _Health(enum.Enum):
    """Whether new requests go to a server, and whether it is probed (see the module docstring)."""

    # Identity hashing, in C: the members are singletons (as in _thunk._State).
    __hash__ = object.__hash__

    IN_ROTATION = "in rotation"
    OUT = "out of rotation"
    PROBING = "out of rotation, probed"
    BACK_WHILE_PROBING = "in rotation, its probe still running"


_IN_ROTATION, _OUT = _Health.IN_ROTATION, _Health.OUT
_PROBING, _BACK_WHILE_PROBING = _Health.PROBING, _Health.BACK_WHILE_PROBING

_TRANSITIONS: dict[_Health, frozenset[_Health]] = {
    _IN_ROTATION: frozenset({_OUT}),
    _OUT: frozenset({_PROBING, _IN_ROTATION}),
    _PROBING: frozenset({_IN_ROTATION, _OUT, _BACK_WHILE_PROBING}),
    _BACK_WHILE_PROBING: frozenset({_IN_ROTATION, _PROBING}),
}

# Where leaving and rejoining rotation go from each state that may. _ROTATING
# is a tuple, not a set: `in` tests identity first, without hashing.
_LEAVING = {_IN_ROTATION: _OUT, _BACK_WHILE_PROBING: _PROBING}
_REJOINING = {_OUT: _IN_ROTATION, _PROBING: _BACK_WHILE_PROBING}
_ROTATING = (_IN_ROTATION, _BACK_WHILE_PROBING)


class _Waiter:
    """An attempt waiting for room on any server, on its own loop; ``shunning``
    if it may not take room on some servers (``acquire(shun=...)``);
    ``prefers``: the server its prefix key chose, in whose queue it also waits."""

    __slots__ = ("loop", "future", "woken", "shunning", "prefers", "key")

    def __init__(self, loop: asyncio.AbstractEventLoop, shunning: bool = False) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.woken = False
        self.shunning = shunning
        self.prefers: Endpoint | None = None
        self.key: int | None = None


def _wake_first(waiters: deque[_Waiter]) -> None:
    """Wake the first waiter whose loop still runs."""
    while waiters:
        waiter = waiters.popleft()
        _leave_preferred(waiter)
        if _wake(waiter):
            return


def _wake_first_unpreferring(waiters: deque[_Waiter]) -> bool:
    """Wake the first waiter that chose no server (no prefix key, or
    shunning), looking ``_SCAN`` deep past the head; whether one was woken."""
    while waiters and waiters[0].prefers is None:  # the common case: at the head
        if _wake(waiters.popleft()):
            return True
    for waiter in list(itertools.islice(waiters, _SCAN)):
        if waiter.prefers is None:
            waiters.remove(waiter)
            if _wake(waiter):
                return True
    return False


def _wake_first_unshunning(waiters: deque[_Waiter]) -> None:
    """Wake the first waiter that may take room on any server (its loop running).

    A shunning waiter woken for room it may not take hands it on here; never
    to another shunning one, which could hand it back (a wake-up ping-pong).
    """
    for waiter in list(waiters):
        if not waiter.shunning:
            waiters.remove(waiter)
            _leave_preferred(waiter)
            if _wake(waiter):
                return


def _leave_preferred(waiter: _Waiter) -> None:
    """Out of its chosen server's queue, if in one (the router's lock is held)."""
    if waiter.prefers is not None:
        waiter.prefers.queue.remove(waiter)
        waiter.prefers = None


def _held(endpoint: Endpoint, key: int | None) -> bool:
    """Whether a prompt with prefix ``key`` waits before going to ``endpoint``:
    the first prompt of that prefix there is being prefilled (no first token
    yet) and ``PREFIX_HOLD`` has not passed (the router's lock is held)."""
    if key is None:
        return False
    due = endpoint.warming.get(key)
    if due is None:
        return False
    if time.monotonic() < due:
        return True
    del endpoint.warming[key]  # held long enough: the prompts go in anyway
    return False


def _first_unheld(endpoint: Endpoint) -> _Waiter | None:
    """The earliest waiter in ``endpoint``'s queue not held (see ``_held``)."""
    return next((w for w in endpoint.queue if not _held(endpoint, w.key)), None)


def _warm_up(endpoint: Endpoint, key: int) -> None:
    """A prompt with prefix ``key`` goes to ``endpoint``: unless the prefix is
    cached there or on its way, the next ones wait for its first token."""
    if key not in endpoint.warm and key not in endpoint.warming:
        endpoint.warming[key] = time.monotonic() + PREFIX_HOLD


def _hold_left(waiter: _Waiter) -> float | None:
    """Seconds ``waiter`` is held at most, None if it is not held."""
    endpoint = waiter.prefers
    if endpoint is None or not endpoint.warming:
        return None
    due = endpoint.warming.get(waiter.key) if waiter.key is not None else None
    return None if due is None else max(0.0, due - time.monotonic())


def _wake(waiter: _Waiter) -> bool:
    waiter.woken = True
    try:
        waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
    except RuntimeError:
        return False  # that waiter's loop is closed; nobody is waiting there
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    """One server at one instant, for a progress display.

    Attributes:
        base_url: the server's API root.
        in_flight: requests sent to it (holding one of its slots) and not ended.
        limit: its concurrency limit now (None: no cap).
        in_rotation: whether new requests are sent to it.
        served: generations it answered to the end.
        tokens: completion tokens of those answers (as their usage reported).
        failures: connection failures in a row (0 once it answers).
        overloads: congestion signals so far (429/503/529 answers, connections refused
            while busy).
        overloaded_at: ``time.monotonic()`` of the last of them (0.0: none);
            hedging and a batch's racing hold off for a while after one.
    """

    base_url: str
    in_flight: int
    limit: int | None
    in_rotation: bool
    served: int
    tokens: int
    failures: int
    overloads: int = 0
    overloaded_at: float = 0.0


class Endpoint:
    """One server: its URL, concurrency gate, per-loop HTTP clients and health."""

    __slots__ = (
        "base_url", "gate", "adaptive", "clients", "in_flight", "served", "tokens",
        "failures", "health", "due", "backoff", "_where", "overloaded_at",
        "overloads", "seed", "queue", "homes", "warming", "warm", "taken",
    )  # fmt: skip

    def __init__(
        self, base_url: str, gate: Gate | None, adaptive: AdaptiveConcurrency | None, clients: LoopClients
    ) -> None:
        self.base_url = base_url
        self.gate = gate
        self.adaptive = adaptive
        self.clients = clients
        self.in_flight = 0
        self.served = 0
        self.tokens = 0
        self.failures = 0
        self.overloads = 0  # counted without the lock: a signal, a lost count is harmless
        self.health = _IN_ROTATION  # changed only by Endpoints._become
        self.due = 0.0  # when out: time.monotonic() of the next probe
        self.backoff = _FIRST_PROBE
        self._where: Where | None = None
        # time.monotonic() of its last 429/503/529 (0.0: none): hedging and racing pause after one.
        self.overloaded_at = 0.0
        self.seed = server_seed(base_url)  # its rank for a prefix key (rendezvous hashing)
        self.queue: deque[_Waiter] = deque()  # attempts waiting that chose it by their prefix key
        self.homes = 0  # prefix keys whose home it is
        # Prefix keys whose first prompt here is being prefilled (until its
        # first token, at most until this time.monotonic()), and those whose
        # first prompt here got its first token (the prefix is in its cache).
        self.warming: dict[int, float] = {}
        self.warm: set[int] = set()
        self.taken = 0  # attempts routed to it by prefix key: their share is bounded

    def where(self, provider: str, model: str | None) -> Where:
        """The error context for this server; one shared object while the model stays."""
        where = self._where
        if where is None or where.model != model:
            from .._errors import Where

            where = self._where = Where(provider, model, self.base_url)
        return where

    def load(self) -> float:
        """Requests in flight per slot: what routing compares."""
        gate = self.gate
        return self.in_flight / gate.limit if gate is not None else float(self.in_flight)

    def pressure(self) -> float:
        """Requests in flight and attempts waiting for it, per slot: what
        prefix routing bounds."""
        gate = self.gate
        pending = self.in_flight + len(self.queue)
        return pending / gate.limit if gate is not None else float(pending)

    def snapshot(self) -> EndpointSnapshot:
        limit = None if self.gate is None else self.gate.limit
        in_rotation = self.health in _ROTATING
        return EndpointSnapshot(
            self.base_url, self.in_flight, limit, in_rotation, self.served, self.tokens, self.failures,
            self.overloads, self.overloaded_at,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<Endpoint {self.base_url} in_flight={self.in_flight} {self.health.value}>"


class Endpoints:
    """The router over one backend's servers (see the module docstring).

    Args:
        endpoints: the servers, at least one.
        probe: ``await probe(endpoint)`` returns if the server answers and
            raises otherwise; used to bring servers back into rotation.
        hold_prefixes: hold a prefix's further prompts for a server until its
            first prompt there got its first token (``warmed``); only for a
            caller that reports first tokens and ends through ``warmed``.
    """

    def __init__(self, endpoints: Sequence[Endpoint], probe: Probe, *, hold_prefixes: bool = False) -> None:
        if not endpoints:
            raise ValueError("a backend needs at least one endpoint")
        self.all: tuple[Endpoint, ...] = tuple(endpoints)
        self.several = len(self.all) > 1
        self._probe = probe
        self._lock = threading.Lock()
        self._turn = 0
        self._out = 0  # servers out of rotation: the common case (none) skips the probe check
        self._probes: set[asyncio.Task[None]] = set()
        # Attempts waiting for room on any server: with several servers an
        # attempt does not queue at one server's gate, where it would stay
        # committed to a slow server while a fast one frees slots.
        self._waiters: deque[_Waiter] = deque()
        self._rankings: dict[int, tuple[Endpoint, ...]] = {}
        self._homed = 0  # prefixes given a home (the sum of every server's homes)
        self._hold = hold_prefixes

    # -- routing ---------------------------------------------------------------------

    async def acquire(
        self, avoid: Sequence[Endpoint] = (), shun: Sequence[Endpoint] = (), key: int | None = None
    ) -> Endpoint:
        """A slot on the server for the next attempt, held until ``release``.

        Args:
            avoid: servers this generation already failed on; used only when
                no other server in rotation has room.
            shun: servers used only when no other server is in rotation
                (this waits for room on another instead).
            key: the prompt's prefix key (``motio.scheduling.prefix_key``):
                route to the server that holds its prefix, within the slack;
                None: to the least loaded.
        """
        if not self.several:
            endpoint = self.all[0]
            if endpoint.gate is not None:
                await endpoint.gate.acquire()
            with self._lock:
                endpoint.in_flight += 1
            return endpoint
        waiter = None
        while True:
            with self._lock:
                if self._out:
                    self._start_due_probes()
                # Waiters go first: a newcomer takes a free slot only when
                # nobody queues (a woken waiter that lost a race re-queues first).
                if self._waiters and waiter is None:
                    chosen = None
                elif key is None:
                    chosen = self._take_least_loaded(avoid, shun)
                else:
                    chosen = self._take_by_key(key, avoid, shun)
                if chosen is not None:
                    chosen.in_flight += 1
                    if key is not None:
                        chosen.taken += 1
                        if self._hold:
                            _warm_up(chosen, key)
                    self._pass_on_room()
                    return chosen
                if waiter is None:
                    waiter = _Waiter(asyncio.get_running_loop(), bool(shun))
                    self._enqueue(waiter, key, avoid, shun)
                    if self._waiters and self._waiters[0].shunning and not shun and self._room_anywhere():
                        # Room the shunning head of the line will not take: this one may.
                        _wake_first_unshunning(self._waiters)
                else:  # woken, but a newcomer took the room (or it is shunned): first in line again
                    waiter = _Waiter(waiter.loop, waiter.shunning)
                    self._enqueue(waiter, key, avoid, shun, first=True)
                    if shun and self._room_anywhere():
                        _wake_first_unshunning(self._waiters)
                hold = _hold_left(waiter)
            await self._wait(waiter, hold)

    def _enqueue(
        self,
        waiter: _Waiter,
        key: int | None,
        avoid: Sequence[Endpoint],
        shun: Sequence[Endpoint],
        *,
        first: bool = False,
    ) -> None:
        """Queue ``waiter`` in the line, and for the server its key chooses if
        it has one (the lock is held)."""
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        if key is None or waiter.shunning:
            if any(e.warming for e in self.all) and self._room_anywhere():
                self._pass_on_room()  # room the held waiters ahead of it leave
            return
        prefers = next(self._within_slack(key, avoid, shun), None)
        if prefers is not None:
            waiter.prefers, waiter.key = prefers, key
            if first:
                prefers.queue.appendleft(waiter)
            else:
                prefers.queue.append(waiter)
            if prefers.gate is not None and prefers.gate.in_flight < prefers.gate.limit:
                self._wake_for(prefers)  # room there that nobody was woken for

    async def _wait(self, waiter: _Waiter, hold: float | None = None) -> None:
        """Until ``waiter`` is woken; a held waiter (see ``_held``) at most
        ``hold`` seconds, then it leaves the line to try again."""
        try:
            if hold is None:
                await waiter.future
                return
            done, _ = await asyncio.wait((waiter.future,), timeout=hold)
            if not done:
                with self._lock:
                    if not waiter.woken:  # the hold ran out: out of line, to try again
                        waiter.woken = True
                        self._waiters.remove(waiter)
                        _leave_preferred(waiter)
        except BaseException:
            with self._lock:
                if waiter.woken:
                    self._pass_on_room()  # the wake-up reached us as we left: hand it on
                else:
                    self._waiters.remove(waiter)
                    _leave_preferred(waiter)
            raise

    def _take_least_loaded(self, avoid: Sequence[Endpoint], shun: Sequence[Endpoint]) -> Endpoint | None:
        """Take a slot on the least loaded server with room (the lock is held)."""
        candidates = [e for e in self.all if e.health in _ROTATING]
        if shun:
            candidates = [e for e in candidates if e not in shun] or candidates
        if candidates:
            # Start the scan one further each time, so that ties go round-robin.
            self._turn = start = (self._turn + 1) % len(candidates)
            ordered = sorted(candidates[start:] + candidates[:start], key=lambda e: (e in avoid, e.load()))
        else:
            ordered = sorted(self.all, key=lambda e: e.due)  # none in rotation: the one due back first
        for endpoint in ordered:
            if endpoint.gate is None or endpoint.gate.try_acquire():
                return endpoint
        return None

    def _take_by_key(self, key: int, avoid: Sequence[Endpoint], shun: Sequence[Endpoint]) -> Endpoint | None:
        """Take a slot on the first server in ``key``'s order within the slack
        that has room, else on the least loaded with room (the lock is held)."""
        for endpoint in self._within_slack(key, avoid, shun):
            if _held(endpoint, key):
                return None  # its first prompt there is being prefilled: wait for it
            if endpoint.gate is None or endpoint.gate.try_acquire():
                return endpoint
        # Nothing within the slack has room: a free slot elsewhere is not left idle.
        return self._take_least_loaded(avoid, shun)

    def _within_slack(
        self, key: int, avoid: Sequence[Endpoint], shun: Sequence[Endpoint]
    ) -> Iterator[Endpoint]:
        """The servers in rotation, in ``key``'s order, whose load is at most
        ``PREFIX_SLACK`` above the least loaded's; not those in ``avoid``
        nor ``shun`` (the lock is held)."""
        candidates = [e for e in self.all if e.health in _ROTATING and e not in avoid and e not in shun]
        if not candidates:
            return
        least = min(e.load() for e in candidates)
        # Bounded loads over prompts too: a server past its share is skipped.
        most = (1 + SHARE_SLACK) * sum(e.taken for e in candidates) / len(candidates) + _SHARE_FLOOR
        for endpoint in self._ranking(key, candidates):
            if endpoint in candidates and endpoint.load() - least <= PREFIX_SLACK and endpoint.taken <= most:
                yield endpoint

    def _ranking(self, key: int, candidates: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
        """Every server, in the order ``key`` prefers them: its home first.

        A key seen for the first time is given a home: its first choice by
        rendezvous hashing unless that server's pressure (in flight and
        waiting, per slot) is more than ``PREFIX_SLACK`` above the least
        pressed one's, then the next within the slack. Its home stays
        until a server with nothing to do takes its prompts (``_wake_for``).
        """
        ranking = self._rankings.get(key)
        if ranking is None:
            if len(self._rankings) >= _RANKINGS_KEPT:
                self._rankings.clear()  # a new batch's prefixes: start again
                self._homed = 0
                for endpoint in self.all:
                    endpoint.homes = 0
            ranking = tuple(sorted(self.all, key=lambda e: weight(key, e.seed), reverse=True))
            # Bounded loads over prefixes: at most (1 + slack) times the mean
            # number of prefixes homed on a server.
            self._homed += 1
            cap = math.ceil((1 + KEY_SLACK) * self._homed / len(candidates))
            home = next((e for e in ranking if e in candidates and e.homes < cap), ranking[0])
            home.homes += 1
            if home is not ranking[0]:
                ranking = (home, *(e for e in ranking if e is not home))
            self._rankings[key] = ranking
        return ranking

    def _settle(self, key: int, endpoint: Endpoint) -> None:
        """``key``'s home is now ``endpoint``: its next prompts go there
        first, so that a group moves whole (the lock is held)."""
        ranking = self._rankings[key]
        if ranking[0] is not endpoint:
            ranking[0].homes -= 1
            endpoint.homes += 1
            self._rankings[key] = (endpoint, *(e for e in ranking if e is not endpoint))

    def _move(self, key: int | None, source: Endpoint, to: Endpoint) -> None:
        """Re-home ``key`` on ``to``, its waiters queued at ``source`` with it (the lock is held)."""
        assert key is not None  # only waiters with a key are queued for a server
        self._settle(key, to)
        moving = [w for w in source.queue if w.key == key]
        for waiter in moving:
            source.queue.remove(waiter)
            waiter.prefers = to
        to.queue.extend(moving)

    def _pass_on_room(self) -> None:
        """Wake a waiter for a server that may have room: one that chose
        that server by its key, else the first (the lock is held)."""
        if self._waiters:
            for endpoint in self.all:
                if (endpoint.gate is None or endpoint.gate.in_flight < endpoint.gate.limit) and self._wake_for(
                    endpoint
                ):
                    return

    def _wake_for(self, endpoint: Endpoint) -> bool:
        """Wake the earliest waiter that chose ``endpoint``; else move a prefix
        here from a server whose queue is past the slack; else the first in
        line that chose no server. False if nobody was woken (the lock is held).

        Room left to nobody is taken by the next prompt that chooses this
        server, or at its next release: a prefix moved to a server that
        does not hold it costs its prefill there and evicts another.
        """
        queue = endpoint.queue
        while queue:
            waiter = queue[0] if not endpoint.warming else _first_unheld(endpoint)
            if waiter is None:
                break  # every prompt waiting for it waits for its prefix's first prompt there
            queue.remove(waiter)
            waiter.prefers = None
            self._waiters.remove(waiter)
            if _wake(waiter):
                return True
        source = self._source_for(endpoint)
        if source is not None:
            # Its newest waiter's prefix (likely not started there) moves
            # here with every prompt of it waiting there: the group moves whole.
            self._move(source.queue[-1].key, source, endpoint)
            return self._wake_for(endpoint)
        return _wake_first_unpreferring(self._waiters)

    def _source_for(self, idle: Endpoint) -> Endpoint | None:
        """Whose waiters ``idle`` may take: a server that cannot serve its
        queue (out of rotation, or nothing in flight whose end would wake
        it), else the longest queue if more than the slack above ``idle``'s
        pressure; None to leave the room."""
        queued = [e for e in self.all if e.queue and e is not idle]
        if not queued:
            return None
        stuck = next((e for e in queued if e.health not in _ROTATING or e.in_flight == 0), None)
        if stuck is not None:
            return stuck
        longest = max(queued, key=lambda e: len(e.queue))
        return longest if longest.pressure() - idle.pressure() > PREFIX_SLACK else None

    def _room_anywhere(self) -> bool:
        return any(e.gate is None or e.gate.in_flight < e.gate.limit for e in self.all)

    def release(self, endpoint: Endpoint, finished: bool, usage: dict[str, Any] | None) -> None:
        """An attempt on ``endpoint`` ended (its gate slot already given back);
        ``finished`` if it was answered to the end."""
        with self._lock:
            endpoint.in_flight -= 1
            if finished:
                endpoint.served += 1
                tokens = (usage or {}).get("completion_tokens")
                if isinstance(tokens, int):
                    endpoint.tokens += tokens
            if self._waiters:
                self._wake_for(endpoint)

    def warmed(self, endpoint: Endpoint, key: int, *, cached: bool) -> None:
        """The first prompt with prefix ``key`` on ``endpoint`` got its first
        token (``cached``: the server holds the prefix now) or ended without
        one: the prompts of that prefix held for it may go there."""
        if key not in endpoint.warming:
            return  # the common case: not the first of its prefix there
        with self._lock:
            if endpoint.warming.pop(key, None) is None:
                return
            if cached:
                if len(endpoint.warm) >= _RANKINGS_KEPT:
                    endpoint.warm.clear()
                endpoint.warm.add(key)
            gate = endpoint.gate
            room = len(endpoint.queue) if gate is None else gate.limit - gate.in_flight
            for waiter in [w for w in endpoint.queue if w.key == key][: max(room, 0)]:
                endpoint.queue.remove(waiter)
                waiter.prefers = None
                self._waiters.remove(waiter)
                _wake(waiter)

    def can_fail_over(self, tried: Sequence[Endpoint]) -> bool:
        """Whether a server in rotation remains that this generation has not failed on."""
        return any(e.health in _ROTATING and e not in tried for e in self.all)

    # -- health ----------------------------------------------------------------------

    def answered(self, endpoint: Endpoint) -> None:
        """The server answered (any HTTP status): it is up."""
        # One identity test per answer: the common case, nothing to change.
        if endpoint.failures or endpoint.health is not _IN_ROTATION:
            with self._lock:
                endpoint.failures = 0
                self._rejoin(endpoint)

    def failed(self, endpoint: Endpoint, *, refused: bool) -> None:
        """A connection to the server failed before it answered."""
        if not self.several:
            return
        with self._lock:
            endpoint.failures += 1
            if refused or endpoint.failures >= _FAILURES_TO_LEAVE:
                self._leave(endpoint)

    def mark_out(self, endpoint: Endpoint) -> None:
        """Take a server out of rotation now (a failed check, a 404 for the
        model); it is probed later."""
        if not self.several:
            return
        with self._lock:
            self._leave(endpoint)

    def _leave(self, endpoint: Endpoint) -> None:
        """Out of rotation, if in it; probed once ``backoff`` has passed (the lock is held)."""
        leaving = _LEAVING.get(endpoint.health)
        if leaving is not None:
            self._become(endpoint, leaving)
            endpoint.due = time.monotonic() + endpoint.backoff
            self._out += 1

    def _rejoin(self, endpoint: Endpoint, to: _Health | None = None) -> None:
        """Back in rotation (to ``to``, else where an answer takes it), if out
        of it; the next wait is the first again (the lock is held)."""
        rejoining = _REJOINING.get(endpoint.health) if to is None else to
        if rejoining is not None:
            self._become(endpoint, rejoining)
            self._out -= 1
            # Its share counts from now: not a flood to catch up on what it missed.
            endpoint.taken = max(endpoint.taken, max(e.taken for e in self.all) - _SHARE_FLOOR)
        endpoint.backoff = _FIRST_PROBE

    @staticmethod
    def _become(endpoint: Endpoint, health: _Health) -> None:
        """Move ``endpoint`` to ``health``, which ``_TRANSITIONS`` must allow."""
        if health not in _TRANSITIONS[endpoint.health]:
            now = endpoint.health.value
            raise RuntimeError(f"{endpoint.base_url} cannot go from {now} to {health.value}")
        endpoint.health = health

    def _start_due_probes(self) -> None:
        """Probe every server whose time has come, once at a time (the lock is held)."""
        now = time.monotonic()
        for endpoint in self.all:
            if endpoint.health is _OUT and now >= endpoint.due:
                self._become(endpoint, _PROBING)
                task = asyncio.get_running_loop().create_task(self._run_probe(endpoint))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def _run_probe(self, endpoint: Endpoint) -> None:
        try:
            await self._probe(endpoint)
        except asyncio.CancelledError:
            self._end_probe(endpoint, answered=False)
            raise
        except Exception:  # noqa: BLE001 - any failure means "not back yet"
            self._end_probe(endpoint, answered=False)
        else:
            self._end_probe(endpoint, answered=True)

    def _end_probe(self, endpoint: Endpoint, *, answered: bool) -> None:
        with self._lock:
            if answered:
                endpoint.failures = 0
            if endpoint.health is _BACK_WHILE_PROBING:  # an answer put it back already
                self._become(endpoint, _IN_ROTATION)
            elif answered:
                self._rejoin(endpoint, _IN_ROTATION)
            else:  # still out: the next probe waits twice as long
                endpoint.backoff = min(_LAST_PROBE, endpoint.backoff * 2)
                endpoint.due = time.monotonic() + endpoint.backoff
                self._become(endpoint, _OUT)

    async def cancel_probes(self) -> None:
        """Stop the probes running on this loop (at close)."""
        loop = asyncio.get_running_loop()
        mine = [t for t in list(self._probes) if t.get_loop() is loop]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)

    def snapshot(self) -> list[EndpointSnapshot]:
        """Every server's counters now, in the order they were given."""
        with self._lock:
            return [endpoint.snapshot() for endpoint in self.all]


# -- checking several servers -----------------------------------------------------------


async def first_passing(endpoints: Sequence[Endpoint], check: Check) -> None:
    """Check every server at once; return as soon as one passes.

    A mid-run "is the server gone?" must not wait for a dead server's
    timeout when another one answers at once, so the rest are cancelled.

    Raises:
        BackendError: none passed; one line naming each server and its failure
            (of the failures' common type, else ``BackendConnectionError``).
    """
    pending = {asyncio.get_running_loop().create_task(check(e)): e for e in endpoints}
    errors: dict[Endpoint, BaseException] = {}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                endpoint = pending.pop(task)
                error = task.exception()
                if error is None:
                    return
                errors[endpoint] = error
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    raise none_passed([(e.base_url, errors[e]) for e in endpoints])


async def each_checked(
    endpoints: Sequence[Endpoint], check: Check, timeout: float | None
) -> list[tuple[str, Any]]:
    """Check every server at once, each within ``timeout``; per server, its
    base URL and None or the error it failed with."""

    async def one(endpoint: Endpoint) -> Any:
        try:
            async with asyncio.timeout(timeout):
                await check(endpoint)
        except TimeoutError as exc:
            if type(exc) is not TimeoutError:
                return exc  # the check's own timeout error, with its context
            from ..._exceptions import BackendTimeoutError

            return BackendTimeoutError(
                f"{endpoint.base_url}: no answer to GET /models within {timeout:g} s",
                base_url=endpoint.base_url,
                timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - each server's failure is reported, not raised
            return exc
        return None

    errors = await asyncio.gather(*(one(e) for e in endpoints))
    return [(e.base_url, error) for e, error in zip(endpoints, errors, strict=True)]


def none_passed(failures: Sequence[tuple[str, BaseException]]) -> Exception:
    """One error for servers that all failed their check, naming each."""
    from ..._exceptions import BackendConnectionError, BackendError, MotioError

    parts = "; ".join(f"{url}: {short_reason(url, error)}" for url, error in failures)
    message = f"none of the {len(failures)} servers answers ({parts})"
    _, sep, hint = str(failures[0][1]).strip().partition("; check ")
    if sep:  # the first server's hint, said once
        message += "; check " + hint.splitlines()[0]
    kinds = {type(error) for _, error in failures}
    first = failures[0][1]
    if len(kinds) == 1 and isinstance(first, BackendError):
        from .._errors import copy_error

        return copy_error(first, message)
    if len(kinds) == 1 and isinstance(first, MotioError):
        return type(first)(message)
    return BackendConnectionError(message)


def short_reason(url: str, error: BaseException) -> str:
    """An error's first line, without the "openai backend at URL (model ...): " the list already says."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    head, sep, rest = line.partition(": ")
    reason = rest if sep and url in head else line
    # The hint ("; check that the server is running...") is the same for
    # every server of a list: said once by whoever prints the list, if at all.
    return reason.split("; check ", 1)[0]
