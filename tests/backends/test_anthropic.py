"""AnthropicBackend: the Messages API protocol, and the shared HTTP parts it gets.

The protocol pieces are checked on their own (the body from motio's
messages and options); everything else against the scripted server's
Anthropic mode (tests/servers/scripted.py), asserting what the server saw
(bodies, headers, arrivals on its clock, disconnects) as well as what the
client got.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import motio
from motio import (
    AuthenticationError,
    BackendChunkTimeoutError,
    ConfigurationError,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    ModelOutputThunk,
    MotioError,
    ServerError,
    StreamError,
    TotalTimeoutError,
    UnsupportedOptionError,
)
from motio.backends import AnthropicBackend
from motio.backends._anthropic import DEFAULT_MAX_TOKENS, MessagesFold, messages_body, openai_usage
from motio.backends._errors import Where
from motio.backends._registry import backend_class
from tests.asyncutil import run
from tests.servers.scripted import (
    ScriptedServer,
    error_event,
    hold_after,
    ignore_stream,
    ok,
    running,
    stall_after,
    stall_before_headers,
    status,
    trickle_chunks,
)

MODEL = "scripted-model"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there"},
]


def backend_for(server: ScriptedServer | str | list[str], **kwargs: Any) -> AnthropicBackend:
    base_url = server if isinstance(server, (str, list)) else server.base_url
    return AnthropicBackend(MODEL, base_url=base_url, **kwargs)


async def outcome(backend: AnthropicBackend, *, stream: bool = True, **options: Any) -> ModelOutputThunk[Any]:
    async with backend:
        mot = await backend.generate("hello there", stream=stream, **options)
        try:
            await mot.avalue()
        except MotioError:
            pass  # kept in mot.error for the test to look at
        return mot


def arrivals(server: ScriptedServer) -> list[float]:
    return [r.arrived for r in server.chat_requests]


# -- the request, on its own ---------------------------------------------------------


def test_the_body_moves_system_messages_and_renames_openai_fields() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    extra = {"thinking": {"type": "disabled"}}
    options: dict[str, Any] = {"temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop": "END", "seed": None,
                               "metadata": {"k": "v"}, "user": "u1", "extra_body": extra}  # fmt: skip
    body = messages_body(messages, True, options)
    assert body == {
        "max_tokens": DEFAULT_MAX_TOKENS, "system": "Be brief.\n\nNo lists.", "stream": True,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": [{"type": "text", "text": "again"}]}],
        "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"],
        "metadata": {"user_id": "u1", "k": "v"}, "thinking": {"type": "disabled"},
    }  # fmt: skip
    assert DEFAULT_MAX_TOKENS == 4096
    assert messages_body([{"role": "user", "content": "x"}], False, {"max_completion_tokens": 7}) == {
        "max_tokens": 7, "messages": [{"role": "user", "content": "x"}], "stream": False}  # fmt: skip


@pytest.mark.parametrize(
    ("options", "option"),
    [({"seed": 1}, "seed"), ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
     ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")],
    ids=["seed", "n", "logprobs", "tools"],
)  # fmt: skip
def test_fields_without_an_equivalent_are_refused_before_sending(
    server: ScriptedServer, options: dict[str, Any], option: str
) -> None:
    with pytest.raises(UnsupportedOptionError) as refused:
        messages_body([{"role": "user", "content": "x"}], True, dict(options))
    assert refused.value.option == option

    async def main() -> None:
        async with backend_for(server) as backend:
            await backend.generate("x", **options)

    with pytest.raises(UnsupportedOptionError, match=f"cannot honour {option}="):
        run(main())
    assert server.chat_requests == []


def test_a_role_without_an_equivalent_is_refused() -> None:
    with pytest.raises(UnsupportedOptionError, match="role 'tool'"):
        messages_body([{"role": "tool", "content": "42"}], True, {})


def test_usage_in_the_keys_every_backend_reports() -> None:
    anthropic = {"input_tokens": 10, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 3,
                 "output_tokens": 7}  # fmt: skip
    assert openai_usage(anthropic) == {"prompt_tokens": 15, "completion_tokens": 7, "total_tokens": 22}
    assert openai_usage({"output_tokens": 7}) == {
        "prompt_tokens": None, "completion_tokens": 7, "total_tokens": None}  # fmt: skip


def test_the_registry_and_the_exports_name_it() -> None:
    assert backend_class("anthropic") is AnthropicBackend is motio.AnthropicBackend
    backend = motio.create_backend("anthropic", model="m", base_url="http://127.0.0.1:1/v1")
    assert backend.provider == "anthropic" and backend.remote and backend.base_url == "http://127.0.0.1:1/v1"
    assert AnthropicBackend("m").base_url == "https://api.anthropic.com/v1"
    with pytest.raises(ConfigurationError):
        AnthropicBackend("m", chunk_timeout=-1)


# -- answers -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_text_usage_finish_reason_and_the_system_field(server: ScriptedServer, stream: bool) -> None:
    async def main() -> ModelOutputThunk[Any]:
        async with backend_for(server, api_key="sk-ant-test") as backend:
            mot = await backend.generate(CONVERSATION, stream=stream, temperature=0.5)
            await mot.avalue()
            return mot

    mot = run(main())
    meta = mot.generation
    assert mot.value == "echo: hello there"
    assert meta.provider == "anthropic" and meta.model == MODEL and meta.streaming is stream
    assert meta.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert meta.finish_reasons == ["stop"] and meta.response_id == "msg_scripted"
    assert meta.base_url == server.base_url and meta.response is None
    [request] = server.chat_requests
    # Anthropic names its request in request-id (OpenAI in x-request-id).
    assert meta.request_id == f"req_scripted_{request.index}"
    assert request.anthropic and request.path == "/v1/messages" and request.status == 200
    assert request.body == {"max_tokens": DEFAULT_MAX_TOKENS, "system": "You are terse.",
                            "messages": [{"role": "user", "content": "hello there"}], "stream": stream,
                            "temperature": 0.5, "model": MODEL}  # fmt: skip
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers


def test_the_key_comes_from_the_environment_and_the_version_is_an_option(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    mot = run(outcome(backend_for(server, anthropic_version="2024-01-01")))
    assert mot.value == "echo: hello there"
    headers = server.chat_requests[0].headers
    assert headers["x-api-key"] == "sk-from-env" and headers["anthropic-version"] == "2024-01-01"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_stop_reasons_are_reported_as_finish_reasons(server: ScriptedServer, stream: bool) -> None:
    cut = run(outcome(backend_for(server), stream=stream, max_tokens=2))
    stopped = run(outcome(backend_for(server), stream=stream, stop=["there"]))
    assert cut.value == "echo: hello" and cut.generation.finish_reasons == ["length"]
    assert stopped.value == "echo: hello" and stopped.generation.finish_reasons == ["stop"]
    assert server.chat_requests[1].body["stop_sequences"] == ["there"]


def test_the_whole_answer_is_kept_when_asked(server: ScriptedServer) -> None:
    streamed = run(outcome(backend_for(server), keep_response=True))
    whole = run(outcome(backend_for(server), stream=False, keep_response=True))
    kept, given = streamed.generation.response, whole.generation.response
    assert kept is not None and given is not None
    assert kept["content"] == given["content"] == [{"type": "text", "text": "echo: hello there"}]
    assert kept["stop_reason"] == given["stop_reason"] == "end_turn"
    assert kept["usage"]["output_tokens"] == given["usage"]["output_tokens"] == 3


def test_check_reads_anthropics_model_list_and_a_missing_model_is_asked() -> None:
    with running(models=("claude-a", "claude-b"), api_key="k") as server:

        async def main() -> str:
            async with AnthropicBackend(base_url=server.base_url, api_key="k") as backend:
                await backend.check()
                assert backend.model == "claude-a"
                return str(await (await backend.generate("hi")).avalue())

        assert run(main()) == "echo: hi"
        listing = server.requests[0]
        assert listing.path == "/v1/models" and listing.headers["x-api-key"] == "k"


def test_a_wrong_key_is_an_authentication_error_not_retried() -> None:
    with running(api_key="right") as server:
        mot = run(outcome(backend_for(server, api_key="wrong")))
        assert isinstance(mot.error, AuthenticationError) and mot.error.status_code == 401
        assert "invalid x-api-key" in str(mot.error) and len(server.chat_requests) == 1
        # The hint names this backend's key variable, not OpenAI's.
        assert "ANTHROPIC_API_KEY" in str(mot.error) and "OPENAI" not in str(mot.error)


# -- retries and errors --------------------------------------------------------------


@pytest.mark.parametrize("code", [429, 529])
def test_429_and_529_are_retried_honouring_retry_after(server: ScriptedServer, code: int) -> None:
    server.script(status(code, {"retry-after": "1"}))
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there"
    assert mot.generation.attempts.statuses == [code]
    first, second = arrivals(server)
    assert 1.0 <= second - first <= 1.6  # the wait asked for, plus at most 10% jitter and noise


def test_giving_up_names_provider_base_url_and_model(server: ScriptedServer) -> None:
    server.script(status(529), status(529), status(529))
    mot = run(outcome(backend_for(server, max_retries=2)))
    error = mot.error
    assert isinstance(error, ServerError) and isinstance(error, MotioError) and error.status_code == 529
    assert error.provider == "anthropic" and error.base_url == server.base_url and error.model == MODEL
    assert "after 3 attempts" in str(error) and "scripted 529" in str(error)
    assert str(server.base_url) in str(error) and len(server.chat_requests) == 3


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_an_error_event_is_a_stream_error_keeping_the_partial_text(
    server: ScriptedServer, stream: bool
) -> None:
    server.script(error_event(after=2))
    mot = run(outcome(backend_for(server), stream=stream))
    error = mot.error
    assert (
        isinstance(error, StreamError) and error.type == "overloaded_error" and error.message == "Overloaded"
    )
    assert error.provider == "anthropic" and error.base_url == server.base_url and error.model == MODEL
    if stream:
        assert error.partial_text == mot.text == "echo: hello"
    assert len(server.chat_requests) == 1  # not retried


def test_a_stream_cut_short_is_a_stream_error(server: ScriptedServer) -> None:
    from tests.servers.scripted import no_done

    server.script(no_done)
    mot = run(outcome(backend_for(server)))
    assert isinstance(mot.error, StreamError) and "message_stop" in str(mot.error)
    assert mot.text == "echo: hello there"


# -- the four timeouts ---------------------------------------------------------------


@pytest.fixture
def unanswering_url() -> Iterator[str]:
    """A port whose accept queue is full: a connection attempt hangs until given up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        filler.close()
        listener.close()


