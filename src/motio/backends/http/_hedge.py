"""``generate(hedge=...)``: a second request when the first token is late.

One generation, two legs at most, each a whole ``Exchange`` of its own
(retries, failover, its own fold into private metadata):

    leg 1: sent at once --------------------- first content? ----+
    hedge timer: from leg 1's send, ``hedge`` s (True: the      |--> the winner's
      backend's recent p95 time to first content)               |    stream (or
    leg 2: sent when the timer fires and leg 1 has no content,  |    text) is the
      to another server than leg 1's (the same one if it is  ---+    thunk's source
      the only one in rotation)

The first leg to bring content wins: the thunk commits to it (its stream is
the one the thunk reads, untouched, so the rest of the answer costs what an
unhedged one does), and the other leg is cancelled at once, which closes its
connection: the server sees the client leave. The winner's metadata becomes
the thunk's (``base_url``, ``request_id``, ``attempts``, ``queued_ms``),
with ``hedged`` True when a second request was sent.

Decisions, for the documentation:

- A leg that fails before content (its retries spent) while the other is
  still waiting does not fail the generation: the other may still win. Both
  failed: the first leg's error is raised (what an unhedged call raises).
  The first leg failing before the timer fires sends no hedge.
- ``first_token_timeout`` bounds each request of each leg from its own
  send, as it bounds each attempt; ``total_timeout`` bounds the whole
  generation, both legs included (they share its deadline); the chunk
  timeout applies to the winner's stream as usual.
- Nothing is hedged within ``OVERLOAD_PAUSE`` s of a 429/503/529 from any
  server of the backend, nor beyond the budget (``motio.scheduling``), nor
  when the servers the hedge may go to have no free concurrency slot (it
  would wait behind other requests, then take a slot one of them needs).
- Cancelling the thunk (``aclose()``, a cancelled consumer) while legs are
  in flight cancels and closes both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._exceptions import ConfigurationError
from ..._thunk import GenerationMeta
from ._exchange import Exchange

if TYPE_CHECKING:
    import aiohttp

    from ..._thunk import ModelOutputThunk
    from .._base import Request
    from .._errors import Where
    from ._endpoints import Endpoint, Endpoints
    from ...scheduling import HedgePolicy
    from ._exchange import Host, HTTPFold
    from ._http import HTTPClient
    from ._loopclients import LoopClient
    from ._ratelimit import Reservation
    from ._retry import RetryPolicy

__all__ = ["HedgeFold", "hedge_delay", "open_hedged"]

_log = logging.getLogger("motio")
# What a leg's private metadata hands to the thunk's when it wins: all but
# what generate() and the thunk set themselves.
_ADOPTED = tuple(
    f.name for f in dataclasses.fields(GenerationMeta) if f.name not in ("provider", "streaming", "ttfb_ms")
)


def hedge_delay(hedge: object) -> float | None:
    """``hedge=`` parsed: None for the policy's delay (True), else seconds.

    Raises:
        ConfigurationError: not True, False, None or a number of seconds >= 0.
    """
    if hedge is True:
        return None
    if isinstance(hedge, bool) or not isinstance(hedge, (int, float)) or not hedge >= 0:
        raise ConfigurationError(
            f"hedge= must be True (after the recent p95 time to first token), a number of "
            f"seconds >= 0, or False/None (off), got {hedge!r}"
        )
    return float(hedge)


class _Leg:
    """The backend as one leg's ``Exchange`` sees it (its ``Host``): the
    backend's own, noting when the leg's first request went out and to which
    server (the hedge timer runs from there, and the hedge avoids it)."""

    __slots__ = ("_backend", "sent", "server", "exchange")

    def __init__(self, backend: Host, sent: asyncio.Future[float]) -> None:
        self._backend = backend
        self.sent = sent
        self.server: Endpoint | None = None
        self.exchange: Exchange = None  # type: ignore[assignment]  # set once built

    # Read through to the backend (its model may be asked of a server
    # meanwhile); settable, as ``Host`` declares them.
    @property
    def model(self) -> str | None:
        return self._backend.model

    @model.setter
    def model(self, model: str | None) -> None:
        self._backend.model = model

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._backend.retry_policy

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy) -> None:
        self._backend.retry_policy = policy

    @property
    def router(self) -> Endpoints:
        return self._backend.router

    async def take_slot(
        self, tokens: int, avoid: Sequence[Endpoint], shun: Sequence[Endpoint], key: int | None = None
    ) -> tuple[Endpoint, Reservation | None]:
        endpoint, reservation = await self._backend.take_slot(tokens, avoid, shun, key)
        self.server = endpoint
        return endpoint, reservation

    def give_slot(
        self,
        endpoint: Endpoint,
        reservation: Reservation | None,
        usage: dict[str, Any] | None,
        finished: bool,
    ) -> None:
        self._backend.give_slot(endpoint, reservation, usage, finished)

    async def loop_client(self, endpoint: Endpoint) -> LoopClient:
        return await self._backend.loop_client(endpoint)

    async def prepare(
        self, entry: LoopClient, body: dict[str, Any], fold: HTTPFold, endpoint: Endpoint
    ) -> None:
        await self._backend.prepare(entry, body, fold, endpoint)

    def ask_usage(self, body: dict[str, Any]) -> None:
        self._backend.ask_usage(body)

    async def send(self, client: HTTPClient, body: dict[str, Any], where: Where) -> aiohttp.ClientResponse:
        if not self.sent.done():
            self.sent.set_result(asyncio.get_running_loop().time())
        return await self._backend.send(client, body, where)


class HedgeFold:
    """The ``Fold`` ``generate()`` binds: each leg folds into private
    metadata until one wins; then the winner's fold is the thunk's."""

    __slots__ = ("mot", "winner")

    def __init__(self) -> None:
        self.mot: ModelOutputThunk[Any] | None = None
        self.winner: HTTPFold | None = None

    def bind(self, mot: ModelOutputThunk[Any]) -> None:
        self.mot = mot

    def adopt(self, fold: HTTPFold) -> HTTPFold:
        """``fold``, bound to the thunk but folding into metadata of its own."""
        assert self.mot is not None  # generate() binds before the source runs
        fold.bind(self.mot)
        fold.meta = GenerationMeta()
        return fold

    def fold(self, chunk: Any) -> str | None:
        """Never called: the winner's stream folds with the winner's fold."""
        assert self.winner is not None
        return self.winner.fold(chunk)

    def commit(self, fold: HTTPFold, hedged: bool) -> None:
        """``fold``'s leg won: its metadata becomes the thunk's, and it folds there from now on."""
        assert self.mot is not None
        meta, own = self.mot.generation, fold.meta
        for name in _ADOPTED:
            value = getattr(own, name)
            if value is not None and value != []:
                setattr(meta, name, value)
        meta.base_url = fold.where.base_url
        meta.hedged = hedged
        fold.meta = meta
        self.winner = fold

    def finish(self, mot: ModelOutputThunk[Any]) -> None:
        assert self.winner is not None  # the source ended: a leg won
        self.winner.finish(mot)


def open_hedged(
    host: Host,
    policy: HedgePolicy,
    new_fold: Callable[[], HTTPFold],
    request: Request,
    body: dict[str, Any],
    tokens: int,
    shun: Sequence[Endpoint],
    after: float | None,
) -> tuple[Any, HedgeFold]:
    """The source and fold of a hedged generation (see the module docstring).

    Args:
        host: the backend, as each leg's ``Exchange`` sees it.
        policy: the backend's hedging policy.
        new_fold: a new fold of this generation's answer (one per leg).
        request, body, tokens: as an unhedged ``Exchange`` takes them.
        shun: servers to take only when no other is in rotation (``avoid_servers=``).
        after: seconds from the first send to the hedge; None: the policy's
            recent p95.
    """
    fold = HedgeFold()
    race = _Race(host, policy, new_fold, request, body, tokens, list(shun), after, fold)
    return race.run(), fold


class _Race:
    """One hedged generation's legs and who won."""

    def __init__(
        self,
        host: Host,
        policy: HedgePolicy,
        new_fold: Callable[[], HTTPFold],
        request: Request,
        body: dict[str, Any],
        tokens: int,
        shun: list[Endpoint],
        after: float | None,
        fold: HedgeFold,
    ) -> None:
        self._host = host
        self._policy = policy
        self._new_fold = new_fold
        self._request = request
        self._body = body
        self._tokens = tokens
        self._shun = shun
        self._after = after
        self._fold = fold
        self._legs: list[_Leg] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = 0.0  # loop time the race began
        self._winner: int | None = None

    async def run(self) -> Any:
        """Race the legs; the winner's stream (or whole text). Closes the loser."""
        delay = self._policy.ask(self._request.stream)
        if self._after is not None:
            delay = self._after
        try:
            return await self._race(delay)
        finally:
            await self._close_losers()

    def _start(self, shun: list[Endpoint], body: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        fold = self._fold.adopt(self._new_fold())
        leg = _Leg(self._host, loop.create_future())
        leg.exchange = exchange = Exchange(leg, body, fold, self._request, self._tokens)
        if shun:
            exchange.shun(shun)
        if self._legs:
            # The hedge's wait counts as its queueing, so ``ttfb_ms - queued_ms``
            # stays the winning server's own time to first token.
            fold.meta.queued_ms = (loop.time() - self._started) * 1000.0
        self._legs.append(leg)
        opener = exchange.open_stream() if self._request.stream else exchange.complete()
        self._tasks.append(loop.create_task(opener))

    async def _race(self, delay: float) -> Any:
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._start(self._shun, self._body)
        first, task = self._legs[0], self._tasks[0]
        await asyncio.wait((task, first.sent), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait((task,), timeout=max(0.0, delay - (loop.time() - first.sent.result())))
        if not task.done() and self._policy.allow(_last_overload(self._host), self._room(first)):
            assert first.server is not None
            _log.debug("%s: no first token after %.3f s; hedging", first.server.base_url, delay)
            # A copy: a protocol may change its body when a server refuses a field.
            self._start([*self._shun, first.server], dict(self._body))
        return await self._first_to_answer()

    def _room(self, first: _Leg) -> bool:
        """Whether a server the hedge may go to has a free slot: another than
        the first request's (and than ``avoid_servers=``) while one is in
        rotation, else any."""
        taken = {e.base_url for e in (*self._shun, first.server) if e is not None}
        rotating = [s for s in self._host.router.snapshot() if s.in_rotation]
        candidates = [s for s in rotating if s.base_url not in taken] or rotating
        return any(s.limit is None or s.in_flight < s.limit for s in candidates)

    async def _first_to_answer(self) -> Any:
        pending = set(self._tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Both done at once: the first leg wins (it was asked first).
            for index, task in enumerate(self._tasks):
                if task in done and task.exception() is None:
                    return self._commit(index, task.result())
        # Both failed: the first request's error, and its metadata (attempts,
        # server), as without hedging.
        self._fold.commit(self._legs[0].exchange.fold, hedged=len(self._legs) > 1)
        error = self._tasks[0].exception()
        assert error is not None
        raise error

    def _commit(self, index: int, result: Any) -> Any:
        legs, loop = self._legs, asyncio.get_running_loop()
        first_sent = legs[0].sent.result()
        self._policy.record(self._request.stream, loop.time() - first_sent, second_won=index > 0)
        self._fold.commit(legs[index].exchange.fold, hedged=len(legs) > 1)
        self._winner = index
        return result

    async def _close_losers(self) -> None:
        """Cancel the legs still in flight (closing their connections) and
        close a loser's stream that arrived with the winner's."""
        winner = self._winner
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for index, result in enumerate(results):
            # A whole answer (stream=False) holds nothing: it was read to its end.
            if index != winner and self._request.stream and not isinstance(result, BaseException):
                await result.aclose()


def _last_overload(host: Host) -> float | None:
    """When a server of ``host`` last answered 429/503/529 (None: never)."""
    latest = max(endpoint.overloaded_at for endpoint in host.router.all)
    return latest or None
