"""A server's health in a router: one state, one transition table, the diagram that draws it.

The router runs for real with a probe of its own that the test opens and
closes (an event per probe), so each step of the lifecycle is taken by the
call that takes it in a batch: a refused connection, a request routed when
the probe is due, an answer, the probe's end.
"""

from __future__ import annotations

import asyncio
import re

import pytest

import motio.backends.http._endpoints as endpoints_module
from motio.backends._gate import Gate
from motio.backends.http._endpoints import _TRANSITIONS, Endpoint, Endpoints, _Health
from motio.backends.http._loopclients import LoopClients
from tests.asyncutil import run

EDGE = re.compile(r"^\s+([A-Z_]+)\s+->\s+([A-Z_]+)\s", re.MULTILINE)
WAIT = 5.0


def test_the_docstring_diagram_is_the_transition_table_edge_for_edge() -> None:
    drawn: set[tuple[str, str]] = set(EDGE.findall(endpoints_module.__doc__ or ""))
    table = {(a.name, b.name) for a, targets in _TRANSITIONS.items() for b in targets}
    assert drawn == table
    assert set(_TRANSITIONS) == set(_Health)  # every state has its row


class Probes:
    """The router's probe: each one waits for the test to pass or fail it."""

    def __init__(self) -> None:
        self.started = 0
        self.outcome: asyncio.Queue[bool] = asyncio.Queue()

    async def __call__(self, endpoint: Endpoint) -> None:
        self.started += 1
        if not await asyncio.wait_for(self.outcome.get(), WAIT):
            raise ConnectionRefusedError(endpoint.base_url)


def two_servers(probes: Probes) -> Endpoints:
    servers = [Endpoint(f"http://s{i}/v1", Gate(4), None, LoopClients(object)) for i in range(2)]
    return Endpoints(servers, probes)


async def routed(routes: Endpoints) -> None:
    """Route one request and end it: what starts a due probe."""
    endpoint = await asyncio.wait_for(routes.acquire(), WAIT)
    assert endpoint.gate is not None
    endpoint.gate.release()
    routes.release(endpoint, True, None)


async def settled(routes: Endpoints, endpoint: Endpoint, health: _Health) -> None:
    """Wait (bounded) until the probe task is over and ``endpoint`` is in ``health``."""
    async with asyncio.timeout(WAIT):
        while routes._probes or endpoint.health is not health:
            await asyncio.sleep(0)


def due_now(endpoint: Endpoint) -> None:
    endpoint.due = 0.0  # rather than wait out the backoff in real time


def test_a_server_walks_out_probed_back_and_in_again() -> None:
    async def main() -> list[tuple[_Health, bool, float]]:
        probes = Probes()
        routes = two_servers(probes)
        server = routes.all[0]
        seen = []

        def note() -> None:
            seen.append((server.health, server.snapshot().in_rotation, server.backoff))

        note()
        routes.failed(server, refused=True)
        note()
        due_now(server)
        await routed(routes)
        note()
        probes.outcome.put_nowait(False)  # the probe fails: out, waiting twice as long
        await settled(routes, server, _Health.OUT)
        note()
        due_now(server)
        await routed(routes)
        probes.outcome.put_nowait(True)  # the probe passes
        await settled(routes, server, _Health.IN_ROTATION)
        note()
        assert probes.started == 2 and routes._out == 0
        return seen

    first = endpoints_module._FIRST_PROBE
    assert run(main()) == [
        (_Health.IN_ROTATION, True, first),
        (_Health.OUT, False, first),
        (_Health.PROBING, False, first),
        (_Health.OUT, False, first * 2),
        (_Health.IN_ROTATION, True, first),
    ]


def test_an_answer_during_the_probe_puts_it_back_and_no_second_probe_starts() -> None:
    async def main() -> list[_Health]:
        probes = Probes()
        routes = two_servers(probes)
        server = routes.all[0]
        routes.mark_out(server)
        due_now(server)
        await routed(routes)
        seen = [server.health]
        routes.answered(server)  # a request still in flight there answered
        seen.append(server.health)
        assert server.snapshot().in_rotation and routes.can_fail_over([routes.all[1]])
        routes.mark_out(server)  # out again before the probe ended
        due_now(server)
        await routed(routes)
        seen.append(server.health)
        assert probes.started == 1 and len(routes._probes) == 1  # one probe at a time
        routes.answered(server)
        probes.outcome.put_nowait(False)  # the old probe fails, but the server answered since
        await settled(routes, server, _Health.IN_ROTATION)
        seen.append(server.health)
        assert routes._out == 0 and server.backoff == endpoints_module._FIRST_PROBE
        return seen

    assert run(main()) == [
        _Health.PROBING,
        _Health.BACK_WHILE_PROBING,
        _Health.PROBING,
        _Health.IN_ROTATION,
    ]


def test_connection_failures_take_it_out_at_the_third_in_a_row() -> None:
    routes = two_servers(Probes())
    server = routes.all[0]
    seen = []
    for answers in (False, False, True, False, False, False, True):
        if answers:
            routes.answered(server)  # resets the count
        else:
            routes.failed(server, refused=False)
        seen.append((server.health, server.failures))
    assert seen == [
        (_Health.IN_ROTATION, 1),
        (_Health.IN_ROTATION, 2),
        (_Health.IN_ROTATION, 0),
        (_Health.IN_ROTATION, 1),
        (_Health.IN_ROTATION, 2),
        (_Health.OUT, 3),
        (_Health.IN_ROTATION, 0),
    ]
    assert routes._out == 0


def test_a_single_server_never_leaves_rotation() -> None:
    only = Endpoint("http://only/v1", None, None, LoopClients(object))
    routes = Endpoints([only], Probes())
    routes.failed(only, refused=True)
    routes.mark_out(only)
    assert only.health is _Health.IN_ROTATION and only.snapshot().in_rotation


def test_a_move_the_table_does_not_allow_is_refused() -> None:
    server = two_servers(Probes()).all[0]
    with pytest.raises(RuntimeError, match="cannot go from in rotation to out of rotation, probed"):
        Endpoints._become(server, _Health.PROBING)
    assert server.health is _Health.IN_ROTATION
