"""Rows of a dataset, streamed as dicts, each with a stable id.

What can be read (:func:`open_rows`):

- a path ending in ``.parquet``: pyarrow, one batch of rows at a time
  (``ParquetFile.iter_batches``, which reads a row group at a time), never
  the whole file; only the columns asked for are decoded;
- ``.csv`` / ``.tsv``: the standard library's ``csv`` module, one row at a
  time. Not pyarrow's streaming CSV reader: that one infers each column's
  type from the first block and fails in the middle of a file on a later
  row that does not fit (an id column of numbers that turns to text at row
  200,000), it would make pyarrow necessary for CSV, and it would turn
  ``"00123"`` into ``123``. Every CSV value is kept as the text it is;
- ``.jsonl`` / ``.ndjson``: one JSON object per line, any keys;
- a ``pyarrow.Table``, a Hugging Face ``datasets.Dataset`` (either used
  as it is: recognised by its attributes, never imported), or any other
  iterable of dicts.

Ids: the value of ``id_column`` when one is named (a string or an
integer), else ``"line-N"``, N the row's 1-based number, exactly as a
prompt line without ``id`` gets its id in ``motio.batch._records``. In a
JSONL file N is the line number, blank lines counted (as for prompt lines);
elsewhere it is the row's position, the CSV header not counted.

A row that cannot be used (a JSONL line that is not an object, an id that is
null or a float) comes out as a :class:`RowProblem` naming its number, so
one bad row never stops the others, as with bad prompt lines.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from .._exceptions import ConfigurationError, MissingColumn

__all__ = ["BATCH_ROWS", "SUFFIXES", "Row", "RowProblem", "Rows", "open_rows"]

# Rows decoded at once from Parquet or Arrow: big enough that pyarrow's
# per-batch cost vanishes, small enough that a batch of long texts stays a
# few MB whatever the row group size.
BATCH_ROWS = 1024
SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".ndjson")


@dataclass(frozen=True, slots=True)
class Row:
    """One usable row.

    Attributes:
        id: the ``id_column``'s value, or ``"line-N"``.
        number: the 1-based row number (the line number in a JSONL file).
        values: the row's columns, as read.
    """

    id: str | int
    number: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A row that cannot run, and why (the batch reports it as a bad line).

    Attributes:
        number: the row's 1-based number.
        message: what is wrong with it.
        values: its columns when it has some (an id that is null, say), so
            that an export still writes it; None for a line that is no row.
    """

    number: int
    message: str
    values: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"row {self.number}: {self.message}"


class Rows:
    """The rows of one dataset, read once, in order; close it (or use ``with``).

    Attributes:
        columns: the dataset's columns, known before any row is read (the
            Parquet or Arrow schema, the CSV header; for JSONL and plain
            iterables, the keys of the first object, which is read ahead).
        total: how many rows there are when the source says so without being
            read (Parquet metadata, a table's or a Dataset's length), else None.
    """

    def __init__(
        self,
        columns: Sequence[str],
        items: Iterator[Row | RowProblem],
        *,
        total: int | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.columns = tuple(columns)
        self.total = total
        self._items = items
        self._close = close

    def __iter__(self) -> Iterator[Row | RowProblem]:
        return self._items

    def close(self) -> None:
        """Release the file; the rows not read yet are not read."""
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_rows(
    source: Any,
    *,
    id_column: str | None = None,
    columns: Sequence[str] | None = None,
) -> Rows:
    """Open a dataset for streaming.

    Args:
        source: a path (``str`` or ``Path``; by its suffix), a ``pyarrow.Table``,
            a ``datasets.Dataset``, or an iterable of dicts.
        id_column: the column holding each row's id; None for ``"line-N"``.
        columns: the columns needed (the template's and the id's), so that
            Parquet and Arrow decode only those; None for every column.
            Ignored by CSV and JSONL, which are read whole row by row anyway.

    Returns:
        The rows, not read yet (a JSONL file or an iterable is read up to its
        first object, for the columns).

    Raises:
        ConfigurationError: an unknown suffix, or a source that is not rows.
        MissingColumn: ``id_column`` or one of ``columns`` is not in the data.
        ImportError: a Parquet file without pyarrow (``pip install 'motio[data]'``).
        OSError: the file cannot be opened.
    """
    if columns is not None and id_column is not None:
        columns = [id_column, *columns]  # first: a missing id column is named as that
    if isinstance(source, (str, Path)):
        rows = _open_path(Path(source), columns, id_column)
    elif _is_arrow_table(source):
        rows = _arrow_rows(source, columns, id_column)
    elif isinstance(source, (dict, bytes, bytearray)) or not isinstance(source, Iterable):
        raise ConfigurationError(
            f"cannot read rows from a {type(source).__name__}: give a path (.parquet, .csv, .tsv, "
            ".jsonl), a pyarrow.Table, a datasets.Dataset or an iterable of dicts"
        )
    else:
        rows = _iterable_rows(source)
    return _with_ids(rows, id_column)


def _with_ids(rows: Rows, id_column: str | None) -> Rows:
    if id_column is None:
        return rows
    if rows.columns and id_column not in rows.columns:
        rows.close()
        raise MissingColumn(id_column, rows.columns, what="id_column")
    rows._items = (_identified(item, id_column) for item in rows._items)
    return rows


def _identified(item: Row | RowProblem, id_column: str) -> Row | RowProblem:
    if isinstance(item, RowProblem):
        return item
    value = item.values.get(id_column)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = "null" if value is None else type(value).__name__
        why = f"the id column {id_column!r} must hold a string or an integer, got {kind}"
        return RowProblem(item.number, why, item.values)
    return Row(value, item.number, item.values)


def _row(values: dict[str, Any], number: int) -> Row:
    # The same id as motio.batch._records.default_id gives a prompt line without one.
    return Row(f"line-{number}", number, values)


# --- paths -------------------------------------------------------------------


def _open_path(path: Path, columns: Sequence[str] | None, id_column: str | None) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path, columns, id_column)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    raise ConfigurationError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
        f"motio reads {', '.join(SUFFIXES)}"
    )


