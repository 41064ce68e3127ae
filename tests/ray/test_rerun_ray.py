"""``motio run --ray``: a server killed mid-stream fails no prompt another server can answer.

The Ray workers run the batch engine, so a prompt whose stream broke on the
killed server is run again from its start inside the worker that had it,
preferring the surviving server; the driver only writes what comes back.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import assert_clean, finish, start_motio, wait_for_results
from tests.cli.test_rerun import (
    STREAMING,
    assert_every_answer_whole,
    kill_9,
    reruns_in,
    server_process,
    write_long_prompts,
)


def test_a_server_killed_mid_stream_under_ray_fails_no_prompt(tmp_path: Path, ray_address: str) -> None:
    count = 1000
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with server_process(*STREAMING) as (_, first), server_process(*STREAMING) as (doomed, second):
        run = start_motio(
            *("run", prompts, "-o", out, "-c", "32", "--base-url", first, "--base-url", second),
            *(f"--ray={ray_address}", "--workers", "2"),
        )
        try:
            wait_for_results(out, 150, run)
            kill_9(doomed)
        finally:
            code, _, err = finish(run)
    assert code == 0, err
    assert_clean(err)
    lines = assert_every_answer_whole(out, count)
    assert any(line["attempts"] > 1 for line in lines), "no prompt was streaming from the killed server"
    assert reruns_in(err) == sum(line["attempts"] - 1 for line in lines)
