"""The aiohttp internals ``backends/http/_compat.py`` relies on are still there.

If an aiohttp release renames or reshapes them, these fail loudly instead of
a dead loop's sockets leaking quietly.
"""

from __future__ import annotations

import asyncio
import gc
import warnings

import aiohttp

from motio.backends.http._compat import close_connector_without_loop
from tests.servers.scripted import running


def test_a_dead_loops_pooled_sockets_are_closed_without_touching_it() -> None:
    with running() as server:
        loop = asyncio.new_event_loop()

        async def pool_one_connection() -> aiohttp.ClientSession:
            session = aiohttp.ClientSession()
            async with session.get(server.base_url + "/models") as response:
                await response.read()
            return session

        session = loop.run_until_complete(pool_one_connection())
        connector = session.connector
        assert connector is not None
        pooled = [protocol for conns in connector._conns.values() for protocol, _ in conns]
        assert len(pooled) == 1 and pooled[0].transport._sock is not None  # the internals used
        loop.close()  # without closing the session: what a loop closed in a hurry leaves

        close_connector_without_loop(connector)

        assert connector.closed and not connector._conns and pooled[0].transport._sock is None
        server.wait_for(lambda s: s.connections_open == 0, timeout=10)  # the server saw it close
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            del session, connector, pooled
            gc.collect()  # no "unclosed" warning from the session, connector or transport
