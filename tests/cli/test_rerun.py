"""A server dying mid-stream, or serving another model, fails no prompt another server can answer.

Real ``motio run`` subprocesses against scripted servers; the servers that
die run as their own processes (``python -m tests.servers.scripted``) and
are killed with ``kill -9`` while prompts stream from them. Each test ends
with every id exactly once and each output the whole answer to its own
prompt: a re-run writes the last run's text, never a mix of two.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.servers.scripted import RequestRecord, drop_after, running, stall_after, status

from .conftest import (
    EVENT_TIMEOUT,
    REPO,
    assert_clean,
    complete_lines,
    finish,
    motio_env,
    run_motio,
    start_motio,
    wait_for_results,
)

# A server process whose answers stream a token every 50 ms (the echo
# answer: one token per word of the prompt), long against the time to the
# first token, so that most streams in flight when it is killed are
# mid-answer (re-runs, not failovers).
STREAMING = ("--token-time", "0.05")


def prompt_text(i: int) -> str:
    """Prompt ``p{i}``: 10 to 22 distinct words. The lengths differ so that
    the streams in flight do not start and end in lockstep: a kill then
    always finds many of them mid-answer, never all at their first token."""
    return f"number{i} " + " ".join(f"w{i}.{k}" for k in range(9 + (i * 7) % 13))


def write_long_prompts(path: Path, count: int) -> Path:
    """``count`` prompts, ids p0.. (see ``prompt_text``)."""
    lines = [json.dumps({"id": f"p{i}", "prompt": prompt_text(i)}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_output(prompt_id: str) -> str:
    return "echo: " + prompt_text(int(prompt_id[1:]))


def assert_every_answer_whole(out: Path, count: int) -> list[dict[str, Any]]:
    """Every id once, each with the full answer to its own prompt."""
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    wrong = [line for line in lines if line["error"] or line["output"] != expected_output(line["id"])]
    assert not wrong, wrong[:3]
    assert all("partial_output" not in line for line in lines)
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process(*args: str, port: int = 0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A scripted server in its own process (so ``kill -9`` is a real crash); its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.scripted", "--port", str(port), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=motio_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "PORT <n>" once listening; bounded by the server's own start
        assert line.startswith("PORT"), line
        yield proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        kill_9(proc)


def kill_9(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(EVENT_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


def reruns_in(stderr: str) -> int:
    found = re.search(r"re-run after a broken stream: (\d+)", stderr)
    assert found, stderr
    return int(found.group(1))


# -- a server killed mid-stream -----------------------------------------------------------


def test_a_server_killed_mid_stream_among_two_fails_no_prompt(tmp_path: Path) -> None:
    count = 1000
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with server_process(*STREAMING) as (_, first), server_process(*STREAMING) as (doomed, second):
        run = start_motio("run", prompts, "-o", out, "--base-url", first, "--base-url", second, "-c", "48")
        try:
            # Both servers are streaming, each prompt 10 to 22 tokens of 50 ms.
            wait_for_results(out, 150, run)
            kill_9(doomed)
        finally:
            code, _, err = finish(run)
    assert code == 0, err
    assert_clean(err)
    lines = assert_every_answer_whole(out, count)
    rerun = [line for line in lines if line["attempts"] > 1]
    assert rerun, "no prompt was streaming from the killed server"
    assert reruns_in(err) == sum(line["attempts"] - 1 for line in lines)
    assert all(line["attempts"] == 1 for line in lines if line not in rerun)


def test_the_python_api_reruns_what_a_killed_server_was_streaming(tmp_path: Path) -> None:
    from motio import batch
    from motio.backends import OpenAIBackend

    count = 400
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with server_process(*STREAMING) as (_, first), server_process(*STREAMING) as (doomed, second):
        backend = OpenAIBackend(base_url=[first, second], max_concurrency=32)
        try:
            yielded = []
            for result in batch.run(prompts, backend, output=out):
                yielded.append(result)
                if len(yielded) == 100:
                    kill_9(doomed)
        finally:
            backend.close()
    lines = assert_every_answer_whole(out, count)
    assert sorted(line["id"] for line in yielded) == sorted(line["id"] for line in lines)
    assert any(line["attempts"] > 1 for line in lines), "no prompt was streaming from the killed server"


def test_a_single_server_killed_mid_stream_stops_the_run_and_the_resume_finishes(tmp_path: Path) -> None:
    count = 300
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    port = free_port()
    with server_process(*STREAMING, port=port) as (server, url):
        run = start_motio("run", prompts, "-o", out, "--base-url", url, "-c", "32")
        try:
            wait_for_results(out, 50, run)
            kill_9(server)  # no other server: nothing to re-run on
        finally:
            code, _, err = finish(run)
    assert code == 3, err
    assert "run the same command again to resume" in err
    written = complete_lines(out)
    assert written and all(line["error"] is None for line in written)  # abandoned, not failed
    with server_process(*STREAMING, port=port):  # the server is back
        again = run_motio("run", prompts, "-o", out, "--base-url", url, "-c", "32")
    assert again.returncode == 0, again.stderr
    assert_every_answer_whole(out, count)


def test_a_stream_broken_on_a_single_live_server_runs_again_there(tmp_path: Path) -> None:
    count = 30
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    broken: set[str] = set()
    lock = threading.Lock()

    def break_once(record: RequestRecord) -> Any:
        # Every third prompt's first run is cut after 3 tokens; the server stays up.
        with lock:
            if int(record.prompt.split()[0][6:]) % 3 or record.prompt in broken:
                return None
            broken.add(record.prompt)
        return drop_after(3)

    with running(rule=break_once) as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "8")
        dropped = [r for r in server.chat_requests if r.chunks == 3 and r.status == 200 and r.disconnected]
    assert done.returncode == 0, done.stderr
    lines = assert_every_answer_whole(out, count)
    again = {line["id"] for line in lines if line["attempts"] == 2}
    assert again == {f"p{i}" for i in range(0, count, 3)}
    assert reruns_in(done.stderr) == len(again) and len(dropped) <= len(again)


def test_a_stream_stalled_mid_answer_runs_again_on_the_other_server(tmp_path: Path) -> None:
    count = 8
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    # Every stream on the stalling server goes quiet after 2 tokens (it
    # still answers /models, so it stays in rotation): chunk_timeout ends it.
    with running() as healthy, running(default=stall_after(2)) as stalling:
        done = run_motio(
            *("run", prompts, "-o", out, "-c", "4", "--chunk-timeout", "1"),
            *("--base-url", stalling.base_url, "--base-url", healthy.base_url),
        )
        stalled = {r.prompt for r in stalling.chat_requests}
        answered = Counter(r.prompt for r in healthy.chat_requests if r.status == 200)
    assert done.returncode == 0, done.stderr
    lines = assert_every_answer_whole(out, count)
    assert stalled and all(answered[prompt] == 1 for prompt in stalled)
    by_prompt = {prompt_text(int(line["id"][1:])): line for line in lines}
    assert all(by_prompt[prompt]["attempts"] == 2 for prompt in stalled)
    assert reruns_in(done.stderr) == len(stalled)


def test_an_openai_batch_line_that_ran_again_has_the_last_runs_body(tmp_path: Path) -> None:
    count = 12
    own = write_long_prompts(tmp_path / "own.jsonl", count)
    prompts, out = tmp_path / "batch.jsonl", tmp_path / "out.jsonl"
    requests = []
    for line in own.read_text().splitlines():
        record = json.loads(line)
        body = {"model": "scripted-model", "messages": [{"role": "user", "content": record["prompt"]}]}
        request = {"custom_id": record["id"], "method": "POST", "url": "/v1/chat/completions"}
        requests.append({**request, "body": body})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in requests))
    cut: set[str] = set()

    def cut_first_run_of_p4(record: RequestRecord) -> Any:
        if record.prompt.startswith("number4 ") and not cut:
            cut.add(record.prompt)
            return drop_after(5)
        return None

    with running(rule=cut_first_run_of_p4) as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    lines = {line["custom_id"]: line for line in complete_lines(out)}
    assert sorted(lines) == sorted(f"p{i}" for i in range(count))
    for custom_id, line in lines.items():
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected_output(custom_id) and line["error"] is None
        assert line.get("attempts") == (2 if custom_id == "p4" else None)
    assert reruns_in(done.stderr) == 1


# -- a server that serves another model --------------------------------------------------------


def not_my_model(server_models: list[str]) -> Any:
    """A rule: 404 "model not found" for any model the server does not list now."""

    def rule(record: RequestRecord) -> Any:
        if record.model in server_models:
            return None
        message = f"The model `{record.model}` does not exist."
        error = {"message": message, "type": "NotFoundError", "code": 404}
        return status(404, body={"error": error})

    return rule


def test_a_server_with_another_model_is_left_out_at_start(tmp_path: Path) -> None:
    count = 60
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running() as good, running(models=["other-model"], rule=not_my_model(["other-model"])) as wrong:
        done = run_motio("run", prompts, "-o", out, "--base-url", good.base_url, "--base-url", wrong.base_url)
        served = len(good.chat_requests), len(wrong.chat_requests)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and wrong.base_url in warnings[0], done.stderr
    assert "does not serve the model" in warnings[0] and "other-model" in warnings[0]
    assert served == (count, 0)
    assert_every_answer_whole(out, count)


def test_every_server_with_another_model_exits_3(tmp_path: Path) -> None:
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    with running(models=["a"]) as one, running(models=["b"]) as two:
        done = run_motio(
            "run", prompts, "-o", out, "--model", "m", "--base-url", one.base_url, "--base-url", two.base_url
        )
    assert done.returncode == 3, done.stderr
    assert "none of the 2 servers answers" in done.stderr and "does not list model 'm'" in done.stderr
    assert not out.exists()


def test_a_server_switching_to_another_model_mid_run_fails_no_prompt(tmp_path: Path) -> None:
    count = 300
    prompts, out = write_long_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    models = ["scripted-model"]
    serve_it = not_my_model(models)
    switched = threading.Event()

    def switch_after_20(record: RequestRecord) -> Any:
        # Restarted with another model after its 20th request: /models and
        # chat completions both say so from then on.
        if record.index >= 20 and not switched.is_set():
            models[:] = ["other-model"]
            switching.models = ("other-model",)
            switched.set()
        return serve_it(record)

    with running(token_time=0.005) as good, running(token_time=0.005, rule=switch_after_20) as switching:
        # Racing off: a straggler's second request is not a failover, and
        # would count twice here (a racer's avoided server is only a
        # preference: with the other out of rotation it may land on its own).
        done = run_motio(
            *("run", prompts, "-o", out, "-c", "4", "--hedge-budget", "0"),
            *("--base-url", good.base_url, "--base-url", switching.base_url),
        )
        refused = [r for r in switching.chat_requests if r.status == 404]
        answered = Counter(r.prompt for r in good.chat_requests if r.status == 200)
    assert switched.is_set()
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    lines = assert_every_answer_whole(out, count)
    # At most the requests already routed to it when it switched meet the 404;
    # each went at once to the other server, and the server left rotation.
    assert 1 <= len(refused) <= 4, len(refused)
    assert all(answered[r.prompt] == 1 for r in refused)
    assert sum(1 for line in lines if line["retries"]) == len(refused)



def test_the_progress_bar_shows_reruns_once_there_are_some() -> None:
    from motio.batch import RunStats
    from motio.cli._progress import _RichProgress

    stats = RunStats(total=2)
    bar = _RichProgress(stats)
    bar.update()
    assert bar._bar.tasks[0].fields["reruns"] == ""
    stats.record({"id": "a", "output": "x", "error": None, "attempts": 3})
    bar.update()
    assert bar._bar.tasks[0].fields["reruns"] == "2 re-run"
