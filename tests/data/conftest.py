"""Datasets for the data tests, made here with pyarrow and the standard library."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_jsonl", "write_parquet"]


def write_parquet(path: Path, rows: list[dict[str, Any]], *, row_group_size: int = 1000) -> Path:
    """A Parquet file of ``rows``, in row groups of ``row_group_size``."""
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """One JSON value per line (a str is written as the line itself)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
