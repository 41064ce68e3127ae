"""``motio run DATA --template ...``: Parquet, CSV, TSV and JSONL rows as prompts.

Real ``motio run`` subprocesses against the scripted server, whose default
answer echoes the last user message: each output shows the prompt its row
was made into.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.test_imports import loaded_after
from tests.servers.scripted import ScriptedServer, running

from .conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    run_motio,
    start_motio,
    wait_for_results,
)

TEXTS = ["great film", "dull plot", "fine, I guess"]


def write_dataset(folder: Path, suffix: str, texts: list[str] = TEXTS) -> Path:
    """A dataset of ``texts`` (column ``text``) and keys ``k0``.. (column ``key``), in the format ``suffix`` says."""
    keys = [f"k{i}" for i in range(len(texts))]
    path = folder / f"reviews{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"key": keys, "text": texts, "stars": list(range(len(texts)))}), path)
    elif suffix == ".jsonl":
        rows = (json.dumps({"key": k, "text": t, "stars": i}) for i, (k, t) in enumerate(zip(keys, texts)))
        path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    else:
        sep = "\t" if suffix == ".tsv" else ","
        body = "".join(f'{k}{sep}"{t}"{sep}{i}\n' for i, (k, t) in enumerate(zip(keys, texts)))
        path.write_text(f"key{sep}text{sep}stars\n" + body, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl"])
def test_every_row_becomes_its_prompt_under_a_line_id(tmp_path: Path, server: ScriptedServer, suffix: str) -> None:
    data, out = write_dataset(tmp_path, suffix), tmp_path / "out.jsonl"
    done = run_motio("run", data, "-o", out, "--base-url", server.base_url, "--template", "Rate: {text} ({stars})")
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    by_id = {line["id"]: line for line in complete_lines(out)}
    # line-N from the row's number: the JSONL line number, the CSV row after the header.
    assert by_id == {f"line-{i + 1}": by_id[f"line-{i + 1}"] for i in range(len(TEXTS))}
    for i, text in enumerate(TEXTS):
        assert by_id[f"line-{i + 1}"]["output"] == f"echo: Rate: {text} ({i})"
        assert by_id[f"line-{i + 1}"]["error"] is None
    assert f"{len(TEXTS)} of {len(TEXTS)} prompts" in done.stderr


def test_system_reaches_the_server_and_the_id_column_names_the_results(
    tmp_path: Path, server: ScriptedServer
) -> None:
    data, out = write_dataset(tmp_path, ".parquet"), tmp_path / "out.jsonl"
    template = tmp_path / "template.txt"
    template.write_text("Classify the sentiment of: {text}\n", encoding="utf-8")
    done = run_motio(
        "run", data, "-o", out, "--base-url", server.base_url, "--template-file", template,
        "--system", "Answer {positive} or {negative}.", "--id-column", "key",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outputs = {line["id"]: line["output"] for line in complete_lines(out)}
    assert outputs == {f"k{i}": f"echo: Classify the sentiment of: {t}" for i, t in enumerate(TEXTS)}
    sent = sorted((r.body["messages"] for r in server.chat_requests), key=lambda m: m[1]["content"])
    assert all(m[0] == {"role": "system", "content": "Answer {positive} or {negative}."} for m in sent)
    assert [m[1]["content"] for m in sent] == sorted(f"Classify the sentiment of: {t}" for t in TEXTS)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("flag", ["--template", "--id-column"])
def test_a_missing_column_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, server: ScriptedServer, suffix: str, flag: str
) -> None:
    data, out = write_dataset(tmp_path, suffix), tmp_path / "out.jsonl"
    args = ["--template", "Rate: {txt}"] if flag == "--template" else ["--template", "{text}", "--id-column", "ident"]
    done = run_motio("run", data, "-o", out, "--base-url", server.base_url, *args)
    assert done.returncode == 2, done.stderr
    missing = "'txt'" if flag == "--template" else "'ident'"
    assert missing in done.stderr and "'text'" in done.stderr and "'key'" in done.stderr
    assert_clean(done.stderr)
    assert server.requests == [] and not out.exists()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv"])
def test_a_dataset_file_without_a_template_is_a_usage_error(tmp_path: Path, suffix: str) -> None:
    data = write_dataset(tmp_path, suffix)
    done = run_motio("run", data, "-o", tmp_path / "out.jsonl", "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2 and "--template" in done.stderr, done.stderr


def test_dataset_flags_without_a_template_are_refused(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    done = run_motio("run", prompts, "-o", tmp_path / "o.jsonl", "--system", "s", "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2 and "--system" in done.stderr and "--template" in done.stderr, done.stderr


def test_a_repeated_id_in_the_id_column_is_reported_and_skipped(tmp_path: Path, server: ScriptedServer) -> None:
    data, out = tmp_path / "d.csv", tmp_path / "out.jsonl"
    data.write_text("key,text\na,one\nb,two\na,three\n", encoding="utf-8")
    done = run_motio("run", data, "-o", out, "--base-url", server.base_url, "--template", "{text}", "--id-column", "key")
    assert done.returncode == 1, done.stderr
    assert 'd.csv:3: duplicate id "a" (first used on line 1); skipped' in done.stderr
    assert sorted(line["output"] for line in complete_lines(out)) == ["echo: one", "echo: two"]


def test_kill_9_mid_run_on_parquet_then_the_rerun_answers_each_row_exactly_once(tmp_path: Path) -> None:
    count = 300
    texts = [f"row {i} says {'yes ' * (i % 7)}" .strip() for i in range(count)]
    data, out = write_dataset(tmp_path, ".parquet", texts), tmp_path / "out.jsonl"
    with running(token_time=0.01) as server:
        args = ("run", data, "-o", out, "--base-url", server.base_url, "-c", "16", "--template", "Say: {text}")
        proc = start_motio(*args)
        try:
            wait_for_results(out, 40, proc)
            proc.send_signal(signal.SIGKILL)
        finally:
            code, _, _ = finish(proc, timeout=EVENT_TIMEOUT)
        assert code == -signal.SIGKILL
        first = complete_lines(out)
        assert 40 <= len(first) < count
        again = run_motio(*args)
        assert again.returncode == 0, again.stderr
        assert f"{len(first)} already done" in again.stderr
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"line-{i + 1}" for i in range(count))
    assert all(line["output"] == f"echo: Say: {texts[int(line['id'][5:]) - 1]}" for line in lines)


def test_a_run_of_prompt_lines_or_a_jsonl_dataset_imports_no_optional_dependency(
    tmp_path: Path, server: ScriptedServer
) -> None:
    prompts, data = tmp_path / "p.jsonl", write_dataset(tmp_path, ".jsonl")
    prompts.write_text('{"prompt": "hi"}\n{"prompt": "there"}\n', encoding="utf-8")
    for source, extra in ((prompts, []), (data, ["--template", "{text}"])):
        argv = ["run", str(source), "-o", str(tmp_path / f"out-{source.stem}.jsonl"), "--base-url", server.base_url, "-q", *extra]
        assert loaded_after(f"from motio.cli import main; assert main({argv!r}) == 0") == []
