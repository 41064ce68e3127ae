"""Backends benchmark: motio's OpenAIBackend against the SDK and raw readers.

One command, one run, side by side:

  (a) motio        OpenAIBackend thunks consumed with ``async for``: one
                   connection per stream (no max_concurrency)
  (a) motio c=1000 the same with max_concurrency=1000: the connection budget
                   the raw readers below get, for more than 1,000 streams
  (b) sdk          the official SDK's typed stream (``create(stream=True)``),
                   only where it finishes in reasonable time (<= 500 streams)
  (c) raw httpx2   SSE lines through httpx2's ``aiter_lines`` (the stack the
                   SDK rides on), with the SDK's pool limits
  (c) raw aiohttp  SSE lines through aiohttp's ``content`` line iterator, no
                   JSON decoding, connection limit 1,000 like the SDK's pool

against a loopback server (bench/backends_server.py, its own process) that
streams OpenAI-style chunks as fast as it can, for 1 stream of 20,000 chunks
and 500, 2,000 and 5,000 concurrent streams; then

  (d) end-to-end tokens/s against llama-cpp-python's server on SmolLM2-135M
      at concurrency 8, motio against the SDK.

Targets: (a) >= 70% of raw aiohttp at 500, 2,000 and 5,000 streams, >= 50%
of the best raw reader on one stream; (a) >= 5x (b); (d) within noise.
Client CPU seconds (this process; the server has its own) are printed too.

    python bench/bench_backends.py [--quick] [--skip-llama] [--only-scenario N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = [(1, 20_000), (500, 200), (2_000, 50), (5_000, 20)]  # (streams, chunks per stream)
SDK_MAX_STREAMS = 500  # the typed SDK stream takes minutes beyond this
MESSAGES = [{"role": "user", "content": "go"}]


def start_process(cmd: list[str], ready: Callable[[subprocess.Popen[str]], str], what: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        return proc, ready(proc)
    except BaseException:
        proc.kill()
        raise


def start_chunk_server() -> tuple[subprocess.Popen[str], str]:
    def ready(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "PORT <n>", printed once listening
        if not line.startswith("PORT"):
            raise RuntimeError(f"chunk server did not start: {line!r}")
        return f"http://127.0.0.1:{line.split()[1]}/v1"

    return start_process([sys.executable, str(HERE / "backends_server.py")], ready, "chunk server")


# -- the clients: each makes its client once, warms it up, then times only the streams --

Timed = Callable[[int, int], Awaitable[int]]


CPU: dict[str, float] = {}  # client CPU seconds per chunk of the best round, by client


async def best_rate(stream_all: Timed, streams: int, chunks: int, repeats: int) -> float:
    """Best chunks/s over ``repeats`` rounds of ``streams`` concurrent streams."""
    await stream_all(min(streams, 8), 50)  # first connections, lazy imports
    best = 0.0
    for _ in range(repeats):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        n = await stream_all(streams, chunks)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert n == streams * chunks, (n, streams * chunks)
        if n / elapsed > best:
            best, CPU["last"] = n / elapsed, cpu / n
    return best


async def run_motio(base_url: str, streams: int, chunks: int, repeats: int, cap: int | None = None) -> float:
    from motio.backends import OpenAIBackend

    # A long connect timeout: thousands of connections opening at once on a busy box.
    async with OpenAIBackend(
        "bench-model", base_url=base_url, connect_timeout=60.0, max_concurrency=cap
    ) as backend:

        async def one(n: int) -> int:
            mot = await backend.generate(MESSAGES, max_tokens=n)
            async for _ in mot:
                pass
            usage = mot.generation.usage
            assert usage is not None and usage["completion_tokens"] == n, usage
            return n

        async def stream_all(k: int, n: int) -> int:
            return sum(await asyncio.gather(*(one(n) for _ in range(k))))

        return await best_rate(stream_all, streams, chunks, repeats)


async def run_sdk(base_url: str, streams: int, chunks: int, repeats: int) -> float:
    import openai

    timeout = openai.Timeout(600.0, connect=60.0)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout) as client:

        async def one(n: int) -> int:
            stream = await client.chat.completions.create(
                model="bench-model", messages=MESSAGES, max_tokens=n, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )  # fmt: skip
            got = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got += 1
            return got

        async def stream_all(k: int, n: int) -> int:
            return sum(await asyncio.gather(*(one(n) for _ in range(k))))

        return await best_rate(stream_all, streams, chunks, repeats)


def raw_runner(module_name: str) -> Callable[[str, int, int, int], Awaitable[float]]:
    async def run_raw(base_url: str, streams: int, chunks: int, repeats: int) -> float:
        http = __import__(module_name)
        # The pool limits the SDK gives (a) (openai/_constants.py), so (c) is
        # the same transport, not a better-tuned one. Measured at 500 streams:
        # keep-alive 1000 instead of 100 costs httpx2 more than half (every
        # pool pass probes each idle socket), while httpx 0.28 got faster
        # only because its idle connections expired (5 s) during a slow
        # first round, leaving about 12 connections for the rest.
        limits = http.Limits(max_connections=1000, max_keepalive_connections=100)
        async with http.AsyncClient(limits=limits, timeout=600) as client:

            async def one(n: int) -> int:
                body = {"model": "bench-model", "messages": MESSAGES, "max_tokens": n, "stream": True}
                got = 0
                async with client.stream("POST", f"{base_url}/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            got += 1
                return got - 3  # the final, usage and [DONE] events carry no content

            async def stream_all(k: int, n: int) -> int:
                return sum(await asyncio.gather(*(one(n) for _ in range(k))))

            return await best_rate(stream_all, streams, chunks, repeats)

    return run_raw


async def run_raw_aiohttp(base_url: str, streams: int, chunks: int, repeats: int) -> float:
    import aiohttp

    # The SDK's pool size (1,000), so the raw reader gets no head start from
    # more connections than the SDK would open.
    connector = aiohttp.TCPConnector(limit=1000)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(n: int) -> int:
            body = {"model": "bench-model", "messages": MESSAGES, "max_tokens": n, "stream": True}
            got = 0
            async with session.post(f"{base_url}/chat/completions", json=body) as r:
                async for line in r.content:
                    if line.startswith(b"data:"):
                        got += 1
            return got - 3  # the final, usage and [DONE] events carry no content

        async def stream_all(k: int, n: int) -> int:
            return sum(await asyncio.gather(*(one(n) for _ in range(k))))

        return await best_rate(stream_all, streams, chunks, repeats)


def measure(run: Callable[[str, int, int, int], Awaitable[float]], base_url: str, streams: int, chunks: int, repeats: int) -> tuple[float, float]:
    """(chunks/s, client CPU microseconds per chunk) of the best round."""
    rate = asyncio.run(run(base_url, streams, chunks, repeats))
    return rate, CPU.pop("last") * 1e6


async def run_motio_1000(base_url: str, streams: int, chunks: int, repeats: int) -> float:
    return await run_motio(base_url, streams, chunks, repeats, cap=1000)


CLIENTS: dict[str, Callable[[str, int, int, int], Awaitable[float]]] = {
    "(a) motio": run_motio,
    "(a) motio c=1000": run_motio_1000,
    "(b) sdk": run_sdk,
    "(c) raw httpx2": raw_runner("httpx2"),
    "(c) raw aiohttp": run_raw_aiohttp,
}


def bench_chunks(base_url: str, repeats: int, scenarios: list[tuple[int, int]]) -> None:
    print(f"\nStream throughput against a loopback chunk server (best of {repeats}), chunks/s [client CPU us/chunk]")
    print(f"{'scenario':<22}" + "".join(f"{name:>24}" for name in CLIENTS) + f"{'a/b':>8}{'a/aiohttp':>11}{'a/best raw':>12}{'a1000/aiohttp':>15}")
    for streams, chunks in scenarios:
        rates: dict[str, tuple[float, float]] = {}
        for name, run in CLIENTS.items():
            if (name == "(b) sdk" and streams > SDK_MAX_STREAMS) or (name.endswith("c=1000") and streams <= 1000):
                continue
            rates[name] = measure(run, base_url, streams, chunks, repeats if name != "(b) sdk" else max(1, repeats - 1))
        motio = rates["(a) motio"][0]
        raw = max(rates["(c) raw httpx2"][0], rates["(c) raw aiohttp"][0])
        sdk = f"{motio / rates['(b) sdk'][0]:>7.1f}x" if "(b) sdk" in rates else f"{'-':>8}"
        cells = "".join(
            f"{f'{rates[n][0]:,.0f} [{rates[n][1]:.1f}]':>24}" if n in rates else f"{'-':>24}" for n in CLIENTS
        )
        label = f"{streams} x {chunks:,}"
        capped = rates.get("(a) motio c=1000", (motio, 0.0))[0]
        print(
            f"{label:<22}{cells}{sdk}{motio / rates['(c) raw aiohttp'][0]:>10.0%}{motio / raw:>11.0%}"
            f"{capped / rates['(c) raw aiohttp'][0]:>13.0%}",
            flush=True,
        )


# -- (d) end to end against the llama.cpp server -----------------------------------


def start_llama_server() -> tuple[subprocess.Popen[str], str]:
    from motio.backends._llamacpp import default_model_path

    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
        "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"

    def ready(proc: subprocess.Popen[str]) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("llama.cpp server exited")
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=2).close()
                return base_url
            except OSError:
                time.sleep(0.2)  # polling another process
        raise RuntimeError("llama.cpp server not ready in 120 s")

    return start_process(cmd, ready, "llama.cpp server")


async def llama_motio(base_url: str, concurrency: int, max_tokens: int) -> int:
    from motio.backends import OpenAIBackend

    async with OpenAIBackend("smollm2", base_url=base_url) as backend:
        mots = [
            await backend.generate(f"Tell me about the number {i}.", max_tokens=max_tokens, temperature=0.0, seed=1)
            for i in range(concurrency)
        ]
        for mot in mots:
            async for _ in mot:
                pass
        return sum(m.generation.usage["completion_tokens"] for m in mots)  # type: ignore[index]


async def llama_sdk(base_url: str, concurrency: int, max_tokens: int) -> int:
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:

        async def one(i: int) -> int:
            stream = await client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": f"Tell me about the number {i}."}],
                max_tokens=max_tokens, temperature=0.0, seed=1, stream=True,
            )  # fmt: skip
            return sum([1 async for c in stream if c.choices and c.choices[0].delta.content])

        return sum(await asyncio.gather(*(one(i) for i in range(concurrency))))


def bench_llama(rounds: int, concurrency: int = 8, max_tokens: int = 64) -> None:
    proc, base_url = start_llama_server()
    try:
        asyncio.run(llama_motio(base_url, 2, 8))  # warm the model
        rates: dict[str, list[float]] = {"motio": [], "sdk": []}
        for _ in range(rounds):  # interleaved, so drift in machine load hits both
            for name, run in (("motio", llama_motio), ("sdk", llama_sdk)):
                t0 = time.perf_counter()
                tokens = asyncio.run(run(base_url, concurrency, max_tokens))
                rates[name].append(tokens / (time.perf_counter() - t0))
    finally:
        proc.terminate()
        proc.wait(15)
    print(f"\n(d) llama.cpp server, SmolLM2-135M, concurrency {concurrency}, {max_tokens} tokens each, tokens/s")
    for name, values in rates.items():
        print(f"  {name:<6} " + "  ".join(f"{v:7.1f}" for v in values) + f"   best {max(values):7.1f}")
    print(f"  motio/sdk (best): {max(rates['motio']) / max(rates['sdk']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat instead of three")
    parser.add_argument("--skip-llama", action="store_true", help="skip (d)")
    parser.add_argument("--only-scenario", type=int, action="append", help="run only scenario N (0-based)")
    args = parser.parse_args()
    scenarios = [SCENARIOS[i] for i in args.only_scenario] if args.only_scenario else SCENARIOS
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    proc, base_url = start_chunk_server()
    try:
        bench_chunks(base_url, repeats=1 if args.quick else 3, scenarios=scenarios)
    finally:
        proc.terminate()
        proc.wait(15)
    if not args.skip_llama:
        bench_llama(rounds=1 if args.quick else 3)


if __name__ == "__main__":
    main()
