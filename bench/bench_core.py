"""Core benchmark: motio's thunk against bare asyncio and mellea 0.8.0.

Run from a checkout (no install needed), with any Python >= 3.11::

    python bench/bench_core.py

It prints, from one run, side by side and as ratios:

1. stream throughput: one thunk fed by ``send_to_queue`` and read with
   ``async for``, on 20,000 to 1,000,000-chunk streams, against a bare
   ``async for`` over the same generator (the limit) and mellea's thunk;
2. lifecycle: 20,000 thunks of 10 chunks created and waited together with
   ``wait_for_all_mots``, thunks/s and bytes per in-flight thunk (tracemalloc,
   in a separate untimed pass), against bare tasks and mellea;
3. ``import motio`` time in fresh interpreters, and ``run_sync`` calls/s
   against ``asyncio.run``.

mellea 0.8.0 runs in its own virtual environment, ``bench/.venv-mellea``,
created on first use (``--mellea-python`` picks another one), through
``core_mellea_driver.py``; ``core_workload.py`` holds the workload both
sides run. Rates are per CPU second of the measuring process (see
``core_workload``); wall-clock rates are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

try:
    import motio
except ImportError:  # a checkout without install: use its src/
    sys.path.insert(0, str(REPO / "src"))
    import motio

from core_workload import (
    PIECE,
    Timing,
    bare_finish,
    bare_make,
    chunks_interleaved,
    in_flight_bytes,
    time_lifecycle,
    time_stream,
)

from motio import ModelOutputThunk, run_sync, wait_for_all_mots

MELLEA = "mellea==0.8.0"
STREAM_N = 1_000_000
STREAM_SIZES = (20_000, 200_000, STREAM_N)
MELLEA_SIZES = (20_000, 200_000)  # 1,000,000 would take tens of minutes: see stream()
LIFE_COUNT, LIFE_CHUNKS = 20_000, 10
INTERLEAVED_N = 200_000
IMPORT_RUNS = 31

TARGET_STREAM_VS_MELLEA = 10.0
TARGET_STREAM_VS_BARE = 0.25
TARGET_LIFE_VS_MELLEA = 5.0
TARGET_BYTES = 1.5 * 1024
TARGET_IMPORT_MS = 50.0


# -- mellea, in its own virtual environment ---------------------------------


def mellea_python(explicit: str | None) -> str:
    """The Python of a virtual environment with mellea 0.8.0, made if missing."""
    if explicit:
        return explicit
    env_dir = BENCH_DIR / ".venv-mellea"
    python = env_dir / "bin" / "python"
    if not python.exists():
        _say(f"creating {env_dir.relative_to(REPO)} for {MELLEA} (first run only)...")
        venv.EnvBuilder(with_pip=True).create(env_dir)
    if _installed_mellea(python) != "0.8.0":
        _say(f"installing {MELLEA} into {env_dir.relative_to(REPO)} (first run only)...")
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", MELLEA]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"pip install {MELLEA} failed:\n{done.stdout}\n{done.stderr}")
    return str(python)


def _installed_mellea(python: Path) -> str | None:
    probe = "import importlib.metadata as m; print(m.version('mellea'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def run_mellea(python: str, *job: object) -> dict[str, Any]:
    """Run one driver job in a fresh mellea process; return its JSON result."""
    import json

    command = [python, str(BENCH_DIR / "core_mellea_driver.py"), *map(str, job)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH_DIR, timeout=900)
    if done.returncode != 0:
        sys.exit(f"mellea driver {' '.join(map(str, job))} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["mellea_version"] != "0.8.0":
        sys.exit(f"{python} has mellea {result['mellea_version']}, not 0.8.0")
    return result


def _timing(result: dict[str, Any]) -> Timing:
    return Timing(cpu=result["cpu"], wall=result["wall"], runs=int(result["runs"]))


# -- measurements -------------------------------------------------------------


def _same(stream: Any) -> Any:
    return stream


def alternate(measures: dict[str, Callable[[], Timing]], rounds: int) -> dict[str, Timing]:
    """Run each measurement once per round, interleaved; median per measurement.

    Interleaving spreads any background load on the machine over all of
    them instead of penalising whichever ran during a busy moment.
    """
    samples: dict[str, list[Timing]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    return {
        name: Timing(
            cpu=statistics.median(t.cpu for t in ts),
            wall=statistics.median(t.wall for t in ts),
            runs=sum(t.runs for t in ts),
        )
        for name, ts in samples.items()
    }


def measure_streams(rounds: int) -> dict[tuple[str, int], Timing]:
    results: dict[tuple[str, int], Timing] = {}
    for n in STREAM_SIZES:
        runs = rounds if n == STREAM_N else rounds + 2
        pair = alternate(
            {
                "bare": lambda n=n: time_stream(_same, n, 1),
                "motio": lambda n=n: time_stream(ModelOutputThunk.from_response, n, 1),
            },
            runs,
        )
        results["bare", n], results["motio", n] = pair["bare"], pair["motio"]
    pair = alternate(
        {
            "bare": lambda: time_stream(_same, INTERLEAVED_N, 1, chunks_interleaved),
            "motio": lambda: time_stream(
                ModelOutputThunk.from_response, INTERLEAVED_N, 1, chunks_interleaved
            ),
        },
        rounds,
    )
    results["bare-interleaved", INTERLEAVED_N] = pair["bare"]
    results["motio-interleaved", INTERLEAVED_N] = pair["motio"]
    return results


def measure_mellea_streams(python: str, rounds: int) -> dict[tuple[str, int], Timing]:
    results = {("bare-mellea-process", STREAM_N): _timing(run_mellea(python, "bare", STREAM_N, 1))}
    for n in MELLEA_SIZES:
        runs = rounds if n < 100_000 else 1  # 200,000 chunks take mellea tens of seconds
        results["mellea", n] = _timing(run_mellea(python, "stream", n, runs))
    return results


def measure_lifecycles(python: str, rounds: int) -> dict[str, Any]:
    timed = alternate(
        {
            "bare": lambda: time_lifecycle(
                bare_make, bare_finish, LIFE_COUNT, LIFE_CHUNKS, 1, lambda t: t.result()
            ),
            "motio": lambda: time_lifecycle(
                ModelOutputThunk.from_response, wait_for_all_mots, LIFE_COUNT, LIFE_CHUNKS, 1,
                lambda m: m.value,
            ),
        },
        rounds,
    )
    mellea = run_mellea(python, "lifecycle", LIFE_COUNT, LIFE_CHUNKS, rounds)
    return {
        "timing": {**timed, "mellea": _timing(mellea)},
        "bytes": {
            "bare": in_flight_bytes(bare_make, bare_finish, LIFE_COUNT, LIFE_CHUNKS),
            "motio": in_flight_bytes(
                ModelOutputThunk.from_response, wait_for_all_mots, LIFE_COUNT, LIFE_CHUNKS
            ),
            "mellea": run_mellea(python, "memory", LIFE_COUNT, LIFE_CHUNKS),
        },
    }


IMPORT_STATEMENTS = {
    "import motio": "import motio",
    "full core": "from motio import ModelOutputThunk, send_to_queue, run_sync",
    "asyncio alone": "import asyncio",
}


def measure_imports() -> dict[str, float]:
    """Median ms of each statement, timed inside fresh interpreters, interleaved."""
    motio_src = str(Path(motio.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [motio_src, os.environ.get("PYTHONPATH")]))}
    # As on a user's machine: bytecode is cached after the first import (this
    # workplace sets PYTHONDONTWRITEBYTECODE, which would time the compiler).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    samples: dict[str, list[float]] = {name: [] for name in IMPORT_STATEMENTS}
    for attempt in range(IMPORT_RUNS + 1):
        for name, statement in IMPORT_STATEMENTS.items():
            code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            if attempt:  # the first round only warms the .pyc and disk caches
                samples[name].append(float(out.stdout) * 1000)
    return {name: statistics.median(ms) for name, ms in samples.items()}


async def _trivial() -> int:
    return 1


def _calls_per_second(run: Callable[[Coroutine[Any, Any, int]], int], seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        run(_trivial())
        calls += 1
    return calls / elapsed


def measure_run_sync(rounds: int) -> dict[str, float]:
    """Wall-clock calls/s (two threads take part, so CPU time would mislead)."""
    run_sync(_trivial())  # the first call starts the background loop
    samples: dict[str, list[float]] = {"run_sync": [], "asyncio.run": []}
    for _ in range(rounds):
        samples["run_sync"].append(_calls_per_second(run_sync, 0.5))
        samples["asyncio.run"].append(_calls_per_second(asyncio.run, 0.5))
    return {name: statistics.median(rates) for name, rates in samples.items()}


# -- report -------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _si(value: float) -> str:
    for scale, suffix in ((1e6, " M"), (1e3, " k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _row(cells: list[str], widths: list[int]) -> str:
    first, *rest = cells
    return "  " + first.ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(rest, widths[1:]))


def report_streams(t: dict[tuple[str, int], Timing], verdicts: list[tuple[str, bool]]) -> None:
    print("1. Stream throughput: one thunk fed by send_to_queue, read with `async for`")
    widths = [34, 11, 14, 10, 12, 14, 6]
    print(_row(["", "N chunks", "chunks/s", "vs bare", "ns/chunk", "wall chunks/s", "runs"], widths))
    bare_1m = STREAM_N / t["bare", STREAM_N].cpu
    order = [("bare async for (the limit)", "bare"), ("motio ModelOutputThunk", "motio"),
             ("mellea 0.8.0 ModelOutputThunk", "mellea")]
    for label, key in order:
        for n in STREAM_SIZES:
            if (key, n) in t:
                _stream_row(label, n, t[key, n], bare_1m, widths)
    _stream_row("bare, in the mellea process", STREAM_N, t["bare-mellea-process", STREAM_N], bare_1m, widths)
    print("  with a loop turn before every chunk (the consumer is woken per chunk):")
    for label, key in (("bare async for", "bare-interleaved"), ("motio ModelOutputThunk", "motio-interleaved")):
        timing = t[key, INTERLEAVED_N]
        _stream_row(label, INTERLEAVED_N, timing, INTERLEAVED_N / t["bare-interleaved", INTERLEAVED_N].cpu, widths)

    rate = {k: n / v.cpu for k, v in t.items() for n in [k[1]]}
    big = max(MELLEA_SIZES)
    grow = t["mellea", big].cpu / big / (t["mellea", MELLEA_SIZES[0]].cpu / MELLEA_SIZES[0])
    exponent = 1 + math.log(grow) / math.log(big / MELLEA_SIZES[0])
    estimate = t["mellea", big].cpu * (STREAM_N / big) ** exponent
    print(f"  mellea is not run at {STREAM_N:,} chunks: its time grows as N^{exponent:.2f} here "
          f"({big:,} chunks took {t['mellea', big].cpu:.1f} CPU s),\n  so {STREAM_N:,} would take "
          f"about {estimate / 60:.0f} min; its figures at {big:,} and {MELLEA_SIZES[0]:,} chunks "
          "stand in, and both favour it.")
    motio_flat = (t["motio", STREAM_N].cpu / STREAM_N) / (t["motio", STREAM_SIZES[0]].cpu / STREAM_SIZES[0])
    print(f"  per-chunk cost growth: motio {motio_flat:.2f}x from {STREAM_SIZES[0]:,} to {STREAM_N:,} "
          f"chunks; mellea {grow:.1f}x from {MELLEA_SIZES[0]:,} to {big:,}.")
    best_mellea_n = max(MELLEA_SIZES, key=lambda n: rate["mellea", n])
    vs_mellea = rate["motio", STREAM_N] / rate["mellea", best_mellea_n]
    vs_bare = rate["motio", STREAM_N] / rate["bare", STREAM_N]
    same_n = ", ".join(f"{rate['motio', n] / rate['mellea', n]:,.0f}x at {n:,}" for n in MELLEA_SIZES)
    print(f"  motio at {STREAM_N:,} vs mellea at its fastest ({best_mellea_n:,}): {vs_mellea:,.1f}x "
          f"(same N: {same_n})   target >= {TARGET_STREAM_VS_MELLEA:g}x   {_verdict(vs_mellea >= TARGET_STREAM_VS_MELLEA)}")
    print(f"  motio at {STREAM_N:,} vs bare at {STREAM_N:,}: {vs_bare:.0%}"
          f"   target >= {TARGET_STREAM_VS_BARE:.0%}   {_verdict(vs_bare >= TARGET_STREAM_VS_BARE)}")
    verdicts += [("stream >= 10x mellea", vs_mellea >= TARGET_STREAM_VS_MELLEA),
                 ("stream >= 25% of bare", vs_bare >= TARGET_STREAM_VS_BARE)]


def _stream_row(label: str, n: int, timing: Timing, bare_rate: float, widths: list[int]) -> None:
    rate = n / timing.cpu
    cells = [label, f"{n:,}", f"{_si(rate)}/s", f"{rate / bare_rate:.3g}x",
             f"{timing.cpu / n * 1e9:,.0f}", f"{_si(n / timing.wall)}/s", str(timing.runs)]
    print(_row(cells, widths))


def report_lifecycles(life: dict[str, Any], verdicts: list[tuple[str, bool]]) -> None:
    print(f"\n2. Lifecycle: {LIFE_COUNT:,} thunks of {LIFE_CHUNKS} chunks, created, then waited together")
    widths = [42, 12, 10, 17, 10, 14, 6]
    print(_row(["", "thunks/s", "vs bare", "bytes in flight", "- bare", "wall thunks/s", "runs"], widths))
    timing, memory = life["timing"], life["bytes"]
    bare = LIFE_COUNT / timing["bare"].cpu
    labels = {"bare": "bare tasks + asyncio.gather", "motio": "motio from_response + wait_for_all_mots",
              "mellea": "mellea 0.8.0 thunk + wait_for_all_mots"}
    for key, label in labels.items():
        rate = LIFE_COUNT / timing[key].cpu
        in_flight = memory[key]["in_flight"]
        cells = [label, _si(rate), f"{rate / bare:.3g}x", f"{in_flight:,.0f}",
                 f"{in_flight - memory['bare']['in_flight']:+,.0f}", _si(LIFE_COUNT / timing[key].wall),
                 str(timing[key].runs)]
        print(_row(cells, widths))
    print("  bytes in flight: tracemalloc, live bytes per thunk once every producer has started and waits")
    print("  for its first chunk (untimed pass); just after creation, before any producer ran: "
          + ", ".join(f"{k} {memory[k]['created']:,.0f}" for k in labels))
    vs_mellea = timing["mellea"].cpu / timing["motio"].cpu
    per = memory["motio"]["in_flight"]
    print(f"  motio vs mellea thunks/s: {vs_mellea:.1f}x   target >= {TARGET_LIFE_VS_MELLEA:g}x   "
          f"{_verdict(vs_mellea >= TARGET_LIFE_VS_MELLEA)}")
    print(f"  motio bytes per in-flight thunk: {per:,.0f}   target <= {TARGET_BYTES:,.0f} (1.5 KiB)   "
          f"{_verdict(per <= TARGET_BYTES)}")
    verdicts += [("lifecycle >= 5x mellea", vs_mellea >= TARGET_LIFE_VS_MELLEA),
                 ("<= 1.5 KiB per in-flight thunk", per <= TARGET_BYTES)]


def report_startup(imports: dict[str, float], sync: dict[str, float], verdicts: list[tuple[str, bool]]) -> None:
    print(f"\n3. Start-up and the sync bridge (imports: median of {IMPORT_RUNS} fresh interpreters, "
          "timed inside each around the statement)")
    ok = imports["import motio"] < TARGET_IMPORT_MS
    ratio = sync["run_sync"] / sync["asyncio.run"]
    rows = [
        ("import motio", f"{imports['import motio']:.2f} ms",
         f"target < {TARGET_IMPORT_MS:g} ms   {_verdict(ok)}"),
        ("from motio import ModelOutputThunk, send_to_queue, run_sync", f"{imports['full core']:.2f} ms",
         "the full core; it needs asyncio"),
        ("import asyncio (for reference)", f"{imports['asyncio alone']:.2f} ms", ""),
        ("run_sync(trivial coroutine), wall clock", f"{_si(sync['run_sync'])} calls/s",
         f"{ratio:.1f}x asyncio.run"),
        ("asyncio.run(trivial coroutine), wall clock", f"{_si(sync['asyncio.run'])} calls/s", ""),
    ]
    for label, figure, note in rows:
        print(f"  {label:<62}{figure:>16}   {note}".rstrip())
    verdicts.append(("import motio < 50 ms", ok))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mellea-python", help="Python of an environment with mellea 0.8.0 "
                        "(default: bench/.venv-mellea, created if missing)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per timed measurement (median)")
    args = parser.parse_args()
    python = mellea_python(args.mellea_python)
    started = time.perf_counter()
    _say("streams (motio, bare)..."); streams = measure_streams(args.rounds)
    _say("streams (mellea; 200,000 chunks take it a while)..."); streams |= measure_mellea_streams(python, args.rounds)
    _say("lifecycles..."); life = measure_lifecycles(python, args.rounds)
    _say("imports, run_sync..."); imports = measure_imports(); sync = measure_run_sync(args.rounds)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"motio {motio.__version__} core benchmark   Python {platform.python_version()} on {platform.system()} "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"motio from {Path(motio.__file__).resolve().parent}; mellea 0.8.0 from {python}")
    print(f"chunk = the constant str {PIECE!r}; rates are per CPU second of the measuring process "
          "(robust to other load), medians; wall-clock rates alongside\n")
    verdicts: list[tuple[str, bool]] = []
    report_streams(streams, verdicts)
    report_lifecycles(life, verdicts)
    report_startup(imports, sync, verdicts)
    passed = sum(ok for _, ok in verdicts)
    print(f"\ntargets: {passed}/{len(verdicts)} PASS (measured in {time.perf_counter() - started:.0f} s)")
    for name, ok in verdicts:
        print(f"  {_verdict(ok)}  {name}")


if __name__ == "__main__":
    main()
