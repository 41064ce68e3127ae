"""ScriptedServer does on the wire what each behaviour says, and records what it saw.

Most tests talk raw HTTP over a socket (``Wire``), so they see the bytes a
client would; the shapes are also checked through the openai SDK and aiohttp.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.scripted import (
    ScriptedServer,
    drop_after,
    error_event,
    gather,
    ignore_stream,
    invalid_json_then_valid,
    malformed_after,
    never_valid_json,
    no_done,
    ok,
    reset_before_headers,
    running,
    slow_first_token,
    stall_after,
    stall_before_headers,
    status,
    trickle,
    trickle_chunks,
)
from tests.servers.vllm_sim import VllmSim

REPO = Path(__file__).resolve().parents[2]
BOUND = 10.0  # seconds: every socket read and every wait in these tests
QUIET = 0.3  # seconds of silence that show a server is holding back
SLACK = 0.05  # seconds: two stamps of one interval, taken at slightly different moments


# ---------------------------------------------------------------- a raw client


class Wire:
    """One client connection that reads exactly what the server wrote."""

    def __init__(self, server: ScriptedServer | int) -> None:
        port = server if isinstance(server, int) else server.port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; unread: {self.buf!r}")
        out, _, self.buf = self.buf.partition(sep)
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def quiet_for(self, seconds: float) -> bool:
        """True if the server sends nothing for ``seconds``."""
        if self.buf:
            return False
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable

    def closed_by_server(self) -> bool:
        """True if the server closes the connection (cleanly or with a reset) within BOUND."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        return True

    # HTTP.

    def post(
        self,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
        path: str = "/v1/chat/completions",
    ) -> None:
        data = json.dumps(body).encode()
        lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if chunked:
            lines.append("transfer-encoding: chunked")
            payload = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (data[:10], data[10:])) + b"0\r\n\r\n"
        else:
            lines.append(f"content-length: {len(data)}")
            payload = data
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    def get(self, path: str, headers: dict[str, str] | None = None) -> None:
        lines = [f"GET {path} HTTP/1.1", "host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def head(self) -> tuple[int, dict[str, str]]:
        lines = self.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split(" ")[1]), headers

    def chunk(self) -> bytes:
        """One HTTP chunk's data; b"" for the terminating chunk."""
        size = int(self.read_until(b"\r\n"), 16)
        data = self.read_exact(size)
        assert self.read_exact(2) == b"\r\n"
        return data

    def body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") == "chunked":
            return b"".join(iter(self.chunk, b""))
        return self.read_exact(int(headers["content-length"]))

    def response(self) -> Response:
        code, headers = self.head()
        return Response(code, headers, self.body(headers))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[bytes]:
        return [e for e in self.body.split(b"\n\n") if e]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e.removeprefix(b"data: ")) for e in self.events if e != b"data: [DONE]"]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content", "") for c in self.chunks if c.get("choices"))


def chat(prompt: str = "hello there friend", *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": stream, **extra}


def content_of(event: bytes) -> str:
    return str(json.loads(event.removeprefix(b"data: "))["choices"][0]["delta"].get("content", ""))


@pytest.fixture
def wire(server: ScriptedServer) -> Iterator[Wire]:
    with Wire(server) as wire:
        yield wire


# ---------------------------------------------------------------- endpoints and the default answer


def test_models_lists_the_model_names() -> None:
    with running(models=("a", "b")) as server, Wire(server) as wire:
        wire.get("/v1/models")
        answer = wire.response()
        assert answer.status == 200 and [m["id"] for m in answer.json()["data"]] == ["a", "b"]
        wire.get("/v1/nothing")
        assert wire.response().status == 404
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


@pytest.mark.parametrize("max_tokens", [None, 2], ids=["whole", "cut"])
def test_the_stream_has_openai_shape(wire: Wire, max_tokens: int | None) -> None:
    wire.post(chat(max_tokens=max_tokens, stream_options={"include_usage": True}))
    answer = wire.response()
    assert answer.status == 200 and answer.headers["content-type"] == "text/event-stream"
    role, *content, finish, usage = answer.chunks
    assert answer.events[-1] == b"data: [DONE]"
    assert role["object"] == "chat.completion.chunk" and role["model"] == "m"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [c["choices"][0]["delta"]["content"] for c in content]
    assert tokens == ["echo:", " hello", " there", " friend"][: max_tokens or 4]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "length" if max_tokens else "stop"}  # fmt: skip
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}  # fmt: skip


def test_no_usage_chunk_unless_asked_or_when_told_not_to(server: ScriptedServer, wire: Wire) -> None:
    wire.post(chat())
    assert all(c["choices"] for c in wire.response().chunks)
    server.script(ok(usage=False))
    wire.post(chat(stream_options={"include_usage": True}))
    assert all(c["choices"] for c in wire.response().chunks)


@pytest.mark.parametrize("max_tokens", [None, 3], ids=["whole", "cut"])
def test_the_plain_answer_is_the_streams_concatenation(wire: Wire, max_tokens: int | None) -> None:
    wire.post(chat(max_tokens=max_tokens, stream_options={"include_usage": True}))
    streamed = wire.response()
    wire.post(chat(stream=False, max_tokens=max_tokens))
    whole = wire.response().json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": streamed.text}
    assert whole["choices"][0]["finish_reason"] == streamed.chunks[-2]["choices"][0]["finish_reason"]
    assert whole["usage"] == streamed.chunks[-1]["usage"]


