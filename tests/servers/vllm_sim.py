"""A simulated vLLM server: continuous batching, a waiting queue, a prefix cache, ``/metrics``.

The scripted server (``tests/servers/scripted.py``) does exactly what a test
scripts, byte by byte; this one *behaves* like a server with a GPU behind it,
so a scheduler (concurrency at the knee, prefix-aware routing, racing
stragglers) can be measured against something that responds to load the way
vLLM does: a fixed number of running sequences, the rest queued (never a
429), every running sequence slowing the decode step a little, prompts whose
prefix is cached prefilling only the rest. It is fast enough (one engine
task, every token written straight to its socket) to serve thousands of
streamed requests a second from one Python process.

Quick start::

    from tests.servers.vllm_sim import running_sim

    with running_sim(slots=4, time_scale=0.1) as sim:
        ...                                   # point a client at sim.base_url
        sim.wait_for(lambda s: s["served"] >= 10, timeout=10)
        print(sim.stats()["prefill_tokens"])  # and sim.metrics_url for /metrics

As a process (benchmarks): ``python -m tests.servers.vllm_sim --port 0
--slots 64 --time-scale 0.5`` prints ``PORT <n>`` when ready and, on SIGTERM
or SIGINT, ``STATS <json>`` (the ``stats()`` dict) and exits 0. Every keyword
option below is a flag (``cache_tokens`` is ``--cache-tokens``).

Endpoints
---------
- ``GET /v1/models``, ``GET /health`` (200, empty body).
- ``POST /v1/chat/completions``: streamed (SSE, vLLM's chunk shapes: a role
  chunk ``{"role": "assistant", "content": ""}`` with the first token, one
  chunk per token, ``finish_reason`` on the last token's chunk, a usage chunk
  with ``choices: []`` when ``stream_options.include_usage``, then
  ``data: [DONE]``) or not (one ``chat.completion``). Headers go out when the
  request arrives, as vLLM's streaming response sends them; the first chunk
  when the request's prefill ends.
- ``GET /metrics``: Prometheus text with vLLM's names, labels
  ``model_name`` and ``engine="0"``: ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (gauges),
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
  ``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total``
  (counters, in tokens as vLLM v1 counts them) and the
  ``vllm:time_to_first_token_seconds`` histogram (vLLM's buckets, wall
  seconds). ``metrics=False``: 404, as a server without metrics.
- Anything else: 404.

The model (one engine loop, vLLM v1's scheduler simplified)
-----------------------------------------------------------
Each step: requests from the waiting queue (FIFO) are admitted while fewer
than ``slots`` (vLLM's ``max_num_seqs``) run; an admitted request looks up
its prompt in the prefix cache and needs prefill of the uncached rest. The
step's token budget (``max_batched_tokens``, vLLM's
``max_num_batched_tokens``) goes first to one token per decoding sequence,
then to prefill chunks in admission order (chunked prefill). The step takes
``decode_base + decode_per_seq x decoding sequences + prefill_token_time x
prefill tokens`` (times ``time_scale``, times ``slow_factor`` once slow).
At its end each decoding sequence has one more token (sent at once), and a
request whose prefill completed gets its first token. A request finishes
after its output length: ``max_tokens`` (or ``max_completion_tokens``, else
``default_tokens``). Requests arriving during a step join the next one.

Tokens are the whitespace-led words of the messages' contents in order
(system, user, ...; as the scripted server counts them). The answer is
``"echo: " + <last user message>``, then filler words ``" tok<i>"`` up to the
output length.

Prefix cache: vLLM's automatic prefix caching. A prompt's full blocks of
``block_size`` tokens are named by a hash chain (each block's hash covers
every token before it); its cached prefix is the longest run of its leading
blocks present, capped (as vLLM does) so that at least the last prompt token
is computed. Blocks live in one LRU of ``cache_tokens // block_size``
blocks: a lookup refreshes the blocks it hits, a prefill that completes
inserts the prompt's full blocks, the least recently used are evicted.
Blocks of running requests are *not* pinned (vLLM does pin them): with a
cache much larger than what runs at once, as in every bench here, the two
behave alike. Counted in tokens: queries += prompt tokens, hits += cached
tokens, prefill tokens computed += the rest.

A client that leaves (end of file or reset on its socket) is aborted at
once, as vLLM aborts it: out of the waiting queue or its slot, counted in
``disconnects``.

Options (keyword arguments, ``reconfigure(...)`` at run time, CLI flags)
-----------------------------------------------------------------------
- ``slots`` (1024), ``max_batched_tokens`` (8192), ``cache_tokens``
  (400,000), ``block_size`` (16), ``default_tokens`` (16), ``models``.
- Time constants in seconds: ``decode_base``, ``decode_per_seq``,
  ``prefill_token_time`` (below). ``time_scale`` (1.0) multiplies every
  modelled duration (step times and ``service_time``), so a bench runs a
  GPU-minute in seconds with the same shape; ``slow_after`` and
  ``retry_after`` are wall seconds, not scaled.
- ``slow_after=S, slow_factor=N``: S wall seconds after the first chat
  request, every duration is N times longer.
- ``long_fraction=f, long_factor=N``: each request, drawn from a random
  generator seeded with ``seed`` (so a run's sequence of draws repeats),
  is long with probability f and then generates N times its output length
  (past ``max_tokens``: a heavy tail the client cannot cap). Drawn per
  request, not per prompt, as sampling makes a generation's length: the same
  prompt sent again (a retry, a hedge) is most likely of normal length.
- ``overflow="reject"`` with ``capacity`` (16), ``service_time`` (0.5 s)
  and ``retry_after`` (1): a 429-storm server instead of the engine: at most
  ``capacity`` chat requests in flight, the rest answered 429 with
  ``Retry-After``; an admitted request waits ``service_time`` and gets its
  whole answer at once.
- ``metrics=False``: no ``/metrics``.

Stats (``sim.stats()``, the ``STATS`` line)
-------------------------------------------
``requests`` (chat requests arrived), ``served`` (answered to the end),
``rejected`` (429), ``disconnects``, ``running``, ``waiting``,
``max_running``, ``max_waiting``, ``prompt_tokens``, ``prefill_tokens``
(computed), ``generation_tokens``, ``prefix_cache_queries``,
``prefix_cache_hits`` (tokens), ``first_token_s`` (each served request's
arrival to first token, wall seconds, in completion order) and ``prompts``
(each served request's first user message, in completion order).

Calibration: Llama-3.1-8B-Instruct (BF16) on one H100-80GB
---------------------------------------------------------
- Decode. A published concurrency sweep with vLLM 0.21 on one
  H100-80GB-HBM3 (InferenceBench, "Recipe: concurrency sweep",
  yobitelcomm.github.io/bench/recipes/concurrency-sweep/) gives a p50 time
  per output token of 6.48 ms at 1 request in flight, 6.59 ms at 4 and
  10.94 ms at 16. A line through the 1 and 16 points: (10.94 - 6.48) / 15 =
  0.297 ms per running sequence, 6.48 - 0.30 = 6.18 ms base: ``decode_base =
  6.2e-3``, ``decode_per_seq = 3.0e-4`` (4 in flight: 7.4 ms predicted,
  6.59 measured; 64: 25.4 ms predicted, where the sweep's 46.9 ms includes
  prefills interleaved with decode, which this model charges separately).
  A sanity bound: 16 GB of weights read once per step at 3.35 TB/s is 4.8 ms.
- Prefill. 2 x 8.0e9 FLOPs per token; H100 SXM's 989 TFLOP/s dense BF16 at
  about half utilisation (what long prefills reach) is ~31,000 tokens/s:
  ``prefill_token_time = 3.2e-5``. Check against the same sweep: time to
  first token at 1 in flight 13.98 ms = one step (6.5 ms) + ~230 prompt
  tokens x 32 us, a short chat prompt.
- Capacity. vLLM's defaults for the API server on a GPU of 70 GiB or more
  other than an A100 (``EngineArgs.get_batch_defaults`` in
  ``vllm/engine/arg_utils.py``) are ``max_num_seqs`` 1,024 and
  ``max_num_batched_tokens`` 8,192 (256 and 2,048 on smaller GPUs): ``slots =
  1024``, ``max_batched_tokens = 8192``. KV cache: 32 layers x
  8 KV heads x 128 dims x 2 (K and V) x 2 bytes = 128 KiB per token; 0.9 x
  80 GB less 16 GB of weights leaves ~56 GB, ~420,000 tokens:
  ``cache_tokens = 400_000``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any, Literal, Self

from tests.servers.scripted import (
    _TOKEN,
    _BadRequest,
    _Connection,
    _error_body,
    _first_user_text,
    _head,
    _http_chunk,
    _last_user_text,
    _Parsed,
    _text_of,
    close_connections,
    start_tracked_server,
)

__all__ = ["SimOptions", "VllmSim", "main", "running_sim"]

_CREATED = 1700000000
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_SSE_HEAD = _head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                        ("transfer-encoding", "chunked")])  # fmt: skip
_DONE = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


@dataclass(frozen=True)
class SimOptions:
    """Every setting of the simulated server (see the module docstring)."""

    slots: int = 1024
    max_batched_tokens: int = 8192
    cache_tokens: int = 400_000
    block_size: int = 16
    default_tokens: int = 16
    decode_base: float = 6.2e-3
    decode_per_seq: float = 3.0e-4
    prefill_token_time: float = 3.2e-5
    time_scale: float = 1.0
    slow_after: float | None = None
    slow_factor: float = 1.0
    long_fraction: float = 0.0
    long_factor: float = 1.0
    seed: int = 0
    overflow: Literal["queue", "reject"] = "queue"
    capacity: int = 16
    service_time: float = 0.5
    retry_after: float | None = 1.0
    metrics: bool = True
    models: tuple[str, ...] = ("sim-model",)

    def __post_init__(self) -> None:
        if self.overflow not in ("queue", "reject"):
            raise ValueError(f"overflow must be 'queue' or 'reject', not {self.overflow!r}")
        if min(self.slots, self.capacity, self.block_size, self.max_batched_tokens) < 1:
            raise ValueError("slots, capacity, block_size and max_batched_tokens must be at least 1")


# ---------------------------------------------------------------- tokens and the prefix cache


@lru_cache(maxsize=8192)
def _tokens_of(text: str) -> tuple[str, ...]:
    # Cached: a shared system prompt of thousands of words is split once.
    return tuple(_TOKEN.findall(text))


def _prompt_tokens(body: dict[str, Any]) -> tuple[str, ...]:
    out: tuple[str, ...] = ()
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            out += _tokens_of(_text_of(message.get("content")))
    return out


def _block_hashes(tokens: tuple[str, ...], size: int) -> list[int]:
    """The hash chain of the prompt's full blocks: each covers every token before it."""
    hashes, parent = [], 0
    for start in range(0, len(tokens) - size + 1, size):
        parent = hash((parent, tokens[start : start + size]))
        hashes.append(parent)
    return hashes


