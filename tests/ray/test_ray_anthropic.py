"""``motio run --backend anthropic --ray``: the Anthropic backend on real Ray workers.

Nothing of Ray is Anthropic's own: the workers rebuild the backend from its
recipe (key and ``anthropic-version`` included) and share its limits, as
they do the OpenAI backend's.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import assert_clean, motio_env, run_motio, write_prompts
from tests.servers.scripted import running

from .test_run_ray import each_id_once, echo_of, on_ray


def test_an_anthropic_batch_on_two_workers_and_two_servers(tmp_path: Path, ray_address: str) -> None:
    count = 200
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running(api_key="sk-ant-ray") as a, running(api_key="sk-ant-ray") as b:
        done = run_motio(
            "run", prompts, "-o", out, "--backend", "anthropic", "--model", "scripted-model",
            "--api-key-env", "RAY_ANTHROPIC_KEY", "--concurrency", "auto",
            *on_ray(ray_address, a.base_url, b.base_url),
            env=motio_env(RAY_ANTHROPIC_KEY="sk-ant-ray"),
        )  # fmt: skip
        seen = a.chat_requests + b.chat_requests
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = each_id_once(out, count)
    assert all(line["error"] is None and line["output"] == echo_of(line) for line in lines)
    assert len(seen) == count and all(r.anthropic and r.status == 200 for r in seen)
    assert {r.headers["x-api-key"] for r in seen} == {"sk-ant-ray"}
    assert {r.headers["anthropic-version"] for r in seen} == {"2023-06-01"}
    assert "ray: 2 workers" in done.stderr