def test_fixed_chunks_answer() -> None:
    with running(chunks=5) as server, Wire(server) as wire:
        wire.post(chat(max_tokens=3))
        assert wire.response().text == " tok0 tok1 tok2"
        wire.post(chat(stream=False))
        assert wire.response().json()["choices"][0]["message"]["content"] == " tok0 tok1 tok2 tok3 tok4"


def test_a_chunked_request_body_is_read(server: ScriptedServer, wire: Wire) -> None:
    wire.post(chat("in chunks"), chunked=True)
    assert wire.response().text == "echo: in chunks"
    assert server.chat_requests[0].body == chat("in chunks")


def test_the_openai_sdk_reads_both_shapes(server: ScriptedServer) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=BOUND) as client:
        messages = [{"role": "user", "content": "via the sdk"}]
        stream = client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        whole = client.chat.completions.create(model="m", messages=messages)
        models = [m.id for m in client.models.list()]
    assert text == whole.choices[0].message.content == "echo: via the sdk"
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == 4 == whole.usage.completion_tokens
    assert models == ["scripted-model"]


# ---------------------------------------------------------------- connections


def test_keep_alive_serves_50_requests_on_one_connection(server: ScriptedServer, wire: Wire) -> None:
    for i in range(50):
        wire.post(chat(f"request {i}", stream=i % 2 == 0))
        answer = wire.response()
        assert answer.status == 200 and "connection" not in answer.headers
    assert server.connections_accepted == 1
    records = server.chat_requests
    assert [r.index for r in records] == list(range(50)) and {r.connection for r in records} == {1}
    # Each request stopped counting before its last bytes: never two at once.
    assert server.max_in_flight == 1 and server.completed == 50


@pytest.mark.parametrize("make", [ScriptedServer, VllmSim], ids=["scripted", "vllm_sim"])
def test_connections_accepted_as_the_server_stops_are_all_closed(make: Any) -> None:
    """Clients that connect while the server stops: every socket it accepted
    is closed by stop (each client sees its end), and none is left for the
    garbage collector (warnings are errors: an unclosed one fails here).
    A handler that never ran used to leave its connection open."""
    server = make().start()
    clients = []
    try:
        for _ in range(200):
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=BOUND))
        server.stop()
        gc.collect()
        for client in clients:
            try:
                assert client.recv(1) == b""  # the server closed its side
            except ConnectionResetError:
                pass  # aborted, or reset by the kernel with the listener
    finally:
        for client in clients:
            client.close()


def test_connection_close_is_honoured(server: ScriptedServer, wire: Wire) -> None:
    wire.post(chat(), {"connection": "close"})
    answer = wire.response()
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert wire.closed_by_server()
    server.wait_for(lambda s: s.connections_open == 0, BOUND)


def test_requests_through_aiohttp_concurrently(server: ScriptedServer) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> str:
                url = f"{server.base_url}/chat/completions"
                async with session.post(url, json=chat(f"n{i}", stream=False)) as r:
                    return str((await r.json())["choices"][0]["message"]["content"])

            return list(await asyncio.gather(*(one(i) for i in range(20))))

    assert asyncio.run(asyncio.wait_for(main(), BOUND)) == [f"echo: n{i}" for i in range(20)]
    assert server.completed == 20 and server.in_flight == 0


# ---------------------------------------------------------------- choosing behaviours


def test_script_then_rule_then_default(server: ScriptedServer, wire: Wire) -> None:
    server.rule = lambda r: status(418) if "teapot" in r.prompt else None
    server.script(status(503), ok(["a", "b"]), reset_before_headers)  # a factory may come uncalled
    wire.post(chat("teapot first"))  # the rule decides and consumes nothing
    assert wire.response().status == 418
    wire.post(chat())
    assert wire.response().status == 503
    wire.post(chat())
    assert wire.response().text == "ab"
    assert server.scripted == 1
    server.script(ok(["x"]))  # queued after the reset
    with Wire(server) as other:
        other.post(chat())
        with pytest.raises(ConnectionResetError):
            other.read_until(b"\r\n\r\n")
    wire.post(chat("last"))
    assert wire.response().text == "x"
    wire.post(chat("then default"))
    assert wire.response().text == "echo: then default"
    assert [type(r.behaviour).__name__ for r in server.chat_requests] == [
        "Status", "Status", "Ok", "ResetBeforeHeaders", "Ok", "Ok"]  # fmt: skip


def test_a_rule_can_choose_by_model(server: ScriptedServer, wire: Wire) -> None:
    server.rule = lambda r: status(404) if r.model == "missing" else None
    wire.post({**chat(), "model": "missing"})
    assert wire.response().status == 404
    wire.post(chat())
    assert wire.response().status == 200


def reask_of(prompt: str, answer: str) -> dict[str, Any]:
    """A re-ask as motio sends it: the prompt, the invalid answer, the complaint."""
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "That answer is not valid: ..."},
    ]
    return {**chat(prompt), "messages": messages}