class _PrefixCache:
    """An LRU of block hashes, ``capacity`` blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: collections.OrderedDict[int, None] = collections.OrderedDict()

    def match(self, hashes: list[int]) -> int:
        """How many leading blocks are cached (each one refreshed)."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            self.blocks.move_to_end(h)
            n += 1
        return n

    def insert(self, hashes: list[int]) -> None:
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


# ---------------------------------------------------------------- one request


class _Request:
    """One chat request inside the engine: its prompt, its progress, its socket."""

    __slots__ = (
        "arrived",
        "conn",
        "done",
        "echo",
        "first_token",
        "generated",
        "hashes",
        "head",
        "limit_hit",
        "model",
        "n_out",
        "n_prompt",
        "prefill_left",
        "prompt",
        "rid",
        "state",
        "stream",
        "tail",
        "text",
        "usage",
    )  # fmt: skip

    def __init__(
        self, rid: int, conn: _SimConnection, body: dict[str, Any], n_out: int, limited: bool
    ) -> None:
        self.rid, self.conn = rid, conn
        self.model = str(body.get("model") or "")
        self.stream = bool(body.get("stream"))
        options = body.get("stream_options")
        self.usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.prompt = _prompt_tokens(body)
        self.hashes: list[int] = []
        self.n_prompt = len(self.prompt)
        self.n_out, self.limit_hit = max(1, n_out), limited
        last = _last_user_text(body).strip()
        self.echo = ("echo:", *_tokens_of(" " + last)) if last else ("echo:",)
        self.prefill_left = 0
        self.generated = 0
        self.arrived = time.monotonic()
        self.first_token = 0.0
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.state = "waiting"  # waiting -> running -> finished | aborted
        self.text = _first_user_text(body)
        head = f'data: {{"id":"chatcmpl-{rid}","object":"chat.completion.chunk","created":{_CREATED},'
        self.head = (head + f'"model":{json.dumps(self.model)},"choices":[{{"index":0,"delta":').encode()
        self.tail: list[str] = []  # the non-streamed answer's tokens

    def token(self, i: int) -> str:
        return self.echo[i] if i < len(self.echo) else f" tok{i}"

    def chunk(self, delta: str, finish: str | None) -> bytes:
        end = b',"logprobs":null,"finish_reason":' + (b'"%s"' % finish.encode() if finish else b"null")
        return _http_chunk(self.head + delta.encode() + end + b',"stop_reason":null}]}\n\n')

    def finish_reason(self) -> str:
        return "length" if self.limit_hit else "stop"

    def usage_data(self) -> dict[str, int]:
        return {"prompt_tokens": self.n_prompt, "completion_tokens": self.generated,
                "total_tokens": self.n_prompt + self.generated}  # fmt: skip


