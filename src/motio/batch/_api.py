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

A dataset goes in with a template, each row made a prompt (the same as
``motio run DATA --template ...``)::

    batch.run("reviews.parquet", backend, template="Classify the sentiment of: {text}",
              system="Answer with one word.", id_column="review_id", output="labels.jsonl")

``prompts`` is then any dataset :func:`motio.data.open_rows` reads: a path
(``.parquet``, ``.csv``, ``.tsv``, ``.jsonl``), an iterable of dicts, a
``pyarrow.Table`` or a ``datasets.Dataset``.

``run`` works where an event loop is already running (Jupyter): the batch
runs on motio's background loop (the one ``motio.run_sync`` uses), and the
results cross over in bunches, as they finish. ``arun`` is the same for
code that is already async. Both run the batch job of ``_job.py``, as
``motio run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from .._sync import run_sync
from ..scheduling import DEFAULT_HEDGE_BUDGET, check_hedge_budget
from ._ids import IdSet
from ._job import BatchJob, OnRay
from ._records import InputProblem, PromptRecord, default_id, parse_line, scan_prompts
from ._runner import OnResult
from ._structured import Answering, open_answering

if TYPE_CHECKING:
    from ..backends import Backend
    from ..data import Template

__all__ = ["arun", "run"]

#: Prompt lines (a file or an iterable); with a template, any dataset ``open_rows`` reads.
Prompts = str | Path | Iterable[str | dict[str, Any] | PromptRecord] | Any
#: How long a batch stopped early may take to stop its workers and close its file.
_STOP_TIMEOUT = 60.0
#: ``max_invalid``'s default, motio.data.DEFAULT_MAX_INVALID (written here so
#: that importing motio.batch does not load motio.data; a test checks they agree).
DEFAULT_MAX_INVALID = 2


