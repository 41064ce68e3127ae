"""How well ``motio run`` uses the servers: issue 19's targets, side by side, in one run.

Every server is the simulated vLLM server (``python -m tests.servers.vllm_sim``,
each its own process; its model and calibration, Llama-3.1-8B on one H100,
are in its docstring), and every client run is the real ``motio run``
command in a subprocess (``PYTHONPATH=src``), as a user runs it. Time to
first token is measured from the request going out: ``ttfb_ms`` less
``queued_ms`` (the wait in motio's own concurrency gate). Server-side
figures (prefill tokens computed, requests received, prompts served per
server) come from each simulator's ``STATS`` line.

1. **429 storm**: capacity 16, ``Retry-After: 1`` above it, 0.5 s per
   request, 300 prompts, ten runs of ``--concurrency auto --max-retries 8``.
   Target: every run within 1.3x of ideal (300 / 16 x 0.5 s = 9.4 s), 0 failed.
2. **Knee**: 64 slots, the rest queued (vLLM never answers 429); 2,000
   prompts of 48 words, 48 tokens each. Fixed 48, 64, 96 and 256 against
   ``auto --no-metrics`` and ``auto`` (which finds ``/metrics``). Targets:
   auto's total time <= 1.05x the best fixed; p95 time to first token <=
   1.2x fixed 64's without metrics, <= 1.1x with them.
3. **Prefix**: 4 servers of 64 slots, each caching 8 prefixes of 2,000
   tokens (16,000 tokens), 64 groups x 50 prompts in shuffled order, 64 in
   flight per server. ``--no-prefix-routing`` (least loaded, file order)
   against the default. Targets: prefill tokens computed >= 3x fewer, total time >=
   1.5x shorter, no server's share of prompts > 1.15x even.
4. **Racing**: 4 servers of 64 slots, 3,000 prompts x 32 tokens, 64 in
   flight per server; (a) one server turns 10x slower halfway, (b) 2% of
   requests generate 20x more tokens. ``--hedge-budget 0`` against the default.
   Targets: total time >= 25% shorter, extra requests (received by the
   servers less prompts) <= 5%, each id exactly once in the results.
5. ``--ray``: sections 2-4 again with ``motio run --ray --workers 2`` on a
   local Ray this script starts (``ray.init(num_cpus=2)``, as bench_ray.py).
6. **Report only**: the order experiment against the real
   ``llama_cpp.server --cache True`` (SmolLM2-135M): 4 prefix groups x 6
   prompts sharing a 400-word system prompt, shuffled against grouped (two
   rounds in turns, a fresh server each), one request at a time; wall time
   and mean time to first token.

A side whose flag ``motio run --help`` lacks (``--no-metrics``,
``--no-prefix-routing``, ``--hedge-budget``: added by issue 19) prints
"skipped: <flag> not available", and the section still runs its baseline
side: today's figures.

Time: the simulators run at ``time_scale`` 0.2-0.5 (every modelled GPU
duration times that; the 429 storm's 0.5 s and Retry-After are wall
seconds), so the whole bench takes about 5 minutes without ``--ray`` on 2
cores (section 1 is half of it: ten runs of ~10 s; ``--storm-runs`` fewer).

    python bench/bench_schedule.py [--only storm|knee|prefix|racing|llama] [--ray] [--storm-runs 10] [--src DIR]

``--src`` runs another tree's motio (``/path/to/checkout/src``) against this
checkout's simulator, e.g. main's before and a branch's after.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

MODEL = "sim-model"
SRC = REPO / "src"  # the motio tree the runs import (--src)
RUN_TIMEOUT = 300.0  # seconds: a motio run that takes longer is stopped and reported


def where(ray: Sequence[str]) -> str:
    return " (motio run --ray, 2 workers)" if ray else ""


# ---------------------------------------------------------------- servers


@contextmanager
def sims(
    count: int, *args: str, extra: Sequence[Sequence[str]] = ()
) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
    """``count`` simulators with ``args`` (server i also gets ``extra[i]``): (base URLs, stats filled at exit)."""
    procs: list[subprocess.Popen[str]] = []
    urls: list[str] = []
    stats: list[dict[str, Any]] = []
    try:
        for i in range(count):
            more = list(extra[i]) if i < len(extra) else []
            proc = subprocess.Popen([sys.executable, "-m", "tests.servers.vllm_sim", "--port", "0", *args, *more],
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("PORT"):
                raise SystemExit(f"simulator did not start: {line!r}")
            urls.append(f"http://127.0.0.1:{line.split()[1]}/v1")
        yield urls, stats
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            found = [line[6:] for line in out.splitlines() if line.startswith("STATS ")]
            stats.append(json.loads(found[0]) if found else {})


# ---------------------------------------------------------------- the client


def motio_flags() -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    text = subprocess.run([sys.executable, "-m", "motio", "run", "--help"], env=env, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    return set(re.findall(r"--[a-z][a-z-]+", text))


@dataclass
class Run:
    wall: float
    ok: int
    failed: int
    p95_ttft_ms: float | None
    ids: collections.Counter[str]
    stderr: str


def run_motio(prompts: Path, out: Path, urls: Sequence[str], *extra: str, ray: Sequence[str] = ()) -> Run:
    """One ``motio run`` to a fresh results file: its wall time and what the file holds."""
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "motio", "run", str(prompts), "-o", str(out), "--model", MODEL, "-q",
            *(a for url in urls for a in ("--base-url", url)), *extra, *ray]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(SRC))
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        # A run that hangs is a finding, not the end of the bench: stop it as
        # a user would (SIGTERM keeps what it answered), then report it.
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        print(f"(motio run {' '.join(extra)} stopped after {RUN_TIMEOUT:.0f} s)", flush=True)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1, 130, 143, -15, -9):
        raise SystemExit(f"motio run failed ({proc.returncode}):\n{stderr[-3000:]}")
    lines = (
        [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    )
    ok = sum(line["error"] is None for line in lines)
    ttfb = sorted(line["ttfb_ms"] - (line.get("queued_ms") or 0.0) for line in lines
                  if line.get("ttfb_ms") is not None)  # fmt: skip
    p95 = ttfb[min(len(ttfb) - 1, int(0.95 * len(ttfb)))] if ttfb else None
    ids = collections.Counter(str(line["id"]) for line in lines)
    return Run(wall, ok, len(lines) - ok, p95, ids, stderr)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def exactly_once(run: Run, count: int) -> bool:
    return len(run.ids) == count and set(run.ids.values()) == {1}


# ---------------------------------------------------------------- 1. the 429 storm


def storm(opts: argparse.Namespace, tmp: Path, ray: Sequence[str]) -> None:
    count, capacity, service = 300, 16, 0.5
    ideal = count / capacity * service
    prompts = tmp / "storm.jsonl"
    write_plain(prompts, count, words=8)
    print(f"\n## 1. 429 storm: capacity {capacity}, Retry-After 1, {service} s a request, {count} prompts; "
          f"ideal {ideal:.2f} s\n")  # fmt: skip
    print("| run | wall s | x ideal | ok | failed | rejected (429) | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    worst, failed_total = 0.0, 0
    for i in range(opts.storm_runs):
        with sims(1, "--overflow", "reject", "--capacity", str(capacity), "--service-time", str(service),
                  "--retry-after", "1") as (urls, stats):  # fmt: skip
            run = run_motio(prompts, tmp / "storm-out.jsonl", urls, "--concurrency", "auto", "--max-retries", "8",
                            "--max-tokens", "4", ray=ray)  # fmt: skip
        failed = count - run.ok
        ratio = run.wall / ideal
        worst, failed_total = max(worst, ratio), failed_total + failed
        print(f"| {i + 1} | {run.wall:.2f} | {ratio:.2f} | {run.ok} | {failed} | {stats[0].get('rejected', '?')} "
              f"| {verdict(ratio <= 1.3 and failed == 0)} |", flush=True)  # fmt: skip
    print(
        f"\nworst run {worst:.2f}x ideal (target <= 1.3), {failed_total} failed (target 0): "
        f"{verdict(worst <= 1.3 and failed_total == 0)}"
    )


def write_plain(path: Path, count: int, words: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            text = f"question {i} " + " ".join(f"w{k}" for k in range(words - 2))
            out.write(json.dumps({"id": f"q{i}", "prompt": text}) + "\n")


# ---------------------------------------------------------------- 2. the knee


def knee(opts: argparse.Namespace, tmp: Path, flags: set[str], ray: Sequence[str]) -> None:
    count, slots, tokens, scale = 2000, 64, 48, 0.2
    prompts = tmp / "knee.jsonl"
    write_plain(prompts, count, words=48)
    print(f"\n## 2. Knee{where(ray)}: {slots} slots, the rest queued; {count} prompts of 48 words x {tokens} tokens "
          f"(time_scale {scale})\n")  # fmt: skip
    sides: dict[str, list[str]] = {str(c): ["--concurrency", str(c)] for c in (48, 64, 96, 256)}
    if "--no-metrics" in flags:
        sides["auto --no-metrics"] = ["--concurrency", "auto", "--no-metrics"]
    else:
        print("skipped: --no-metrics not available (auto below reads no metrics either: today's auto)\n")
    sides["auto"] = ["--concurrency", "auto"]
    print("| --concurrency | wall s | p95 first token ms | ok | failed | max running | max waiting |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = {}
    for name, extra in sides.items():
        with sims(1, "--slots", str(slots), "--time-scale", str(scale)) as (urls, stats):
            run = run_motio(
                prompts, tmp / "knee-out.jsonl", urls, *extra, "--max-tokens", str(tokens), ray=ray
            )
        rows[name] = run
        print(f"| {name} | {run.wall:.2f} | {run.p95_ttft_ms or 0:.0f} | {run.ok} | {run.failed} "
              f"| {stats[0].get('max_running')} | {stats[0].get('max_waiting')} |", flush=True)  # fmt: skip
    best = min(rows[str(c)].wall for c in (48, 64, 96, 256))
    base_p95 = rows["64"].p95_ttft_ms or 1.0
    print()
    for name, limit in (("auto --no-metrics", 1.2), ("auto", 1.1)):
        if name not in rows:
            continue
        run = rows[name]
        wall, p95 = run.wall / best, (run.p95_ttft_ms or 0) / base_p95
        print(
            f"{name}: wall {wall:.2f}x best fixed (target <= 1.05), p95 first token {p95:.2f}x fixed 64's "
            f"(target <= {limit}): {verdict(wall <= 1.05 and p95 <= limit and run.failed == 0)}"
        )


# ---------------------------------------------------------------- 3. prefix routing


_VOCAB = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "be",
    "this",
    "from",
    "or",
    "an",
    "are",
    "not",
    "but",
    "all",
    "were",
    "one",
    "can",
    "had",
    "has",
    "more",
    "will",
    "who",
    "out",
    "about",
    "up",
    "so",
    "what",
    "when",
    "there",
    "which",
    "their",
    "time",
    "if",
    "would",
    "than",
    "into",
    "only",
    "other",
    "some",
    "could",
    "new",
    "these",
    "two",
    "may",
    "first",
    "then",
    "do",
    "any",
    "like",
    "my",
    "now",
    "over",
    "such",
    "our",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
]


def write_groups(path: Path, groups: int, per_group: int, prefix_words: int, seed: int = 19,
                 plain: bool = False) -> None:  # fmt: skip
    """``groups`` x ``per_group`` prompts, shuffled; a group's prompts share a system prompt of
    ``prefix_words`` words (``plain``: common English words, about a token each to a real tokenizer)."""
    rows = []
    for g in range(groups):
        if plain:
            system = f"Context {g}: " + " ".join(
                _VOCAB[(g * 31 + k * k) % len(_VOCAB)] for k in range(prefix_words)
            )
        else:
            system = " ".join(f"g{g}w{k}" for k in range(prefix_words))
        rows += [{"id": f"g{g}-{j}", "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": f"item {j} of group {g}"}]}
                 for j in range(per_group)]  # fmt: skip
    random.Random(seed).shuffle(rows)
    with path.open("w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)


def prefix(opts: argparse.Namespace, tmp: Path, flags: set[str], ray: Sequence[str]) -> None:
    servers, groups, per_group, words, scale = 4, 64, 50, 2000, 0.25
    count = groups * per_group
    prompts = tmp / "prefix.jsonl"
    write_groups(prompts, groups, per_group, words)
    sim_args = ["--slots", "64", "--cache-tokens", str(8 * words), "--time-scale", str(scale)]
    print(f"\n## 3. Prefix{where(ray)}: {servers} servers caching 8 prefixes of {words} tokens each, {groups} groups x "
          f"{per_group} prompts shuffled, 64 in flight per server (time_scale {scale})\n")  # fmt: skip
    sides = {}
    if "--no-prefix-routing" in flags:
        sides["--no-prefix-routing"] = ["--no-prefix-routing"]
    else:
        print("skipped: --no-prefix-routing not available (the default below is today's least-loaded "
              "routing in file order)\n")  # fmt: skip
    sides["default"] = []
    print("| routing | wall s | prefill tokens | cache hit rate | max share / even | ok | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = {}
    for name, extra in sides.items():
        with sims(servers, *sim_args) as (urls, stats):
            run = run_motio(prompts, tmp / "prefix-out.jsonl", urls, "--concurrency", "64", "--max-tokens", "16",
                            *extra, ray=ray)  # fmt: skip
        prefill = sum(s.get("prefill_tokens", 0) for s in stats)
        hits = sum(s.get("prefix_cache_hits", 0) for s in stats)
        queries = sum(s.get("prefix_cache_queries", 0) for s in stats) or 1
        share = max(s.get("served", 0) for s in stats) / (count / servers)
        rows[name] = (run, prefill, share)
        print(f"| {name} | {run.wall:.2f} | {prefill:,} | {hits / queries:.0%} | {share:.2f} | {run.ok} "
              f"| {run.failed} |", flush=True)  # fmt: skip
    ideal = groups * words
    print(f"\n(prefilling each prefix once on one server: {ideal:,} tokens)")
    if len(rows) == 2:
        (off, off_prefill, _), (on, on_prefill, share) = rows["--no-prefix-routing"], rows["default"]
        fewer, faster = off_prefill / max(1, on_prefill), off.wall / on.wall
        print(f"prefill {fewer:.1f}x fewer (target >= 3), {faster:.2f}x shorter (target >= 1.5), max share "
              f"{share:.2f} (target <= 1.15), each id once {exactly_once(on, count)}: "
              f"{verdict(fewer >= 3 and faster >= 1.5 and share <= 1.15 and exactly_once(on, count))}")  # fmt: skip


# ---------------------------------------------------------------- 4. racing stragglers


def racing(opts: argparse.Namespace, tmp: Path, flags: set[str], ray: Sequence[str]) -> None:
    servers, count, tokens, scale = 4, 3000, 32, 0.5
    prompts = tmp / "racing.jsonl"
    write_plain(prompts, count, words=12)
    base = ["--slots", "64", "--time-scale", str(scale)]
    # Healthy, the batch takes ~5 s (750 prompts a server, 64 at a time, 32
    # steps of ~13 ms): the slow server turns 10x slower halfway.
    scenarios = {
        "one server 10x slower after 2.5 s": (base, [["--slow-after", "2.5", "--slow-factor", "10"]]),
        "2% of requests 20x longer": ([*base, "--long-fraction", "0.02", "--long-factor", "20"], []),
    }
    print(f"\n## 4. Racing{where(ray)}: {servers} servers, {count} prompts x {tokens} tokens, 64 in flight per server "
          f"(time_scale {scale})\n")  # fmt: skip
    sides = {}
    if "--hedge-budget" in flags:
        sides["--hedge-budget 0"] = ["--hedge-budget", "0"]
    else:
        print("skipped: --hedge-budget not available (the default below is today's: no racing)\n")
    sides["default"] = []
    print("| scenario | racing | wall s | server requests | extra | each id once | ok | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for healthy in (servers, servers - 1):
        with sims(healthy, *base) as (urls, _):
            run = run_motio(prompts, tmp / "racing-out.jsonl", urls, "--concurrency", "64", "--max-tokens",
                            str(tokens), ray=ray)  # fmt: skip
        print(f"| reference: {healthy} healthy servers | default | {run.wall:.2f} | | | {exactly_once(run, count)} "
              f"| {run.ok} | {run.failed} |", flush=True)  # fmt: skip
    for scenario, (sim_args, extra_args) in scenarios.items():
        rows = {}
        for name, extra in sides.items():
            with sims(servers, *sim_args, extra=extra_args) as (urls, stats):
                run = run_motio(prompts, tmp / "racing-out.jsonl", urls, "--concurrency", "64", "--max-tokens",
                                str(tokens), *extra, ray=ray)  # fmt: skip
            received = sum(s.get("requests", 0) for s in stats)
            rows[name] = (run, received)
            print(f"| {scenario} | {name} | {run.wall:.2f} | {received:,} | {(received - count) / count:.1%} "
                  f"| {exactly_once(run, count)} | {run.ok} | {run.failed} |", flush=True)  # fmt: skip
        if len(rows) == 2:
            (off, _), (on, received) = rows["--hedge-budget 0"], rows["default"]
            shorter, extra = 1 - on.wall / off.wall, (received - count) / count
            print(
                f"  {scenario}: {shorter:.0%} shorter (target >= 25%), {extra:.1%} extra (target <= 5%): "
                f"{verdict(shorter >= 0.25 and extra <= 0.05 and exactly_once(on, count))}"
            )


# ---------------------------------------------------------------- 6. the real llama.cpp server


def llama(opts: argparse.Namespace, tmp: Path) -> None:
    from bench_cli import MODEL_ALIAS, free_port, smollm2_path, wait_ready, warm_up

    groups, per_group, words = 4, 6, 400
    print(f"\n## 6. Report: llama_cpp.server --cache True (SmolLM2-135M), {groups} groups x {per_group} prompts "
          f"sharing a {words}-word system prompt, one request at a time, 8 tokens each\n")  # fmt: skip
    shuffled, grouped = tmp / "llama-shuffled.jsonl", tmp / "llama-grouped.jsonl"
    write_groups(shuffled, groups, per_group, words, seed=19, plain=True)
    rows = [json.loads(line) for line in shuffled.read_text().splitlines()]
    rows.sort(key=lambda row: row["id"].split("-")[0])
    grouped.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print("| order | wall s | mean first token ms | ok | failed |")
    print("| --- | --- | --- | --- | --- |")
    # Two rounds in turns: on a shared 2-core machine one pair can swap by noise alone.
    for name, path in [("shuffled", shuffled), ("grouped", grouped)] * 2:
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--model_alias",
                MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False",
                "--interrupt_requests", "False", "--cache", "True"]  # fmt: skip
        with (tmp / "llama.log").open("wb") as log:
            server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, server)
            warm_up(url)
            env = dict(os.environ, PYTHONPATH=str(SRC))
            out = tmp / "llama-out.jsonl"
            out.unlink(missing_ok=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "motio", "run", str(path), "-o", str(out), "--base-url", url,
                            "--model", MODEL_ALIAS, "--concurrency", "1", "--max-tokens", "8", "-q"],
                           env=env, stderr=subprocess.DEVNULL, check=False)  # fmt: skip
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
        lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        ok = sum(line["error"] is None for line in lines)
        ttfb = [line["ttfb_ms"] for line in lines if line.get("ttfb_ms") is not None]
        mean = sum(ttfb) / len(ttfb) if ttfb else 0.0
        print(f"| {name} | {wall:.2f} | {mean:.0f} | {ok} | {len(lines) - ok} |", flush=True)


# ---------------------------------------------------------------- main


@contextmanager
def local_ray(workers: int) -> Iterator[list[str]]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield [f"--ray={ray.get_runtime_context().gcs_address}", "--workers", str(workers)]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["storm", "knee", "prefix", "racing", "llama"])
    parser.add_argument("--ray", action="store_true", help="also sections 2-4 on a local Ray, 2 workers")
    parser.add_argument("--storm-runs", type=int, default=10)
    parser.add_argument(
        "--src", type=Path, default=REPO / "src", help="the motio source tree to run (default: this one's)"
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds a motio run may take")
    opts = parser.parse_args()
    global SRC, RUN_TIMEOUT
    SRC, RUN_TIMEOUT = opts.src.resolve(), opts.run_timeout
    flags = motio_flags()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; motio from {SRC}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="motio-bench-") as name:
        tmp = Path(name)

        def wanted(section: str) -> bool:
            return opts.only in (None, section)

        if wanted("storm"):
            storm(opts, tmp, ())
        if wanted("knee"):
            knee(opts, tmp, flags, ())
        if wanted("prefix"):
            prefix(opts, tmp, flags, ())
        if wanted("racing"):
            racing(opts, tmp, flags, ())
        if opts.ray:
            print("\n# 5. The same on Ray, 2 workers")
            with local_ray(2) as ray:
                for section, fn in (("knee", knee), ("prefix", prefix), ("racing", racing)):
                    if wanted(section):
                        fn(opts, tmp, flags, ray)
        if wanted("llama"):
            llama(opts, tmp)
    print(f"\nbench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
