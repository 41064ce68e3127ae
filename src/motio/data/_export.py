"""``motio export``: a results file, joined back onto its dataset, as a table.

:func:`export` writes the input rows (``join``) in their order, each with
the columns motio adds: ``output``, the ``parsed`` answer's fields as
columns when the answers are JSON objects (a single ``parsed`` column,
as JSON text, when they are not), and ``error`` (``"Type: message"``).
Without ``join`` it writes one row per id of the results file, in the
order the ids first appear, with an ``id`` column.

Memory stays flat at any size: the results file is first indexed by id
into a SQLite table in a temporary folder (not a dict of every line), then
the dataset streams through in batches, each batch's results looked up
with one query.

- A partial results file (a run stopped by Ctrl-C or ``kill -9``) works:
  rows without a result get nulls, and a torn last line is skipped.
- When an id has several lines (an error, then a success after
  ``--retry-errors``), the success counts, as for resume.
- A parsed field whose name is already an input column is written as
  ``parsed.<field>``; an input column named ``output`` or ``error`` is
  refused, since one of the two would be lost.
- The target is refused when it is the results file or the dataset (by any
  path: compared by device and inode), and it is written to a temporary
  file moved into place at the end, so a failed export leaves nothing
  half-written under its name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError
from ._readers import Row, RowProblem, open_rows
from ._schema import output_schema
from ._writers import OUT_SUFFIXES, Kinds, open_writer

__all__ = ["ExportReport", "export"]

# Rows looked up and written at once.
CHUNK_ROWS = 1024
ADDED = ("output", "error")


@dataclass
class ExportReport:
    """What an export wrote.

    Attributes:
        rows: rows written.
        answered: rows with a successful result.
        failed: rows whose result is an error.
        missing: rows with no result (not run yet, or no id).
        skipped: input lines that are no row (not a JSON object), not written.
        columns: the columns written, in order.
    """

    rows: int = 0
    answered: int = 0
    failed: int = 0
    missing: int = 0
    skipped: int = 0
    columns: list[str] = field(default_factory=list)


def export(
    results: str | Path,
    to: str | Path,
    join: str | Path | None = None,
    *,
    id_column: str | None = None,
    schema: Any = None,
) -> ExportReport:
    """Write a results file (joined onto its dataset) as ``.parquet``, ``.csv``, ``.tsv`` or ``.jsonl``.

    Args:
        results: the results file of ``motio run``.
        to: the table to write; its suffix picks the format.
        join: the dataset the run read, to write its rows with the results added.
        id_column: the dataset's id column, as given to the run (None: ``line-N``).
        schema: the output schema (anything :func:`~motio.data.output_schema`
            takes), to name the parsed columns in its order even when no answer
            has them all; None takes them from the answers.

    Returns:
        The counts, and the columns written.

    Raises:
        ConfigurationError: ``to`` is one of the inputs, or has an unknown
            suffix; the results file holds a line that is not a result; an
            input column is named ``output`` or ``error``.
        MissingColumn: ``id_column`` is not a column of ``join``.
        OSError: a file cannot be read or written.
    """
    results, to = Path(results), Path(to)
    dataset = Path(join) if join is not None else None
    _check_target(to, [results, dataset])
    fields = output_schema(schema).properties if schema is not None else None
    with tempfile.TemporaryDirectory(prefix="motio-export-") as folder:
        index = _ResultsIndex(Path(folder) / "results.sqlite3")
        try:
            index.load(results)
            return _write(index, to, dataset, id_column, fields)
        finally:
            index.close()


def _check_target(to: Path, inputs: list[Path | None]) -> None:
    if to.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigurationError(
            f"{to}: cannot write {to.suffix or 'a file without suffix'!r}; give one of {OUT_SUFFIXES}"
        )
    for given in inputs:
        if given is not None and _same_file(to, given):
            raise ConfigurationError(
                f"{to} is the input {given}: refusing to overwrite it; give another --to"
            )


def _same_file(one: Path, other: Path) -> bool:
    if one.resolve() == other.resolve():
        return True
    try:
        return os.path.samefile(one, other)  # hard links
    except OSError:
        return False  # one of them does not exist


# --- the results, indexed by id ---------------------------------------------------


def _id_key(value: object) -> str:
    # The same identity as motio.batch._records.id_key (checked by a test):
    # ids 1 and "1" stay distinct.
    return json.dumps(value, ensure_ascii=False)


class _ResultsIndex:
    """A results file's outcome per id, in a SQLite table on disk."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(
            "CREATE TABLE results (key TEXT PRIMARY KEY, seq INTEGER, id TEXT, ok INTEGER, "
            "output TEXT, parsed TEXT, error TEXT)"
        )
        self.fields: dict[str, None] = {}  # the parsed objects' keys, in order of first sight
        self.kinds = Kinds()  # of those fields, and of the ids (for Parquet types)
        self.parsed_objects = True  # every non-null parsed value is an object
        self.parsed_seen = False

    def load(self, path: Path) -> None:
        rows = (self._entry(seq, line) for seq, line in enumerate(_result_lines(path)))
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "ok = excluded.ok, output = excluded.output, parsed = excluded.parsed, error = excluded.error "
            "WHERE excluded.ok >= results.ok",
            rows,
        )
        self._db.execute("COMMIT")

    def _entry(self, seq: int, line: dict[str, Any]) -> tuple[Any, ...]:
        ident, ok, output, parsed, error = _outcome(line)
        self.kinds.add("id", ident)
        self._see_parsed(parsed)
        parsed_text = None if parsed is None else json.dumps(parsed, ensure_ascii=False)
        return _id_key(ident), seq, json.dumps(ident), int(ok), output, parsed_text, error

    def _see_parsed(self, parsed: Any) -> None:
        if parsed is None:
            return
        self.parsed_seen = True
        if not isinstance(parsed, dict):
            self.parsed_objects = False
            return
        for name, value in parsed.items():
            self.fields.setdefault(name, None)
            self.kinds.add(f"parsed:{name}", value)

    def lookup(self, keys: list[str]) -> dict[str, tuple[Any, ...]]:
        """``{key: (ok, output, parsed, error)}`` for the keys that have a result."""
        marks = ",".join("?" * len(keys))
        query = f"SELECT key, ok, output, parsed, error FROM results WHERE key IN ({marks})"
        return {row[0]: row[1:] for row in self._db.execute(query, keys)}

    def in_order(self) -> Iterator[tuple[Any, ...]]:
        """``(id, ok, output, parsed, error)`` per id, in order of first appearance."""
        for ident, *rest in self._db.execute(
            "SELECT id, ok, output, parsed, error FROM results ORDER BY seq"
        ):
            yield (json.loads(ident), *rest)

    def close(self) -> None:
        self._db.close()


