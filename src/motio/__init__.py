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

from ._lazy import lazy_exports

# Not `from typing import TYPE_CHECKING`: typing alone costs several ms.
TYPE_CHECKING = False

__version__ = "0.1.0"

# The one list of public names, by the module each is imported from on
# first access; ``__all__`` and the lookup table below derive from it. The
# TYPE_CHECKING block underneath spells the same imports for type checkers
# (they cannot run code), and tests/core/test_exports.py checks that it
# matches this table name for name.
_EXPORTS_BY_MODULE = {
    "._feed": ("send_to_queue", "DEFAULT_CHUNK_TIMEOUT"),
    "._wait": ("wait_for_all_mots",),
    "._loops": ("get_current_event_loop",),
    "._cache": ("ClientCache",),
    "._thunk": ("ModelOutputThunk", "GenerationMeta"),
    "._sync": ("run_sync",),
    "._exceptions": (
        "MotioError", "ChunkTimeoutError", "ConfigurationError", "BackendClosedError",
        "BackendError", "BackendConnectionError", "BackendTimeoutError", "ConnectTimeoutError",
        "FirstTokenTimeoutError", "BackendChunkTimeoutError", "TotalTimeoutError", "StreamError",
        "APIStatusError", "BadRequestError", "AuthenticationError", "NotFoundError",
        "RateLimitError", "ServerError", "UnsupportedOptionError", "MissingColumn", "InvalidOutput",
    ),
    ".backends": ("OpenAIBackend", "AnthropicBackend", "LlamaCppBackend", "create_backend"),
}  # fmt: skip

_EXPORTS = {name: module for module, names in _EXPORTS_BY_MODULE.items() for name in names}

__all__ = ["__version__", *sorted(_EXPORTS)]  # noqa: PLE0604 (derived from the one table, on purpose)

if TYPE_CHECKING:
    from ._cache import ClientCache as ClientCache
    from ._exceptions import APIStatusError as APIStatusError
    from ._exceptions import AuthenticationError as AuthenticationError
    from ._exceptions import BackendChunkTimeoutError as BackendChunkTimeoutError
    from ._exceptions import BackendClosedError as BackendClosedError
    from ._exceptions import BackendConnectionError as BackendConnectionError
    from ._exceptions import BackendError as BackendError
    from ._exceptions import BackendTimeoutError as BackendTimeoutError
    from ._exceptions import BadRequestError as BadRequestError
    from ._exceptions import ChunkTimeoutError as ChunkTimeoutError
    from ._exceptions import ConfigurationError as ConfigurationError
    from ._exceptions import ConnectTimeoutError as ConnectTimeoutError
    from ._exceptions import FirstTokenTimeoutError as FirstTokenTimeoutError
    from ._exceptions import InvalidOutput as InvalidOutput
    from ._exceptions import MissingColumn as MissingColumn
    from ._exceptions import MotioError as MotioError
    from ._exceptions import NotFoundError as NotFoundError
    from ._exceptions import RateLimitError as RateLimitError
    from ._exceptions import ServerError as ServerError
    from ._exceptions import StreamError as StreamError
    from ._exceptions import TotalTimeoutError as TotalTimeoutError
    from ._exceptions import UnsupportedOptionError as UnsupportedOptionError
    from ._feed import DEFAULT_CHUNK_TIMEOUT as DEFAULT_CHUNK_TIMEOUT
    from ._feed import send_to_queue as send_to_queue
    from ._loops import get_current_event_loop as get_current_event_loop
    from ._sync import run_sync as run_sync
    from ._thunk import GenerationMeta as GenerationMeta
    from ._thunk import ModelOutputThunk as ModelOutputThunk
    from ._wait import wait_for_all_mots as wait_for_all_mots
    from .backends import AnthropicBackend as AnthropicBackend
    from .backends import LlamaCppBackend as LlamaCppBackend
    from .backends import OpenAIBackend as OpenAIBackend
    from .backends import create_backend as create_backend


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
