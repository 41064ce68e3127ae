"""Two source trees of motio, same machine, interleaved: did a change cost anything?

For a change to a hot path, run the tree before it and the tree after it
in turns (the machine is shared and noisy, so one run of each proves
little; overlapping ranges over several rounds say "no measurable cost"):

- transport: ``OpenAIBackend`` streams read with ``async for`` against the
  loopback chunk server (``bench_backends.run_motio``), at 500 x 200,
  2,000 x 50 and 5,000 x 20 streams x chunks, chunks/s;
- command: ``motio run`` on 5,000 prompts x 20 tokens at ``-c 256`` and
  ``-c 2000``, prompts/s and client CPU (``wait4``).

    git archive <commit> | tar -x -C /tmp/before
    python bench/bench_ab.py /tmp/before/src src [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cli import start_chunk_server, write_prompts  # noqa: E402
from bench_servers import timed  # noqa: E402

_TRANSPORT = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import bench_backends as b
server, url = b.start_chunk_server()
try:
    rates = [b.measure(b.run_motio, url, s, c, 1)[0] for s, c in ((500, 200), (2000, 50), (5000, 20))]
    print("  ".join(f"{{r:9,.0f}}" for r in rates))
finally:
    server.terminate()
"""


def transport(src: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _TRANSPORT],
        env=dict(os.environ, PYTHONPATH=src),
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or done.stderr[-500:]


def command(src: str, prompts: Path, url: str, model: str, tmp: Path) -> str:
    cells = []
    for concurrency in (256, 2000):
        out = tmp / f"{abs(hash(src))}-{concurrency}-{len(list(tmp.iterdir()))}.jsonl"
        argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(out), "--model", model,
                "--base-url", url, "-c", str(concurrency), "--max-tokens", "20", "-q"]  # fmt: skip
        wall, cpu, _, _ = timed(argv, src)
        cells.append(f"c={concurrency}: {5000 / wall:6,.0f} prompts/s CPU {cpu:4.2f} s")
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the src/ directory of the tree before the change")
    parser.add_argument("after", help="the src/ directory of the tree after it")
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    trees = (("before", str(Path(opts.before).resolve())), ("after", str(Path(opts.after).resolve())))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("transport, chunks/s at 500 x 200, 2,000 x 50, 5,000 x 20:")
    for _ in range(opts.rounds):
        for name, src in trees:
            print(f"  {name:6} {transport(src)}", flush=True)
    print("motio run, 5,000 prompts x 20 tokens:")
    with tempfile.TemporaryDirectory(prefix="motio-ab-") as tmp_name:
        tmp = Path(tmp_name)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, 5000)
        server, url, model = start_chunk_server()
        try:
            for _ in range(opts.rounds):
                for name, src in trees:
                    print(f"  {name:6} {command(src, prompts, url, model, tmp)}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
