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

from .._lazy import lazy_exports

# Not `from typing import TYPE_CHECKING`: typing alone costs several ms.
TYPE_CHECKING = False

# Each name is imported from its module on first use, so that a run that
# needs the templates does not pay for sqlite3 and the export machinery.
# tests/data/test_imports.py checks that the TYPE_CHECKING block below
# names the same imports.
_EXPORTS_BY_MODULE = {
    ".._exceptions": ("InvalidOutput", "MissingColumn"),
    "._cache": ("ResponseCache", "default_cache_path", "request_key"),
    "._export": ("ExportReport", "export"),
    "._reask": ("DEFAULT_MAX_INVALID", "AnswerCheck"),
    "._readers": ("Row", "RowProblem", "Rows", "open_rows"),
    "._schema": ("Invalid", "OutputSchema", "Parsed", "output_schema"),
    "._template": ("Prompt", "Template"),
}

_EXPORTS = {name: module for module, names in _EXPORTS_BY_MODULE.items() for name in names}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (derived from the one table, on purpose)

if TYPE_CHECKING:
    from .._exceptions import InvalidOutput as InvalidOutput
    from .._exceptions import MissingColumn as MissingColumn
    from ._cache import ResponseCache as ResponseCache
    from ._cache import default_cache_path as default_cache_path
    from ._cache import request_key as request_key
    from ._export import ExportReport as ExportReport
    from ._export import export as export
    from ._readers import Row as Row
    from ._readers import RowProblem as RowProblem
    from ._readers import Rows as Rows
    from ._readers import open_rows as open_rows
    from ._reask import DEFAULT_MAX_INVALID as DEFAULT_MAX_INVALID
    from ._reask import AnswerCheck as AnswerCheck
    from ._schema import Invalid as Invalid
    from ._schema import OutputSchema as OutputSchema
    from ._schema import Parsed as Parsed
    from ._schema import output_schema as output_schema
    from ._template import Prompt as Prompt
    from ._template import Template as Template

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