def test_invalid_json_then_valid_per_prompt(server: ScriptedServer, wire: Wire) -> None:
    server.rule = rule = invalid_json_then_valid()
    wire.post(chat("one"))
    first = wire.response().text
    assert first == "not JSON: one"
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    wire.post(chat("two", stream=False))  # another prompt starts invalid too, streamed or not
    assert wire.response().json()["choices"][0]["message"]["content"] == "not JSON: two"
    wire.post(reask_of("one", first))  # the re-ask keeps the first user message: the second answer
    answer = wire.response()
    assert json.loads(answer.text) == {"answer": "one"} == rule.valid("one")
    assert len([c for c in answer.chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 2
    wire.post(chat("one"))  # valid from then on
    assert json.loads(wire.response().text) == {"answer": "one"}
    assert rule.attempts == {"one": 3, "two": 1}


def test_invalid_json_k_times(server: ScriptedServer, wire: Wire) -> None:
    server.rule = invalid_json_then_valid(2)
    texts = []
    for _ in range(3):
        wire.post(chat("p"))
        texts.append(wire.response().text)
    assert texts == ["not JSON: p", "not JSON: p", '{"answer": "p"}']


def test_never_valid_json(server: ScriptedServer, wire: Wire) -> None:
    server.rule = rule = never_valid_json()
    for _ in range(4):
        wire.post(reask_of("p", "not JSON: p"))
        assert wire.response().text == "not JSON: p"
    wire.get("/v1/models")  # not a chat request: the server's own answer
    assert wire.response().json()["data"]
    assert rule.attempts == {"p": 4}


def test_a_non_behaviour_is_refused(server: ScriptedServer) -> None:
    with pytest.raises(TypeError, match="not a behaviour"):
        server.script("503")  # type: ignore[arg-type]


# ---------------------------------------------------------------- status answers


@pytest.mark.parametrize(
    ("code", "headers"),
    [
        (429, {"Retry-After": "1"}),
        (429, {}),
        (429, {"retry-after-ms": "250"}),
        (503, {}),
        (500, {}),
        (408, {}),
    ],  # fmt: skip
    ids=["429-retry-after", "429-bare", "429-retry-after-ms", "503", "500", "408"],
)
def test_status_with_openai_error_body(
    server: ScriptedServer, wire: Wire, code: int, headers: dict[str, str]
) -> None:
    server.script(status(code, headers))
    wire.post(chat())
    answer = wire.response()
    assert answer.status == code and set(answer.json()["error"]) >= {"message", "type", "code"}
    for name, value in headers.items():
        assert answer.headers[name.lower()] == value
    assert "retry-after" not in answer.headers or "Retry-After" in headers
    wire.post(chat())  # the connection is still good
    assert wire.response().status == 200
    assert [r.status for r in server.chat_requests] == [code, 200]


def test_status_with_a_given_body(server: ScriptedServer, wire: Wire) -> None:
    server.script(status(400, body={"error": {"message": "unknown field"}}), status(502, body=b"<html>"))
    wire.post(chat())
    assert wire.response().json() == {"error": {"message": "unknown field"}}
    wire.post(chat())
    assert wire.response().body == b"<html>"


def test_api_key_is_required_when_set() -> None:
    with running(api_key="sk-right") as server, Wire(server) as wire:
        wire.post(chat())
        assert wire.response().status == 401
        wire.post(chat(), {"authorization": "Bearer sk-wrong"})
        assert wire.response().status == 401
        wire.get("/v1/models")
        assert wire.response().status == 401
        wire.post(chat(), {"authorization": "Bearer sk-right"})
        assert wire.response().status == 200
        assert server.chat_requests[-1].headers["authorization"] == "Bearer sk-right"


# ---------------------------------------------------------------- faults


def test_reset_before_headers_resets(server: ScriptedServer, wire: Wire) -> None:
    server.script(reset_before_headers())
    wire.post(chat())
    with pytest.raises(ConnectionResetError):
        wire.read_until(b"\r\n")
    [record] = server.chat_requests
    assert record.status is None and not record.disconnected


def test_stall_before_headers_sends_nothing_and_sees_the_client_leave(
    server: ScriptedServer, wire: Wire
) -> None:
    server.script(stall_before_headers())
    wire.post(chat(stream=False))
    assert wire.quiet_for(QUIET)
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)
    [record] = server.chat_requests
    assert record.disconnected and record.status is None and record.first_byte is None
    assert record.ended is not None and record.ended - record.arrived >= QUIET - SLACK


def test_stall_before_headers_gives_up_after_max_wait(server: ScriptedServer, wire: Wire) -> None:
    server.script(stall_before_headers(max_wait=0.2))
    wire.post(chat())
    assert wire.closed_by_server()
    assert not server.chat_requests[0].disconnected


@pytest.mark.parametrize("k", [0, 2])
def test_stall_after_k_chunks(server: ScriptedServer, wire: Wire, k: int) -> None:
    server.script(stall_after(k))
    wire.post(chat())
    code, _ = wire.head()
    events = [wire.chunk() for _ in range(k + 1 if k else 0)]
    assert code == 200 and [content_of(e) for e in events] == ["", "echo:", " hello"][: len(events)]
    assert wire.quiet_for(QUIET)
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)
    [record] = server.chat_requests
    assert record.chunks == k and record.disconnected and record.status == 200


def test_stall_after_headers_without_stream(server: ScriptedServer, wire: Wire) -> None:
    server.script(stall_after(0))
    wire.post(chat(stream=False))
    code, headers = wire.head()
    assert code == 200 and int(headers["content-length"]) > 0 and wire.quiet_for(QUIET)


def test_trickle_sends_comments_and_never_a_chunk(server: ScriptedServer, wire: Wire) -> None:
    server.script(trickle(0.05))
    wire.post(chat())
    wire.head()
    pings = [wire.chunk() for _ in range(4)]
    assert pings == [b": ping\n\n"] * 4
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)
    assert server.chat_requests[0].chunks == 0


def test_trickle_after_content(server: ScriptedServer, wire: Wire) -> None:
    server.script(trickle(0.05, b": keep-alive", after=1))
    wire.post(chat())
    wire.head()
    events = [wire.chunk() for _ in range(4)]
    assert content_of(events[1]) == "echo:" and events[2:] == [b": keep-alive\n\n"] * 2


