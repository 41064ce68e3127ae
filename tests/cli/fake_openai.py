"""A tiny OpenAI-compatible HTTP server on loopback that tells what it saw.

Real HTTP on a real socket (``http.server``), so the command under test goes
through its whole stack. It answers ``GET /v1/models`` and streaming or plain
``POST /v1/chat/completions`` with ``echo: <prompt>``, and records:

- ``max_in_flight``: the most requests it was serving at once. A request
  stops counting just *before* its last bytes are written, so a client cannot
  see a response end and start its next request while the old one still
  counts (which would report a concurrency the client never had).
- ``disconnects``: streams whose client went away before the end.

Behaviours for tests:

- ``batch``: hold each stream after its first chunk until ``batch`` requests
  are in flight together, then release them all. A client capped at ``batch``
  therefore reaches its cap in every round; one that exceeded it would show
  more than ``batch`` in flight.
- ``hang_from``: requests from this index on (0-based, in arrival order)
  stream one chunk, then stall until the client disconnects.
- ``hold_from``: requests from this index on stream one chunk, then wait
  until ``release()`` (a test can change the server between the two).
- ``fail_marker``: a prompt containing it gets HTTP 500 while ``failing``.
- ``api_key``: require ``Authorization: Bearer <api_key>``.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["FakeOpenAIServer"]

# Upper bound of every wait inside the server, so a broken test cannot hang it.
_MAX_WAIT = 60.0


class FakeOpenAIServer:
    model = "fake-model"

    def __init__(
        self,
        *,
        batch: int | None = None,
        hang_from: int | None = None,
        hold_from: int | None = None,
        fail_marker: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.batch = batch
        self.hang_from = hang_from
        self.hold_from = hold_from
        self._released = False
        self.fail_marker = fail_marker
        self.failing = True
        self.api_key = api_key
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed = 0
        self.disconnects = 0
        self.prompts: list[str] = []
        self._open_streams: list[socket.socket] = []
        self._released_below = 0
        self._cond = threading.Condition()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=_MAX_WAIT)

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return {
                "requests": self.requests,
                "max_in_flight": self.max_in_flight,
                "completed": self.completed,
                "disconnects": self.disconnects,
            }

    def crash(self) -> None:
        """Die like a killed server: stop listening and reset every open stream."""
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._cond:
            for sock in self._open_streams:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        """Let the streams held by ``hold_from`` finish."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds; False if ``timeout`` passes first."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout=timeout)

    # Called from handler threads.

    def _arrive(self, prompt: str) -> int:
        with self._cond:
            index = self.requests
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.prompts.append(prompt)
            if self.batch is not None and self.in_flight >= self.batch:
                self._released_below = self.requests
            self._cond.notify_all()
            return index

    def _wait_turn(self, index: int) -> None:
        if self.batch is None:
            return
        with self._cond:
            # The deadline only matters for a last round smaller than batch.
            self._cond.wait_for(lambda: index < self._released_below, timeout=5.0)

    def _wait_release(self, index: int) -> None:
        if self.hold_from is None or index < self.hold_from:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._released, timeout=_MAX_WAIT)

    def _leave(self, *, completed: bool) -> None:
        with self._cond:
            self.in_flight -= 1
            if completed:
                self.completed += 1
            else:
                self.disconnects += 1
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs when many clients connect at once,
    # and each dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def fake(self) -> FakeOpenAIServer:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/v1/models":
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        data = [{"id": self.fake.model, "object": "model", "owned_by": "test"}]
        self._send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorised():
            return
        prompt = str(body["messages"][-1]["content"])
        if self.fake.fail_marker and self.fake.fail_marker in prompt and self.fake.failing:
            self._send_json(500, {"error": {"message": "asked to fail", "type": "server_error"}})
            return
        index = self.fake._arrive(prompt)
        pieces = ["echo", ": ", prompt]
        if body.get("stream"):
            self._stream(index, pieces, body)
        else:
            self.fake._leave(completed=True)
            self._send_json(200, _completion(pieces))

    def _stream(self, index: int, pieces: list[str], body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._event(_chunk({"role": "assistant", "content": pieces[0]}))
        self.fake._wait_turn(index)
        self.fake._wait_release(index)
        if self.fake.hang_from is not None and index >= self.fake.hang_from:
            self._wait_for_disconnect()
            self.fake._leave(completed=False)
            return
        for piece in pieces[1:]:
            self._event(_chunk({"content": piece}))
        self.fake._leave(completed=True)
        self._event(_chunk({}, finish_reason="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**_chunk({}), "choices": [], "usage": _usage(pieces)})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _wait_for_disconnect(self) -> None:
        # The request body is fully read, so the socket turns readable only
        # when the client closes it (recv then returns b"") or crash() shuts it.
        sock = self.connection
        with self.fake._cond:
            self.fake._open_streams.append(sock)
        ready, _, _ = select.select([sock], [], [], _MAX_WAIT)
        if ready:
            try:
                sock.recv(1, socket.MSG_PEEK)
            except OSError:
                pass

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def _authorised(self) -> bool:
        expected = self.fake.api_key
        if expected is None or self.headers.get("Authorization") == f"Bearer {expected}":
            return True
        self._send_json(401, {"error": {"message": "Invalid API key", "type": "auth_error"}})
        return False

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": FakeOpenAIServer.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _usage(pieces: list[str]) -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)}


def _completion(pieces: list[str]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": FakeOpenAIServer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(pieces)},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(pieces),
    }
