"""``motio.batch.run(..., template=...)``: a list of dicts, a pyarrow.Table, a datasets.Dataset, a file.

Against the scripted server (its default answer echoes the last user
message), through a real ``OpenAIBackend``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motio import ConfigurationError, MissingColumn, batch
from motio.backends import OpenAIBackend
from tests.servers.scripted import ScriptedServer

ROWS = [{"key": "a", "text": "sunny day"}, {"key": "b", "text": "rainy night"}, {"key": "c", "text": "foggy dawn"}]


@pytest.fixture
def backend(server: ScriptedServer) -> Iterator[OpenAIBackend]:
    made = OpenAIBackend(base_url=server.base_url, max_concurrency=4)
    try:
        yield made
    finally:
        made.close()


def outputs(results: Any) -> dict[Any, str]:
    return {result["id"]: result["output"] for result in results}


def test_a_list_of_dicts_with_a_template_gives_line_ids(backend: OpenAIBackend) -> None:
    got = outputs(batch.run(ROWS, backend, template="Describe: {text}"))
    assert got == {f"line-{i + 1}": f"echo: Describe: {row['text']}" for i, row in enumerate(ROWS)}


def test_a_pyarrow_table_with_system_and_id_column(backend: OpenAIBackend, server: ScriptedServer) -> None:
    table = pa.Table.from_pylist(ROWS)
    got = outputs(batch.run(table, backend, template="{text}", system="Be terse.", id_column="key"))
    assert got == {row["key"]: f"echo: {row['text']}" for row in ROWS}
    assert all(r.body["messages"][0] == {"role": "system", "content": "Be terse."} for r in server.chat_requests)
    assert len(server.chat_requests) == len(ROWS)


def test_a_hugging_face_dataset(backend: OpenAIBackend) -> None:
    datasets = pytest.importorskip("datasets")
    got = outputs(batch.run(datasets.Dataset.from_list(ROWS), backend, template="{text}", id_column="key"))
    assert got == {row["key"]: f"echo: {row['text']}" for row in ROWS}


def test_a_parquet_path_resumes_from_its_results_file(
    backend: OpenAIBackend, server: ScriptedServer, tmp_path: Path
) -> None:
    data, out = tmp_path / "d.parquet", tmp_path / "out.jsonl"
    pq.write_table(pa.Table.from_pylist(ROWS), data)
    first = list(batch.run(data, backend, template="{text}", output=out))
    again = list(batch.run(str(data), backend, template="{text}", output=out))
    assert sorted(r["id"] for r in first) == ["line-1", "line-2", "line-3"] and again == []
    assert len(server.chat_requests) == len(ROWS)


def test_arun_takes_a_template_too(backend: OpenAIBackend) -> None:
    async def collect() -> dict[Any, str]:
        return outputs([r async for r in batch.arun(ROWS, backend, template="{key}: {text}", id_column="key")])

    assert asyncio.run(collect()) == {row["key"]: f"echo: {row['key']}: {row['text']}" for row in ROWS}


def test_a_missing_column_raises_before_any_request(backend: OpenAIBackend, server: ScriptedServer) -> None:
    with pytest.raises(MissingColumn) as caught:
        list(batch.run(pa.Table.from_pylist(ROWS), backend, template="{txt}"))
    assert caught.value.column == "txt" and caught.value.columns == ("key", "text")
    with pytest.raises(MissingColumn, match="'id'"):
        list(batch.run(ROWS, backend, template="{text}", id_column="id"))
    assert server.chat_requests == []


def test_dataset_arguments_without_a_template_are_refused(backend: OpenAIBackend, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="template="):
        list(batch.run(ROWS, backend, system="s"))
    with pytest.raises(ConfigurationError, match="template="):
        list(batch.run(pa.Table.from_pylist(ROWS), backend))
    with pytest.raises(ConfigurationError, match="template="):
        list(batch.run(tmp_path / "d.csv", backend))


def test_prompt_lines_still_run_as_before(backend: OpenAIBackend) -> None:
    got = outputs(batch.run(["hello", {"id": "x", "prompt": "there"}], backend))
    assert got == {"line-1": "echo: hello", "x": "echo: there"}
