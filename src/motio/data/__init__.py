"""From a dataset to validated, structured data: the building blocks.

Map of the package (each module imports its optional dependency only when
it is used, so importing this package costs no pyarrow, jsonschema or
pydantic):

- ``_readers``: :func:`open_rows`, rows of a Parquet/CSV/TSV/JSONL file, a
  ``pyarrow.Table``, a ``datasets.Dataset`` or an iterable of dicts, streamed,
  each with a stable id (:class:`Row`, :class:`RowProblem`);
- ``_template``: :class:`Template`, ``{column}`` placeholders checked against
  the columns before anything is sent, a row rendered to a :class:`Prompt`;
- ``_schema``: :func:`output_schema`, an :class:`OutputSchema` from a JSON
  schema or a pydantic model: ``response_format`` bodies, validation
  (:class:`Parsed` / :class:`Invalid`) and the re-ask conversation;
- ``_reask``: :class:`AnswerCheck`, one prompt's answers checked and
  re-asked up to ``max_invalid``, then :class:`~motio.InvalidOutput`;
- ``_cache``: :class:`ResponseCache`, answers by :func:`request_key` in a
  SQLite file shared by processes;
- ``_export``: :func:`export`, a results file joined back onto its dataset,
  written by ``_writers`` as Parquet, CSV/TSV or JSONL.

:class:`~motio.MissingColumn` and :class:`~motio.InvalidOutput` are defined
with the other errors in ``motio/_exceptions.py``.
"""

from .._exceptions import InvalidOutput, MissingColumn
from ._cache import ResponseCache, default_cache_path, request_key
from ._export import ExportReport, export
from ._readers import Row, RowProblem, Rows, open_rows
from ._reask import DEFAULT_MAX_INVALID, AnswerCheck
from ._schema import Invalid, OutputSchema, Parsed, output_schema
from ._template import Prompt, Template

__all__ = [
    "DEFAULT_MAX_INVALID",
    "AnswerCheck",
    "ExportReport",
    "Invalid",
    "InvalidOutput",
    "MissingColumn",
    "OutputSchema",
    "Parsed",
    "Prompt",
    "ResponseCache",
    "Row",
    "RowProblem",
    "Rows",
    "Template",
    "default_cache_path",
    "export",
    "open_rows",
    "output_schema",
    "request_key",
]
