"""``motio run --backend anthropic`` end to end against the scripted server's Anthropic mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers.scripted import running

from .conftest import assert_clean, complete_lines, motio_env, run_motio


@pytest.mark.parametrize("concurrency", ["1", "auto"])
def test_run_with_the_anthropic_backend(tmp_path: Path, concurrency: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "a", "messages": [{"role": "system", "content": "Be terse."}, '
        '{"role": "user", "content": "alpha"}], "max_tokens": 5}\n'
        '{"id": "b", "prompt": "beta", "temperature": 0.5}\n'
    )
    out = tmp_path / "out.jsonl"
    with running(api_key="sk-ant-cli") as server:
        done = run_motio(
            "run", "--backend", "anthropic", "--base-url", server.base_url, "--model", "scripted-model",
            "--api-key-env", "MY_ANTHROPIC_KEY", "--concurrency", concurrency, prompts, "-o", out,
            env=motio_env(MY_ANTHROPIC_KEY="sk-ant-cli"),
        )  # fmt: skip
        requests = {r.prompt: r for r in server.chat_requests}
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    by_id = {line["id"]: line for line in complete_lines(out)}
    assert by_id["a"]["output"] == "echo: alpha" and by_id["b"]["output"] == "echo: beta"
    for line in by_id.values():
        assert line["error"] is None and line["finish_reason"] == "stop" and line["model"] == "scripted-model"
        assert line["usage"]["completion_tokens"] == 2
    assert by_id["a"]["usage"]["prompt_tokens"] == 3  # "Be terse." and "alpha"
    first, second = requests["alpha"], requests["beta"]
    assert first.anthropic and first.path == "/v1/messages" and first.headers["x-api-key"] == "sk-ant-cli"
    assert first.body["system"] == "Be terse." and first.body["max_tokens"] == 5
    assert first.body["messages"] == [{"role": "user", "content": "alpha"}]
    assert "system" not in second.body and second.body["temperature"] == 0.5
    assert "authorization" not in first.headers
