"""``motio run`` against one loopback chunk server and against two, same job.

What several servers cost the client: the routing (a lock, a scan of the
servers, one shared wait queue) runs on every request, so on a fast server,
where the client's CPU is the limit, one server and two at the same total
concurrency should take about the same time and CPU. Each side is a
subprocess, as a user runs it; each server (``bench/backends_server.py``) is
its own process, so its CPU is not charged to the client.

    python bench/bench_servers.py [--prompts 5000] [--concurrency 256] [--max-tokens 20]

Printed: wall time, prompts/s, client CPU seconds and peak RSS per run, and
how the two-server run split the prompts (from its end-of-run line).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cli import start_chunk_server, write_prompts  # noqa: E402


def timed(argv: list[str], src: str | Path = HERE.parent / "src") -> tuple[float, float, float, str]:
    """(wall s, client CPU s, peak RSS MB, stderr) of one run, from its own rusage;
    ``src`` is the motio tree it imports (this checkout's by default)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:6]} failed:\n{text}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5000)
    parser.add_argument(
        "--concurrency", type=int, default=256, help="in total; split evenly over two servers"
    )
    parser.add_argument("--max-tokens", type=int, default=20)
    opts = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="motio-bench-") as tmp_name:
        tmp = Path(tmp_name)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, opts.prompts)
        first, url_a, model = start_chunk_server()
        second, url_b, _ = start_chunk_server()
        try:
            cases = [
                ("one server", [url_a], opts.concurrency),
                ("two servers", [url_a, url_b], opts.concurrency // 2),
            ]
            for name, urls, per_server in cases:
                out = tmp / f"{len(urls)}.jsonl"
                argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(out), "--model", model,
                        "--concurrency", str(per_server), "--max-tokens", str(opts.max_tokens),
                        *[arg for url in urls for arg in ("--base-url", url)]]  # fmt: skip
                wall, cpu, rss, err = timed(argv)
                split = next((line for line in err.splitlines() if "servers:" in line), "")
                print(
                    f"{name:<12} {len(urls) * per_server:5d} in flight  {wall:6.2f} s  "
                    f"{opts.prompts / wall:8,.0f} prompts/s  CPU {cpu:5.2f} s  RSS {rss:4.0f} MB  {split}",
                    flush=True,
                )
        finally:
            for server in (first, second):
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