def _result_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if not raw.endswith(b"\n"):
                    return  # a torn last line: that prompt has no result yet
                raise ConfigurationError(
                    f"{path} line {number} is not JSON: not a motio results file"
                ) from None
            if not isinstance(line, dict) or "error" not in line or not ("id" in line or "custom_id" in line):
                raise ConfigurationError(
                    f"{path} line {number} is not a result line: not a motio results file"
                )
            yield line


def _outcome(line: dict[str, Any]) -> tuple[Any, bool, str | None, Any, str | None]:
    """``(id, ok, output, parsed, error)`` of a result line of either shape."""
    error = line.get("error")
    if "custom_id" in line and "response" in line:  # the OpenAI Batch shape
        response = line.get("response") or {}
        status = response.get("status_code")
        ok = error is None and isinstance(status, int) and status < 400
        return line["custom_id"], ok, _batch_output(response), line.get("parsed"), _error_text(error)
    return line["id"], error is None, line.get("output"), line.get("parsed"), _error_text(error)


def _batch_output(response: dict[str, Any]) -> str | None:
    try:
        content = response["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message")
        return f"{kind}: {message}" if kind else str(message)
    return str(error)


# --- the table written -----------------------------------------------------------


@dataclass
class _Plan:
    """The columns to write and how the added ones are named."""

    inputs: list[str]
    parsed: dict[str, str]  # parsed field -> its column ("" key: one JSON column "parsed")
    types: dict[str, Any] | None  # pyarrow types by column (Parquet only)

    @property
    def columns(self) -> list[str]:
        return [*self.inputs, "output", *self.parsed.values(), "error"]


def _write(
    index: _ResultsIndex,
    to: Path,
    dataset: Path | None,
    id_column: str | None,
    fields: tuple[str, ...] | None,
) -> ExportReport:
    parquet = to.suffix.lower() == ".parquet"
    inputs, input_types = _input_columns(dataset, parquet, to, index)
    plan = _plan(index, inputs, input_types, fields, parquet)
    writer = open_writer(to, plan.columns, plan.types)
    report = ExportReport(columns=plan.columns)
    try:
        rows = _joined(index, dataset, id_column, report) if dataset else _alone(index)
        for chunk in _chunks(rows):
            writer.write([_output_row(values, result, plan, report) for values, result in chunk])
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return report