@pytest.mark.parametrize(
    "delta", [{}, {"role": "assistant"}, {"content": ""}], ids=["empty", "role-only", "blank-content"]
)
def test_trickle_chunks_carry_no_content(server: ScriptedServer, wire: Wire, delta: dict[str, str]) -> None:
    server.script(trickle_chunks(0.05, delta))
    wire.post(chat())
    wire.head()
    for _ in range(3):
        chunk = json.loads(wire.chunk().removeprefix(b"data: "))
        assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["delta"] == delta
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)


@pytest.mark.parametrize("rst", [False, True], ids=["close", "reset"])
def test_drop_after_cuts_mid_body(server: ScriptedServer, wire: Wire, rst: bool) -> None:
    server.script(drop_after(2, rst=rst))
    wire.post(chat())
    wire.head()
    assert [content_of(wire.chunk()) for _ in range(3)] == ["", "echo:", " hello"]
    with pytest.raises((EOFError, ConnectionResetError)):
        wire.chunk()  # no terminating chunk, ever
    [record] = server.chat_requests
    assert record.chunks == 2 and not record.disconnected
    server.wait_for(lambda s: s.connections_open == 0, BOUND)
    assert server.completed == 0


def test_drop_without_stream_sends_half_the_body(server: ScriptedServer, wire: Wire) -> None:
    server.script(drop_after(0))
    wire.post(chat(stream=False))
    _, headers = wire.head()
    with pytest.raises(EOFError):
        wire.read_exact(int(headers["content-length"]))


def test_malformed_after(server: ScriptedServer, wire: Wire) -> None:
    server.script(malformed_after(1))
    wire.post(chat())
    events = wire.response().events
    assert content_of(events[1]) == "echo:" and events[-1] == b"data: [DONE]"
    with pytest.raises(ValueError):
        json.loads(events[2].removeprefix(b"data: "))
    server.script(malformed_after(0))
    wire.post(chat(stream=False))
    with pytest.raises(ValueError):
        wire.response().json()


def test_error_event_mid_stream(server: ScriptedServer, wire: Wire) -> None:
    server.script(error_event(after=2), error_event(error={"message": "boom"}))
    wire.post(chat())
    answer = wire.response()
    assert answer.text == "echo: hello" and answer.chunks[-1]["error"]["type"] == "server_error"
    wire.post(chat())
    assert wire.response().chunks[-1] == {"error": {"message": "boom"}}


def test_error_event_coalesced_is_one_http_chunk(server: ScriptedServer, wire: Wire) -> None:
    server.script(error_event(after=2, coalesce=True))
    wire.post(chat())
    code, headers = wire.head()
    first = wire.chunk()  # role, two content chunks and the error event: one HTTP chunk
    events = [e for e in first.split(b"\n\n") if e]
    assert code == 200 and len(events) == 4 and json.loads(events[-1][6:])["error"]["code"] == 500
    assert [content_of(e) for e in events[1:3]] == ["echo:", " hello"]
    assert wire.chunk() == b"data: [DONE]\n\n" and wire.chunk() == b""


def test_error_event_with_a_gap_writes_each_event_apart(server: ScriptedServer, wire: Wire) -> None:
    server.script(error_event(after=2, gap=QUIET))
    wire.post(chat())
    wire.head()
    wire.chunk()  # the role chunk
    for expected in ("echo:", " hello"):
        assert wire.quiet_for(QUIET / 3)  # each event waits its gap
        assert content_of(wire.chunk()) == expected
    assert json.loads(wire.chunk()[6:])["error"]["type"] == "server_error"


def test_ignore_stream_answers_a_whole_completion(server: ScriptedServer, wire: Wire) -> None:
    server.script(ignore_stream(), ignore_stream(["a", "b"]))
    wire.post(chat())
    answer = wire.response()
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["message"]["content"] == "echo: hello there friend"
    wire.post(chat())
    assert wire.response().json()["choices"][0]["message"]["content"] == "ab"
    assert all(r.stream for r in server.chat_requests)


def test_basic_auth_is_required_when_set() -> None:
    with running(basic_auth=("bob", "pw")) as server, Wire(server) as wire:
        wire.post(chat())
        assert wire.response().status == 401
        wire.post(chat(), {"authorization": "Basic Ym9iOnB3"})  # bob:pw
        assert wire.response().status == 200
        wire.get("/v1/models", {"authorization": "Bearer pw"})
        assert wire.response().status == 401


def test_no_done_ends_without_finish_or_done(server: ScriptedServer, wire: Wire) -> None:
    server.script(no_done(), no_done())
    wire.post(chat(stream_options={"include_usage": True}))
    answer = wire.response()  # the body itself ends cleanly
    assert answer.text == "echo: hello there friend" and b"data: [DONE]" not in answer.events
    assert all(c["choices"][0]["finish_reason"] is None for c in answer.chunks)
    wire.post(chat(stream=False))
    whole = wire.response().json()
    assert whole["choices"][0]["finish_reason"] is None and "usage" not in whole


def test_slow_first_token_sends_role_then_waits(server: ScriptedServer, wire: Wire) -> None:
    server.script(slow_first_token(0.4))
    wire.post(chat())
    wire.head()
    assert content_of(wire.chunk()) == ""  # the role chunk comes at once
    assert wire.quiet_for(0.2)
    rest = b"".join(iter(wire.chunk, b""))
    assert b"echo:" in rest and rest.endswith(b"data: [DONE]\n\n")
    [record] = server.chat_requests
    assert record.ended is not None and record.first_byte is not None
    assert record.ended - record.first_byte >= 0.4 - SLACK


