"""``motio run``: a prompts file in, a results file out, resumable at any point.

Flow, ordered so that nothing is written before it must be:

1. check the paths (``-o`` must not be the prompts file by any name);
2. read the results file without changing it: is it ours, what is done;
3. scan the prompts once to report bad lines and count the work; an empty
   file, or one with nothing left to run, stops here (no model is loaded);
4. open and check the backend (a server's check is bounded in time);
5. only now lock, create or repair the results file;
6. stream the prompts a second time through the batch job
   (``motio.batch``'s ``BatchJob``: the engine keeps a fixed number of them
   in flight, or Ray workers run them), which writes each result once.

A whole-run failure (the server gone, the key refused) stops the run and
records nothing for the prompts it abandoned: they were not answered, so the
rerun the hint names runs them.

Pipes: ``-`` as the prompts reads stdin once, as it comes (no planning
pass: bad lines are reported and prompts counted on the way, the progress
has no total); ``-o -`` writes the results to stdout, flushed line by line,
with no lock and no resume (nothing can be read back from a pipe). The
progress, problems and summary always go to stderr.

The prompts file's shape (motio's own lines or OpenAI Batch request lines)
decides the results' shape; a results file of the other shape is refused.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..batch import (
    BatchAborted,
    InputProblem,
    MixedFormats,
    NotAResultsFile,
    PromptFormat,
    PromptRecord,
    ResultsFile,
    ResultsFileLocked,
    ResultsStream,
    ResumeState,
    RunStats,
    format_summary,
    inspect_results,
    own_view,
    scan_lines,
    scan_prompts,
)
from ..batch._ids import IdSet
from ..batch._job import BatchJob
from ..scheduling import DEFAULT_HEDGE_BUDGET
from . import _signals
from ._answers import AnswerPlan
from ._args import RunArgs
from ._backend import BackendSpec, one_line, open_backend, run_options
from ._dataset import DatasetSource, dataset_source
from ._errors import (
    EXIT_BACKEND,
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)
from ._progress import Progress, Servers, make_progress, server_loads, servers_summary

__all__ = ["run_command"]

# Enough bad lines to see the pattern; a broken file must not flood the terminal.
_MAX_PROBLEMS_SHOWN = 20


def run_command(args: RunArgs) -> int:
    """Run ``motio run`` and return its exit status.

    Raises:
        CliError: an unusable path, a busy or foreign results file, a failing backend.
    """
    prompts, out = _check_paths(args.prompts, args.output)
    _check_pipes(args)
    dataset = dataset_source(args.dataset, prompts)  # None: prompt lines
    if args.ray_workers is not None and args.ray is None:
        raise CliError("--workers needs --ray (without it the run is one process)", EXIT_USAGE)
    spec = BackendSpec.from_args(args.backend)
    answers = AnswerPlan.check(args.answers, spec)
    stats = RunStats(
        streaming_input=prompts is None, schema=answers.schema is not None, cache=answers.cache_path()
    )
    state = ResumeState() if out is None else _inspect(out)
    if prompts is None:
        # Read once as it comes: failed lines cannot be matched to the input
        # ahead, so --retry-errors takes every failed line out first.
        retry = state.failed.copy() if args.retry_errors else IdSet()
    else:
        retry = _plan(prompts, state, stats, retry_errors=args.retry_errors, dataset=dataset)
        _check_shapes(stats.fmt, state, out)
        answers.check_format(stats.fmt)
        if stats.total == 0 and stats.bad_lines == 0:
            _say(f"{prompts}: the prompts file is empty; nothing to do")
            return EXIT_OK
        if stats.to_run == 0 and not retry:
            _print_end(stats, args.quiet)  # everything done, failed before, or bad
            return _exit_status(stats)
    run = _Run(args, spec, prompts, out, stats, answers, dataset)
    _tune_gc()
    joined = False
    try:
        if args.ray is not None:
            from ._run_ray import join_cluster

            joined = join_cluster(args.ray)
        # Ctrl-C and SIGTERM are held back while asyncio.run sets its loop
        # up and tears it down (an interrupt there leaves a task never run
        # and a loop never closed); main() lets them through once asyncio's
        # own handler is in place (and SIGTERM's target registered): Ctrl-C
        # lands here as KeyboardInterrupt, SIGTERM as the main task's
        # cancellation.
        _signals.hold(True)
        asyncio.run(run.main(retry))
        _signals.hold(False)
    except KeyboardInterrupt:
        return run.interrupted()
    except asyncio.CancelledError:
        if not _signals.terminated():
            raise
        return run.interrupted()
    finally:
        _signals.hold(False)
        run.close()
        if joined:
            from ._run_ray import leave_cluster

            leave_cluster()
    if prompts is None and stats.total == 0 and stats.bad_lines == 0:
        _say("stdin: no prompts; nothing to do")
        return EXIT_OK
    _print_end(stats, args.quiet)
    return _exit_status(stats)


def _check_pipes(args: RunArgs) -> None:
    if args.output == "-" and args.retry_errors:
        raise CliError(
            "--retry-errors needs a results file to resume from: with -o - (stdout) there is no "
            "resume; give -o FILE",
            EXIT_USAGE,
        )


def _check_shapes(fmt: str | None, state: ResumeState, out: Path | None) -> None:
    """Refuse a results file of the other shape than the prompts: resume could not match them."""
    if fmt is None or not state.formats or fmt in state.formats:
        return
    have = ", ".join(PromptFormat(f).label for f in sorted(state.formats))
    raise CliError(
        f"the results file {out} holds {have} results but the prompts are {PromptFormat(fmt).label} "
        "lines; give another -o",
        EXIT_USAGE,
    )


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


def _exit_status(stats: RunStats) -> int:
    return EXIT_FAILURES if stats.failed or stats.bad_lines or stats.already_failed else EXIT_OK


def _check_paths(prompts_arg: str, out_arg: str) -> tuple[Path | None, Path | None]:
    """The prompts and results paths; None for ``-`` (stdin, stdout)."""
    prompts = None if prompts_arg == "-" else Path(prompts_arg)
    out = None if out_arg == "-" else Path(out_arg)
    if prompts is not None:
        _check_prompts_path(prompts)
    if out is not None:
        _check_out_path(prompts, out)
    return prompts, out


def _check_prompts_path(prompts: Path) -> None:
    if not prompts.is_file():
        what = "is not a file" if prompts.exists() else "not found"
        raise CliError(f"prompts file {str(prompts)!r} {what}", EXIT_USAGE)


def _check_out_path(prompts: Path | None, out: Path) -> None:
    if prompts is not None and out.exists() and _same_file(out, prompts):
        # By inode, not by name: a hard link, a symlink or ./path is the same file.
        raise CliError(
            f"the results file (-o {out}) must not be the prompts file ({prompts}), by any name; give another -o",
            EXIT_USAGE,
        )
    if not out.parent.is_dir():
        raise CliError(f"directory of results file {str(out)!r} does not exist", EXIT_USAGE)


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

    def __init__(
        self,
        args: RunArgs,
        spec: BackendSpec,
        prompts: Path | None,
        out: Path | None,
        stats: RunStats,
        answers: AnswerPlan,
        dataset: DatasetSource | None = None,
    ) -> None:
        self.args, self.spec, self.prompts, self.out, self.stats = args, spec, prompts, out, stats
        self.answers = answers
        self.dataset = dataset
        self.results: ResultsFile | ResultsStream | None = None
        self.running = False
        self.job: BatchJob | None = None
        self.progress: Progress | None = None

    async def main(self, retry: IdSet) -> None:
        task = asyncio.current_task()
        assert task is not None
        with _signals.cancel_on_sigterm(task):
            _signals.hold(False)
            try:
                await self._main(retry)
            finally:
                _signals.hold(True)

    async def _main(self, retry: IdSet) -> None:
        # With --ray, the workers start now: they build their backends while
        # this process checks its own.
        self.job = job = self._job()
        try:
            await self._run(job, retry)
        finally:
            job.stop_workers()

    def _job(self) -> BatchJob:
        options, defaults = run_options(self.args.generation)
        in_flight = self.spec.in_flight
        if self.prompts is not None:
            in_flight = min(in_flight, self.stats.to_run)
        ray = None
        if self.args.ray is not None:
            from ._run_ray import on_ray

            ray = on_ray(self.args, self.spec)
        return BatchJob(
            options=options,
            defaults=defaults,
            ray=ray,
            in_flight=in_flight,
            stats=self.stats,
            answering=self.answers.open(),
            hedge_budget=DEFAULT_HEDGE_BUDGET if self.args.hedge_budget is None else self.args.hedge_budget,
        )

    async def _run(self, job: BatchJob, retry: IdSet) -> None:
        backend = await open_backend(self.spec)
        # Everything loaded so far (modules, the backend, a model) lives as
        # long as the run: out of the collector's way for good.
        gc.freeze()
        try:
            self.results = _open_results(job, self.out)
            self.results.drop_failed(retry)
            self.running = True
            # The engine on this backend, or the Ray workers sharing its limits.
            runner = await job.start(backend)
            progress = make_progress(self.stats, quiet=self.args.quiet, servers=server_loads(runner))
            self.progress = progress
            progress.start()
            try:
                await self._run_job(job)
            finally:
                progress.stop()
                self._say_servers(runner)
        finally:
            await backend.aclose()

    async def _run_job(self, job: BatchJob) -> None:
        if self.prompts is None:
            # Read in a thread: a pipe's producer may be slow, and a read
            # blocking the loop would stall every stream in flight.
            records = _streamed(self._written().state, self.stats, self.out)
        else:
            records = _prompt_records(self.prompts, self.dataset)
        try:
            await job.run(
                records, self._report, blocking=self.prompts is None, write_failed=self._write_failed
            )
        except BatchAborted as aborted:
            # The engine found the whole run unable to go on (the server went
            # away, the key was revoked) and cancelled the other prompts
            # unrecorded: the rerun the hint names runs them.
            raise CliError(f"{one_line(aborted.cause)}; {_saved(self._written())}", EXIT_BACKEND) from aborted

    def _written(self) -> ResultsFile | ResultsStream:
        assert self.results is not None, "the results are opened before the job runs"
        return self.results

    def _write_failed(self, exc: OSError) -> CliError:
        """The command's error for a result line it could not write."""
        results = self._written()
        if isinstance(exc, BrokenPipeError) and isinstance(results, ResultsStream):
            _quiet_stdout()
            return CliError(
                f"stdout was closed (the next command of the pipe exited); {_saved(results)}", EXIT_FAILURES
            )
        return CliError(f"cannot write {results.path}: {exc.strerror}", EXIT_FAILURES)

    def _report(self, result: dict[str, Any], attempts: Any) -> None:
        """After each result was written and counted: the progress line, and failures noted."""
        assert self.progress is not None
        self.progress.update()
        own = own_view(result)
        if own["error"] is not None:
            self._note_failure(own, self.progress)

    def _note_failure(self, result: dict[str, Any], progress: Progress) -> None:
        if self.stats.failed > _MAX_PROBLEMS_SHOWN:
            return
        error = result["error"]
        progress.note(f"motio: id {result['id']}: {error['type']}: {_first_line(error['message'])}")
        if self.stats.failed == _MAX_PROBLEMS_SHOWN:
            progress.note("motio: further failures are not shown; see the results file")

    def _say_servers(self, loads: Servers) -> None:
        if self.args.quiet:
            return
        summary = servers_summary(loads)
        if summary is not None:
            _say(summary)
        pool = None if self.job is None else self.job.pool
        if pool is not None:
            rerun = f"; {pool.rerun:,} prompts ran again after a worker died" if pool.rerun else ""
            _say(f"ray: {pool.plan.actors} workers{rerun}")

    def interrupted(self) -> int:
        """Report a run stopped by Ctrl-C (exit 130) or SIGTERM (143): what it kept, how to go on."""
        word, status = _signals.stop_status()
        if not self.running or self.results is None:
            _say(f"{word} before any prompt ran; nothing was written")
            return status
        _print_end(self.stats, self.args.quiet)
        _say(f"{word}: {_saved(self.results)}")
        return status

    def close(self) -> None:
        if self.job is not None:
            self.job.close()
        self.answers.close()


