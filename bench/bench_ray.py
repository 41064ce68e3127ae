"""``motio run --ray`` against the same run without Ray: what going through Ray costs.

One job, twice, from one invocation (the machine is shared and noisy, so
the figures that matter are the ratios): 20,000 prompts x 20 tokens against
two loopback chunk servers (``bench/backends_server.py``, each its own
process), once in one process, once on Ray workers (``--ray``) joining a
local Ray instance this script starts first (``ray.init(num_cpus=2)``), as
a driver joins a running cluster. ``--concurrency`` is the same flag in
both runs: per server, for the whole run (the workers share it).

Client CPU is the machine's busy time over the run (``/proc/stat``) minus
the two servers' own CPU: it counts the driver, the workers and Ray's own
processes (raylet, GCS), and whatever else the machine ran meanwhile, so
read it next to the load average printed first.

    python bench/bench_ray.py [--prompts 20000] [--max-tokens 20] [--concurrency 128|auto] [--workers 2]

With ``--concurrency auto`` both runs find the limit themselves: one
process with its own controllers, the Ray workers with the coordinator's
(fed their first-token times in batches, a tenth of a second at a time).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cli import start_chunk_server, write_prompts  # noqa: E402
from bench_servers import timed as run_timed  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def process_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def timed(argv: list[str], servers: list[int]) -> tuple[float, float, float, str]:
    """(wall s, client CPU s, driver CPU s, stderr) of one run (``bench_servers.timed``
    plus the machine's busy time over it, less the servers')."""
    machine, served = busy_seconds(), sum(process_seconds(pid) for pid in servers)
    wall, driver, _, text = run_timed(argv)
    client = busy_seconds() - machine - (sum(process_seconds(pid) for pid in servers) - served)
    return wall, client, driver, text


def _concurrency(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"a positive number or auto, not {text!r}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20_000)
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument(
        "--concurrency", type=_concurrency, default="128", help="per server, for the whole run: a number or auto"
    )
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    address = ray.get_runtime_context().gcs_address
    print(
        f"python {sys.version.split()[0]}, ray {ray.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; {opts.prompts:,} prompts x {opts.max_tokens} tokens, "
        f"2 servers, --concurrency {opts.concurrency} (per server)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="motio-bench-") as tmp_name:
        tmp = Path(tmp_name)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, opts.prompts)
        first, url_a, model = start_chunk_server()
        second, url_b, _ = start_chunk_server()
        try:
            rows = []
            cases = [
                ("one process", []),
                (f"--ray, {opts.workers} workers", [f"--ray={address}", "--workers", str(opts.workers)]),
            ]
            for name, extra in cases:
                out = tmp / f"{len(rows)}.jsonl"
                argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(out), "--model", model,
                        "--concurrency", str(opts.concurrency), "--max-tokens", str(opts.max_tokens),
                        "--base-url", url_a, "--base-url", url_b, *extra]  # fmt: skip
                wall, client, driver, err = timed(argv, [first.pid, second.pid])
                lines = sum(1 for _ in out.open())
                assert lines == opts.prompts, (lines, err[-2000:])
                rows.append((name, wall, client, driver))
                print(
                    f"{name:<18} {wall:6.2f} s  {opts.prompts / wall:7,.0f} prompts/s  "
                    f"{opts.prompts * opts.max_tokens / wall:9,.0f} chunks/s  client CPU {client:6.2f} s  "
                    f"(driver {driver:5.2f} s)",
                    flush=True,
                )
            (_, base_wall, base_cpu, _), (_, ray_wall, ray_cpu, _) = rows
            print(
                f"--ray / one process: time x{ray_wall / base_wall:.2f} "
                f"(overhead {100 * (ray_wall / base_wall - 1):+.0f}%, target < +20%), "
                f"client CPU x{ray_cpu / base_cpu:.2f}",
                flush=True,
            )
        finally:
            for server in (first, second):
                server.terminate()
                server.wait(timeout=30)
            ray.shutdown()


if __name__ == "__main__":
    main()
