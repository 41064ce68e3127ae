"""A dataset's rows as the batch engine's records: the seam between ``motio.data`` and the engine.

:func:`dataset_records` turns rows (:func:`motio.data.open_rows`) rendered
by a :class:`~motio.data.Template` into what :func:`._records.scan_prompts`
yields for a prompts file, so everything after it (resume by id, results,
the summary) is the same for both: a rendered row is a motio-shaped
:class:`PromptRecord` whose ``request`` is its messages and whose ``line``
is its row number; a row that cannot run is an :class:`InputProblem`; a
repeated id is reported on the later row and that row skipped, as a
repeated id in a prompts file is.

:func:`open_dataset` is what ``motio run DATA --template ...`` and
``motio.batch.run(..., template=...)`` both call: the source opened, the
template checked against its columns (a missing column raises before
anything is sent), the records streamed and the file closed at their end.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import Any

from ..data import Row, RowProblem, Rows, Template, open_rows
from ._ids import IdSet
from ._records import InputProblem, PromptRecord, _check_unique

__all__ = ["dataset_records", "open_dataset"]


def dataset_records(
    rows: Iterable[Row | RowProblem], template: Template, *, check_ids: bool = True
) -> Iterator[PromptRecord | InputProblem]:
    """The records of a dataset's rows, lazily, in order.

    The template is not checked against the columns here: call
    ``template.check(rows.columns)`` first, so that a misspelt column stops
    the run before anything is sent rather than failing every row.

    Args:
        check_ids: report repeated ids. Rows without an id column are
            ``line-N`` by their number, distinct by construction: then
            nothing needs remembering per row (pass False).
    """
    first_line_of = IdSet(lines=True) if check_ids else None
    for item in template.prompts(rows):
        if isinstance(item, RowProblem):
            yield InputProblem(item.number, item.message)
            continue
        record = PromptRecord(item.id, item.number, item.messages, {})
        yield record if first_line_of is None else _check_unique(record, first_line_of)


def open_dataset(
    source: Any, template: Template, *, id_column: str | None = None
) -> tuple[Rows, Generator[PromptRecord | InputProblem, None, None]]:
    """Open ``source`` (see :func:`~motio.data.open_rows`) as records, checked against ``template``.

    Returns:
        The rows (their ``columns`` and ``total``; closed once the records
        are read to their end, or by the caller) and their records.

    Raises:
        MissingColumn: the template or ``id_column`` names a column the
            dataset lacks (an empty dataset has none to lack).
        ConfigurationError, ImportError, OSError: as ``open_rows``.
    """
    rows = open_rows(source, id_column=id_column, columns=template.fields)
    try:
        if rows.columns:
            template.check(rows.columns)
    except BaseException:
        rows.close()
        raise
    return rows, _closing(rows, dataset_records(rows, template, check_ids=id_column is not None))


def _closing(
    rows: Rows, records: Iterator[PromptRecord | InputProblem]
) -> Generator[PromptRecord | InputProblem, None, None]:
    try:
        yield from records
    finally:
        rows.close()