def test_slow_first_token_before_headers(server: ScriptedServer, wire: Wire) -> None:
    server.script(slow_first_token(0.4, before_headers=True))
    wire.post(chat(stream=False))
    assert wire.quiet_for(0.2)
    assert wire.response().json()["choices"][0]["message"]["content"] == "echo: hello there friend"
    [record] = server.chat_requests
    assert record.first_byte is not None and record.first_byte - record.arrived >= 0.4 - SLACK


def test_a_client_leaving_between_chunks_is_seen(server: ScriptedServer, wire: Wire) -> None:
    server.script(ok([f" t{i}" for i in range(1000)], delay=0.01))
    wire.post(chat())
    wire.head()
    for _ in range(3):
        wire.chunk()
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)
    [record] = server.chat_requests
    assert record.disconnected and 2 <= record.chunks < 1000
    assert server.completed == 0


def test_a_client_leaving_during_a_large_write_is_seen(server: ScriptedServer, wire: Wire) -> None:
    # 20 MB in one write: the server is blocked draining it when the client goes.
    server.script(ok(["x" * 100_000] * 200))
    wire.post(chat())
    wire.head()
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)
    assert server.chat_requests[0].disconnected and server.completed == 0


def test_a_client_leaving_before_the_first_byte_is_seen() -> None:
    with running(service_time=0.5) as server:
        with Wire(server) as wire:
            wire.post(chat())
            server.wait_for(lambda s: s.in_flight == 1, BOUND)
        server.wait_for(lambda s: s.disconnects == 1, BOUND)
        [record] = server.chat_requests
        assert record.disconnected and record.first_byte is None and server.completed == 0


def test_a_plain_answer_takes_as_long_as_its_stream(server: ScriptedServer, wire: Wire) -> None:
    server.script(ok(["a", "b", "c"], delay=0.1, finish_reason="content_filter"))
    wire.post(chat(stream=False))
    assert wire.quiet_for(0.2)
    choice = wire.response().json()["choices"][0]
    assert choice["message"]["content"] == "abc" and choice["finish_reason"] == "content_filter"
    [record] = server.chat_requests
    assert record.first_byte is not None and record.first_byte - record.arrived >= 0.3 - SLACK


def test_gather_holds_streams_until_n_wait_together(server: ScriptedServer) -> None:
    server.script(*[gather(3)] * 3)
    wires = [Wire(server) for _ in range(3)]
    try:
        for wire in wires[:2]:
            wire.post(chat())
            wire.head()
            assert content_of(wire.chunk()) == "" and content_of(wire.chunk()) == "echo:"
        assert wires[0].quiet_for(QUIET)  # two are not enough
        wires[2].post(chat())
        assert [w.response().text for w in wires[2:]] == ["echo: hello there friend"]
        rests = [Response(200, {}, b"".join(iter(w.chunk, b""))) for w in wires[:2]]
        assert [r.text for r in rests] == [" hello there friend"] * 2
    finally:
        for wire in wires:
            wire.close()
    assert server.max_in_flight == 3


# ---------------------------------------------------------------- capacity


def hold(server: ScriptedServer, n: int) -> list[Wire]:
    """Open ``n`` streams that stall after one chunk, so they hold their slots."""
    wires = []
    for _ in range(n):
        wire = Wire(server)
        wire.post(chat())
        wires.append(wire)
    for wire in wires:
        wire.head()
    return wires


def test_reject_beyond_capacity_with_retry_after() -> None:
    with running(capacity=2, overflow="reject", retry_after=1, default=stall_after(1)) as server:
        held = hold(server, 2)
        with Wire(server) as extra:
            extra.post(chat())
            answer = extra.response()
            assert answer.status == 429 and answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["type"] == "rate_limit_exceeded"
            assert server.rejected == 1 and server.max_serving == 2
            held[0].close()  # frees a slot
            server.wait_for(lambda s: s.serving == 1, BOUND)
            server.script(ok())
            extra.post(chat())
            assert extra.response().status == 200
        for wire in held[1:]:
            wire.close()
        rejected = [r for r in server.chat_requests if r.rejected]
        assert len(rejected) == 1 and rejected[0].status == 429
        assert server.scripted == 0  # the rejected request consumed nothing


def test_reject_without_retry_after_and_capacity_changed_at_run_time() -> None:
    with running(capacity=1, retry_after=None, retry_after_ms=500, default=stall_after(1)) as server:
        held = hold(server, 1)
        with Wire(server) as extra:
            extra.post(chat())
            answer = extra.response()
            assert answer.status == 429 and "retry-after" not in answer.headers
            assert answer.headers["retry-after-ms"] == "500"
            server.configure(capacity=2)
            server.script(ok())
            extra.post(chat())
            assert extra.response().status == 200
        held[0].close()
        assert server.rejected == 1


def test_a_client_capped_at_capacity_is_never_rejected() -> None:
    # A slot is free before the last bytes go out, so the next request fits.
    with running(capacity=1, overflow="reject") as server, Wire(server) as wire:
        for _ in range(30):
            wire.post(chat())
            assert wire.response().status == 200
        assert server.rejected == 0


