"""A dataset's rows as the batch engine's records: the seam between ``motio.data`` and the engine.

:func:`dataset_records` turns rows (:func:`motio.data.open_rows`) rendered
by a :class:`~motio.data.Template` into what :func:`._records.scan_prompts`
yields for a prompts file, so everything after it (resume by id, results,
the summary) is the same for both: a rendered row is a motio-shaped
:class:`PromptRecord` whose ``request`` is its messages and whose ``line``
is its row number; a row that cannot run is an :class:`InputProblem`; a
repeated id is reported on the later row and that row skipped, as a
repeated id in a prompts file is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..data import Row, RowProblem, Template
from ._records import InputProblem, PromptRecord, _check_unique

__all__ = ["dataset_records"]


def dataset_records(
    rows: Iterable[Row | RowProblem], template: Template
) -> Iterator[PromptRecord | InputProblem]:
    """The records of a dataset's rows, lazily, in order.

    The template is not checked against the columns here: call
    ``template.check(rows.columns)`` first, so that a misspelt column stops
    the run before anything is sent rather than failing every row.
    """
    first_line_of: dict[str, int] = {}
    for item in template.prompts(rows):
        if isinstance(item, RowProblem):
            yield InputProblem(item.number, item.message)
        else:
            yield _check_unique(PromptRecord(item.id, item.number, item.messages, {}), first_line_of)
