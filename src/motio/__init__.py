"""motio: concurrent LLM generation with model output thunks.

Map of the package (public names load on first use, so ``import motio``
costs almost nothing until you touch them):

- ``_feed``: ``send_to_queue`` and ``DEFAULT_CHUNK_TIMEOUT``, the producer side;
- ``_thunk``: ``ModelOutputThunk`` and ``GenerationMeta``, the consumer side;
- ``_wait``, ``_loops``, ``_cache``: the other documented async helpers,
  also at ``motio.helpers.async_helpers``;
- ``_sync``: ``run_sync``, the bridge for plain scripts and notebooks;
- ``_exceptions``: ``MotioError`` and everything under it;
- ``backends``: ``OpenAIBackend``, ``LlamaCppBackend`` (SDKs load lazily);
- ``cli``: the ``motio`` command.
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: typing alone costs several ms.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BackendChunkTimeoutError",
    "BackendConnectionError",
    "BackendError",
    "BackendTimeoutError",
    "BadRequestError",
    "ChunkTimeoutError",
    "ClientCache",
    "ConfigurationError",
    "ConnectTimeoutError",
    "DEFAULT_CHUNK_TIMEOUT",
    "FirstTokenTimeoutError",
    "GenerationMeta",
    "LlamaCppBackend",
    "ModelOutputThunk",
    "MotioError",
    "NotFoundError",
    "OpenAIBackend",
    "RateLimitError",
    "ServerError",
    "StreamError",
    "TotalTimeoutError",
    "__version__",
    "create_backend",
    "get_current_event_loop",
    "run_sync",
    "send_to_queue",
    "wait_for_all_mots",
]

# Where each public name lives; it is imported on first access.
_EXPORTS = {
    "send_to_queue": "._feed",
    "DEFAULT_CHUNK_TIMEOUT": "._feed",
    "wait_for_all_mots": "._wait",
    "get_current_event_loop": "._loops",
    "ClientCache": "._cache",
    "ModelOutputThunk": "._thunk",
    "GenerationMeta": "._thunk",
    "run_sync": "._sync",
    "OpenAIBackend": ".backends",
    "LlamaCppBackend": ".backends",
    "create_backend": ".backends",
}
_EXPORTS.update(
    (name, "._exceptions") for name in __all__ if name.endswith("Error") and name not in _EXPORTS
)

if TYPE_CHECKING:
    from ._cache import ClientCache
    from ._exceptions import (
        APIStatusError,
        AuthenticationError,
        BackendChunkTimeoutError,
        BackendConnectionError,
        BackendError,
        BackendTimeoutError,
        BadRequestError,
        ChunkTimeoutError,
        ConfigurationError,
        ConnectTimeoutError,
        FirstTokenTimeoutError,
        MotioError,
        NotFoundError,
        RateLimitError,
        ServerError,
        StreamError,
        TotalTimeoutError,
    )
    from ._feed import DEFAULT_CHUNK_TIMEOUT, send_to_queue
    from ._loops import get_current_event_loop
    from ._sync import run_sync
    from ._thunk import GenerationMeta, ModelOutputThunk
    from ._wait import wait_for_all_mots
    from .backends import LlamaCppBackend, OpenAIBackend, create_backend


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'motio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
