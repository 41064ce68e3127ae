"""A tiny OpenAI-compatible HTTP server on 127.0.0.1, for what llama.cpp won't do.

It answers ``POST /v1/chat/completions`` according to the requested model:

- ``ok``: a normal answer of ``max_tokens`` chunks (stream or not), usage, [DONE];
- ``no-usage``: the same without a usage chunk (an older server);
- ``reject-stream-options``: 400 when the request has ``stream_options``;
- ``slow``: one chunk every ``delay`` seconds; counts requests in flight and
  notices when the client disconnects;
- ``stall``: headers and one chunk, then nothing until the client leaves;
- ``status-NNN``: that HTTP error status with an OpenAI-style error body;
- ``malformed``: a chunk that is not JSON;
- ``error-event``: a mid-stream ``{"error": ...}`` payload;
- ``truncated``: two chunks, then the connection is cut mid-body;
- ``no-done``: a well-formed body that ends without [DONE] or a finish_reason;
- ``hold-N``: one chunk, then wait until N streams are in flight at once
  (bounded), then finish: proves that N streams really were concurrent.

It records each chat request's body (``requests``) and headers
(``headers``, names lower-cased) and counts the connections it ``accepted``.

It runs its own event loop in a daemon thread, so the loop under test and
the server never share a loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

__all__ = ["FakeServer"]


def _chunk(i: int, text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }  # fmt: skip


def _event(obj: Any) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return b"data: " + data + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class FakeServer:
    """Start with ``start()``; ``base_url`` then points at it; ``stop()`` ends it."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.accepted = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.max_connections = 0
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-openai-server", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start within 10 s")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self.accepted = 0
            self.max_in_flight = self.in_flight
            self.max_connections = self.connections
            self.disconnected.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._gathered = asyncio.Event()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(asyncio.sleep(0))  # let stream callbacks see the ends
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.accepted += 1
            self.connections += 1
            self.max_connections = max(self.max_connections, self.connections)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                path = head.split(" ", 2)[1]
                headers = {}
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if not path.endswith("/models"):
                    with self._lock:
                        self.headers.append(headers)
                if not await self._answer(path, body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            return  # server shutting down (a handler task must not end cancelled: asyncio logs it)
        finally:
            writer.close()
            with self._lock:
                self.connections -= 1

    async def _answer(
        self, path: str, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; return whether the connection stays usable."""
        if path.endswith("/models"):
            await _send_json(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
            return True
        with self._lock:
            self.requests.append(body)
        model = str(body.get("model"))
        if model.startswith("status-"):
            status = int(model.removeprefix("status-"))
            error = {"error": {"message": f"fake failure {status}", "type": "fake", "code": None}}
            await _send_json(writer, status, error)
            return True
        if model == "reject-stream-options" and "stream_options" in body:
            error = {"error": {"message": "unknown field: stream_options", "type": "invalid"}}
            await _send_json(writer, 400, error)
            return True
        if not body.get("stream"):
            await _send_json(writer, 200, _completion(int(body.get("max_tokens") or 4)))
            return True
        return await self._stream(model, body, reader, writer)

    async def _stream(
        self, model: str, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        n = int(body.get("max_tokens") or 4)
        if model in ("slow", "stall"):
            return await self._stream_slowly(model, n, reader, writer)
        if model.startswith("hold-"):
            return await self._stream_held(int(model.removeprefix("hold-")), writer)
        events = self._events(model, n, "stream_options" in body)
        if model == "truncated":
            writer.write(_http_chunk(events[0] + events[1]))
            await writer.drain()
            writer.transport.abort()  # cut mid-body: no terminating chunk
            return False
        writer.write(_http_chunk(b"".join(events)) + b"0\r\n\r\n")
        await writer.drain()
        return True

    def _events(self, model: str, n: int, usage: bool) -> list[bytes]:
        if model == "malformed":
            return [_event(_chunk(0, "a")), b'data: {"choices": [{"delta": \n\n', _event(b"[DONE]")]
        if model == "error-event":
            return [_event(_chunk(0, "a")), _event({"error": {"message": "model crashed"}})]
        events = [_event(_chunk(0, ""))] + [_event(_chunk(i, f" w{i}")) for i in range(n)]
        if model == "no-done":
            return events
        events.append(_event(_chunk(n, None, "length")))
        if usage and model != "no-usage":
            events.append(_event({"id": "chatcmpl-fake", "choices": [], "usage": {
                "prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}))  # fmt: skip
        events.append(_event(b"[DONE]"))
        return events

    async def _stream_slowly(
        self, model: str, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for i in range(n if model == "slow" else 1):
                writer.write(_http_chunk(_event(_chunk(i, f" s{i}"))))
                await writer.drain()
                if await _client_left(reader, self.delay):
                    self.disconnected.set()
                    return False
            if model == "stall" and await _client_left(reader, 60.0):
                self.disconnected.set()
                return False
            writer.write(_http_chunk(_event(_chunk(n, None, "stop")) + _event(b"[DONE]")) + b"0\r\n\r\n")
            await writer.drain()
            return True
        except ConnectionError:
            self.disconnected.set()
            return False
        finally:
            with self._lock:
                self.in_flight -= 1


    async def _stream_held(self, gather: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(_http_chunk(_event(_chunk(0, " held"))))
        await writer.drain()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.in_flight >= gather:
                self._gathered.set()
        try:
            await asyncio.wait_for(self._gathered.wait(), 60.0)
        except TimeoutError:
            pass  # the client will see fewer in flight than asked and fail its assertion
        finally:
            with self._lock:
                self.in_flight -= 1
        writer.write(_http_chunk(_event(_chunk(1, None, "stop")) + _event(b"[DONE]")) + b"0\r\n\r\n")
        await writer.drain()
        return True


async def _client_left(reader: asyncio.StreamReader, wait: float) -> bool:
    """Wait up to ``wait`` s; True if the client closed its side meanwhile."""
    try:
        data = await asyncio.wait_for(reader.read(1), wait)
    except TimeoutError:
        return False
    return data == b""


def _completion(n: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake-whole", "object": "chat.completion", "created": 1, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " w" * n},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3},
    }  # fmt: skip


async def _send_json(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
