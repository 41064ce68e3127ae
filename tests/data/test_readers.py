"""open_rows: Parquet, CSV/TSV, JSONL, Arrow tables, datasets and iterables, streamed, with stable ids."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from motio import ConfigurationError, MissingColumn
from motio.batch import PromptRecord, scan_prompts
from motio.data import Row, RowProblem, open_rows

from .conftest import write_jsonl, write_parquet


def rows_of(source: object, **options: object) -> list[Row | RowProblem]:
    with open_rows(source, **options) as rows:  # type: ignore[arg-type]
        return list(rows)


def test_parquet_rows_in_order_with_line_ids_columns_and_total(tmp_path: Path) -> None:
    data = [{"text": f"t{i}", "n": i} for i in range(2500)]
    path = write_parquet(tmp_path / "d.parquet", data, row_group_size=700)
    with open_rows(path) as rows:
        assert rows.columns == ("text", "n")
        assert rows.total == 2500
        got = list(rows)
    assert [row.values for row in got if isinstance(row, Row)] == data
    assert [row.id for row in got if isinstance(row, Row)] == [f"line-{i}" for i in range(1, 2501)]


def test_parquet_decodes_only_the_columns_asked_for(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [{"text": "a", "big": "x" * 100, "id": 7}])
    [row] = rows_of(path, columns=["text"], id_column="id")
    assert row == Row(7, 1, {"text": "a", "id": 7})


def test_parquet_streams_by_batches_never_the_whole_file(tmp_path: Path) -> None:
    # 40,000 rows of 500 characters: 20 MB once decoded. Reading the first
    # rows must hold a row group's worth (1000 rows), not the file.
    path = write_parquet(tmp_path / "big.parquet", [{"text": f"{i:06d}" + "x" * 494} for i in range(40_000)])
    before = pa.total_allocated_bytes()
    with open_rows(path) as rows:
        first = [next(iter(rows)) for _ in range(10)]
        held = pa.total_allocated_bytes() - before
    assert [row.id for row in first if isinstance(row, Row)] == [f"line-{i}" for i in range(1, 11)]
    assert held < 5_000_000, held


def test_id_column_values_and_rows_whose_id_cannot_be_one(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "d.parquet", [{"key": "a", "x": 1}, {"key": None, "x": 2}, {"key": "c", "x": 3}]
    )
    got = rows_of(path, id_column="key")
    assert got[0] == Row("a", 1, {"key": "a", "x": 1})
    assert isinstance(got[1], RowProblem) and got[1].number == 2
    assert "'key'" in got[1].message and "null" in got[1].message
    assert got[1].values == {"key": None, "x": 2}  # kept, so that an export still writes the row
    assert got[2] == Row("c", 3, {"key": "c", "x": 3})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_missing_id_column_is_named_with_the_columns_there(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        path.write_text("text,label\nhello,pos\n", encoding="utf-8")
    else:
        write_parquet(path, [{"text": "hello", "label": "pos"}])
    with pytest.raises(MissingColumn) as caught:
        open_rows(path, id_column="txt")
    assert caught.value.column == "txt" and caught.value.columns == ("text", "label")
    assert "'txt'" in str(caught.value) and "'text', 'label'" in str(caught.value)
    assert "did you mean 'text'" in str(caught.value) and str(caught.value).startswith(
        "the column 'txt' named by id_column is not in the data"
    )


def test_columns_asked_for_that_are_missing_are_named_before_any_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [{"text": "hello", "key": 1}])
    with pytest.raises(MissingColumn, match="^the column 'txt' named by the template is not"):
        open_rows(path, columns=["txt"], id_column="key")
    with pytest.raises(MissingColumn, match="^the column 'id' named by id_column is not"):
        open_rows(pa.table({"text": ["a"]}), columns=["text"], id_column="id")


def test_csv_values_are_kept_as_text_with_quoted_newlines_a_bom_and_long_fields(tmp_path: Path) -> None:
    long = "y" * 200_000  # over csv's default 128 KiB field limit
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfzip,text\n" + b'00123,"two\nlines"\n' + b"\n" + f"42,{long}\n".encode())
    with open_rows(path) as rows:
        assert rows.columns == ("zip", "text")
        assert rows.total is None
        got = list(rows)
    assert got == [
        Row("line-1", 1, {"zip": "00123", "text": "two\nlines"}),
        Row("line-3", 3, {"zip": "42", "text": long}),
    ]


def test_tsv_and_a_row_with_the_wrong_number_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("a\tb\n1\t2\n3\n4\t5\n", encoding="utf-8")
    got = rows_of(path)
    assert got[0] == Row("line-1", 1, {"a": "1", "b": "2"})
    assert isinstance(got[1], RowProblem) and "1 fields, the header has 2" in str(got[1])
    assert got[2] == Row("line-3", 3, {"a": "4", "b": "5"})


def test_jsonl_line_ids_are_exactly_those_of_prompt_lines(tmp_path: Path) -> None:
    # The same file read as prompts (motio run today) and as a dataset: the
    # same ids, blank lines counted, so a run can move from one to the other.
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, "", {"prompt": "b"}, "   ", {"prompt": "c"}])
    prompts = [record.id for record in scan_prompts(path) if isinstance(record, PromptRecord)]
    rows = [row.id for row in rows_of(path) if isinstance(row, Row)]
    assert rows == prompts == ["line-1", "line-3", "line-5"]


def test_jsonl_any_columns_and_lines_that_are_no_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["[1, 2]", {"text": "a", "extra": [1]}, "{oops", {"text": "b"}])
    with open_rows(path) as rows:
        assert rows.columns == ("text", "extra")  # the first object's keys, read ahead
        got = list(rows)
    assert isinstance(got[0], RowProblem) and got[0].number == 1 and got[0].values is None
    assert got[1] == Row("line-2", 2, {"text": "a", "extra": [1]})
    assert isinstance(got[2], RowProblem) and got[2].number == 3
    assert got[3] == Row("line-4", 4, {"text": "b"})


def test_an_arrow_table_streams_in_batches_with_its_columns(tmp_path: Path) -> None:
    table = pa.table({"text": ["a", "b", "c"], "id": [10, 11, 12]})
    with open_rows(table, id_column="id", columns=["text", "id"]) as rows:
        assert rows.columns == ("text", "id") and rows.total == 3
        assert list(rows) == [
            Row(10, 1, {"text": "a", "id": 10}),
            Row(11, 2, {"text": "b", "id": 11}),
            Row(12, 3, {"text": "c", "id": 12}),
        ]


def test_iterables_of_dicts_generators_included() -> None:
    rows = open_rows({"q": str(i)} for i in range(3))
    assert rows.columns == ("q",) and rows.total is None
    assert [row.id for row in rows if isinstance(row, Row)] == ["line-1", "line-2", "line-3"]
    got = rows_of([{"q": "a"}, "not a dict"])
    assert isinstance(got[1], RowProblem) and "expected a dict, got str" in got[1].message
    assert open_rows([]).columns == ()


def test_a_hugging_face_dataset_is_read_as_it_is() -> None:
    import datasets  # in the dev extra: a missing one fails here rather than skip

    dataset = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with open_rows(dataset) as rows:
        assert rows.columns == ("text", "label") and rows.total == 2
        assert list(rows) == [
            Row("line-1", 1, {"text": "a", "label": 0}),
            Row("line-2", 2, {"text": "b", "label": 1}),
        ]


@pytest.mark.parametrize("source", [{"text": "a"}, b"bytes", 42], ids=["dict", "bytes", "int"])
def test_what_is_not_rows_is_refused_with_what_to_give(source: object) -> None:
    with pytest.raises(ConfigurationError, match="give a path"):
        open_rows(source)


def test_an_unknown_suffix_is_refused_with_the_ones_read(tmp_path: Path) -> None:
    path = tmp_path / "d.xlsx"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"\.parquet, \.csv, \.tsv, \.jsonl"):
        open_rows(path)
