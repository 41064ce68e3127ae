"""The fields of an OpenAI chat-completions request, known to every layer.

Both the backends (which forward them) and the batch engine (which picks
them out of prompt lines) need the same list; it lives here, outside both,
so that ``motio.batch`` still imports no backend.
"""

from __future__ import annotations

__all__ = ["CHAT_FIELDS", "MOTIO_FIELDS", "PLAIN_OPTIONS"]

#: The documented request fields of ``POST /chat/completions`` besides
#: ``messages`` (the prompt) and ``stream``/``stream_options`` (motio's to set:
#: it streams to measure time to first token, and asks for usage).
CHAT_FIELDS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "model",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)

#: Fields of a request body that motio sets itself and a given body cannot.
MOTIO_FIELDS = frozenset({"messages", "stream", "stream_options"})

#: Options whose answer is plain text: with only these, nothing but the text
#: and its metadata needs keeping (see ``keep_response`` in the backends).
PLAIN_OPTIONS = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "frequency_penalty",
        "presence_penalty",
        "chunk_timeout",
        "first_token_timeout",
        "total_timeout",
        "hedge",
    }
)
