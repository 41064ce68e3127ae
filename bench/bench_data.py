"""A Parquet dataset through ``motio run --template``: flat memory, and as fast as prompt lines.

Against the loopback chunk server of ``bench/backends_server.py`` (its own
process, answers at once, so the client is all that is measured), each run
a ``motio run`` subprocess timed with its own rusage (``wait4``: peak RSS,
CPU), as ``bench/bench_cli.py`` does:

1. a Parquet file of ``--rows`` rows (default 1,000,000; written here with
   pyarrow, in a temporary directory) and one of ``--small`` rows (10,000),
   both through ``--template 'Classify the sentiment of: {text}'``: peak
   RSS of the big one over the small one (target <= 1.5x);
2. the same prompts as a JSONL of prompt lines (``{"prompt": ...}``, the
   same ``line-N`` ids): prompts/s of the Parquet run over the JSONL run
   (target >= 0.9, i.e. within 10%);
3. the JSONL path's peak RSS at ``--small`` and ``--jsonl-rows`` prompts
   (default 100,000) on this tree and, with ``--before SRC`` (a checkout's
   ``src`` from before ids and latencies were compacted), on that one.

    python bench/bench_data.py [--rows N] [--small N] [--jsonl-rows N] [--before /path/to/old/src]
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

from bench_cli import REPO, start_chunk_server

TEMPLATE = "Classify the sentiment of: {text}"
WORDS = ("good", "bad", "slow", "fast", "bright", "broken", "lovely", "awful", "fine", "odd")


def review(i: int) -> str:
    """Row ``i``'s text: a short review, distinct per row."""
    return f"review {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6 + i % 5))


def write_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string()), ("stars", pa.int32())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            stop = min(rows, start + 100_000)
            texts = [review(i) for i in range(start, stop)]
            stars = [i % 5 + 1 for i in range(start, stop)]
            writer.write_table(pa.table({"text": texts, "stars": pa.array(stars, pa.int32())}))


def write_jsonl(path: Path, rows: int) -> None:
    """The same prompts as the Parquet file's rows, as prompt lines with the same default ids."""
    with path.open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"prompt": TEMPLATE.format(text=review(i))}) + "\n")


def write_files(tmp: Path, opts: argparse.Namespace) -> None:
    for rows in sorted({opts.small, opts.rows}):
        write_parquet(tmp / f"rows-{rows}.parquet", rows)
    for rows in sorted({opts.small, opts.rows, opts.jsonl_rows}):
        write_jsonl(tmp / f"prompts-{rows}.jsonl", rows)