def test_queue_holds_requests_before_their_first_byte() -> None:
    with running(capacity=1, overflow="queue") as server:
        server.script(stall_after(1))
        [first] = hold(server, 1)
        with Wire(server) as second:
            second.post(chat("queued"))
            server.wait_for(lambda s: s.queued == 1, BOUND)
            assert second.quiet_for(QUIET)
            first.close()
            assert second.response().text == "echo: queued"
        queued = server.chat_requests[1]
        assert queued.started is not None and queued.started - queued.arrived >= QUIET - SLACK
        assert server.max_serving == 1 and server.max_queued == 1 and server.rejected == 0


def test_queue_is_fifo_and_first_bytes_follow_one_service_time_apart() -> None:
    with running(capacity=1, overflow="queue", service_time=0.1) as server:
        server.script(stall_after(1))
        [first] = hold(server, 1)
        wires = [Wire(server) for _ in range(4)]
        try:
            for i, wire in enumerate(wires):
                wire.post(chat(f"n{i}", stream=False))
                server.wait_for(lambda s, i=i: s.queued == i + 1, BOUND)  # arrival order is i
            first.close()
            answers = [w.response().json()["choices"][0]["message"]["content"] for w in wires]
        finally:
            for wire in wires:
                wire.close()
        assert answers == [f"echo: n{i}" for i in range(4)]
        records = server.chat_requests[1:]
        starts = [r.started for r in records]
        assert starts == sorted(starts)  # type: ignore[type-var]
        # One request served at a time: each first byte one service time after the last.
        first_bytes = [r.first_byte for r in records]
        gaps = [b - a for a, b in zip(first_bytes, first_bytes[1:], strict=False)]  # type: ignore[operator]
        assert all(gap >= 0.1 - SLACK for gap in gaps), gaps
        assert server.max_serving == 1 and server.max_in_flight == 5 and server.max_queued == 4


def test_a_client_leaving_the_queue_is_seen_and_never_served() -> None:
    with running(capacity=1, overflow="queue", default=stall_after(1)) as server:
        [first] = hold(server, 1)
        with Wire(server) as second:
            second.post(chat())
            server.wait_for(lambda s: s.queued == 1, BOUND)
        server.wait_for(lambda s: s.disconnects == 1 and s.queued == 0, BOUND)
        first.close()
        server.wait_for(lambda s: s.in_flight == 0, BOUND)
        assert server.chat_requests[1].status is None and server.max_serving == 1


# ---------------------------------------------------------------- records, waits, lifecycle


def test_wait_for_times_out_with_a_clear_error(server: ScriptedServer) -> None:
    with pytest.raises(AssertionError, match="disconnects"):
        server.wait_for(lambda s: s.disconnects > 0, 0.1, "disconnects > 0")


def test_wait_for_wakes_from_another_thread(server: ScriptedServer) -> None:
    def later() -> None:
        with Wire(server) as wire:
            wire.post(chat())
            wire.response()

    thread = threading.Thread(target=later)
    thread.start()
    server.wait_for(lambda s: s.completed == 1, BOUND)
    thread.join(BOUND)


def test_records_are_copies(server: ScriptedServer, wire: Wire) -> None:
    wire.post(chat())
    wire.response()
    server.requests[0].status = 999
    assert server.requests[0].status == 200


def test_reset_forgets(server: ScriptedServer, wire: Wire) -> None:
    server.script(status(500))
    wire.post(chat())
    wire.response()
    server.script(status(500))
    server.reset()
    assert server.requests == [] and server.scripted == 0 and server.completed == 0
    wire.post(chat())
    assert wire.response().status == 200


def test_a_failing_rule_is_reported_at_exit() -> None:
    server = ScriptedServer(rule=lambda r: 1 / 0).start()  # type: ignore[arg-type,return-value]
    with Wire(server) as wire:
        wire.post(chat())
        assert wire.response().status == 200  # the default still answers
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        server.__exit__(None, None, None)


def test_crash_resets_streams_and_stops_listening(server: ScriptedServer) -> None:
    server.script(stall_after(1))
    [held] = hold(server, 1)
    server.crash()
    with pytest.raises((ConnectionResetError, EOFError)):
        while True:
            held.chunk()
    held.close()
    with pytest.raises(ConnectionRefusedError):
        Wire(server)


def test_stop_is_idempotent_and_a_server_starts_once() -> None:
    server = ScriptedServer().start()
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError, match="starts once"):
        server.start()
    with pytest.raises(ConnectionRefusedError):
        Wire(server)


# ---------------------------------------------------------------- process mode


def read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line from the server process within {timeout} s"
    return str(stream.readline())


# As if started in the background by a shell: SIGINT inherited as ignored.
_SIGINT_IGNORED = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.argv[0] = 'scripted'; "
    "runpy.run_module('tests.servers.scripted', run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize(
    ("sig", "start"),
    [(signal.SIGTERM, ["-m", "tests.servers.scripted"]), (signal.SIGINT, ["-m", "tests.servers.scripted"]),
     (signal.SIGINT, ["-c", _SIGINT_IGNORED])],
    ids=["SIGTERM", "SIGINT", "SIGINT-inherited-ignored"],
)  # fmt: skip
def test_process_mode_prints_port_serves_and_stops(sig: signal.Signals, start: list[str]) -> None:
    argv = [sys.executable, *start, "--port", "0", "--capacity", "64",
            "--overflow", "queue", "--retry-after", "1", "--service-time", "0.01",
            "--chunks", "20"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "error"}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        word, port = read_line(process.stdout, BOUND).split()
        assert word == "PORT" and int(port) > 0
        with Wire(int(port)) as wire:
            wire.post(chat())
            assert wire.response().text == "".join(f" tok{i}" for i in range(20))
        process.send_signal(sig)
        out, err = process.communicate(timeout=BOUND)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=BOUND)
    assert process.returncode == 0, err
    word, stats = out.strip().split(" ", 1)
    assert word == "STATS" and json.loads(stats)["completed"] == 1 and err == ""


