"""export: results joined back onto their dataset, in input order, streaming, partial files included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motio import ConfigurationError, MissingColumn
from motio.batch import id_key
from motio.data import ExportReport, export
from motio.data._export import _id_key
from tests.cli.conftest import COMMAND_TIMEOUT, motio_env

from .conftest import write_jsonl, write_parquet


def result(
    ident: Any, output: str | None, parsed: Any = None, error: dict[str, str] | None = None
) -> dict[str, Any]:
    """A result line as motio run writes it (the fields export reads, and some it ignores)."""
    line = {"id": ident, "output": output, "finish_reason": "stop", "usage": None, "latency_ms": 1.0}
    if parsed is not None:
        line["parsed"] = parsed
    line["error"] = error
    return line


def write_results(path: Path, lines: list[dict[str, Any]], torn: bytes = b"") -> Path:
    write_jsonl(path, lines)
    with open(path, "ab") as file:
        file.write(torn)
    return path


def test_a_partial_run_joined_onto_its_parquet_in_input_order(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": f"review {i}", "stars": i} for i in range(6)]
    dataset = write_parquet(tmp_path / "d.parquet", rows, row_group_size=4)
    results = write_results(
        tmp_path / "out.jsonl",
        [  # completion order, not input order; r1 and r4 never ran; r3 failed
            result("r5", '{"label": "pos", "score": 5}', {"label": "pos", "score": 5}),
            result("r0", '{"label": "neg", "score": 1}', {"label": "neg", "score": 1}),
            result("r3", None, error={"type": "InvalidOutput", "message": "$.label: 'meh' is not one of"}),
            result("r2", '{"label": "pos", "score": 4}', {"label": "pos", "score": 4}),
        ],
        torn=b'{"id": "r4", "outp',  # kill -9 mid-write
    )
    report = export(results, tmp_path / "labeled.parquet", join=dataset, id_column="id")
    assert report == ExportReport(
        rows=6,
        answered=3,
        failed=1,
        missing=2,
        columns=["id", "text", "stars", "output", "label", "score", "error"],
    )
    table = pq.read_table(tmp_path / "labeled.parquet")
    assert table.schema.field("stars").type == pa.int64() and table.schema.field("score").type == pa.int64()
    assert table.to_pylist() == [
        {**rows[0], "output": '{"label": "neg", "score": 1}', "label": "neg", "score": 1, "error": None},
        {**rows[1], "output": None, "label": None, "score": None, "error": None},
        {**rows[2], "output": '{"label": "pos", "score": 4}', "label": "pos", "score": 4, "error": None},
        {
            **rows[3],
            "output": None,
            "label": None,
            "score": None,
            "error": "InvalidOutput: $.label: 'meh' is not one of",
        },
        {**rows[4], "output": None, "label": None, "score": None, "error": None},
        {**rows[5], "output": '{"label": "pos", "score": 5}', "label": "pos", "score": 5, "error": None},
    ]


def test_csv_in_csv_out_with_line_ids(tmp_path: Path) -> None:
    dataset = tmp_path / "d.csv"
    dataset.write_text('text,zip\n"a, b",00123\nc,00456\n', encoding="utf-8")
    results = write_results(tmp_path / "out.jsonl", [result("line-2", "C"), result("line-1", "AB")])
    export(results, tmp_path / "labeled.csv", join=dataset)
    assert (tmp_path / "labeled.csv").read_text(encoding="utf-8").splitlines() == [
        "text,zip,output,error",
        '"a, b",00123,AB,',
        "c,00456,C,",
    ]


def test_jsonl_in_parquet_out_takes_every_rows_keys(tmp_path: Path) -> None:
    dataset = write_jsonl(
        tmp_path / "d.jsonl", [{"q": "a"}, "", {"q": "b", "extra": 2.5}, {"q": "c", "extra": 1}]
    )
    results = write_results(
        tmp_path / "out.jsonl", [result("line-1", "x"), result("line-3", "y"), result("line-4", "z")]
    )
    export(results, tmp_path / "o.parquet", join=dataset)
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column_names == ["q", "extra", "output", "error"]
    assert table.schema.field("extra").type == pa.float64()
    assert table.to_pylist() == [
        {"q": "a", "extra": None, "output": "x", "error": None},
        {"q": "b", "extra": 2.5, "output": "y", "error": None},
        {"q": "c", "extra": 1.0, "output": "z", "error": None},
    ]


def test_without_a_dataset_one_row_per_id_and_a_success_outranks_an_earlier_error(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "out.jsonl",
        [
            result(2, None, error={"type": "ServerError", "message": "500"}),
            result("2", "text id"),  # another id: "2" is not 2
            result(1, "one"),
            result(2, "two"),  # the rerun with --retry-errors
            result(1, None, error={"type": "ServerError", "message": "later"}),  # never beats a success
        ],
    )
    report = export(results, tmp_path / "o.jsonl")
    assert (report.rows, report.answered, report.failed, report.missing) == (3, 3, 0, 0)
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"id": 2, "output": "two", "error": None},
        {"id": "2", "output": "text id", "error": None},
        {"id": 1, "output": "one", "error": None},
    ]


def test_answers_that_are_not_objects_go_to_one_parsed_column_as_json(tmp_path: Path) -> None:
    results = write_results(tmp_path / "out.jsonl", [result("a", "[1, 2]", [1, 2]), result("b", '"x"', "x")])
    export(results, tmp_path / "o.parquet")
    assert pq.read_table(tmp_path / "o.parquet").to_pylist() == [
        {"id": "a", "output": "[1, 2]", "parsed": "[1, 2]", "error": None},
        {"id": "b", "output": '"x"', "parsed": "x", "error": None},
    ]


def test_the_schema_orders_the_parsed_columns_and_a_clash_is_prefixed(tmp_path: Path) -> None:
    dataset = write_parquet(tmp_path / "d.parquet", [{"text": "t", "label": "gold"}])
    results = write_results(tmp_path / "out.jsonl", [result("line-1", "{}", {"score": 1, "label": "pos"})])
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "integer"}, "why": {}},
    }
    report = export(results, tmp_path / "o.jsonl", join=dataset, schema=schema)
    assert report.columns == ["text", "label", "output", "parsed.label", "score", "why", "error"]
    [line] = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert line == {
        "text": "t",
        "label": "gold",
        "output": "{}",
        "parsed.label": "pos",
        "score": 1,
        "why": None,
        "error": None,
    }


def test_jsonl_lines_have_their_keys_in_the_columns_order(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "out.jsonl",
        [result("a", "{}", {"label": "pos", "score": 2}), result("b", None, error={"type": "E", "message": "m"})],
    )
    report = export(results, tmp_path / "o.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert report.columns == ["id", "output", "label", "score", "error"]
    assert [list(line) for line in lines] == [report.columns, report.columns]


def test_an_input_column_named_like_an_added_one_is_refused(tmp_path: Path) -> None:
    dataset = write_parquet(tmp_path / "d.parquet", [{"text": "t", "output": "old"}])
    results = write_results(tmp_path / "out.jsonl", [result("line-1", "new")])
    with pytest.raises(ConfigurationError, match="already has a column 'output'"):
        export(results, tmp_path / "o.parquet", join=dataset)
    assert not (tmp_path / "o.parquet").exists()


def test_an_input_column_named_parsed_is_refused_when_answers_are_not_objects(tmp_path: Path) -> None:
    dataset = write_parquet(tmp_path / "d.parquet", [{"text": "t", "parsed": "mine"}])
    results = write_results(tmp_path / "out.jsonl", [result("line-1", "[1]", [1])])
    with pytest.raises(ConfigurationError, match="already has a column 'parsed'"):
        export(results, tmp_path / "o.csv", join=dataset)
    objects = write_results(tmp_path / "objects.jsonl", [result("line-1", "{}", {"a": 1})])
    assert export(objects, tmp_path / "o.csv", join=dataset).columns == [
        "text",
        "parsed",
        "output",
        "a",
        "error",
    ]


def test_a_failed_export_leaves_nothing_under_the_name(tmp_path: Path) -> None:
    dataset = write_parquet(tmp_path / "d.parquet", [{"text": "t"}])
    results = write_results(tmp_path / "out.jsonl", [result("line-1", "x")])
    with pytest.raises(MissingColumn, match="'key'"):
        export(results, tmp_path / "o.csv", join=dataset, id_column="key")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d.parquet", "out.jsonl"]


@pytest.mark.parametrize("which", ["results", "join", "results-symlink", "join-hardlink"])
def test_export_refuses_to_overwrite_its_own_input(tmp_path: Path, which: str) -> None:
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"text": "t"}])
    results = write_results(tmp_path / "out.jsonl", [result("line-1", "x")])
    target = {"results": results, "join": dataset}.get(which)
    if which == "results-symlink":
        target = tmp_path / "alias.jsonl"
        target.symlink_to(results)
    elif which == "join-hardlink":
        target = tmp_path / "linked.jsonl"
        os.link(dataset, target)
    before = {path: path.read_bytes() for path in (results, dataset)}
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        export(results, target, join=dataset)  # type: ignore[arg-type]
    assert {path: path.read_bytes() for path in (results, dataset)} == before


def test_what_is_not_a_results_file_is_refused(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ConfigurationError, match="line 1 is not a result line"):
        export(prompts, tmp_path / "o.jsonl")
    with pytest.raises(ConfigurationError, match="cannot write '.xlsx'"):
        export(prompts, tmp_path / "o.xlsx")


def test_openai_batch_results_are_exported_too(tmp_path: Path) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}
    results = write_results(
        tmp_path / "out.jsonl",
        [
            {
                "id": "batch_req_1",
                "custom_id": "a",
                "response": {"status_code": 200, "body": body},
                "error": None,
            },
            {
                "id": "batch_req_2",
                "custom_id": "b",
                "response": None,
                "error": {"code": "ServerError", "message": "boom"},
            },
        ],
    )
    export(results, tmp_path / "o.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"id": "a", "output": "hello", "error": None},
        {"id": "b", "output": None, "error": "ServerError: boom"},
    ]


@pytest.mark.parametrize("ident", [1, "1", "line-3", "é", -7], ids=repr)
def test_ids_are_matched_as_the_batch_engine_keys_them(ident: Any) -> None:
    assert _id_key(ident) == id_key(ident)


# The peak RSS of this process alone: VmHWM is reset by exec, whereas
# getrusage's ru_maxrss carries over the forked parent's (pytest's) peak.
_PEAK = """
import re, sys
from pathlib import Path
from motio.data import export
report = export(sys.argv[1], sys.argv[2], join=sys.argv[3], id_column="id")
assert report.answered == int(sys.argv[4]), report
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
"""


def _peak_kb(tmp_path: Path, rows: int) -> int:
    folder = tmp_path / str(rows)
    folder.mkdir()
    text = "a review of some length, " * 8
    write_parquet(folder / "d.parquet", [{"id": i, "text": text} for i in range(rows)], row_group_size=10_000)
    write_jsonl(folder / "out.jsonl", [result(i, f"answer {i} " * 10) for i in reversed(range(rows))])
    argv = [
        sys.executable,
        "-c",
        _PEAK,
        folder / "out.jsonl",
        folder / "o.parquet",
        folder / "d.parquet",
        str(rows),
    ]
    done = subprocess.run(
        list(map(str, argv)),
        capture_output=True,
        text=True,
        env=motio_env(),
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert pq.ParquetFile(folder / "o.parquet").metadata.num_rows == rows
    return int(done.stdout)


def test_memory_stays_flat_as_the_dataset_grows(tmp_path: Path) -> None:
    # 10x the rows: held in memory, 180,000 more results and rows would cost
    # over 100 MB more; streamed, the peak moves by the fixed buffers filling
    # up (a Parquet row group being written, SQLite's page cache), which
    # stops before 100,000 rows: 20k -> 200k rows measured 178 -> 192 MB.
    small, large = _peak_kb(tmp_path, 20_000), _peak_kb(tmp_path, 200_000)
    assert large - small < 30_000 and large < 1.25 * small, (small, large)  # kB


def test_a_pydantic_model_as_the_schema_names_the_parsed_columns(tmp_path: Path) -> None:
    # The README's Python example: export(..., schema=Label), Label a pydantic model.
    from tests.data.test_schema import Sentiment

    dataset = write_parquet(tmp_path / "d.parquet", [{"text": "good"}, {"text": "bad"}])
    results = write_results(tmp_path / "out.jsonl", [result("line-2", "{}", {"label": "neg"})])
    report = export(results, tmp_path / "o.parquet", join=dataset, schema=Sentiment)
    assert report.columns == ["text", "output", "label", "score", "error"]  # score: in no answer yet
    assert pq.read_table(tmp_path / "o.parquet").column("label").to_pylist() == [None, "neg"]