def _input_columns(
    dataset: Path | None, parquet: bool, to: Path, index: _ResultsIndex
) -> tuple[list[str], dict[str, Any]]:
    """The dataset's columns, and their pyarrow types when Parquet is written."""
    if dataset is None:
        return ["id"], {"id": index.kinds.arrow_type("id")} if parquet else {}
    if dataset.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(dataset)
        return list(schema.names), {name: schema.field(name).type for name in schema.names}
    with open_rows(dataset) as rows:
        if dataset.suffix.lower() in (".csv", ".tsv") or to.suffix.lower() == ".jsonl":
            return list(rows.columns), _all_text(rows.columns) if parquet else {}
        kinds = Kinds()  # JSONL: the union of every row's keys, and their kinds
        for row in rows:
            if row.values is not None:  # a RowProblem without values is a line that is no row
                kinds.add_row(row.values)
    columns = kinds.columns()
    return columns, {name: kinds.arrow_type(name) for name in columns} if parquet else {}


def _all_text(columns: Iterable[str]) -> dict[str, Any]:
    import pyarrow as pa

    return dict.fromkeys(columns, pa.string())


def _plan(
    index: _ResultsIndex,
    inputs: list[str],
    input_types: dict[str, Any],
    fields: tuple[str, ...] | None,
    parquet: bool,
) -> _Plan:
    one_column = index.parsed_seen and not index.parsed_objects and fields is None
    clash = [name for name in (*ADDED, "parsed") if name in inputs and (name != "parsed" or one_column)]
    if clash:
        raise ConfigurationError(
            f"the dataset already has a column {clash[0]!r}, which export adds; rename it in the dataset"
        )
    parsed: dict[str, str] = {}
    if one_column:
        parsed[""] = "parsed"
    else:
        for name in fields if fields is not None else index.fields:
            parsed[name] = f"parsed.{name}" if name in inputs or name in ADDED else name
    types = None
    if parquet:
        types = dict(input_types) | _added_types(index, parsed)
    return _Plan(inputs, parsed, types)


def _added_types(index: _ResultsIndex, parsed: dict[str, str]) -> dict[str, Any]:
    import pyarrow as pa

    types = {"output": pa.string(), "error": pa.string()}
    for name, column in parsed.items():
        types[column] = index.kinds.arrow_type(f"parsed:{name}") if name else pa.string()
    return types


Pair = tuple[dict[str, Any] | None, tuple[Any, ...] | None]


def _joined(
    index: _ResultsIndex, dataset: Path, id_column: str | None, report: ExportReport
) -> Iterator[Pair]:
    """Each dataset row (in order) with its result, looked up a chunk at a time."""
    with open_rows(dataset, id_column=id_column) as rows:
        for chunk in _chunks(_usable(rows, report)):
            found = index.lookup([key for _, key in chunk if key is not None])
            for values, key in chunk:
                yield values, found.get(key) if key is not None else None


def _usable(
    rows: Iterable[Row | RowProblem], report: ExportReport
) -> Iterator[tuple[dict[str, Any], str | None]]:
    for row in rows:
        if isinstance(row, Row):
            yield row.values, _id_key(row.id)
        elif row.values is not None:
            yield row.values, None  # an id that is null: the row is written, without a result
        else:
            report.skipped += 1


def _alone(index: _ResultsIndex) -> Iterator[Pair]:
    for ident, *result in index.in_order():
        yield {"id": ident}, tuple(result)


def _output_row(
    values: dict[str, Any] | None, result: tuple[Any, ...] | None, plan: _Plan, report: ExportReport
) -> dict[str, Any]:
    row = dict(values or {})
    report.rows += 1
    if result is None:
        report.missing += 1
        row.update(dict.fromkeys(["output", *plan.parsed.values(), "error"]))
        return row
    ok, output, parsed_text, error = result
    report.answered += bool(ok)
    report.failed += not ok
    parsed = None if parsed_text is None else json.loads(parsed_text)
    # Set in the plan's column order: a JSONL line's keys are written as they stand.
    row["output"] = output
    for name, column in plan.parsed.items():
        row[column] = parsed if not name else parsed.get(name) if isinstance(parsed, dict) else None
    row["error"] = error
    return row


def _chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