def test_connect_timeout(unanswering_url: str) -> None:
    started = time.monotonic()
    mot = run(outcome(backend_for(unanswering_url, connect_timeout=0.3, max_retries=0)))
    assert isinstance(mot.error, ConnectTimeoutError) and mot.error.provider == "anthropic"
    assert 0.3 <= time.monotonic() - started < 3.0


def test_first_token_timeout(server: ScriptedServer) -> None:
    server.script(stall_before_headers, trickle_chunks(0.05))  # pings are no content
    for _ in range(2):
        started = time.monotonic()
        mot = run(outcome(backend_for(server, first_token_timeout=0.5, max_retries=0)))
        assert isinstance(mot.error, FirstTokenTimeoutError) and mot.error.timeout == 0.5
        assert 0.5 <= time.monotonic() - started < 2.0
    server.wait_for(lambda s: s.disconnects == 2, timeout=10)


def test_chunk_timeout_keeps_the_text_before_the_stall(server: ScriptedServer) -> None:
    server.script(stall_after(2))
    mot = run(outcome(backend_for(server), chunk_timeout=0.5))
    assert isinstance(mot.error, BackendChunkTimeoutError) and mot.error.model == MODEL
    assert mot.text == "echo: hello"
    server.wait_for(lambda s: s.disconnects == 1, timeout=10)


