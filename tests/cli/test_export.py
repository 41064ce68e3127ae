"""``motio export`` end to end: real subprocesses, real Parquet/CSV/JSONL files made with pyarrow.

What the join itself does (types, clashes, ids, memory) is tested on
``motio.data.export`` in tests/data/test_export.py; these tests hold the
command to its word: formats by suffix, the report on stderr, one-line
errors with exit 2 and nothing written, and a real ``motio run`` (stopped by
``kill -9``, then resumed) joined back onto its Parquet dataset in order.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import write_jsonl, write_parquet
from tests.servers.scripted import Ok, RequestRecord, ok, running, stall_after

from .conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    run_motio,
    start_motio,
    wait_for_results,
)

INVALID = "$.label: 'meh' is not one of ['pos', 'neg']"
REVIEWS = [
    {"review": "r1", "text": "great phone, love it", "stars": 5},
    {"review": "r2", "text": "broke after a day", "stars": 1},
    {"review": "r3", "text": "does the job", "stars": 3},
    {"review": "r4", "text": "great value", "stars": 4},
    {"review": "r5", "text": "awful battery", "stars": 2},
]


def result(ident: Any, parsed: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """A result line as ``motio run --json-schema`` writes it (the fields export reads and more)."""
    output = None if parsed is None else json.dumps(parsed)
    line: dict[str, Any] = {"id": ident, "output": output, "finish_reason": "stop", "latency_ms": 1.0}
    if parsed is not None:
        line["parsed"] = parsed
    line["error"] = None if error is None else {"type": "InvalidOutput", "message": error}
    return line


def label(text: str) -> dict[str, Any]:
    return {"label": "neg" if "broke" in text or "awful" in text else "pos"}


def partial_results(path: Path, column: str = "review") -> Path:
    """r4, r2 (failed), r1, in completion order; r3 and r5 never answered."""
    by_id = {row[column]: row for row in REVIEWS}
    lines = [
        result(by_id["r4"][column], label(by_id["r4"]["text"])),
        result(by_id["r2"][column], None, error=INVALID),
        result(by_id["r1"][column], label(by_id["r1"]["text"])),
    ]
    return write_jsonl(path, lines)


def labeled(row: dict[str, Any], answered: bool) -> dict[str, Any]:
    """``row`` as the export writes it from partial_results (``answered``: it has a success)."""
    if row["review"] == "r2":
        return {**row, "output": None, "label": None, "error": f"InvalidOutput: {INVALID}"}
    if not answered:
        return {**row, "output": None, "label": None, "error": None}
    answer = label(row["text"])
    return {**row, "output": json.dumps(answer), **answer, "error": None}


# r1, r2 and r4 have a result line; r3 and r5 none.
EXPECTED = [labeled(row, row["review"] in ("r1", "r4")) for row in REVIEWS]
REPORT = "wrote 5 rows to {}: 2 answered, 1 failed, 2 missing"


def read_table(path: Path) -> list[dict[str, Any]]:
    """The exported rows, as typed values (CSV cells are text: numbers and empty cells converted back)."""
    suffix = path.suffix
    if suffix == ".parquet":
        return list(pq.read_table(path).to_pylist())
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as file:
        return [{key: _cell(key, value) for key, value in row.items()} for row in csv.DictReader(file)]


def _cell(key: str, value: str) -> Any:
    if value == "":
        return None
    return int(value) if key == "stars" else value


def export(*args: str | Path) -> tuple[int, str]:
    done = run_motio("export", *args)
    assert_clean(done.stderr)
    assert done.stdout == ""  # the table goes to its file, the report to stderr
    return done.returncode, done.stderr


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_partial_run_joined_onto_a_parquet_dataset_in_its_order(tmp_path: Path, suffix: str) -> None:
    dataset = write_parquet(tmp_path / "data.parquet", REVIEWS, row_group_size=2)
    results = partial_results(tmp_path / "out.jsonl")
    table = tmp_path / f"labeled{suffix}"
    code, err = export(results, "--to", table, "--join", dataset, "--id-column", "review")
    assert code == 0, err
    assert REPORT.format(table) in err
    assert "run motio run again" in err  # the missing rows: how to finish them
    rows = read_table(table)
    assert rows == EXPECTED
    assert [list(row) for row in rows] == [["review", "text", "stars", "output", "label", "error"]] * 5
    if suffix == ".parquet":  # the dataset's own types are kept
        assert pq.read_schema(table).field("stars").type == pa.int64()


def test_a_csv_dataset_with_row_number_ids(tmp_path: Path) -> None:
    dataset = tmp_path / "data.csv"
    with open(dataset, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, ["review", "text", "stars"])
        writer.writeheader()
        writer.writerows(REVIEWS)
    # Without --id-column a row's id is line-N (N its number, the header not counted).
    numbered = [{**row, "line": f"line-{n}"} for n, row in enumerate(REVIEWS, start=1)]
    results = write_jsonl(
        tmp_path / "out.jsonl",
        [result(row["line"], label(row["text"])) for row in reversed(numbered)],
    )
    code, err = export(results, "--to", tmp_path / "labeled.parquet", "--join", dataset)
    assert code == 0, err
    assert "wrote 5 rows" in err and "5 answered, 0 failed, 0 missing" in err
    rows = pq.read_table(tmp_path / "labeled.parquet").to_pylist()
    # CSV cells stay the text they are ("5", not 5): nothing is guessed.
    assert rows == [
        {**row, "stars": str(row["stars"]), "output": json.dumps(answer), **answer, "error": None}
        for row, answer in ((row, label(row["text"])) for row in REVIEWS)
    ]


def test_without_join_the_results_alone(tmp_path: Path) -> None:
    results = partial_results(tmp_path / "out.jsonl")
    code, err = export(results, "--to", tmp_path / "results.jsonl")
    assert code == 0, err
    assert "wrote 3 rows" in err and "2 answered, 1 failed, 0 missing" in err
    rows = read_table(tmp_path / "results.jsonl")
    assert [list(row) for row in rows] == [["id", "output", "label", "error"]] * 3
    assert [(row["id"], row["label"], row["error"] is None) for row in rows] == [
        ("r4", "pos", True),
        ("r2", None, False),
        ("r1", "pos", True),
    ]


def test_the_schema_names_every_parsed_column_in_its_order(tmp_path: Path) -> None:
    dataset = write_parquet(tmp_path / "data.parquet", REVIEWS)
    results = partial_results(tmp_path / "out.jsonl")
    schema = tmp_path / "label.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"reason": {"type": "string"}, "label": {"enum": ["pos", "neg"]}},
                "required": ["label"],
            }
        ),
        encoding="utf-8",
    )
    table = tmp_path / "labeled.parquet"
    args = ("--to", table, "--join", dataset, "--id-column", "review", "--json-schema", schema)
    code, err = export(results, *args)
    assert code == 0, err
    assert pq.read_schema(table).names == ["review", "text", "stars", "output", "reason", "label", "error"]
    assert pq.read_table(table).to_pylist() == [{**row, "reason": None} for row in EXPECTED]


@pytest.mark.parametrize("which", ["results", "join", "results-symlink", "join-symlink"])
def test_the_table_is_never_one_of_its_inputs(tmp_path: Path, which: str) -> None:
    dataset = write_jsonl(tmp_path / "data.jsonl", REVIEWS)
    results = partial_results(tmp_path / "out.jsonl")
    target = results if which.startswith("results") else dataset
    if which.endswith("symlink"):
        alias = tmp_path / f"alias{target.suffix}"
        alias.symlink_to(target)
        target = alias
    before = {path: path.read_bytes() for path in (results, dataset)}
    code, err = export(results, "--to", target, "--join", dataset, "--id-column", "review")
    assert code == 2
    assert "refusing to overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert {path: path.read_bytes() for path in (results, dataset)} == before
    files = sorted(path.name for path in tmp_path.iterdir() if not path.is_symlink())
    assert files == ["data.jsonl", "out.jsonl"]


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("no-results", "results file '{tmp}/missing.jsonl' not found"),
        ("no-dataset", "dataset (--join) '{tmp}/missing.parquet' not found"),
        ("no-folder", "folder '{tmp}/nowhere' not found"),
        ("suffix", "cannot write '.xlsx'"),
        ("id-column", "the column 'key' named by id_column is not in the data"),
        ("not-parquet", "cannot read {tmp}/fake.parquet"),
        ("not-results", "line 1 is not a result line: not a motio results file"),
    ],
)
def test_an_unusable_path_is_one_line_and_exit_2_with_nothing_written(
    tmp_path: Path, problem: str, message: str
) -> None:
    dataset = write_parquet(tmp_path / "data.parquet", REVIEWS)
    results = partial_results(tmp_path / "out.jsonl")
    (tmp_path / "fake.parquet").write_text("not parquet\n", encoding="utf-8")
    to, join, extra = tmp_path / "labeled.csv", dataset, ["--id-column", "review"]
    if problem == "no-results":
        results = tmp_path / "missing.jsonl"
    elif problem == "no-dataset":
        join = tmp_path / "missing.parquet"
    elif problem == "no-folder":
        to = tmp_path / "nowhere" / "labeled.csv"
    elif problem == "suffix":
        to = tmp_path / "labeled.xlsx"
    elif problem == "id-column":
        extra = ["--id-column", "key"]
    elif problem == "not-parquet":
        join = tmp_path / "fake.parquet"
    elif problem == "not-results":
        results = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "r1", "prompt": "hi"}])
    before = sorted(path.name for path in tmp_path.iterdir())
    code, err = export(results, "--to", to, "--join", join, *extra)
    assert code == 2
    assert err.startswith("motio: error: ") and len(err.strip().splitlines()) == 1, err
    assert message.format(tmp=tmp_path) in err
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no table, no temporary file


def test_to_is_required_and_help_says_what_is_written() -> None:
    done = run_motio("export", "out.jsonl")
    assert done.returncode == 2 and "--to" in done.stderr
    helped = run_motio("export", "--help")
    assert helped.returncode == 0
    for words in ("--join", "--id-column", "--json-schema", ".parquet", "in the dataset's", "exit status"):
        assert words in helped.stdout, words
    assert "export" in run_motio("--help").stdout


# --- the check: a real run, killed, resumed, joined back -------------------


def answer(record: RequestRecord) -> Ok:
    """The server's answer: the label of the review in the prompt, as JSON."""
    return ok([json.dumps(label(record.prompt))])