def test_without_records_it_is_fast() -> None:
    # The benchmarks' server must not be their bottleneck: 504 streams of 20
    # chunks on 8 keep-alive connections take about 0.3 s here; 5 s is a
    # bound for a loaded machine, not a measurement.
    def worker(server: ScriptedServer) -> list[int]:
        with Wire(server) as wire:
            codes = []
            for _ in range(63):
                wire.post(chat())
                codes.append(wire.response().status)
            return codes

    with running(chunks=20, record=False) as server, ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        results = [pool.submit(worker, server) for _ in range(8)]
        codes = [code for result in results for code in result.result(timeout=BOUND)]
        elapsed = time.monotonic() - started
        assert codes == [200] * 504 and server.completed == 504 and server.requests == []
    assert elapsed < 5.0, f"{elapsed:.1f} s for 504 streams"


# ---------------------------------------------------------------- Anthropic's Messages API

ANTHROPIC = {"anthropic-version": "2023-06-01"}


def messages(prompt: str = "hello there friend", *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    return {**body, **extra}


def post_messages(wire: Wire, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    wire.post(body, ANTHROPIC if headers is None else headers, path="/v1/messages")


def named_events(answer: Response) -> list[tuple[str, dict[str, Any]]]:
    """Each SSE event as (its ``event:`` name, its parsed data); the two must agree."""
    out = []
    for event in answer.events:
        name, data = event.split(b"\n")
        parsed = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + parsed["type"].encode()
        out.append((parsed["type"], parsed))
    return out


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(e["delta"]["text"] for name, e in events if name == "content_block_delta")


@pytest.mark.parametrize("max_tokens", [64, 2], ids=["whole", "cut"])
def test_messages_stream_has_anthropic_shape(server: ScriptedServer, wire: Wire, max_tokens: int) -> None:
    post_messages(wire, messages(max_tokens=max_tokens))
    answer = wire.response()
    assert answer.status == 200 and answer.headers["content-type"] == "text/event-stream"
    assert answer.headers["request-id"] == "req_scripted_0" and b"[DONE]" not in answer.body
    events = named_events(answer)
    names = [name for name, _ in events]
    tokens = ["echo:", " hello", " there", " friend"][:max_tokens]
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * len(tokens),
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    message = events[0][1]["message"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["model"] == "m"
    assert message["id"].startswith("msg_") and message["content"] == [] and message["stop_reason"] is None
    assert message["usage"]["input_tokens"] == 3
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[3][1] == {"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": "echo:"}}  # fmt: skip
    assert text_of(events) == "".join(tokens)
    delta = events[-2][1]
    assert delta["delta"] == {
        "stop_reason": "max_tokens" if max_tokens == 2 else "end_turn",
        "stop_sequence": None,
    }
    assert delta["usage"] == {"output_tokens": len(tokens)}
    [record] = server.chat_requests
    assert (
        record.anthropic
        and record.chunks == len(tokens)
        and record.headers["anthropic-version"] == "2023-06-01"
    )


def test_messages_plain_answer_is_the_streams_concatenation(wire: Wire) -> None:
    body = messages("be brief", system="You are terse.", stop_sequences=["brief"])
    post_messages(wire, body)
    streamed = named_events(wire.response())
    post_messages(wire, {**body, "stream": False})
    answer = wire.response()
    whole = answer.json()
    assert answer.headers["content-type"] == "application/json"
    assert whole["type"] == "message" and whole["role"] == "assistant" and whole["model"] == "m"
    assert (
        whole["content"]
        == [{"type": "text", "text": text_of(streamed)}]
        == [{"type": "text", "text": "echo: be"}]
    )
    assert whole["stop_reason"] == "stop_sequence" == streamed[-2][1]["delta"]["stop_reason"]
    assert whole["stop_sequence"] == "brief" == streamed[-2][1]["delta"]["stop_sequence"]
    # Prompt tokens count the system field ("You are terse." is 3) and the message (2).
    assert whole["usage"] == {"input_tokens": 5, "output_tokens": 2}
    assert streamed[0][1]["message"]["usage"]["input_tokens"] == 5


def test_messages_refusals_in_anthropic_shape() -> None:
    with running(api_key="sk-ant") as server, Wire(server) as wire:
        key = {**ANTHROPIC, "x-api-key": "sk-ant"}
        cases = [
            ({}, messages(), 401, "authentication_error"),  # no key, no version: the key is asked first
            ({**ANTHROPIC, "authorization": "Bearer sk-ant"}, messages(), 401, "authentication_error"),
            ({"x-api-key": "sk-ant"}, messages(), 400, "invalid_request_error"),
            (key, {k: v for k, v in messages().items() if k != "max_tokens"}, 400, "invalid_request_error"),
        ]  # fmt: skip
        for headers, body, code, kind in cases:
            post_messages(wire, body, headers)
            answer = wire.response()
            assert answer.status == code and answer.json()["type"] == "error"
            assert answer.json()["error"]["type"] == kind and answer.json()["error"]["message"]
        post_messages(wire, messages(), key)
        assert wire.response().status == 200
        wire.get("/v1/models", key)
        listed = wire.response().json()
        assert listed["data"] == [{"type": "model", "id": "scripted-model", "display_name": "scripted-model",
                                   "created_at": "2025-01-01T00:00:00Z"}]  # fmt: skip
        assert listed["has_more"] is False and listed["first_id"] == listed["last_id"] == "scripted-model"
        wire.get("/v1/models", ANTHROPIC)
        assert wire.response().json()["error"]["type"] == "authentication_error"
        assert [r.status for r in server.chat_requests] == [401, 401, 400, 400, 200]


@pytest.mark.parametrize(
    ("code", "kind"), [(429, "rate_limit_error"), (529, "overloaded_error"), (500, "api_error")],
    ids=["429", "529", "500"],
)  # fmt: skip
def test_messages_status_in_anthropic_shape(server: ScriptedServer, wire: Wire, code: int, kind: str) -> None:
    server.script(status(code, {"retry-after": "2"}))
    post_messages(wire, messages())
    answer = wire.response()
    assert answer.status == code and answer.headers["retry-after"] == "2"
    assert answer.json() == {"type": "error", "error": {"type": kind, "message": f"scripted {code}"}}
    post_messages(wire, messages())  # the connection is still good
    assert wire.response().status == 200


def test_messages_beyond_capacity_are_overloaded_529() -> None:
    with running(capacity=1, retry_after=1) as server, Wire(server) as first, Wire(server) as second:
        server.script(stall_after(1))
        post_messages(first, messages())
        server.wait_for(lambda s: s.serving == 1, BOUND)
        post_messages(second, messages())
        answer = second.response()
        assert answer.status == 529 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["type"] == "overloaded_error"
        first.close()
        server.wait_for(lambda s: s.disconnects == 1 and s.rejected == 1, BOUND)


def test_messages_error_event_ends_the_stream(server: ScriptedServer, wire: Wire) -> None:
    server.script(error_event(after=2), error_event(error={"type": "api_error", "message": "boom"}))
    post_messages(wire, messages())
    events = named_events(wire.response())
    assert text_of(events) == "echo: hello" and events[-1] == (
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})  # fmt: skip
    post_messages(wire, messages(stream=False))
    assert wire.response().json() == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


def test_messages_error_event_coalesced_is_one_http_chunk(server: ScriptedServer, wire: Wire) -> None:
    server.script(error_event(after=1, coalesce=True))
    post_messages(wire, messages())
    wire.head()
    events = [e for e in wire.chunk().split(b"\n\n") if e]
    assert [e.split(b"\n")[0] for e in events] == [b"event: message_start", b"event: content_block_start",
                                                   b"event: ping", b"event: content_block_delta",
                                                   b"event: error"]  # fmt: skip
    assert wire.chunk() == b""


def test_messages_stall_trickle_and_drop_are_seen(server: ScriptedServer, wire: Wire) -> None:
    server.script(stall_after(1), trickle_chunks(0.05), drop_after(1))
    post_messages(wire, messages())
    wire.head()
    assert [wire.chunk().split(b"\n")[0] for _ in range(4)][-1] == b"event: content_block_delta"
    assert wire.quiet_for(QUIET)
    wire.close()
    server.wait_for(lambda s: s.disconnects == 1, BOUND)
    with Wire(server) as other:
        post_messages(other, messages())
        other.head()
        assert [other.chunk() for _ in range(5)][3:] == [b'event: ping\ndata: {"type": "ping"}\n\n'] * 2
    server.wait_for(lambda s: s.disconnects == 2, BOUND)
    with Wire(server) as third:
        post_messages(third, messages())
        third.head()
        for _ in range(4):
            third.chunk()
        with pytest.raises(EOFError):
            third.chunk()
    assert [r.disconnected for r in server.chat_requests] == [True, True, False]


def test_messages_malformed_and_no_done(server: ScriptedServer, wire: Wire) -> None:
    server.script(malformed_after(1), no_done())
    post_messages(wire, messages())
    events = wire.response().events
    assert events[-1] == b'event: message_stop\ndata: {"type": "message_stop"}'
    assert events[-2].startswith(b"event: content_block_delta\ndata: ")
    with pytest.raises(ValueError):
        json.loads(events[-2].split(b"data: ", 1)[1])
    post_messages(wire, messages())
    names = [name for name, _ in named_events(wire.response())]
    assert names[-1] == "content_block_delta" and "message_stop" not in names
    server.script(no_done())
    post_messages(wire, messages(stream=False))
    whole = wire.response().json()
    assert whole["stop_reason"] is None and "usage" not in whole


def test_the_anthropic_sdk_reads_both_shapes_and_its_errors(server: ScriptedServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    root = server.base_url.removesuffix("/v1")  # the SDK adds /v1 itself
    with anthropic.Anthropic(base_url=root, api_key="k", max_retries=0, timeout=BOUND) as client:
        asked = {"model": "m", "max_tokens": 64, "system": "be kind",
                 "messages": [{"role": "user", "content": "via the sdk"}]}  # fmt: skip
        with client.messages.stream(**asked) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        whole = client.messages.create(**asked)
        models = [m.id for m in client.models.list()]
        server.script(status(529), error_event())
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            client.messages.create(**asked)
        with pytest.raises(anthropic.APIStatusError), client.messages.stream(**asked) as failing:
            list(failing.text_stream)
    assert text == whole.content[0].text == "echo: via the sdk"
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens == 4
    assert final.usage.input_tokens == whole.usage.input_tokens == 5
    assert models == ["scripted-model"] and overloaded.value.status_code == 529
    assert server.chat_requests[0].body["system"] == "be kind"