def test_total_timeout(server: ScriptedServer) -> None:
    server.script(ok([f" w{i}" for i in range(50)], delay=0.1))
    started = time.monotonic()
    mot = run(outcome(backend_for(server), total_timeout=0.5))
    assert isinstance(mot.error, TotalTimeoutError) and mot.error.timeout == 0.5
    assert 0.5 <= time.monotonic() - started < 1.5
    server.wait_for(lambda s: s.disconnects == 1, timeout=10)


# -- the shared parts: servers, limits, concurrency, closing --------------------------


def test_several_base_urls_fail_over(closed_port_url: str, server: ScriptedServer) -> None:
    async def main() -> list[str]:
        async with backend_for([closed_port_url, server.base_url]) as backend:
            mots = [await backend.generate(f"p{i}", max_tokens=4) for i in range(6)]
            return [str(v) for v in await asyncio.gather(*(m.avalue() for m in mots))]

    assert run(main()) == [f"echo: p{i}" for i in range(6)]
    assert len(server.chat_requests) == 6 and all(r.anthropic for r in server.chat_requests)


def test_rpm_limits_the_requests(server: ScriptedServer) -> None:
    async def main() -> None:
        async with backend_for(server, rpm=600) as backend:  # 10/s, a burst of 10
            mots = [await backend.generate("hi", max_tokens=1) for _ in range(15)]
            await asyncio.gather(*(m.avalue() for m in mots))

    run(main())
    times = sorted(arrivals(server))
    assert len(times) == 15 and times[-1] - times[0] >= 0.4  # the 5 beyond the burst wait 0.1 s each


