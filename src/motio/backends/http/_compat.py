"""aiohttp internals that motio relies on, in one place.

Written against aiohttp 3.14 (``BaseConnector._conns``: a dict of
``key -> deque[(ResponseHandler, timestamp)]``; ``BaseConnector._closed``;
the asyncio selector transport's ``_sock``). ``tests/backends/test_compat.py``
fails loudly if a release changes any of them.

Why reach inside at all: a session whose event loop was closed without
running its cleanup (``loop.close()`` with no ``shutdown_asyncgens``) still
holds open sockets. Closing it the public way calls into the dead loop
("Event loop is closed"); leaving it makes the garbage collector warn about
unclosed transports and an unclosed connector. So its sockets are closed
directly and the connector is marked closed, which is what its own close
would have done, minus the loop calls.

CPython's own internals (asyncio.Queue, driving an async generator's
``aclose()`` by hand) live in the core's ``motio/_compat.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["close_connector_without_loop"]


def close_connector_without_loop(connector: Any) -> None:
    """Close ``connector``'s pooled sockets and mark it closed, without its loop."""
    if connector is None or connector.closed:
        return
    for pooled in list(connector._conns.values()):
        for protocol, _ in pooled:
            _close_transport_socket(protocol.transport)
    connector._conns.clear()
    connector._closed = True


def _close_transport_socket(transport: Any) -> None:
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.close()
    # What the transport's own _call_connection_lost would have done; without
    # it the transport warns "unclosed transport" when collected.
    transport._sock = None
