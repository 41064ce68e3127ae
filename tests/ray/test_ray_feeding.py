"""Feeding Ray workers: a few stragglers never hold back the rest of a batch.

A worker's shard returns only when its last prompt is answered. When the
driver counted a worker's places in shards, one held prompt pinned a whole
shard's place: with one in each of the first six shards (two workers,
three shards each), no shard was sent any more and the batch's last
prompts waited for the held ones (found by the racing test on CI, where
the held prompts' shards were a matter of the servers' ports). Counted in
prompts, the rest of the batch runs while they are held.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.cli.conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    start_motio,
    wait_for_results,
    write_prompts,
)
from tests.servers.scripted import Behaviour, RequestRecord, hold_after, ok, running

# -c 16 on 2 servers with 2 workers: shards of 16 prompts in file order; one held in each of the first six.
HELD = {f"Say the number {i}." for i in range(0, 96, 16)}


def test_held_prompts_in_every_shard_on_the_way_do_not_hold_back_the_rest(
    tmp_path: Path, ray_address: str
) -> None:
    count = 100
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"

    def rule(record: RequestRecord) -> Behaviour | None:
        return hold_after(1, max_wait=2 * EVENT_TIMEOUT) if record.prompt in HELD else ok()

    with running(rule=rule) as a, running(rule=rule) as b:
        proc = start_motio(
            "run", prompts, "-o", out, "--base-url", a.base_url, "--base-url", b.base_url, "-c", "16",
            f"--ray={ray_address}", "--workers", "2", "--no-prefix-routing", "--hedge-budget", "0",
        )  # fmt: skip
        try:
            # Every other prompt is answered while the six are still held.
            wait_for_results(out, count - len(HELD), proc)
            assert a.in_flight + b.in_flight == len(HELD)
            a.release()
            b.release()
        finally:
            code, _, err = finish(proc)
    assert code == 0, err
    assert_clean(err)
    assert Counter(line["id"] for line in complete_lines(out)) == Counter(f"p{i}" for i in range(count))
