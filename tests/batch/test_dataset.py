"""dataset_records: a dataset's rows become the same records as prompt lines, for the engine."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from motio.batch import InputProblem, PromptRecord, scan_prompts
from motio.batch._dataset import dataset_records
from motio.data import Template, open_rows


def test_rows_become_records_with_problems_and_repeated_ids_reported(tmp_path: Path) -> None:
    table = pa.table({"key": ["a", "b", None, "a", "c"], "text": ["one", "two", "three", "four", None]})
    pq.write_table(table, tmp_path / "d.parquet")
    template = Template("Say: {text}", system="Be brief.")
    with open_rows(tmp_path / "d.parquet", id_column="key", columns=template.fields) as rows:
        template.check(rows.columns)
        got = list(dataset_records(rows, template))
    system = {"role": "system", "content": "Be brief."}
    assert got[0] == PromptRecord("a", 1, [system, {"role": "user", "content": "Say: one"}], {})
    assert got[1] == PromptRecord("b", 2, [system, {"role": "user", "content": "Say: two"}], {})
    assert isinstance(got[2], InputProblem) and got[2].line == 3 and "'key'" in got[2].message
    assert got[3] == InputProblem(4, 'duplicate id "a" (first used on line 1); skipped')
    assert got[4] == PromptRecord("c", 5, [system, {"role": "user", "content": "Say: "}], {})
    assert got[0].key == '"a"'


def test_a_jsonl_dataset_gives_the_ids_and_messages_of_the_same_prompts_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "first"}\n\n{"prompt": "second"}\n', encoding="utf-8")
    with open_rows(path) as rows:
        records = list(dataset_records(rows, Template("{prompt}")))
    prompts = list(scan_prompts(path))
    assert [(r.id, r.line) for r in records] == [(p.id, p.line) for p in prompts]  # type: ignore[union-attr]
    assert [r.request for r in records] == [[{"role": "user", "content": p.request}] for p in prompts]  # type: ignore[union-attr]