def test_a_killed_then_resumed_run_joins_back_one_row_per_input_row_in_order(tmp_path: Path) -> None:
    dataset = write_parquet(tmp_path / "data.parquet", REVIEWS * 2, row_group_size=3)  # 10 rows
    # The prompts a template 'Classify the sentiment of: {text}' makes, with
    # the ids the dataset's rows get without --id-column: line-N.
    rows = pq.read_table(dataset).to_pylist()
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"id": f"line-{n}", "prompt": f"Classify the sentiment of: {row['text']}"}
            for n, row in enumerate(rows, start=1)
        ],
    )
    out, table = tmp_path / "out.jsonl", tmp_path / "labeled.parquet"

    # Two in flight: rows 1 and 3 are answered, rows 2 and 4 stall; then kill -9.
    with running(default=stall_after(1)) as server:
        server.rule = lambda r: answer(r) if r.prompt.endswith(("love it", "does the job")) else None
        proc = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        wait_for_results(out, 2, proc)
        server.wait_for(lambda s: len(s.chat_requests) == 4, EVENT_TIMEOUT)
        proc.kill()
        finish(proc)
    code, err = export(out, "--to", table, "--join", dataset)
    assert code == 0, err
    assert "wrote 10 rows" in err and "2 answered, 0 failed, 8 missing" in err
    partial = pq.read_table(table).to_pylist()
    assert [list(row) for row in partial] == [["review", "text", "stars", "output", "error"]] * 10
    assert [row["output"] for row in partial] == ['{"label": "pos"}', None, '{"label": "pos"}', *[None] * 7]

    with running() as server:
        server.rule = answer
        resumed = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert resumed.returncode == 0, resumed.stderr
        assert len(server.chat_requests) == 8  # only the rows without an answer
    assert sorted(line["id"] for line in complete_lines(out)) == sorted(f"line-{n}" for n in range(1, 11))

    code, err = export(out, "--to", table, "--join", dataset)
    assert code == 0, err
    assert "wrote 10 rows" in err and "10 answered, 0 failed, 0 missing" in err
    # The run had no --json-schema: the answers are in output (JSON text), no parsed columns.
    assert pq.read_table(table).to_pylist() == [
        {**row, "output": json.dumps(label(row["text"])), "error": None} for row in rows
    ]
