"""The OpenAI chat-completions protocol on ``HTTPBackend``.

    OpenAIBackend   any OpenAI-compatible server (OpenAI, vLLM, llama.cpp
                    server, Ollama /v1, LM Studio, TGI)

``_backend.py`` is the protocol (body, usage, the stream_options fallback);
``_chat.py`` the fold of its chunks, with the msgspec fast path.
"""

from __future__ import annotations

from ._backend import OpenAIBackend

__all__ = ["OpenAIBackend"]
