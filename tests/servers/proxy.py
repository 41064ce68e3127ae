"""A loopback HTTP forward proxy for the tests: what ``HTTP_PROXY`` points at.

Real HTTP on a real socket on 127.0.0.1, in its own event loop in a daemon
thread (as the scripted server). It resolves only the names it is given:
``hosts={"llm.internal": ("127.0.0.1", port)}`` makes a base URL such as
``http://llm.internal:<any port>/v1`` reachable through the proxy and through
nothing else (no DNS knows the name), so a run that succeeds proves the
client went through the proxy.

- Absolute-URI requests (``POST http://llm.internal:80/v1/chat/completions
  HTTP/1.1``, what a client sends to an HTTP proxy): each forwarded on a new
  upstream connection, in origin form with ``Connection: close``; the answer
  piped back until the upstream closes. The client's connection stays open
  for its next request (the answer's own framing tells the client where it
  ends).
- ``CONNECT host:port`` (https through the proxy): a tunnel, piped both ways.
- A name it does not know, or an upstream that refuses: 502.

``proxy.requests`` records each request (method, target, lower-cased
headers) in arrival order; ``proxy.url`` is ``http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

from tests.servers.scripted import _BadRequest, _Parsed, _read_request

__all__ = ["ForwardProxy", "ProxyRecord", "running_proxy"]

_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%b"
# Headers meant for the proxy itself, not forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te",
               "transfer-encoding", "content-length"}  # fmt: skip


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy received."""

    method: str
    target: str  # absolute URI, or host:port for CONNECT
    headers: dict[str, str]  # names lower-cased


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 (see the module docstring).

    Args:
        hosts: the names it resolves, each to ``(ip, port)``: whatever port
            the request names, it goes to that one.
    """

    def __init__(self, hosts: Mapping[str, tuple[str, int]]) -> None:
        self.hosts = dict(hosts)
        self.port = 0
        self._records: list[ProxyRecord] = []
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._records)

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def start(self) -> Self:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the proxy did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("the proxy's thread did not stop within 30 s")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, ctx: self._note_error(str(ctx)))
        self._stopping = asyncio.Event()
        listener = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        self.port = listener.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        listener.close()
        # A connection accepted just before: let its handler start, so that
        # cancelling it closes its socket (see the scripted server).
        for _ in range(5):
            await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Held here: asyncio keeps only weak references to tasks, and once a
        # connection is lost its protocol drops its handler's task too; a
        # handler still waiting (on the upstream, say) would be collected
        # pending ("Task was destroyed but it is pending") instead of
        # finishing or being cancelled by stop().
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        try:
            while isinstance(request := await _read_request(reader, writer), _Parsed):
                with self._lock:
                    self._records.append(ProxyRecord(request.method, request.path, dict(request.headers)))
                if request.method == "CONNECT":
                    await self._tunnel(request, reader, writer)
                    return
                if not await self._forward(request, writer):
                    return
        except (_BadRequest, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client left or spoke nonsense: drop the connection
        except Exception as exc:  # noqa: BLE001 - a proxy bug: kept for the test to see
            self._note_error(f"proxy: {exc!r}")
        except asyncio.CancelledError:
            # Only stop() cancels these. Python 3.11's start_server calls
            # task.exception() on a handler task that ended cancelled, which
            # raises (and is reported): end it normally instead.
            return
        finally:
            writer.close()
            self._handlers.discard(me)

    async def _open(
        self, host: str | None, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to where ``host`` maps; None (502 sent) if it maps nowhere or refuses."""
        address = self.hosts.get(host or "")
        if address is None:
            await _bad_gateway(writer, f"the proxy does not know host {host!r}")
            return None
        try:
            return await asyncio.open_connection(*address, limit=1 << 20)
        except OSError as exc:
            await _bad_gateway(writer, f"upstream {host}: {exc}")
            return None

    async def _forward(self, request: _Parsed, writer: asyncio.StreamWriter) -> bool:
        """One absolute-URI request, answered; whether the client connection may go on."""
        parts = urlsplit(request.path)
        upstream = await self._open(parts.hostname, writer)
        if upstream is None:
            return True
        up_reader, up_writer = upstream
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{request.method} {path or '/'} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k not in _HOP_BY_HOP]
        lines += ["connection: close", f"content-length: {len(request.body)}"]
        try:
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
            await up_writer.drain()
            return await _answer_back(up_reader, writer)
        finally:
            up_writer.close()

    async def _tunnel(
        self, request: _Parsed, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, _ = request.path.rpartition(":")
        upstream = await self._open(host.strip("[]"), writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            pipes = [
                asyncio.ensure_future(_pipe(reader, up_writer, half_close=True)),
                asyncio.ensure_future(_pipe(up_reader, writer, half_close=True)),
            ]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            up_writer.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise AssertionError(f"the proxy failed: {self.errors}")


async def _answer_back(upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Pipe an answer back; whether the client connection may serve another request.

    The upstream was asked to close after its answer, so its ``Connection:
    close`` is dropped when the answer frames itself (length or chunked):
    the client keeps its connection to the proxy.
    """
    try:
        head = await upstream.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        await _bad_gateway(writer, "the upstream closed without an answer")
        return False
    lines = head.decode("latin-1").split("\r\n")
    lower = head.lower()
    framed = b"content-length:" in lower or b"chunked" in lower
    kept = [line for line in lines if not (framed and line.lower().startswith("connection:"))]
    writer.write("\r\n".join(kept).encode("latin-1"))
    await _pipe(upstream, writer, half_close=not framed)
    return framed


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, half_close: bool) -> None:
    """Copy until ``reader`` ends (then half-close ``writer`` if asked); a
    gone ``writer`` ends it too."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()


async def _bad_gateway(writer: asyncio.StreamWriter, reason: str) -> None:
    body = reason.encode()
    writer.write(_BAD_GATEWAY % (len(body), body))
    await writer.drain()


@contextlib.contextmanager
def running_proxy(hosts: Mapping[str, tuple[str, int]]) -> Iterator[ForwardProxy]:
    """Start a ``ForwardProxy(hosts)``, yield it, stop it (and fail on its own errors)."""
    with ForwardProxy(hosts) as proxy:
        yield proxy