def timed(argv: list[str], src: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of one run, from its own rusage."""
    env = dict(os.environ, PYTHONPATH=str(src))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{argv[3:6]} failed:\n{err.read().decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run(name: str, data: Path, rows: int, tmp: Path, base_url: str, opts: argparse.Namespace,
        *, src: Path = REPO / "src", template: bool = True) -> dict[str, float]:  # fmt: skip
    out = tmp / f"out-{name}.jsonl"
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "motio", "run", str(data), "-o", str(out), "--base-url", base_url,
            "--model", "bench-model", "--concurrency", str(opts.concurrency),
            "--max-tokens", str(opts.max_tokens), "--quiet"]  # fmt: skip
    if template:
        argv += ["--template", TEMPLATE]
    wall, cpu, rss = timed(argv, src)
    written = _count_lines(out)
    if written != rows:
        raise SystemExit(f"{name}: {written} results for {rows} rows")
    out.unlink()
    print(f"{name:<34} {rows:>9,} rows  wall {wall:7.1f} s  {rows / wall:7,.0f} prompts/s  "
          f"CPU {cpu:7.1f} s  peak RSS {rss:6.1f} MB", flush=True)  # fmt: skip
    return {"rows": rows, "wall": wall, "rate": rows / wall, "cpu": cpu, "rss": rss}


def _count_lines(path: Path) -> int:
    with path.open("rb") as lines:
        return sum(1 for _ in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--jsonl-rows", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--before", type=Path, help="src of a checkout from before the compaction")
    parser.add_argument("--write-into", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.write_into is not None:
        write_files(opts.write_into, opts)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"-c {opts.concurrency}, --max-tokens {opts.max_tokens}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="motio-bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        # Written by a child: a child's peak RSS (wait4) starts from its parent's size
        # at fork, so this process must stay small (no pyarrow, no rows in memory).
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--write-into", str(tmp)], check=True)
        files = {rows: tmp / f"rows-{rows}.parquet" for rows in (opts.small, opts.rows)}
        server, base_url, _ = start_chunk_server()
        try:
            figures = measure(opts, tmp, files, base_url)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(opts, figures)


def measure(opts: argparse.Namespace, tmp: Path, files: dict[int, Path], base_url: str) -> dict[str, dict[str, float]]:
    jsonl = lambda rows: tmp / f"prompts-{rows}.jsonl"  # noqa: E731
    figures = {
        "parquet-small": run("parquet --template", files[opts.small], opts.small, tmp, base_url, opts),
        "parquet-big": run("parquet --template", files[opts.rows], opts.rows, tmp, base_url, opts),
        "jsonl-big": run("jsonl prompt lines", jsonl(opts.rows), opts.rows, tmp, base_url, opts, template=False),
        "jsonl-small": run("jsonl prompt lines", jsonl(opts.small), opts.small, tmp, base_url, opts, template=False),
    }
    if opts.jsonl_rows != opts.rows:
        figures["jsonl-mid"] = run(
            "jsonl prompt lines", jsonl(opts.jsonl_rows), opts.jsonl_rows, tmp, base_url, opts, template=False
        )
    if opts.before is not None:
        for key, rows in (("before-small", opts.small), ("before-mid", opts.jsonl_rows)):
            figures[key] = run("jsonl prompt lines (before)", jsonl(rows), rows, tmp, base_url, opts,
                               src=opts.before, template=False)  # fmt: skip
    return figures


def report(opts: argparse.Namespace, f: dict[str, dict[str, float]]) -> None:
    small, big = f"{opts.small:,}", f"{opts.rows:,}"
    print(f"\n| measure | figure | target |\n| --- | --- | --- |")
    ratio = f["parquet-big"]["rss"] / f["parquet-small"]["rss"]
    print(f"| Parquet peak RSS, {big} rows / {small} rows | {f['parquet-big']['rss']:.0f} MB / "
          f"{f['parquet-small']['rss']:.0f} MB = {ratio:.2f}x | <= 1.5x |")  # fmt: skip
    speed = f["parquet-big"]["rate"] / f["jsonl-big"]["rate"]
    print(f"| prompts/s, Parquet / JSONL, {big} rows | {f['parquet-big']['rate']:,.0f} / "
          f"{f['jsonl-big']['rate']:,.0f} = {speed:.2f}x | >= 0.90x |")  # fmt: skip
    cpu = f["parquet-big"]["cpu"] / f["jsonl-big"]["cpu"]
    print(f"| client CPU s, Parquet / JSONL, {big} rows (a shared machine's load moves wall time, "
          f"not CPU) | {f['parquet-big']['cpu']:,.1f} / {f['jsonl-big']['cpu']:,.1f} = {cpu:.2f}x | <= 1.1x |")  # fmt: skip
    mid_key = "jsonl-mid" if "jsonl-mid" in f else "jsonl-big"
    mid = f"{int(f[mid_key]['rows']):,}"
    after = f[mid_key]["rss"] / f["jsonl-small"]["rss"]
    print(f"| JSONL peak RSS, {mid} / {small} prompts (after) | {f[mid_key]['rss']:.0f} MB / "
          f"{f['jsonl-small']['rss']:.0f} MB = {after:.2f}x | |")  # fmt: skip
    if "jsonl-mid" in f:
        whole = f["jsonl-big"]["rss"] / f["jsonl-small"]["rss"]
        print(f"| JSONL peak RSS, {big} / {small} prompts (after) | {f['jsonl-big']['rss']:.0f} MB / "
              f"{f['jsonl-small']['rss']:.0f} MB = {whole:.2f}x | |")  # fmt: skip
    if "before-mid" in f:
        before = f["before-mid"]["rss"] / f["before-small"]["rss"]
        print(f"| JSONL peak RSS, {mid} / {small} prompts (before) | {f['before-mid']['rss']:.0f} MB / "
              f"{f['before-small']['rss']:.0f} MB = {before:.2f}x | |")  # fmt: skip


if __name__ == "__main__":
    main()
