"""Backends of HTTP servers: the shared parts, and their public face.

    HTTPBackend           the base of a protocol over HTTP servers (its hooks
                          in its docstring); OpenAIBackend is one
    HTTPFold              what a protocol's fold offers an Exchange
    EndpointSnapshot      one server's load and health
    Gate, AdaptiveConcurrency, SharedGate
                          concurrency: fixed, "auto", a Ray worker's share
    RateLimiter, Reservation
                          rpm/tpm, shared by every loop (or every Ray worker)
    mask_url, none_passed, short_reason
                          URLs and server failures as the command shows them

For the protocols built on ``HTTPBackend`` (``openai/``, ``_anthropic.py``):

    HTTP_OPTIONS, DEFAULT_CONCURRENCY_BOUND
                          generate()'s options every HTTP backend takes; "auto"'s bound
    BoundFold             the base of a protocol's fold (where, meta, bind)
    parse_events, data_as_json_array, ErrorEvent
                          SSE: the events of one network read
    ErrorAfterText, server_error_event, stream_error
                          the errors a fold raises
    HTTPClient, TLSOption the client a ``send`` override posts with; ``ssl=``

Inside: ``_exchange`` (one generation's attempts), ``_endpoints`` (routing
and health), ``_http``/``_loopclients``/``_tls``/``_urls``/``_compat`` (the
aiohttp client), ``_sse``, ``_errors``, ``_retry``, ``_adaptive``,
``_ratelimit``. Names load on first use, so a module here imports cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

__all__ = [
    "DEFAULT_CONCURRENCY_BOUND",
    "HTTP_OPTIONS",
    "AdaptiveConcurrency",
    "BoundFold",
    "ErrorAfterText",
    "ErrorEvent",
    "HTTPClient",
    "TLSOption",
    "data_as_json_array",
    "parse_events",
    "server_error_event",
    "stream_error",
    "EndpointSnapshot",
    "Gate",
    "HTTPBackend",
    "HTTPFold",
    "RateLimiter",
    "Reservation",
    "SharedGate",
    "mask_url",
    "none_passed",
    "short_reason",
]

_LAZY = {
    "DEFAULT_CONCURRENCY_BOUND": "._backend",
    "HTTP_OPTIONS": "._backend",
    "BoundFold": "._exchange",
    "ErrorAfterText": "._errors",
    "ErrorEvent": "._sse",
    "HTTPClient": "._http",
    "TLSOption": "._tls",
    "data_as_json_array": "._sse",
    "parse_events": "._sse",
    "server_error_event": "._errors",
    "stream_error": "._errors",
    "AdaptiveConcurrency": "._adaptive",
    "EndpointSnapshot": "._endpoints",
    "Gate": ".._gate",
    "HTTPBackend": "._backend",
    "HTTPFold": "._exchange",
    "RateLimiter": "._ratelimit",
    "Reservation": "._ratelimit",
    "SharedGate": "._adaptive",
    "mask_url": "._urls",
    "none_passed": "._endpoints",
    "short_reason": "._endpoints",
}

if TYPE_CHECKING:
    from ._backend import DEFAULT_CONCURRENCY_BOUND as DEFAULT_CONCURRENCY_BOUND
    from ._backend import HTTP_OPTIONS as HTTP_OPTIONS
    from ._errors import ErrorAfterText as ErrorAfterText
    from ._exchange import BoundFold as BoundFold
    from ._errors import server_error_event as server_error_event
    from ._errors import stream_error as stream_error
    from ._http import HTTPClient as HTTPClient
    from ._sse import ErrorEvent as ErrorEvent
    from ._sse import data_as_json_array as data_as_json_array
    from ._sse import parse_events as parse_events
    from ._tls import TLSOption as TLSOption
    from .._gate import Gate as Gate
    from ._adaptive import AdaptiveConcurrency as AdaptiveConcurrency
    from ._adaptive import SharedGate as SharedGate
    from ._backend import HTTPBackend as HTTPBackend
    from ._endpoints import EndpointSnapshot as EndpointSnapshot
    from ._endpoints import none_passed as none_passed
    from ._endpoints import short_reason as short_reason
    from ._exchange import HTTPFold as HTTPFold
    from ._ratelimit import RateLimiter as RateLimiter
    from ._ratelimit import Reservation as Reservation
    from ._urls import mask_url as mask_url

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
