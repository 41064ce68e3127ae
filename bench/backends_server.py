"""A loopback OpenAI-compatible server that streams chat chunks as fast as it can.

Used by bench_backends.py (in a separate process, so its CPU time is not
charged to the client being measured). The chunk count comes from
``max_tokens``; the body of every answer is prebuilt once per count, so the
server does no per-chunk work at all.

    python bench/backends_server.py [--port 0]   # prints "PORT <n>" when ready
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from functools import lru_cache

__all__ = ["chunk_line", "sse_body", "serve"]

_TEMPLATE = (
    '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,'
    '"delta":{"content":%s},"logprobs":null,"finish_reason":null}]}'
)
_FINAL = (
    '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,'
    '"delta":{},"logprobs":null,"finish_reason":"length"}]}'
)
_USAGE = (
    '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench-model","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d,'
    '"total_tokens":%d}}'
)


def chunk_line(i: int) -> bytes:
    """The SSE event of content chunk ``i``: a token of a few characters, like real ones."""
    return b"data: " + (_TEMPLATE % json.dumps(f" tok{i % 1000}")).encode() + b"\n\n"


@lru_cache(maxsize=16)
def sse_body(n: int) -> bytes:
    """A whole streamed answer of ``n`` content chunks, usage and [DONE]."""
    parts = [chunk_line(i) for i in range(n)]
    parts.append(b"data: " + _FINAL.encode() + b"\n\n")
    parts.append(b"data: " + (_USAGE % (n, n + 5)).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


@lru_cache(maxsize=16)
def _response(n: int) -> bytes:
    body = sse_body(n)
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


_MODELS = json.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}).encode()


class _Http(asyncio.Protocol):
    """Just enough HTTP/1.1 with keep-alive for POST /v1/chat/completions and GET /v1/models."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body, self.buf = self.buf[head_end + 4 : end], self.buf[end:]
            self._answer(head.split(" ", 2)[1], body)

    def _answer(self, path: str, body: bytes) -> None:
        if path.endswith("/models"):
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(_MODELS)).encode() + b"\r\n\r\n" + _MODELS
            )
            return
        request = json.loads(body)
        self.transport.write(_response(int(request.get("max_tokens") or 16)))  # type: ignore[attr-defined]


async def serve(port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(_Http, "127.0.0.1", port, backlog=8192)


async def _main(port: int) -> None:
    server = await serve(port)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(_main(parser.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
