"""Every chat-completions field passed through, and the whole answer kept.

Against the scripted loopback server, which records the bodies it receives
and answers tools with tool-call deltas split over several chunks, logprobs
per chunk, and the equivalent whole ``chat.completion`` when not streamed:
so the object motio assembles from a stream can be compared with the
server's own non-streamed answer to the same request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from motio import BackendChunkTimeoutError, LlamaCppBackend, UnsupportedOptionError
from motio.backends import OpenAIBackend
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer, stall_after

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"prompt": {"type": "string"}}},
        },
    }
]

CASES = {
    "tools": {"tools": TOOLS, "tool_choice": "auto"},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "response-format": {"response_format": {"type": "json_object"}, "seed": 3},
    "tools-and-logprobs": {"tools": TOOLS, "logprobs": True},
}


async def _both(backend: OpenAIBackend, prompt: str, **options: Any) -> tuple[Any, Any]:
    async with backend:
        streamed = await backend.generate(prompt, stream=True, **options)
        await streamed.avalue()
        whole = await backend.generate(prompt, stream=False, **options)
        await whole.avalue()
    return streamed, whole


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_the_assembled_answer_equals_the_servers_non_streamed_one(
    server: ScriptedServer, options: dict[str, Any]
) -> None:
    server.configure(token_time=0.001)  # chunk by chunk, not the one-write fast path
    backend = OpenAIBackend("scripted-model", base_url=server.base_url)
    streamed, whole = run(_both(backend, "what is the weather in Paris", **options))
    assembled, reference = streamed.generation.response, whole.generation.response
    assert assembled is not None and reference is not None
    assert assembled == reference
    assert streamed.value == (reference["choices"][0]["message"]["content"] or "")
    sent_stream, sent_whole = server.chat_requests
    for key, value in options.items():
        assert sent_stream.body[key] == value and sent_whole.body[key] == value  # as written


def test_tool_call_deltas_over_several_chunks_are_merged(server: ScriptedServer) -> None:
    backend = OpenAIBackend("scripted-model", base_url=server.base_url)
    streamed, _ = run(_both(backend, "Paris", tools=TOOLS))
    [call] = streamed.generation.response["choices"][0]["message"]["tool_calls"]
    function = {"name": "lookup", "arguments": '{"prompt": "Paris"}'}
    assert call == {"id": "call_0", "type": "function", "function": function}
    assert server.chat_requests[0].chunks == 3  # the arguments came in three pieces
    assert streamed.generation.finish_reasons == ["tool_calls"] and streamed.value == ""
    # The deltas are output: they count as the first token (and for the chunk timeout).
    assert streamed.generation.ttfb_ms is not None


def test_a_stalled_tool_call_stream_meets_the_chunk_timeout(server: ScriptedServer) -> None:
    server.script(stall_after(1))

    async def main() -> BaseException | None:
        async with OpenAIBackend("scripted-model", base_url=server.base_url, max_retries=0) as backend:
            mot = await backend.generate("Paris", tools=TOOLS, chunk_timeout=0.3, first_token_timeout=30)
            with pytest.raises(BackendChunkTimeoutError):
                await mot.avalue()
            return mot.error

    assert isinstance(run(main()), BackendChunkTimeoutError)


def test_plain_options_keep_nothing_but_the_text(server: ScriptedServer) -> None:
    backend = OpenAIBackend("scripted-model", base_url=server.base_url)
    streamed, whole = run(_both(backend, "hello", max_tokens=5, temperature=0))
    assert streamed.generation.response is None and whole.generation.response is None
    assert streamed.value == whole.value == "echo: hello"


def test_model_and_extra_body_are_sent_as_given(server: ScriptedServer) -> None:
    async def main() -> Any:
        async with OpenAIBackend("scripted-model", base_url=server.base_url) as backend:
            extra = {"top_k": 5, "guided_choice": ["a"]}
            mot = await backend.generate("hi", model="other-model", extra_body=extra)
            return await mot.avalue(), mot

    value, mot = run(main())
    [sent] = server.chat_requests
    assert sent.body["model"] == "other-model"
    assert sent.body["top_k"] == 5 and sent.body["guided_choice"] == ["a"] and "extra_body" not in sent.body
    assert mot.generation.response["model"] == "other-model"


def test_n_above_one_needs_the_whole_answer(server: ScriptedServer) -> None:
    async def main() -> None:
        async with OpenAIBackend("scripted-model", base_url=server.base_url) as backend:
            with pytest.raises(UnsupportedOptionError, match="keep_response") as caught:
                await backend.generate("hi", n=2, keep_response=False)
            assert caught.value.option == "n" and isinstance(caught.value, ValueError)
            mot = await backend.generate("hi", n=2)  # kept by default: every choice in the response
            await mot.avalue()
            assert mot.generation.response is not None

    run(main())
    assert server.chat_requests[0].body["n"] == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [("tools", TOOLS), ("n", 2), ("logprobs", True), ("model", "gpt-4o"), ("extra_body", {"top_k": 1})],
)
def test_the_embedded_model_refuses_what_it_cannot_honour(
    smollm2_path: Path, option: str, value: Any
) -> None:
    async def main() -> None:
        async with LlamaCppBackend(smollm2_path) as llama:
            with pytest.raises(UnsupportedOptionError, match=option) as caught:
                await llama.generate("hi", **{option: value})
            assert caught.value.option == option

    run(main())


def test_unknown_options_are_still_a_type_error(server: ScriptedServer) -> None:
    async def main() -> None:
        async with OpenAIBackend("scripted-model", base_url=server.base_url) as backend:
            with pytest.raises(TypeError, match="no_such_field"):
                await backend.generate("hi", no_such_field=1)

    run(main())