def _parquet_rows(path: Path, columns: Sequence[str] | None, id_column: str | None) -> Rows:
    import pyarrow.parquet as pq  # here: pyarrow costs ~100 ms and is optional

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    wanted = _known_columns(columns, names, parquet.close, id_column)
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted)
    return Rows(names, _batch_rows(batches), total=parquet.metadata.num_rows, close=parquet.close)


def _csv_rows(path: Path, delimiter: str) -> Rows:
    _allow_long_fields()
    # utf-8-sig: a BOM (spreadsheets on Windows write one) is not part of the first column's name.
    file = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed by Rows.close)
    try:
        reader = csv.reader(file, delimiter=delimiter)
        header = next(reader, [])
    except BaseException:
        file.close()
        raise
    return Rows(header, _csv_items(reader, header, path), close=file.close)


def _csv_items(reader: Iterator[list[str]], header: list[str], path: Path) -> Iterator[Row | RowProblem]:
    width = len(header)
    try:
        for number, fields in enumerate(reader, start=1):
            if not fields:
                continue  # a blank line; csv gives [] for it
            if len(fields) != width:
                values = dict(zip(header, fields, strict=False))
                yield RowProblem(number, f"has {len(fields)} fields, the header has {width}", values)
            else:
                yield _row(dict(zip(header, fields, strict=True)), number)
    except csv.Error as exc:
        where = getattr(reader, "line_num", "?")
        raise ConfigurationError(f"{path}: not readable as CSV near line {where}: {exc}") from exc


def _allow_long_fields() -> None:
    # csv refuses fields over 128 KiB by default; a document to summarise can
    # be longer. The limit is process-wide, so it is only ever raised.
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _jsonl_rows(path: Path) -> Rows:
    file = open(path, "rb")  # noqa: SIM115 (closed by Rows.close)
    try:
        return _peeked(_jsonl_items(file), close=file.close)
    except BaseException:
        file.close()
        raise


def _jsonl_items(lines: Iterable[bytes]) -> Iterator[Row | RowProblem]:
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue  # counted, as blank prompt lines are
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield RowProblem(number, f"not a JSON line ({exc})")
            continue
        if isinstance(value, dict):
            yield _row(value, number)
        else:
            yield RowProblem(number, f"expected a JSON object, got {type(value).__name__}")


# --- objects in memory --------------------------------------------------------


def _is_arrow_table(source: object) -> bool:
    # Duck-typed so that pyarrow is never imported for a list of dicts.
    return type(source).__module__.startswith("pyarrow") and hasattr(source, "to_batches")


def _arrow_rows(table: Any, columns: Sequence[str] | None, id_column: str | None) -> Rows:
    names = list(table.column_names)
    wanted = _known_columns(columns, names, None, id_column)
    if wanted is not None:
        table = table.select(wanted)
    return Rows(names, _batch_rows(table.to_batches(max_chunksize=BATCH_ROWS)), total=table.num_rows)


def _batch_rows(batches: Iterable[Any]) -> Iterator[Row | RowProblem]:
    number = 0
    for batch in batches:
        for values in batch.to_pylist():
            number += 1
            yield _row(values, number)


def _iterable_rows(source: Iterable[Any]) -> Rows:
    # A datasets.Dataset iterates as dicts and knows its columns and length.
    names = getattr(source, "column_names", None)
    items = _dict_items(source)
    if isinstance(names, list):
        return Rows(names, items, total=len(source) if isinstance(source, Sized) else None)
    return _peeked(items)


def _dict_items(source: Iterable[Any]) -> Iterator[Row | RowProblem]:
    for number, value in enumerate(source, start=1):
        if isinstance(value, dict):
            yield _row(value, number)
        else:
            yield RowProblem(number, f"expected a dict, got {type(value).__name__}")


# --- helpers --------------------------------------------------------------------


def _peeked(items: Iterator[Row | RowProblem], close: Callable[[], None] | None = None) -> Rows:
    """Rows whose columns are the keys of the first row (read ahead, with any problems before it)."""
    ahead: list[Row | RowProblem] = []
    for item in items:
        ahead.append(item)
        if isinstance(item, Row):
            return Rows(list(item.values), itertools.chain(ahead, items), close=close)
    return Rows((), iter(ahead), close=close)


def _known_columns(
    columns: Sequence[str] | None,
    names: Sequence[str],
    close: Callable[[], None] | None,
    id_column: str | None,
) -> list[str] | None:
    if columns is None:
        return None
    for column in columns:
        if column not in names:
            if close is not None:
                close()
            raise MissingColumn(column, names, what="id_column" if column == id_column else "the template")
    return list(dict.fromkeys(columns))
