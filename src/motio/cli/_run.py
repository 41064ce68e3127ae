"""``motio run``: a prompts file in, a results file out, resumable at any point.

Flow, ordered so that nothing is written before it must be:

1. check the paths (``-o`` must not be the prompts file by any name);
2. read the results file without changing it: is it ours, what is done;
3. scan the prompts once to report bad lines and count the work; an empty
   file, or one with nothing left to run, stops here (no model is loaded);
4. open and check the backend (a server's check is bounded in time);
5. only now lock, create or repair the results file;
6. stream the prompts a second time through the batch engine
   (``motio.batch``), which keeps a fixed number of them in flight.

A whole-run failure (the server gone, the key refused) stops the run and
records nothing for the prompts it abandoned: they were not answered, so the
rerun the hint names runs them.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..batch import (
    BatchAborted,
    Engine,
    InputProblem,
    NotAResultsFile,
    PromptRecord,
    ResultsFile,
    ResultsFileLocked,
    ResumeState,
    RunStats,
    format_summary,
    inspect_results,
    scan_prompts,
)
from ._backend import BackendSpec, generation_options, one_line, open_backend
from ._errors import (
    EXIT_BACKEND,
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)
from ._progress import Progress, make_progress, server_loads, servers_summary

__all__ = ["run_command"]

# Enough bad lines to see the pattern; a broken file must not flood the terminal.
_MAX_PROBLEMS_SHOWN = 20


def run_command(args: Any) -> int:
    """Run ``motio run`` and return its exit status.

    Raises:
        CliError: an unusable path, a busy or foreign results file, a failing backend.
    """
    prompts, out = _check_paths(Path(args.prompts), Path(args.output))
    if getattr(args, "workers", None) is not None and getattr(args, "ray", None) is None:
        raise CliError("--workers needs --ray (without it the run is one process)", EXIT_USAGE)
    spec = BackendSpec.from_args(args)
    stats = RunStats()
    retry = _plan(prompts, _inspect(out), stats, retry_errors=args.retry_errors)
    if stats.total == 0 and stats.bad_lines == 0:
        _say(f"{prompts}: the prompts file is empty; nothing to do")
        return EXIT_OK
    if stats.to_run == 0 and not retry:
        _print_end(stats, args.quiet)  # everything done, failed before, or bad
        return _exit_status(stats)
    run = _Run(args, spec, prompts, out, stats)
    _tune_gc()
    joined = False
    try:
        if getattr(args, "ray", None) is not None:
            from ._run_ray import join_cluster

            joined = join_cluster(args.ray)
        # Ctrl-C is held back while asyncio.run sets its loop up and tears it
        # down (an interrupt there leaves a task never run and a loop never
        # closed); main() lets it through once asyncio's own handler is in
        # place, and it lands here as KeyboardInterrupt all the same.
        _hold_sigint(True)
        asyncio.run(run.main(retry))
        _hold_sigint(False)
    except KeyboardInterrupt:
        return run.interrupted()
    finally:
        _hold_sigint(False)
        run.close()
        if joined:
            from ._run_ray import leave_cluster

            leave_cluster()
    _print_end(stats, args.quiet)
    return _exit_status(stats)


def _tune_gc() -> None:
    """Collect garbage less often while thousands of requests are in flight.

    Every request keeps a few hundred objects alive (sockets, parsers, a
    thunk, a task) until it ends, so at 2,000 in flight each full collection
    walks hundreds of thousands of live objects, and the default thresholds
    ran one every few hundred requests: measured, half the command's CPU at
    --concurrency 2000. motio's own objects form no reference cycles, so
    rarer collections free the same memory, later. This is the command's
    process-wide choice (an application's to make), never the library's.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 50_000), max(gen1, 20), max(gen2, 100))