def run(
    prompts: Prompts,
    backend: Any,
    *,
    ray: bool | str | None = None,
    workers: int | None = None,
    concurrency: int | None = None,
    options: dict[str, Any] | None = None,
    output: str | Path | None = None,
    template: str | Template | None = None,
    system: str | None = None,
    id_column: str | None = None,
    response_format: Any = None,
    max_invalid: int = DEFAULT_MAX_INVALID,
    reask: bool = True,
    cache: str | Path | bool | None = None,
    hedge_budget: float = DEFAULT_HEDGE_BUDGET,
    prefix_routing: bool | None = None,
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
        template: read ``prompts`` as a dataset (a path to a ``.parquet``,
            ``.csv``, ``.tsv`` or ``.jsonl`` file, an iterable of dicts, a
            ``pyarrow.Table``, a ``datasets.Dataset``), each row's prompt
            made from this ``str.format`` text of ``{column}`` placeholders
            (or a :class:`motio.data.Template`).
        system: with ``template``, a system message sent before each row's prompt.
        id_column: with ``template``, the column of each row's id
            (default: ``line-N``, N the row's number from 1).
        response_format: ask for JSON and check every answer: a JSON
            schema (dict), a ``response_format`` dict, a pydantic model
            class (pydantic is imported only by the class itself) or a
            schema file's path. Each line gets ``parsed``, or an
            ``InvalidOutput`` error once ``max_invalid`` re-asks are spent.
        max_invalid: invalid answers asked again before ``InvalidOutput``.
        reask: append the invalid answer and what is wrong to the re-ask
            (False: the same messages again).
        cache: a response cache (SQLite file) to answer a request asked
            before without sending it; True for the default location.
            Cached lines carry ``"cached": true``.
        hedge_budget: with several servers, once nothing is left to send,
            a request running longer than its kind's recent p95 is sent
            again to another server and the first answer wins (the other
            is closed); at most this share of the prompts is sent twice
            (0: no racing). Raced lines carry ``"raced": true``.
        prefix_routing: None (default): as the backend routes (given several
            servers: prompts sharing a start go to the same server, within a
            slack of the least loaded, and are dispatched grouped by that
            start, read a few times the prompts in flight ahead). False:
            neither, for this batch (on the backend, and on every Ray worker's).

    Raises:
        ConfigurationError: a prompt that is not one, or a bad row (raised
            when reached); ``system``/``id_column`` without ``template``.
        MissingColumn: the template or ``id_column`` names a column the
            dataset lacks (raised before anything is sent).
        BatchAborted: the run could not go on (server gone, key refused);
            the results already yielded (and written) stand.
    """
    if ray not in (None, False):
        _join(ray)  # on the caller's thread: Ray wants its main thread for signals
    dataset = _Dataset.of(template, system, id_column)
    settings = _Settings(
        prompts, backend, ray, workers, concurrency, options, output, dataset,
        response_format, max_invalid, reask, cache, hedge_budget, prefix_routing,
    )  # fmt: skip
    batch = _Batch(settings)
    try:
        while results := run_sync(batch.next_results()):
            yield from results
    finally:
        # Stopped early (or done): the batch stops now (its workers, its file
        # lock) and is waited for, so that a rerun right after finds the file free.
        with contextlib.suppress(TimeoutError):
            run_sync(batch.aclose(), timeout=_STOP_TIMEOUT)


async def arun(
    prompts: Prompts,
    backend: Any,
    *,
    ray: bool | str | None = None,
    workers: int | None = None,
    concurrency: int | None = None,
    options: dict[str, Any] | None = None,
    output: str | Path | None = None,
    template: str | Template | None = None,
    system: str | None = None,
    id_column: str | None = None,
    response_format: Any = None,
    max_invalid: int = DEFAULT_MAX_INVALID,
    reask: bool = True,
    cache: str | Path | bool | None = None,
    hedge_budget: float = DEFAULT_HEDGE_BUDGET,
    prefix_routing: bool | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """:func:`run` for async code: an async iterator of result lines as they finish.

    With ``ray``, joining the cluster blocks this loop for the seconds it
    takes, once.
    """
    dataset = _Dataset.of(template, system, id_column)
    settings = _Settings(
        prompts, backend, ray, workers, concurrency, options, output, dataset,
        response_format, max_invalid, reask, cache, hedge_budget, prefix_routing,
    )  # fmt: skip
    batch = _Batch(settings)
    try:
        while results := await batch.next_results():
            for result in results:
                yield result
    finally:
        await batch.aclose()


@dataclass(frozen=True, slots=True)
class _Settings:
    """One call's arguments, as the batch job takes them."""

    prompts: Prompts
    backend: Any
    ray: bool | str | None
    actors: int | None
    in_flight: int | None
    options: dict[str, Any] | None
    output: str | Path | None
    dataset: _Dataset | None = None
    response_format: Any = None
    max_invalid: int = DEFAULT_MAX_INVALID
    reask: bool = True
    cache: str | Path | bool | None = None
    hedge_budget: float = DEFAULT_HEDGE_BUDGET
    prefix_routing: bool | None = None

    def __post_init__(self) -> None:
        check_hedge_budget(self.hedge_budget)  # before anything is sent


@dataclass(frozen=True, slots=True)
class _Dataset:
    """How a dataset's rows become prompts: ``template=``, ``id_column=``."""

    template: Template
    id_column: str | None

    @classmethod
    def of(cls, template: str | Template | None, system: str | None, id_column: str | None) -> _Dataset | None:
        """The dataset reading asked for; None for prompt lines.

        Raises:
            ConfigurationError: ``system`` or ``id_column`` without a
                template, or a template that is not valid.
        """
        if template is None:
            if system is not None or id_column is not None:
                raise ConfigurationError(
                    "system= and id_column= apply to a dataset: give template= too "
                    "(prompt lines carry their own messages and ids)"
                )
            return None
        from ..data import Template

        if isinstance(template, str):
            template = Template(template, system=system)
        elif system is not None:
            template = Template(template.text, system=system)
        return cls(template, id_column)


class _Batch:
    """A batch running as a task of its own, its results taken in bunches.

    One bunch per call, not one call per result: from sync code each call
    is a round trip to motio's loop, and a batch answers thousands a second.
    """

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._finished: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    async def next_results(self) -> list[dict[str, Any]]:
        """What finished since the last call, waiting for at least one; [] at the end.

        Raises:
            Exception: what stopped the batch, once every result it let through was taken.
        """
        task = self._task
        if task is None:
            task = self._task = asyncio.ensure_future(_job(self._settings, self._put))
            task.add_done_callback(lambda _: self._arrived.set())
        while not self._finished and not task.done():
            self._arrived.clear()
            await self._arrived.wait()
        finished, self._finished = self._finished, []
        if not finished:
            task.result()  # a whole-run failure, raised after every result it let through
        return finished

    def _put(self, result: dict[str, Any], attempts: Any) -> None:
        self._finished.append(result)
        self._arrived.set()

    async def aclose(self) -> None:
        """Stop the batch (its workers, its results file) and wait until it stopped."""
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))  # our own cancellation still raises here
        if not task.cancelled():
            task.exception()  # seen: its error was raised to the consumer, or was not wanted


async def _job(settings: _Settings, on_result: OnResult) -> None:
    """The batch job for one call: the backend built (if given a function) and closed."""
    # A function builds the backend (ours to close); a backend is the caller's.
    owned = not _is_backend(settings.backend)
    local: Backend = _built(settings.backend) if owned else settings.backend
    job: BatchJob | None = None
    answering: Answering | None = None
    try:
        # Opened first: a missing column stops the batch before any worker starts or request goes out.
        records = _records(settings.prompts, settings.dataset)
        ray = _on_ray(settings, local, owned)
        answering = open_answering(
            settings.response_format, settings.cache, max_invalid=settings.max_invalid, reask=settings.reask
        )
        job = BatchJob(
            options=settings.options,
            ray=ray,
            in_flight=settings.in_flight,
            answering=answering,
            hedge_budget=settings.hedge_budget,
            prefix_routing=settings.prefix_routing,
        )
        if settings.output is not None:
            job.open_results(settings.output)
        await job.start(local, checked=False)
        await job.run(records, on_result)
    finally:
        if job is not None:
            job.close()
        if answering is not None:
            answering.close()
        if owned:
            await local.aclose()


def _on_ray(settings: _Settings, local: Backend, owned: bool) -> OnRay | None:
    if settings.ray in (None, False):
        return None
    _join(settings.ray)
    # Each worker builds its own copy: connections and models never cross processes.
    build: Callable[[], Any] = settings.backend if owned else local.recipe()
    return OnRay(build, settings.actors)


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


def _records(prompts: Prompts, dataset: _Dataset | None = None) -> Iterator[PromptRecord]:
    if dataset is not None:
        return _dataset_records(prompts, dataset)
    if isinstance(prompts, (str, Path)) and Path(prompts).suffix.lower() in (".parquet", ".csv", ".tsv"):
        raise ConfigurationError(f"{prompts} is a dataset: give template= to say how a row becomes a prompt")
    if hasattr(prompts, "column_names"):  # a pyarrow.Table, a datasets.Dataset
        raise ConfigurationError(
            f"a {type(prompts).__name__} is a dataset: give template= to say how a row becomes a prompt"
        )
    return _line_records(prompts)


def _dataset_records(source: Any, dataset: _Dataset) -> Iterator[PromptRecord]:
    """The dataset's records; opened (and its columns checked) now, read lazily."""
    from ._dataset import open_dataset

    _, records = open_dataset(source, dataset.template, id_column=dataset.id_column)
    return _strict(records)


def _strict(items: Generator[PromptRecord | InputProblem, None, None]) -> Iterator[PromptRecord]:
    try:
        for item in items:
            if isinstance(item, InputProblem):
                raise ConfigurationError(f"row {item.line}: {item.message}")
            yield item
    finally:
        items.close()  # a batch stopped early closes the file now


def _line_records(prompts: Prompts) -> Iterator[PromptRecord]:
    if isinstance(prompts, (str, Path)):
        for line in scan_prompts(prompts):
            if isinstance(line, InputProblem):
                raise ConfigurationError(f"{prompts}: {line}")
            yield line
        return
    seen = IdSet()  # 8 bytes an id (see _ids)
    for number, item in enumerate(prompts, start=1):
        record = _record(item, number)
        if record.key in seen:
            raise ConfigurationError(f"prompt {record.line}: duplicate id {record.key}")
        seen.add(record.key)
        yield record


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
