"""Reliability benchmark: ``motio run --concurrency auto`` against overloaded servers.

Two loopback servers (``python -m tests.servers.scripted``, their own
processes), each serving at most 64 requests at once, every request taking
``service + tokens x token_time`` seconds in its slot:

1. **429 storm**: beyond 64, answers 429 with ``Retry-After: 1``.
   2,000 prompts through ``motio run --concurrency auto`` against the
   hand-written asyncio + openai SDK script (``bench/cli_baseline.py``: the
   SDK's default 2 retries, a semaphore of 256). Reported: failures (target
   0 for motio), total time against the ideal (2,000 / 64 x the slot time;
   target within 1.3x), requests the server rejected, the converged
   concurrency.
2. **Queueing server**: never rejects; beyond 64 the rest wait in FIFO before
   their first byte, so time to first token grows with the queue (as vLLM's
   does). 2,000 prompts with ``--concurrency auto`` against fixed 64 and fixed
   1,024. Targets: total time within 1.1x of the best fixed setting; p95
   first-token latency at most 1.5x fixed 64's.

    python bench/bench_reliability.py [--prompts 2000] [--service 0.1] [--token-time 0.025] [--tokens 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CAPACITY = 64


def start_server(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.scripted", "--capacity", str(CAPACITY), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}/v1"


def stop_server(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    for line in out.splitlines():
        if line.startswith("STATS "):
            return json.loads(line[6:])  # type: ignore[no-any-return]
    return {}


def write_prompts(path: Path, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n")


def run(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, client CPU seconds, stderr) of one client run."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{argv[:4]} failed ({code}):\n{text}")
    return wall, usage.ru_utime + usage.ru_stime, text


def results(path: Path) -> tuple[int, int, float | None]:
    """(ok, failed, p95 time to first token in ms) of a results file.

    Time to first token from the request going out: ``ttfb_ms`` less
    ``queued_ms``, the wait in motio's own concurrency gate (fixed settings
    have none; with auto, prompts wait there instead of in the server).
    """
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ok = sum(line["error"] is None for line in lines)
    ttfb = sorted(
        line["ttfb_ms"] - (line.get("queued_ms") or 0.0) for line in lines if line.get("ttfb_ms") is not None
    )
    p95 = ttfb[min(len(ttfb) - 1, int(0.95 * len(ttfb)))] if ttfb else None
    return ok, len(lines) - ok, p95


def motio_argv(prompts: Path, out: Path, base_url: str, concurrency: str, tokens: int) -> list[str]:
    return [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(out), "--base-url", base_url,
            "--model", "scripted-model", "--concurrency", concurrency, "--max-tokens", str(tokens),
            "--max-retries", "8"]  # fmt: skip


def settled(stderr: str) -> str:
    for line in stderr.splitlines():
        if "concurrency settled at" in line:
            return line.rsplit("concurrency settled at", 1)[1].strip()
    return "-"


def storm(opts: argparse.Namespace, tmp: Path, prompts: Path, slot: float) -> None:
    ideal = opts.prompts / CAPACITY * slot
    print(f"\n1. 429 storm: capacity {CAPACITY}, Retry-After 1, slot {slot * 1000:.0f} ms, "
          f"{opts.prompts} prompts; ideal {ideal:.2f} s")  # fmt: skip
    print("| client | wall s | x ideal | ok | failed | rejected by server | client CPU s | concurrency |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    server_args = ["--overflow", "reject", "--retry-after", "1", "--service-time", str(opts.service),
                   "--token-time", str(opts.token_time), "--chunks", str(opts.tokens)]  # fmt: skip
    clients = {
        "motio run --concurrency auto": lambda url, out: motio_argv(prompts, out, url, "auto", opts.tokens),
        "asyncio + SDK, semaphore 256": lambda url, out: [
            sys.executable, str(HERE / "cli_baseline.py"), str(prompts), str(out), url, "scripted-model",
            "256", str(opts.tokens)],
    }  # fmt: skip
    for name, argv in clients.items():
        proc, url = start_server(*server_args)
        out = tmp / f"storm-{len(name)}.jsonl"
        try:
            wall, cpu, err = run(argv(url, out))
        finally:
            stats = stop_server(proc)
        ok, failed, _ = results(out) if out.exists() else (0, opts.prompts, None)
        failed = opts.prompts - ok
        print(f"| {name} | {wall:.2f} | {wall / ideal:.2f} | {ok} | {failed} | {stats.get('rejected', '?')} "
              f"| {cpu:.2f} | {settled(err)} |", flush=True)  # fmt: skip


def queueing(opts: argparse.Namespace, tmp: Path, prompts: Path, slot: float) -> None:
    print(f"\n2. Queueing server: capacity {CAPACITY}, the rest queue; slot {slot * 1000:.0f} ms, "
          f"{opts.prompts} prompts")  # fmt: skip
    print("| --concurrency | wall s | p95 first token ms | ok | failed | concurrency |")
    print("| --- | --- | --- | --- | --- | --- |")
    server_args = ["--overflow", "queue", "--service-time", str(opts.service),
                   "--token-time", str(opts.token_time), "--chunks", str(opts.tokens)]  # fmt: skip
    rows = {}
    for concurrency in ("64", "1024", "auto"):
        proc, url = start_server(*server_args)
        out = tmp / f"queue-{concurrency}.jsonl"
        try:
            wall, _, err = run(motio_argv(prompts, out, url, concurrency, opts.tokens))
        finally:
            stop_server(proc)
        ok, failed, p95 = results(out)
        rows[concurrency] = (wall, p95 or 0.0)
        print(f"| {concurrency} | {wall:.2f} | {p95:.0f} | {ok} | {failed} | {settled(err)} |", flush=True)
    best = min(rows["64"][0], rows["1024"][0])
    print(f"auto / best fixed wall time: {rows['auto'][0] / best:.2f} (target <= 1.1); "
          f"auto / fixed-64 p95 first token: {rows['auto'][1] / rows['64'][1]:.2f} (target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--service", type=float, default=0.1, help="seconds before the first byte")
    parser.add_argument("--token-time", type=float, default=0.025, help="seconds per token")
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--only", choices=["storm", "queue"])
    opts = parser.parse_args()
    slot = opts.service + opts.tokens * opts.token_time
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="motio-bench-") as name:
        tmp = Path(name)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, opts.prompts)
        if opts.only in (None, "storm"):
            storm(opts, tmp, prompts, slot)
        if opts.only in (None, "queue"):
            queueing(opts, tmp, prompts, slot)


if __name__ == "__main__":
    main()
