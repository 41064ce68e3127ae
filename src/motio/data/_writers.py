"""Tables written a batch of rows at a time: Parquet, CSV/TSV, JSONL (by suffix).

Each writer writes to a temporary file beside the target and moves it into
place only when :meth:`Writer.close` is reached, so an export that fails
half-way leaves no half-written table under the name asked for.

Parquet needs each column's type before the first row: :class:`Kinds`
gathers them from the values seen on a first pass (a column of ints and
floats is float64; one that mixes kinds, or holds objects and lists, is text,
its values written as JSON), unless the type is known from an Arrow schema.
CSV and JSONL need no types.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .._exceptions import ConfigurationError

__all__ = ["OUT_SUFFIXES", "ROW_GROUP_ROWS", "Kinds", "Writer", "as_json_text", "open_writer"]

OUT_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")
# Rows per Parquet row group: written in batches of a thousand, a row group
# each would make readers pay per group; this many keeps memory to a few MB
# of text per column while keeping groups few.
ROW_GROUP_ROWS = 16_384


class Writer(Protocol):
    """Where exported rows go."""

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows (each with every column, None for null)."""

    def close(self) -> None:
        """Finish the file and move it into place."""

    def abort(self) -> None:
        """Drop what was written; the target is left as it was."""


class Kinds:
    """The kinds of value seen in each column, to choose Parquet types."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {}

    def add(self, column: str, value: Any) -> None:
        kinds = self._seen.setdefault(column, set())
        if value is not None:
            kinds.add(_kind(value))

    def add_row(self, values: dict[str, Any]) -> None:
        for column, value in values.items():
            self.add(column, value)

    def columns(self) -> list[str]:
        """The columns seen, in order of first sight."""
        return list(self._seen)

    def arrow_type(self, column: str) -> Any:
        """The pyarrow type for a column (text for one never seen or never set)."""
        import pyarrow as pa

        kinds = self._seen.get(column, set())
        if kinds == {"bool"}:
            return pa.bool_()
        if kinds == {"int"}:
            return pa.int64()
        if kinds and kinds <= {"int", "float"}:
            return pa.float64()
        return pa.string()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str" if isinstance(value, str) else "json"


def as_json_text(value: Any) -> Any:
    """None and strings as they are; anything else as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def open_writer(path: Path, columns: Sequence[str], arrow_types: dict[str, Any] | None = None) -> Writer:
    """A writer for ``path``'s suffix.

    Args:
        path: the table to write.
        columns: every column, in order.
        arrow_types: each column's pyarrow type (Parquet only; required there).

    Raises:
        ConfigurationError: a suffix motio cannot write.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        assert arrow_types is not None, "Parquet needs the columns' types"
        return _ParquetWriter(path, columns, arrow_types)
    if suffix in (".csv", ".tsv"):
        return _CsvWriter(path, columns, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _JsonlWriter(path, columns)
    raise ConfigurationError(
        f"{path}: cannot write {suffix or 'a file without suffix'!r}; give one of {OUT_SUFFIXES}"
    )


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class _FileWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._tmp = _temporary(path)

    def _finish(self) -> None:
        os.replace(self._tmp, self._path)

    def _drop(self) -> None:
        self._tmp.unlink(missing_ok=True)


class _JsonlWriter(_FileWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path)
        self._file = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed by close/abort)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            # default=str: Parquet's dates, decimals and bytes have no JSON form of their own.
            self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self._file.close()
        self._finish()

    def abort(self) -> None:
        self._file.close()
        self._drop()


class _CsvWriter(_FileWriter):
    def __init__(self, path: Path, columns: Sequence[str], delimiter: str) -> None:
        super().__init__(path)
        self._file = open(self._tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close/abort)
        self._columns = list(columns)
        self._csv = csv.writer(self._file, delimiter=delimiter)
        self._csv.writerow(self._columns)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._csv.writerows([_csv_value(row.get(column)) for column in self._columns] for row in rows)

    def close(self) -> None:
        self._file.close()
        self._finish()

    def abort(self) -> None:
        self._file.close()
        self._drop()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return as_json_text(value)  # true/false and numbers as JSON spells them, objects as JSON


class _ParquetWriter(_FileWriter):
    def __init__(self, path: Path, columns: Sequence[str], arrow_types: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path)
        self._schema = pa.schema([(column, arrow_types[column]) for column in columns])
        self._text = [column for column in columns if pa.types.is_string(arrow_types[column])]
        self._writer = pq.ParquetWriter(self._tmp, self._schema)
        self._batch = pa.RecordBatch.from_pylist
        self._table = pa.Table.from_batches
        self._pending: list[Any] = []
        self._pending_rows = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            for column in self._text:
                row[column] = as_json_text(row.get(column))
        self._pending.append(self._batch(list(rows), schema=self._schema))
        self._pending_rows += len(rows)
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(
                self._table(self._pending, schema=self._schema), row_group_size=ROW_GROUP_ROWS
            )
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._finish()

    def abort(self) -> None:
        self._writer.close()
        self._drop()