def _hold_sigint(hold: bool) -> None:
    """Block (or let through) SIGINT in this thread; a blocked one waits, it is not lost."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK, {signal.SIGINT})


def _exit_status(stats: RunStats) -> int:
    return EXIT_FAILURES if stats.failed or stats.bad_lines or stats.already_failed else EXIT_OK


def _check_paths(prompts: Path, out: Path) -> tuple[Path, Path]:
    if not prompts.is_file():
        what = "is not a file" if prompts.exists() else "not found"
        raise CliError(f"prompts file {str(prompts)!r} {what}", EXIT_USAGE)
    if out.exists() and _same_file(out, prompts):
        # By inode, not by name: a hard link, a symlink or ./path is the same file.
        raise CliError(
            f"the results file (-o {out}) must not be the prompts file ({prompts}), by any name; give another -o",
            EXIT_USAGE,
        )
    if not out.parent.is_dir():
        raise CliError(f"directory of results file {str(out)!r} does not exist", EXIT_USAGE)
    return prompts, out


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _inspect(out: Path) -> ResumeState:
    """What ``out`` already holds, read without changing a byte of it."""
    try:
        return inspect_results(out)
    except NotAResultsFile as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot read results file {str(out)!r}: {exc.strerror}", EXIT_USAGE) from exc


class _Run:
    """The part of a run that needs the backend and the (locked) results file."""

    def __init__(self, args: Any, spec: BackendSpec, prompts: Path, out: Path, stats: RunStats) -> None:
        self.args, self.spec, self.prompts, self.out, self.stats = args, spec, prompts, out, stats
        self.results: ResultsFile | None = None
        self.running = False
        self.cluster: Any = None  # the Ray workers, with --ray

    async def main(self, retry: set[str]) -> None:
        _hold_sigint(False)
        try:
            await self._main(retry)
        finally:
            _hold_sigint(True)

    async def _main(self, retry: set[str]) -> None:
        if getattr(self.args, "ray", None) is not None:
            from ._run_ray import start_pool

            self.cluster = start_pool(self.args, self.spec)
        try:
            await self._run(retry)
        finally:
            if self.cluster is not None:
                self.cluster.close()

    async def _run(self, retry: set[str]) -> None:
        backend = await open_backend(self.spec)
        # Everything loaded so far (modules, the backend, a model) lives as
        # long as the run: out of the collector's way for good.
        gc.freeze()
        try:
            self.results = _open_results(self.out)
            self.results.drop_failed(retry)
            self.stats.started = time.perf_counter()
            self.running = True
            runner = self._runner(backend)
            loads = runner if self.cluster is not None else backend
            progress = make_progress(self.stats, quiet=self.args.quiet, servers=server_loads(loads))
            progress.start()
            try:
                pool = _Pool(runner, self.results, self.stats, progress)
                await pool.run(self.prompts, self.spec.workers)
            finally:
                progress.stop()
                self._say_servers(loads)
        finally:
            await backend.aclose()

    def _runner(self, backend: Any) -> Any:
        """The batch engine on ``backend``, or Ray workers (``--ray``) sharing its limits."""
        if self.cluster is not None:
            from ._run_ray import share_limits

            share_limits(self.cluster, backend)
            return self.cluster
        # Only a server can vanish; the embedded model's failures are its prompts'.
        remote = self.spec.kind == "openai"
        return Engine(backend, options=generation_options(self.args), remote=remote)

    def _say_servers(self, loads: Any) -> None:
        if self.args.quiet:
            return
        summary = servers_summary(loads)
        if summary is not None:
            _say(summary)
        if self.cluster is not None:
            rerun = (
                f"; {self.cluster.rerun:,} prompts ran again after a worker died"
                if self.cluster.rerun
                else ""
            )
            _say(f"ray: {self.cluster.plan.workers} workers{rerun}")

    def interrupted(self) -> int:
        if not self.running or self.results is None:
            _say("interrupted before any prompt ran; nothing was written")
            return EXIT_INTERRUPTED
        _print_end(self.stats, self.args.quiet)
        _say(
            f"interrupted: {self.results.written} new results saved in {self.out}; "
            "run the same command again to resume"
        )
        return EXIT_INTERRUPTED

    def close(self) -> None:
        if self.results is not None:
            self.results.close()


def _open_results(out: Path) -> ResultsFile:
    try:
        results = ResultsFile.open(out)
    except ResultsFileLocked as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except NotAResultsFile as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot use results file {str(out)!r}: {exc.strerror}", EXIT_USAGE) from exc
    if results.state.torn_bytes:
        _say(
            f"{results.path}: cut off a torn last line ({results.state.torn_bytes} bytes) "
            "left by an interrupted run; that prompt runs again"
        )
    return results


def _plan(prompts: Path, state: ResumeState, stats: RunStats, *, retry_errors: bool) -> set[str]:
    """First pass: report bad lines and count the work. Returns the ids to retry."""
    retry: set[str] = set()
    for item in _read_prompts(prompts):
        if isinstance(item, InputProblem):
            stats.bad_lines += 1
            if stats.bad_lines <= _MAX_PROBLEMS_SHOWN:
                _say(f"{prompts}:{item.line}: {item.message}")
            continue
        stats.total += 1
        if item.key in state.done:
            stats.already_done += 1
        elif item.key in state.failed:
            if retry_errors:
                retry.add(item.key)
            else:
                stats.already_failed += 1
    if stats.bad_lines > _MAX_PROBLEMS_SHOWN:
        _say(f"{prompts}: ... and {stats.bad_lines - _MAX_PROBLEMS_SHOWN} more bad lines")
    return retry


def _read_prompts(prompts: Path) -> Iterator[PromptRecord | InputProblem]:
    try:
        yield from scan_prompts(prompts)
    except OSError as exc:
        raise CliError(f"cannot read {str(prompts)!r}: {exc.strerror}", EXIT_USAGE) from exc


def _pending(prompts: Path, state: ResumeState) -> Iterator[PromptRecord]:
    """Second pass: the prompts still to run, read lazily.

    ``state`` grows while the run writes results; that never hides a pending
    prompt, because each id occurs once (duplicates are problems, skipped).
    """
    for item in _read_prompts(prompts):
        if isinstance(item, PromptRecord) and not (item.key in state.done or item.key in state.failed):
            yield item


class _Pool:
    """Feeds the pending prompts to the batch engine and writes what it answers."""

    def __init__(self, runner: Any, results: ResultsFile, stats: RunStats, progress: Progress) -> None:
        self._runner = runner
        self._results = results
        self._stats = stats
        self._progress = progress

    async def run(self, prompts: Path, concurrency: int) -> None:
        pending = _pending(prompts, self._results.state)
        try:
            if isinstance(self._runner, Engine):
                await self._runner.run(pending, min(concurrency, self._stats.to_run), self._write)
            else:  # Ray workers: their concurrency is theirs
                await self._runner.run(pending, self._write)
        except BatchAborted as aborted:
            # The engine found the whole run unable to go on (the server went
            # away, the key was revoked) and cancelled the other prompts
            # unrecorded: the rerun the hint names runs them.
            raise CliError(
                f"{one_line(aborted.cause)}; {self._results.written} new results saved in "
                f"{self._results.path}; run the same command again to resume",
                EXIT_BACKEND,
            ) from aborted

    def _write(self, result: dict[str, Any], attempts: Any) -> None:
        try:
            self._results.append(result)
        except OSError as exc:
            raise CliError(f"cannot write {self._results.path}: {exc.strerror}", EXIT_FAILURES) from exc
        self._stats.record(result, attempts)
        adaptive = getattr(getattr(self._runner, "backend", None), "adaptive_concurrency", None)
        if adaptive is not None:
            self._stats.concurrency = adaptive.limit
        self._progress.update()
        if result["error"] is not None:
            self._note_failure(result)

    def _note_failure(self, result: dict[str, Any]) -> None:
        if self._stats.failed > _MAX_PROBLEMS_SHOWN:
            return
        error = result["error"]
        self._progress.note(f"motio: id {result['id']}: {error['type']}: {_first_line(error['message'])}")
        if self._stats.failed == _MAX_PROBLEMS_SHOWN:
            self._progress.note("motio: further failures are not shown; see the results file")


def _print_end(stats: RunStats, quiet: bool) -> None:
    if quiet:
        return
    for line in format_summary(stats):
        _say(line)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _say(message: str) -> None:
    print(f"motio: {message}", file=sys.stderr, flush=True)
