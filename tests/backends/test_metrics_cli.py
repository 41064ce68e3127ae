"""``motio run --metrics-url`` and ``--no-metrics``: real ``motio`` subprocesses
against the simulated vLLM server."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import assert_clean, complete_lines, run_motio, write_prompts
from tests.servers.vllm_sim import running_sim


def test_help_names_both_flags() -> None:
    done = run_motio("run", "--help")
    assert done.returncode == 0
    assert "--metrics-url URL" in done.stdout and "--no-metrics" in done.stdout


def test_metrics_url_and_no_metrics_together_is_a_usage_error(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 1)
    done = run_motio(
        "run", prompts, "-o", tmp_path / "out.jsonl", "--base-url", "http://127.0.0.1:1/v1",
        "--metrics-url", "http://127.0.0.1:1/metrics", "--no-metrics",
    )  # fmt: skip
    assert done.returncode == 2 and "--metrics-url and --no-metrics" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_one_metrics_url_per_server(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 1)
    done = run_motio(
        "run", prompts, "-o", tmp_path / "out.jsonl",
        "--base-url", "http://127.0.0.1:1/v1", "--base-url", "http://127.0.0.1:2/v1",
        "--metrics-url", "http://127.0.0.1:1/metrics",
    )  # fmt: skip
    assert done.returncode == 2 and "one http(s) URL per server" in done.stderr


def test_a_run_reads_the_given_page_or_none(tmp_path: Path) -> None:
    count = 200
    prompts = write_prompts(tmp_path / "p.jsonl", count, max_tokens=8)
    for flags in (["--metrics-url"], ["--no-metrics"]):
        out = tmp_path / f"out{len(flags[0])}.jsonl"
        with running_sim(slots=8) as sim:
            extra = [*flags, sim.metrics_url] if flags[0] == "--metrics-url" else flags
            done = run_motio(
                "run", prompts, "-o", out, "--base-url", sim.base_url, "--model", "sim-model", *extra
            )
            served = sim.stats()["served"]
        assert done.returncode == 0, done.stderr
        assert_clean(done.stderr)
        lines = complete_lines(out)
        assert len(lines) == count and all(line["error"] is None for line in lines)
        assert served == count