def _saved(results: ResultsFile | ResultsStream) -> str:
    """How many results this run wrote, and how to go on."""
    if isinstance(results, ResultsStream):
        return (
            f"{results.written} results written to stdout; there is no resume with -o - "
            "(give -o FILE to be able to resume)"
        )
    return f"{results.written} new results saved in {results.path}; run the same command again to resume"


def _open_results(job: BatchJob, out: Path | None) -> ResultsFile | ResultsStream:
    if out is None:
        return job.open_results(sys.stdout.buffer)
    try:
        results = job.open_results(out)
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


def _plan(
    prompts: Path, state: ResumeState, stats: RunStats, *, retry_errors: bool, dataset: DatasetSource | None
) -> IdSet:
    """First pass: report bad lines and count the work. Returns the ids to retry."""
    retry = IdSet()
    for item in _read_prompts(prompts, dataset):
        if isinstance(item, InputProblem):
            _bad_line(stats, prompts, item)
            continue
        stats.total += 1
        stats.fmt = stats.fmt or item.fmt
        if item.key in state.done:
            stats.already_done += 1
        elif item.key in state.failed:
            if retry_errors:
                retry.add(item.key)
            else:
                stats.already_failed += 1
    _more_bad_lines(stats, prompts)
    return retry


def _bad_line(stats: RunStats, prompts: Path | None, item: InputProblem) -> None:
    stats.bad_lines += 1
    if stats.bad_lines <= _MAX_PROBLEMS_SHOWN:
        _say(f"{prompts or 'stdin'}:{item.line}: {item.message}")