class _SimConnection(_Connection):
    """The scripted server's connection, telling the engine when its client leaves."""

    def __init__(self, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_leave: Callable[[_Request], None]) -> None:  # fmt: skip
        self.active: _Request | None = None
        self.on_leave = on_leave
        super().__init__(cid, reader, writer)

    async def _read_all(self) -> None:
        try:
            await super()._read_all()
        finally:
            if self.active is not None:
                self.on_leave(self.active)

    def open(self) -> bool:
        """Whether the client is still there (as far as this side knows)."""
        return not (self.gone.is_set() or self.writer.transport.is_closing())

    def send(self, data: bytes) -> bool:
        """Write without waiting (the engine never blocks on one client); False if it left."""
        if not self.open():
            return False
        self.writer.transport.write(data)
        return True


# ---------------------------------------------------------------- the server


class VllmSim:
    """The simulated vLLM server on 127.0.0.1 (see the module docstring).

    Args:
        port: the port to listen on; 0 picks a free one.
        **options: any field of :class:`SimOptions`.
    """

    def __init__(self, *, port: int = 0, **options: Any) -> None:
        if "models" in options:
            options["models"] = tuple(options["models"])
        self.options = SimOptions(**options)
        self._requested_port = port
        self.port = 0
        self._count: dict[str, int] = dict.fromkeys(
            ("requests", "served", "rejected", "disconnects", "running", "waiting", "max_running",
             "max_waiting", "prompt_tokens", "prefill_tokens", "generation_tokens",
             "prefix_cache_queries", "prefix_cache_hits", "in_flight"), 0)  # fmt: skip
        self._first_token_s: list[float] = []
        self._prompts: list[str] = []
        self._ttft_buckets = [0] * (len(_TTFT_BUCKETS) + 1)
        self._ttft_sum = 0.0
        self._errors: list[str] = []
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._cache = _PrefixCache(self.options.cache_tokens // self.options.block_size)
        self._first_arrival: float | None = None
        self._random = random.Random(self.options.seed)
        self._ids = 0
        self._connections: set[_SimConnection] = set()
        self._transports: set[asyncio.Transport] = set()  # every connection's, from its first moment
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # Lifecycle.

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the simulated server is not started: use `with running_sim() as sim`")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def metrics_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/metrics"

    def start(self) -> Self:
        """Listen and serve in a daemon thread; return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("a VllmSim starts once; make a new one")
        self._thread = threading.Thread(target=self._run, name="vllm-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the simulated server did not start within 30 s")
        if self._startup_error is not None:
            raise RuntimeError("the simulated server failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection, stop the loop and join its thread (idempotent)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop closed meanwhile
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("the simulated server's thread did not stop within 30 s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()
        if exc_type is None and self._errors:
            raise AssertionError(f"the simulated server failed: {self._errors}")

    def reconfigure(self, **options: Any) -> None:
        """Change options at run time (the next engine step uses them; the cache keeps its blocks)."""
        new = replace(self.options, **options)
        if self._loop is None:
            self._apply(new)
        else:
            self._loop.call_soon_threadsafe(self._apply, new)

    def _apply(self, new: SimOptions) -> None:
        self.options = new
        self._cache.capacity = new.cache_tokens // new.block_size
        self._cache.insert([])  # evict down to a smaller capacity at once
        if self._wake is not None:
            self._wake.set()

    # Reading what happened (any thread).

    def stats(self) -> dict[str, Any]:
        """The counters, maxima, first-token times and served prompts at one instant."""
        count = dict(self._count)
        del count["in_flight"]
        return {**count, "first_token_s": list(self._first_token_s), "prompts": list(self._prompts)}

    @property
    def errors(self) -> list[str]:
        return list(self._errors)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str = "") -> None:
        """Poll ``predicate(sim.stats())`` until it holds.

        Raises:
            AssertionError: ``timeout`` seconds passed first (with the counters).
        """
        deadline = time.monotonic() + timeout
        while not predicate(self.stats()):
            if time.monotonic() > deadline:
                stats = {k: v for k, v in self.stats().items() if not isinstance(v, list)}
                raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}: {stats}")
            time.sleep(0.002)

    # The loop thread.

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # noqa: BLE001 - reported to start() or kept in errors
            self._startup_error = exc
            self._errors.append(f"server loop died: {exc!r}")
            self._ready.set()

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: self._errors.append(str(ctx)))
        self._stopping, self._wake = asyncio.Event(), asyncio.Event()
        listener = await start_tracked_server(self._serve_connection, self._transports, "127.0.0.1",
                                              self._requested_port, backlog=4096, limit=1 << 22)  # fmt: skip
        self.port = listener.sockets[0].getsockname()[1]
        engine = loop.create_task(self._engine())
        self._ready.set()
        await self._stopping.wait()
        engine.cancel()
        await close_connections(listener, self._transports)  # as the scripted server stops

    def _bump(self, name: str, by: int = 1) -> None:
        count = self._count
        count[name] += by
        peak = "max_" + name
        if peak in count and count[name] > count[peak]:
            count[peak] = count[name]

    # HTTP.

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _SimConnection(len(self._connections), reader, writer, self._leave)
        self._connections.add(conn)
        try:
            while isinstance(request := await conn.requests.get(), _Parsed):
                if not await self._serve_request(conn, request) or not request.keep_alive:
                    break
            if isinstance(request, _BadRequest):
                conn.send(_head(400, [("content-length", "0"), ("connection", "close")]))
        except Exception as exc:  # noqa: BLE001 - a server bug: kept for the test to see
            self._errors.append(f"connection: {exc!r}")
            conn.abort()
        except asyncio.CancelledError:
            return  # only stop() cancels these (see the scripted server)
        finally:
            self._connections.discard(conn)
            conn.close()

    async def _serve_request(self, conn: _SimConnection, request: _Parsed) -> bool:
        path = request.path.split("?")[0].rstrip("/")
        if request.method == "POST" and path.endswith("/chat/completions"):
            return await self._serve_chat(conn, request)
        if request.method == "GET" and path.endswith("/models"):
            data = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "vllm"}
                    for m in self.options.models]  # fmt: skip
            return self._json(conn, 200, json.dumps({"object": "list", "data": data}).encode())
        if request.method == "GET" and path == "/health":
            return self._json(conn, 200, b"")
        if request.method == "GET" and path == "/metrics" and self.options.metrics:
            body = self._metrics().encode()
            head = _head(
                200, [("content-type", "text/plain; version=0.0.4"), ("content-length", str(len(body)))]
            )
            return conn.send(head + body)
        return self._json(conn, 404, _error_body(404, f"no route {request.method} {request.path}"))

    @staticmethod
    def _json(conn: _SimConnection, code: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bool:
        head = [("content-type", "application/json"), ("content-length", str(len(body))), *headers]
        return conn.send(_head(code, head) + body)

    async def _serve_chat(self, conn: _SimConnection, request: _Parsed) -> bool:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._json(conn, 400, _error_body(400, "messages: a list is required"))
        self._bump("requests")
        if self._first_arrival is None:
            self._first_arrival = time.monotonic()
        req = self._new_request(conn, body)
        if self.options.overflow == "reject":
            return await self._serve_capacity(conn, req)
        return await self._serve_engine(conn, req)

    def _new_request(self, conn: _SimConnection, body: dict[str, Any]) -> _Request:
        opts = self.options
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        n_out = int(limit) if isinstance(limit, int) else opts.default_tokens
        limited = isinstance(limit, int)
        if opts.long_fraction > 0 and self._random.random() < opts.long_fraction:
            n_out, limited = round(n_out * opts.long_factor), False
        self._ids += 1
        return _Request(self._ids, conn, body, n_out, limited)

    async def _serve_engine(self, conn: _SimConnection, req: _Request) -> bool:
        if req.stream:
            conn.send(_SSE_HEAD)
        conn.active = req
        self._waiting.append(req)
        self._bump("waiting")
        assert self._wake is not None
        self._wake.set()
        try:
            return await req.done
        finally:
            conn.active = None

    async def _serve_capacity(self, conn: _SimConnection, req: _Request) -> bool:
        opts = self.options
        if self._count["in_flight"] >= opts.capacity:
            self._bump("rejected")
            headers = [] if opts.retry_after is None else [("retry-after", f"{opts.retry_after:g}")]
            return self._json(conn, 429, _error_body(429, "the server is at capacity"), headers)
        self._bump("in_flight")
        self._bump("running")
        try:
            if await conn.sleep(opts.service_time * self._scale()):
                self._bump("disconnects")
                return False
            self._count_prompt(req, cached=0)
            data = (_SSE_HEAD if req.stream else b"") + self._first_token(req)
            while req.state != "finished":
                data += self._next_token(req)
            conn.send(data)
            return True
        finally:
            self._bump("in_flight", -1)
            self._bump("running", -1)

    def _leave(self, req: _Request) -> None:
        """The client left: take its request out of the queue or its slot at once."""
        if req.state == "waiting":
            self._waiting.remove(req)
            self._bump("waiting", -1)
        elif req.state == "running":
            self._running.remove(req)
            self._bump("running", -1)
        else:
            return
        req.state = "aborted"
        self._bump("disconnects")
        if not req.done.done():
            req.done.set_result(False)

    # The engine.

    def _scale(self) -> float:
        opts = self.options
        slow = opts.slow_after is not None and self._first_arrival is not None and (
            time.monotonic() - self._first_arrival >= opts.slow_after)  # fmt: skip
        return opts.time_scale * (opts.slow_factor if slow else 1.0)

    async def _engine(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        end = loop.time()
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                end = loop.time()
            self._admit()
            decoding, prefills, seconds = self._plan()
            # Steps are laid end to end on the clock, so the server's own
            # CPU time per step does not add up as drift over a long run.
            end = max(end + seconds, loop.time())
            if (pause := end - loop.time()) > 0:
                await asyncio.sleep(pause)
            else:
                await asyncio.sleep(0)
            self._finish_step(decoding, prefills)

    def _admit(self) -> None:
        opts, cache = self.options, self._cache
        while self._waiting and len(self._running) < opts.slots:
            req = self._waiting.popleft()
            self._bump("waiting", -1)
            req.hashes = _block_hashes(req.prompt, opts.block_size)
            # vLLM computes at least the last prompt token, so a fully cached
            # prompt still gives up its last block.
            usable = min(len(req.hashes), max(0, req.n_prompt - 1) // opts.block_size)
            cached = cache.match(req.hashes[:usable]) * opts.block_size
            self._count_prompt(req, cached)
            req.state = "running"
            self._running.append(req)
            self._bump("running")

    def _plan(self) -> tuple[list[_Request], list[tuple[_Request, int]], float]:
        """Who decodes and who prefills how much this step, and how long the step takes."""
        opts = self.options
        decoding = [r for r in self._running if r.prefill_left == 0]
        budget = opts.max_batched_tokens - len(decoding)
        prefills, prefill_tokens = [], 0
        for req in self._running:
            if req.prefill_left and budget > 0:
                take = min(req.prefill_left, budget)
                prefills.append((req, take))
                budget -= take
                prefill_tokens += take
        seconds = (
            opts.decode_base + opts.decode_per_seq * len(decoding) + opts.prefill_token_time * prefill_tokens
        )
        return decoding, prefills, seconds * self._scale()

    def _finish_step(self, decoding: list[_Request], prefills: list[tuple[_Request, int]]) -> None:
        for req in decoding:
            if req.state == "running":
                self._emit(req)
        for req, take in prefills:
            if req.state != "running":
                continue
            req.prefill_left -= take
            if req.prefill_left == 0:
                self._cache.insert(req.hashes)
                self._emit(req, self._first_token(req))

    def _count_prompt(self, req: _Request, cached: int) -> None:
        req.prefill_left = max(1, req.n_prompt - cached)  # an empty prompt still has a step of prefill
        self._bump("prompt_tokens", req.n_prompt)
        self._bump("prefix_cache_queries", req.n_prompt)
        self._bump("prefix_cache_hits", cached)
        self._bump("prefill_tokens", req.prefill_left)

    def _first_token(self, req: _Request) -> bytes:
        """The prefill is done: note the time to first token; the role chunk to send."""
        req.first_token = now = time.monotonic()
        ttft = now - req.arrived
        self._ttft_buckets[bisect.bisect_left(_TTFT_BUCKETS, ttft)] += 1
        self._ttft_sum += ttft
        return req.chunk('{"role":"assistant","content":""}', None) if req.stream else b""

    def _emit(self, req: _Request, before: bytes = b"") -> bool:
        """Send ``before``, one more token of ``req`` and its end if that was the last: one write.

        Returns:
            False if the client is gone (its reader task aborts the request).
        """
        if not req.conn.open():
            return False
        return req.conn.send(before + self._next_token(req))

    def _next_token(self, req: _Request) -> bytes:
        """One more token: its chunk (streamed), and the answer's end after the last."""
        token = req.token(req.generated)
        req.generated += 1
        self._bump("generation_tokens")
        last = req.generated >= req.n_out
        data = b""
        if req.stream:
            data = req.chunk('{"content":' + json.dumps(token) + "}", req.finish_reason() if last else None)
        else:
            req.tail.append(token)
        return data + self._complete(req) if last else data

    def _complete(self, req: _Request) -> bytes:
        """Count the request served, out of its slot; its last bytes."""
        if req.state == "running":
            self._running.remove(req)
            self._bump("running", -1)
        req.state = "finished"
        self._bump("served")
        self._first_token_s.append(round(req.first_token - req.arrived, 6))
        self._prompts.append(req.text)
        if not req.done.done():
            req.done.set_result(True)
        if req.stream:
            return (_http_chunk(self._usage_event(req)) if req.usage else b"") + _DONE
        body = self._completion(req)
        return _head(200, [("content-type", "application/json"), ("content-length", str(len(body)))]) + body

    def _usage_event(self, req: _Request) -> bytes:
        chunk = {"id": f"chatcmpl-{req.rid}", "object": "chat.completion.chunk", "created": _CREATED,
                 "model": req.model, "choices": [], "usage": req.usage_data()}  # fmt: skip
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _completion(self, req: _Request) -> bytes:
        message = {"role": "assistant", "content": "".join(req.tail), "tool_calls": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": req.finish_reason(),
                  "stop_reason": None}  # fmt: skip
        body = {"id": f"chatcmpl-{req.rid}", "object": "chat.completion", "created": _CREATED,
                "model": req.model, "choices": [choice], "usage": req.usage_data()}  # fmt: skip
        return json.dumps(body).encode()

    # /metrics.

    def _metrics(self) -> str:
        label = f'{{engine="0",model_name="{self.options.models[0]}"}}'
        count = self._count
        used = len(self._cache.blocks) + sum(-(-r.n_prompt // self.options.block_size) for r in self._running)
        usage = min(1.0, used / max(1, self._cache.capacity))
        lines = []
        for name, kind, value in (
            ("vllm:num_requests_running", "gauge", count["running"]),
            ("vllm:num_requests_waiting", "gauge", count["waiting"]),
            ("vllm:kv_cache_usage_perc", "gauge", usage),
            ("vllm:prompt_tokens_total", "counter", count["prompt_tokens"]),
            ("vllm:generation_tokens_total", "counter", count["generation_tokens"]),
            ("vllm:prefix_cache_queries_total", "counter", count["prefix_cache_queries"]),
            ("vllm:prefix_cache_hits_total", "counter", count["prefix_cache_hits"]),
        ):
            family = name.removesuffix("_total")
            lines += [f"# HELP {family} {name} (simulated)", f"# TYPE {family} {kind}",
                      f"{name}{label} {float(value)}"]  # fmt: skip
        lines += self._ttft_histogram()
        return "\n".join(lines) + "\n"

    def _ttft_histogram(self) -> list[str]:
        name = "vllm:time_to_first_token_seconds"
        model = self.options.models[0]
        lines = [f"# HELP {name} Histogram of time to first token in seconds (simulated)",
                 f"# TYPE {name} histogram"]  # fmt: skip
        total = 0
        for bound, n in zip((*_TTFT_BUCKETS, float("inf")), self._ttft_buckets, strict=True):
            total += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{engine="0",le="{le}",model_name="{model}"}} {float(total)}')
        lines.append(f'{name}_count{{engine="0",model_name="{model}"}} {float(total)}')
        lines.append(f'{name}_sum{{engine="0",model_name="{model}"}} {self._ttft_sum}')
        return lines


@contextmanager
def running_sim(**options: Any) -> Iterator[VllmSim]:
    """Start a ``VllmSim(**options)``, yield it, stop it (and fail on its own errors)."""
    with VllmSim(**options) as sim:
        yield sim


# ---------------------------------------------------------------- process mode


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.vllm_sim",
                                     description="A simulated vLLM server on 127.0.0.1; prints PORT <n>.")  # fmt: skip
    parser.add_argument("--port", type=int, default=0)
    for field in fields(SimOptions):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(SimOptions, field.name)
        if field.name == "models":
            parser.add_argument("--model", dest="models", action="append", help="a model name (repeatable)")
        elif field.name == "metrics":
            parser.add_argument(
                "--no-metrics", dest="metrics", action="store_false", help="no /metrics (404)"
            )
        elif field.name == "overflow":
            parser.add_argument(flag, choices=("queue", "reject"), default=default)
        elif field.name in ("slow_after", "retry_after"):
            parser.add_argument(flag, type=_seconds_or_none, default=default, help="seconds, or 'none'")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser.parse_args(argv)


def _seconds_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``PORT <n>`` when ready and ``STATS {...}`` at the end."""
    args = vars(_parse_args(argv))
    port = args.pop("port")
    if args["models"] is None:
        del args["models"]
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # As the scripted server: default dispositions, then blocked before the
    # server thread starts, so only sigwait below receives them.
    for sig in stop_signals:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    sim = VllmSim(port=port, **args).start()
    print("PORT", sim.port, flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        sim.stop()
    print("STATS", json.dumps(sim.stats()), flush=True)
    return 1 if sim.errors else 0


if __name__ == "__main__":
    sys.exit(main())
