"""One fault in a batch, as issue 16 found them: does every prompt still complete once?

Two scenarios, each a real ``motio run`` against two scripted servers in
their own processes (``python -m tests.servers.scripted``, a token every
``--token-time`` seconds, so many streams are mid-answer at any instant):

- ``server``: 3,000 prompts over two servers, ``--concurrency 32``; the
  second server is killed with ``kill -9`` 4 s into the run;
- ``ray``: 6,000 prompts over two servers, ``--ray --workers 2``
  (a local instance the command starts), ``--concurrency 32``; one
  ``ray::BatchWorker`` is killed with ``kill -9`` 8 s into the run.

For each it prints the exit status, every id once or not, failed results by
error type, the re-runs the summary reports, and the wall time. Give it a
source tree to compare a tree before the change with one after it:

    git archive <commit> | tar -x -C /tmp/before
    python bench/bench_faults.py --src /tmp/before/src --src src
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def prompt_text(i: int) -> str:
    # Lengths differ so that the streams in flight never move in lockstep.
    return f"number{i} " + " ".join(f"w{i}.{k}" for k in range(9 + (i * 7) % 13))


def start_server(src: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.scripted", "--token-time", "0.02"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=f"{src}:{REPO}"),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT"), line
    return proc, int(line.split()[1])


def worker_to_kill(ports: tuple[int, ...], deadline: float) -> int:
    from tests.ray.conftest import workers_connected_to

    while not (workers := workers_connected_to(*ports)):
        if time.monotonic() > deadline:
            raise RuntimeError("no Ray worker streamed from the servers")
        time.sleep(0.05)
    return min(workers)


def scenario(name: str, src: str, tmp: Path) -> str:
    count, kill_at = (3000, 4.0) if name == "server" else (6000, 8.0)
    prompts, out = tmp / f"{name}.jsonl", tmp / f"{name}-out-{abs(hash(src))}.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": prompt_text(i)}) + "\n" for i in range(count)))
    servers = [start_server(src) for _ in range(2)]
    ports = tuple(port for _, port in servers)
    argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(out), "-c", "32", "--max-tokens", "64"]
    for port in ports:
        argv += ["--base-url", f"http://127.0.0.1:{port}/v1"]
    if name == "ray":
        argv += ["--ray", "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=f"{src}:{REPO}", MOTIO_STARTUP_TIMEOUT="60")
    started = time.monotonic()
    run = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if name == "server":
            time.sleep(kill_at)  # the fault's instant, as the issue measured it
            servers[1][0].send_signal(signal.SIGKILL)
        else:
            pid = worker_to_kill(ports, started + 120)
            time.sleep(max(0.0, started + kill_at - time.monotonic()))
            os.kill(pid, signal.SIGKILL)
        _, err = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
        for proc, _ in servers:
            proc.kill()
            proc.wait(30)
    wall = time.monotonic() - started
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    ids = Counter(line["id"] for line in lines)
    once = set(ids) == {f"p{i}" for i in range(count)} and max(ids.values(), default=0) == 1
    failed = Counter(line["error"]["type"] for line in lines if line["error"])
    reruns = re.search(r"re-run after a broken stream: (\d+)", err)
    again = re.search(r"(\d+) prompts? ran again after a worker died", err)
    return (
        f"exit {run.returncode}, {len(lines)} of {count} lines, every id once: {once}, "
        f"failed: {dict(failed) or 0}, re-runs after a broken stream: {reruns.group(1) if reruns else '-'}, "
        f"ran again after a worker died: {again.group(1) if again else '-'}, {wall:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a src/ directory (repeatable; default: this tree's)")
    parser.add_argument("--only", choices=("server", "ray"))
    opts = parser.parse_args()
    trees = [str(Path(src).resolve()) for src in (opts.src or [str(REPO / "src")])]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="motio-faults-") as tmp_name:
        for name in ("server", "ray"):
            if opts.only and name != opts.only:
                continue
            for src in trees:
                print(f"{name:6} {src}: {scenario(name, src, Path(tmp_name))}", flush=True)


if __name__ == "__main__":
    main()
