"""``motio run DATA --template ... --ray``: a dataset's rows go to the workers as prompt lines' records do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.cli.conftest import assert_clean, complete_lines, run_motio
from tests.cli.test_run_dataset import write_dataset
from tests.servers.scripted import running


def test_a_parquet_dataset_runs_on_two_workers_each_row_once(tmp_path: Path, ray_address: str) -> None:
    count = 500
    texts = [f"row number {i}" for i in range(count)]
    data, out = write_dataset(tmp_path, ".parquet", texts), tmp_path / "out.jsonl"
    with running() as server:
        done = run_motio(
            "run", data, "-o", out, "--base-url", server.base_url, "--template", "Say: {text}",
            "--system", "Be brief.", "--id-column", "key", f"--ray={ray_address}", "--workers", "2",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert_clean(done.stderr)
        assert all(r.body["messages"][0] == {"role": "system", "content": "Be brief."} for r in server.chat_requests)
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"k{i}" for i in range(count))
    assert all(line["output"] == f"echo: Say: row number {line['id'][1:]}" for line in lines)