def test_auto_concurrency_backs_off_on_529() -> None:
    # Beyond its capacity the scripted server answers Anthropic requests 529 overloaded_error.
    with running(
        capacity=2, overflow="reject", retry_after=None, retry_after_ms=20, token_time=0.01
    ) as server:
        backend = backend_for(server, max_concurrency="auto", max_retries=20)

        async def main() -> list[str]:
            async with backend:
                mots = [await backend.generate(f"p{i}", max_tokens=3) for i in range(24)]
                return [str(v) for v in await asyncio.gather(*(m.avalue() for m in mots))]

        assert run(main(), timeout=60) == [f"echo: p{i}" for i in range(24)]
        adaptive = backend.adaptive_concurrency
        assert adaptive is not None and server.rejected > 0
        assert {r.status for r in server.chat_requests} == {200, 529}
        assert adaptive.snapshot().overloads > 0 and adaptive.limit < 16  # cut from where "auto" starts


def test_an_early_close_is_seen_by_the_server(server: ScriptedServer) -> None:
    server.script(hold_after(1))

    async def main() -> tuple[ModelOutputThunk[Any], str]:
        async with backend_for(server) as backend:
            mot = await backend.generate("hello there")
            first = await mot.astream()
            await mot.aclose()
            after = await backend.generate("again")
            return mot, first + "|" + await after.avalue()

    mot, text = run(main())
    assert mot.cancelled and mot.error is None and text == "echo:|echo: again"
    server.wait_for(lambda s: s.disconnects == 1, timeout=10)
    assert server.chat_requests[0].disconnected


def test_a_whole_message_where_a_stream_was_asked_is_the_answer(server: ScriptedServer) -> None:
    server.script(ignore_stream())
    mot = run(outcome(backend_for(server)))
    assert mot.value == "echo: hello there" and mot.generation.finish_reasons == ["stop"]
    assert mot.generation.usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def _event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def test_thinking_and_a_tool_call_are_kept_whole() -> None:
    # Blocks the scripted server never sends (it answers text only), in the
    # shapes of Anthropic's streaming documentation.
    fold = MessagesFold(json.loads, Where("anthropic", MODEL, "http://x/v1"), stream=True, keep=True)
    mot: ModelOutputThunk[Any] = ModelOutputThunk()
    fold.bind(mot)
    usage = {"input_tokens": 9, "output_tokens": 1}
    piece = {"type": "input_json_delta"}
    start: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
                             "content": [], "stop_reason": None, "usage": usage}  # fmt: skip
    reads = [
        _event("message_start", message=start)
        + _event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        _event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Let me see."}),
        _event("content_block_stop", index=0)
        + _event("content_block_start", index=1, content_block={"type": "text", "text": ""})
        + _event("content_block_delta", index=1, delta={"type": "text_delta", "text": "Checking."})
        + _event("content_block_stop", index=1),
        _event("content_block_start", index=2,
               content_block={"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}})
        + _event("content_block_delta", index=2, delta={**piece, "partial_json": '{"c'})
        + _event("content_block_delta", index=2, delta={**piece, "partial_json": 'ity":1}'}),
        _event("content_block_stop", index=2)
        + _event("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None},
                 usage={"output_tokens": 30})
        + _event("message_stop"),
    ]  # fmt: skip
    assert [fold.fold(read) for read in reads] == [None, "", "Checking.", "", None]
    fold.finish(mot)
    meta = mot.generation
    assert meta.finish_reasons == ["tool_calls"] and meta.response_id == "msg_1"
    assert meta.usage == {"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39}
    assert meta.response is not None and meta.response["stop_reason"] == "tool_use"
    assert meta.response["content"] == [
        {"type": "thinking", "thinking": "Let me see."},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": 1}},
    ]
    assert meta.response["usage"] == {"input_tokens": 9, "output_tokens": 30}
