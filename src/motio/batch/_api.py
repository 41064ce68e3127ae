"""``motio.batch.run``: the command's batch, from Python (a script or a notebook).

The same engine, the same result lines, the same resume as ``motio run``,
on this process or on Ray workers, with results handed back as they finish::

    from motio.backends import OpenAIBackend
    from motio import batch

    def backend():                      # built again in each Ray worker
        return OpenAIBackend(base_url=["http://gpu1:8000/v1", "http://gpu2:8000/v1"],
                             max_concurrency="auto", rpm=6000)

    for result in batch.run(["Why is the sky blue?", ...], backend, ray=True,
                            output="results.jsonl"):
        print(result["id"], result["output"])

``run`` works where an event loop is already running (Jupyter): the batch
runs on a thread of its own, and results cross over through a queue.
``arun`` is the same for code that is already async.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from ._engine import Engine
from ._records import InputProblem, PromptRecord, default_id, parse_line, scan_prompts
from ._results import ResultsFile
from ._share import SharePlan

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["arun", "run"]

Prompts = str | Path | Iterable[str | dict[str, Any] | PromptRecord]
#: How long the consumer waits for the next result before it checks the batch is still alive.
_POLL_SECONDS = 0.5
#: How long a batch stopped early may take to stop its workers and close its file.
_STOP_TIMEOUT = 60.0


def run(
    prompts: Prompts,
    backend: Any,
    *,
    ray: bool | str | None = None,
    workers: int | None = None,
    concurrency: int | None = None,
    options: dict[str, Any] | None = None,
    output: str | Path | None = None,
) -> Iterator[dict[str, Any]]:
    """Generate for every prompt; yield each result line as it finishes.

    Args:
        prompts: a prompts file (``motio run``'s format), or an iterable of
            prompt strings (ids ``line-N``, N from 1), line objects
            (``{"id", "prompt" | "messages", ...}``) or ``PromptRecord``.
            Read lazily: a generator of millions is fine.
        backend: a backend, or a function that builds one. With ``ray``
            each worker builds its own: from the function (it must pickle)
            or from the backend's ``recipe()`` (its constructor arguments,
            the API key included). A backend given is never closed here.
        ray: None or False: this process. True: Ray workers, on the cluster
            this process already joined (``ray.init``), else a local one.
            A string: the cluster's address (``"auto"``, ``"HOST:PORT"``).
        workers: Ray workers (default: one per CPU of the cluster).
        concurrency: prompts in flight in this process (default: enough to
            fill the backend's limit on every server); with ``ray`` the
            backend's own limits, shared by the workers, decide.
        options: ``generate`` options for every prompt (a line's own win).
        output: a results file: each result is appended as it finishes,
            and prompts already answered there are skipped (resume).

    Raises:
        ConfigurationError: a prompt that is not one (raised when reached).
        BatchAborted: the run could not go on (server gone, key refused);
            the results already yielded (and written) stand.
    """
    results: queue.Queue[tuple[str, Any]] = queue.Queue()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
    if ray not in (None, False):
        _join(ray)  # on the caller's thread: Ray wants its main thread for signals

    async def produce() -> None:
        running.append((asyncio.get_running_loop(), asyncio.current_task()))  # type: ignore[arg-type]
        batch = arun(
            prompts,
            backend,
            ray=ray,
            workers=workers,
            concurrency=concurrency,
            options=options,
            output=output,
        )
        try:
            # Closed here, not left to asyncio.run's shutdown: a consumer that
            # stopped early must see the batch stopped and its file closed.
            async with contextlib.aclosing(batch):
                async for result in batch:
                    results.put(("result", result))
        except asyncio.CancelledError:
            return  # the consumer stopped iterating: the end it asked for, at the top of this thread
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            results.put(("error", exc))
        else:
            results.put(("end", None))

    thread = threading.Thread(target=asyncio.run, args=(produce(),), name="motio-batch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not thread.is_alive():
                    return
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        if thread.is_alive() and running:
            # Stopped early: cancel the batch now (its workers, its file lock)
            # and wait for it, so that a rerun right after finds the file free.
            loop, task = running[0]
            with contextlib.suppress(RuntimeError):  # its loop ended meanwhile
                loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=_STOP_TIMEOUT)


async def arun(
    prompts: Prompts,
    backend: Any,
    *,
    ray: bool | str | None = None,
    workers: int | None = None,
    concurrency: int | None = None,
    options: dict[str, Any] | None = None,
    output: str | Path | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """:func:`run` for async code: an async iterator of result lines as they finish.

    With ``ray``, joining the cluster blocks this loop for the seconds it
    takes, once.
    """
    finished: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    results = ResultsFile.open(output) if output is not None else None
    records = _pending(_records(prompts), results)

    def on_result(result: dict[str, Any], attempts: Any) -> None:
        if results is not None:
            results.append(result)
        finished.put_nowait(result)

    try:
        async with _runner(backend, ray, workers, options) as (runner, remote_concurrency):
            if isinstance(runner, Engine):
                work = runner.run(records, concurrency or remote_concurrency, on_result)
            else:
                work = runner.run(records, on_result)
            task = asyncio.ensure_future(work)
            try:
                while not (task.done() and finished.empty()):
                    getter = asyncio.ensure_future(finished.get())
                    await asyncio.wait((getter, task), return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield getter.result()
                    else:
                        getter.cancel()
                task.result()  # a whole-run failure, raised after every result it let through
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
    finally:
        if results is not None:
            results.close()


@contextlib.asynccontextmanager
async def _runner(
    backend: Any, ray: bool | str | None, workers: int | None, options: dict[str, Any] | None
) -> Any:
    # A function builds the backend (ours to close); a backend is the caller's.
    owned = not _is_backend(backend)
    local: Backend = _built(backend) if owned else backend
    try:
        remote = local.remote
        if ray in (None, False):
            yield Engine(local, options=options, remote=remote), _fill(local)
            return
        # Each worker builds its own copy: connections and models never cross processes.
        build: Callable[[], Any] = backend if owned else local.recipe()
        from ._ray import RayPool, worker_count

        _join(ray)
        pool = RayPool(build, workers or worker_count(), options=options, remote=remote)
        try:
            if remote:
                await local.check()  # fails fast, and names the model once for every worker
            pool.share(SharePlan.of(local, pool.plan.workers))
            yield pool, 0
        finally:
            pool.close()
    finally:
        if owned:
            await local.aclose()


def _is_backend(backend: object) -> bool:
    # Imported here: importing motio.batch imports no backend.
    from ..backends._base import Backend

    return isinstance(backend, Backend)


def _built(build: Any) -> Backend:
    """The backend ``build()`` returns.

    Raises:
        ConfigurationError: ``build`` is neither a backend nor a function
            that returns one.
    """
    built: Backend | None = build() if callable(build) else None
    if built is None or not _is_backend(built):
        raise ConfigurationError(
            "pass a motio backend or a function that builds one (with ray=..., each worker builds its own)"
        )
    return built


def _join(ray: bool | str) -> None:
    from ._ray import connect

    connect(ray if isinstance(ray, str) else None)


def _fill(backend: Backend) -> int:
    """Prompts in flight that fill the backend's limit on every server."""
    plan = SharePlan.of(backend, 1)
    if plan.servers:
        return plan.in_flight_per_worker()
    limit = backend.max_concurrency
    return limit if isinstance(limit, int) and limit > 0 else 1


def _records(prompts: Prompts) -> Iterator[PromptRecord]:
    if isinstance(prompts, (str, Path)):
        for line in scan_prompts(prompts):
            if isinstance(line, InputProblem):
                raise ConfigurationError(f"{prompts}: {line}")
            yield line
        return
    for number, item in enumerate(prompts, start=1):
        yield _record(item, number)


def _record(item: Any, number: int) -> PromptRecord:
    if isinstance(item, PromptRecord):
        return item
    if isinstance(item, str):
        return PromptRecord(default_id(number), number, item, {})
    if isinstance(item, dict):
        parsed = parse_line(json.dumps(item), number)
        if isinstance(parsed, PromptRecord):
            return parsed
        raise ConfigurationError(f"prompt {number}: {parsed.message}")
    raise ConfigurationError(
        f"prompt {number}: expected a string, a dict or a PromptRecord, got {type(item).__name__}"
    )


def _pending(records: Iterator[PromptRecord], results: ResultsFile | None) -> Iterator[PromptRecord]:
    seen: set[str] = set()
    for record in records:
        if record.key in seen:
            raise ConfigurationError(f"prompt {record.line}: duplicate id {record.key}")
        seen.add(record.key)
        # As the command: answered or failed before, it is not run again.
        if results is None or not (record.key in results.state.done or record.key in results.state.failed):
            yield record