def _more_bad_lines(stats: RunStats, prompts: Path | None) -> None:
    if stats.bad_lines > _MAX_PROBLEMS_SHOWN:
        _say(f"{prompts or 'stdin'}: ... and {stats.bad_lines - _MAX_PROBLEMS_SHOWN} more bad lines")


def _read_prompts(
    prompts: Path | None, dataset: DatasetSource | None = None
) -> Iterator[PromptRecord | InputProblem]:
    where = str(prompts) if prompts is not None else "stdin"
    try:
        if dataset is not None:
            yield from dataset.records()
        elif prompts is None:
            yield from scan_lines(sys.stdin.buffer)
        else:
            yield from scan_prompts(prompts)
    except OSError as exc:
        raise CliError(f"cannot read {where!r}: {exc.strerror}", EXIT_USAGE) from exc
    except MixedFormats as exc:
        raise CliError(f"{where}: {exc}", EXIT_USAGE) from exc


def _prompt_records(prompts: Path, dataset: DatasetSource | None) -> Iterator[PromptRecord]:
    """Second pass: the prompts file's records, read lazily (its problems were reported by the first)."""
    for item in _read_prompts(prompts, dataset):
        if isinstance(item, PromptRecord):
            yield item


def _streamed(state: ResumeState, stats: RunStats, out: Path | None) -> Iterator[PromptRecord]:
    """stdin's one pass: bad lines reported and prompts counted as they come
    (the batch job skips those the results file holds)."""
    for item in _read_prompts(None):
        if isinstance(item, InputProblem):
            _bad_line(stats, None, item)
            continue
        if stats.fmt is None:
            stats.fmt = item.fmt
            _check_shapes(item.fmt, state, out)
        stats.total += 1
        if item.key in state.done:
            stats.already_done += 1
        elif item.key in state.failed:
            stats.already_failed += 1
        yield item
    _more_bad_lines(stats, None)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null once the pipe is gone, so that flushing it
    at exit does not fail again (what Python's signal docs recommend)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _print_end(stats: RunStats, quiet: bool) -> None:
    if quiet:
        return
    for line in format_summary(stats):
        _say(line)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _say(message: str) -> None:
    print(f"motio: {message}", file=sys.stderr, flush=True)
