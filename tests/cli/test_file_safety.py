"""``motio run`` never damages a user's file, and its resume hint finishes the job.

Each case runs the real command in a subprocess against real loopback
servers, and checks the files' bytes (hashes before and after) where they
must not change, the exit status, and that the rerun the hint names
completes every id exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.scripted import running, stall_after

from .conftest import (
    ENTRY_POINTS,
    EVENT_TIMEOUT,
    REPO,
    assert_clean,
    complete_lines,
    finish,
    ids_of,
    motio_env,
    run_motio,
    signal_handled,
    start_motio,
    wait_for_results,
    write_prompts,
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prompts_without_final_newline(path: Path) -> Path:
    path.write_text(
        '{"id": "q1", "prompt": "first"}\n{"id": "q2", "prompt": "the last line, as editors save it"}'
    )
    return path


# -- 1, 2: -o naming a file that is not ours ------------------------------------------


def test_swapped_arguments_leave_the_prompts_file_untouched(tmp_path: Path) -> None:
    other = write_prompts(tmp_path / "other.jsonl", 2)
    precious = prompts_without_final_newline(tmp_path / "prompts.jsonl")
    before = digest(precious)
    done = run_motio("run", other, "-o", precious, "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2, done.stderr
    assert "not a motio results file" in done.stderr and "line 1" in done.stderr
    assert done.stderr.count("\n") == 1 and digest(precious) == before


@pytest.mark.parametrize(
    "content",
    [
        b"remember the milk",  # a note saved without its newline: not a torn result
        b'{"id": "q1", "prompt": "one prompt, as editors save it"}',
        json.dumps({"id": "p0", "output": "x", "error": None}).encode() + b"\n" + b"a line typed by hand\n",
    ],
    ids=["one-line-note", "one-prompt-line", "results-then-a-note"],
)
def test_a_file_that_is_not_a_results_file_is_refused_byte_for_byte(tmp_path: Path, content: bytes) -> None:
    prompts, foreign = write_prompts(tmp_path / "p.jsonl", 2), tmp_path / "notes.txt"
    foreign.write_bytes(content)
    before = digest(foreign)
    with running() as server:
        done = run_motio("run", prompts, "-o", foreign, "--base-url", server.base_url)
        assert len(server.chat_requests) == 0
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "not a motio results file" in done.stderr
    assert str(foreign) in done.stderr and "line " in done.stderr
    assert digest(foreign) == before


def test_a_torn_last_result_is_repaired_and_the_rerun_completes(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    out.write_bytes(json.dumps({"id": "p0", "output": "x", "error": None}).encode() + b'\n{"id": "p1", "outp')
    with running() as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert len(server.chat_requests) == 2
    assert done.returncode == 0, done.stderr
    assert "cut off a torn last line" in done.stderr
    assert sorted(ids_of(complete_lines(out))) == ["p0", "p1", "p2"] and out.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("how", ["hardlink", "symlink", "dot-path"])
def test_output_that_is_the_input_by_any_name_is_refused(tmp_path: Path, how: str) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    before = digest(prompts)
    alias = tmp_path / "alias.jsonl"
    if how == "hardlink":
        os.link(prompts, alias)
    elif how == "symlink":
        alias.symlink_to(prompts)
    else:
        alias = tmp_path / "." / "p.jsonl"
    done = run_motio("run", prompts, "-o", alias, "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2 and "must not be the prompts file" in done.stderr
    assert digest(prompts) == before


# -- 3: a server that dies mid-run ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server_process(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.scripted", "--port", str(port), "--token-time", "0.05"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=motio_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "PORT <n>" once listening; bounded by the server's own start
    assert line.startswith("PORT"), line
    return proc


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(EVENT_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_server_dying_mid_run_records_only_what_was_answered_and_the_rerun_finishes(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    prompts, out = write_prompts(tmp_path / "p.jsonl", 40), tmp_path / "out.jsonl"
    server = start_server_process(port)
    try:
        run = start_motio("run", prompts, "-o", out, "--base-url", base_url, "-c", "4")
        wait_for_results(out, 6, run)
        stop_server(server)  # dies mid-run
        code, _, err = finish(run)
    finally:
        stop_server(server)
    assert code == 3, err
    assert "run the same command again to resume" in err
    written = complete_lines(out)
    assert written and all(line["error"] is None for line in written), written  # abandoned != failed
    server = start_server_process(port)  # the server is back
    try:
        again = run_motio("run", prompts, "-o", out, "--base-url", base_url, "-c", "4")
    finally:
        stop_server(server)
    assert again.returncode == 0, again.stderr
    lines = complete_lines(out)
    assert sorted(ids_of(lines)) == sorted(f"p{i}" for i in range(40))  # each exactly once
    assert all(line["error"] is None for line in lines)


def test_a_server_dying_before_any_answer_leaves_no_results_file(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 5), tmp_path / "out.jsonl"
    with running(default=stall_after(1)) as server:
        run = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        server.wait_for(lambda s: len(s.chat_requests) == 2, EVENT_TIMEOUT)
        server.crash()
        code, _, err = finish(run, timeout=EVENT_TIMEOUT)
    assert code == 3, err
    assert "run the same command again to resume" in err and not out.exists()
    with running() as server:
        again = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert again.returncode == 0, again.stderr
    assert sorted(ids_of(complete_lines(out))) == [f"p{i}" for i in range(5)]


def test_ctrl_c_before_any_answer_leaves_no_results_file(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 5), tmp_path / "out.jsonl"
    with running(default=stall_after(1)) as server:
        run = start_motio("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "2")
        server.wait_for(lambda s: len(s.chat_requests) == 2, EVENT_TIMEOUT)
        run.send_signal(signal.SIGINT)
        code, _, err = finish(run, timeout=EVENT_TIMEOUT)
    assert code == 130, err
    assert_clean(err)
    assert not out.exists()


# -- 4: a server that accepts and never answers --------------------------------------


class SilentServer:
    """Accepts connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.accepted = threading.Event()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.listener.accept()[0])
                server.accepted.set()
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join(5)
    for sock in held:
        sock.close()
    server.listener.close()


def test_a_silent_server_fails_the_start_up_check_fast_with_exit_3(
    tmp_path: Path, silent: SilentServer
) -> None:
    silent_server = silent.url
    prompts, out = write_prompts(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    started = time.monotonic()
    done = run_motio(
        "run", prompts, "-o", out, "--base-url", silent_server, env=motio_env(MOTIO_STARTUP_TIMEOUT="1")
    )
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 20  # not the transport's 600 s
    assert "did not answer within 1 s" in done.stderr and silent_server in done.stderr
    assert done.stderr.count("\n") == 1 and not out.exists()


def test_ctrl_c_while_waiting_for_a_silent_server_is_exit_130(tmp_path: Path, silent: SilentServer) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    run = start_motio("run", prompts, "-o", out, "--base-url", silent.url)
    assert silent.accepted.wait(EVENT_TIMEOUT), "motio never connected"  # it is in its start-up check
    run.send_signal(signal.SIGINT)
    code, _, err = finish(run, timeout=EVENT_TIMEOUT)
    assert code == 130, err
    assert "0 of 0" not in err and "Traceback" not in err and not out.exists()


# -- 5: ids -------------------------------------------------------------------------------


def test_default_ids_never_collide_with_explicit_ones(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(f'{{"id": {i}, "prompt": "n{i}"}}\n' for i in range(1, 5)) + '{"prompt": "x"}\n'
    )
    out = tmp_path / "out.jsonl"
    with running() as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert sorted(map(str, ids_of(complete_lines(out)))) == ["1", "2", "3", "4", "line-5"]


def test_an_explicit_id_spelled_like_a_default_is_reported_on_the_later_line(tmp_path: Path) -> None:
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text('{"id": "line-2", "prompt": "a"}\n{"prompt": "b"}\n')
    with running() as server:
        done = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
    assert done.returncode == 1, done.stderr
    assert f'{prompts}:2: duplicate id "line-2" (first used on line 1)' in done.stderr
    assert [(line["id"], line["output"]) for line in complete_lines(out)] == [("line-2", "echo: a")]


def test_editing_the_prompts_file_between_runs_keeps_explicit_ids_stable(tmp_path: Path) -> None:
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text('{"id": "a", "prompt": "alpha"}\n{"prompt": "gamma"}\n')
    with running() as server:
        assert run_motio("run", prompts, "-o", out, "--base-url", server.base_url).returncode == 0
        # A line inserted on top: "a" is still done; the line without id moves
        # from line 2 to line 3, so its default id changes and it runs again.
        prompts.write_text('{"id": "new", "prompt": "beta"}\n' + prompts.read_text())
        again = run_motio("run", prompts, "-o", out, "--base-url", server.base_url)
        assert again.returncode == 0, again.stderr
        assert sorted(r.prompt for r in server.chat_requests) == ["alpha", "beta", "gamma", "gamma"]
    assert sorted(ids_of(complete_lines(out))) == ["a", "line-2", "line-3", "new"]


# -- 6, 8: nothing to do, nothing written ---------------------------------------------


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_input_says_so_loads_nothing_and_writes_nothing(tmp_path: Path, content: str) -> None:
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(content)
    # A model path that does not exist: loading it would fail with exit 2.
    done = run_motio("run", prompts, "-o", out, "--backend", "llamacpp", "--model", tmp_path / "none.gguf")
    assert done.returncode == 0, done.stderr
    assert "the prompts file is empty; nothing to do" in done.stderr and not out.exists()


def test_all_bad_lines_load_nothing_and_exit_1(tmp_path: Path) -> None:
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("not json\n{}\n")
    done = run_motio("run", prompts, "-o", out, "--backend", "llamacpp", "--model", tmp_path / "none.gguf")
    assert done.returncode == 1, done.stderr
    assert "p.jsonl:1" in done.stderr and "p.jsonl:2" in done.stderr and not out.exists()


def test_an_unreachable_server_leaves_no_results_file(tmp_path: Path, closed_port_url: str) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", closed_port_url)
    assert done.returncode == 3 and not out.exists()


def test_an_unreachable_server_leaves_an_existing_results_file_byte_identical(
    tmp_path: Path, closed_port_url: str
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    torn = json.dumps({"id": "p0", "output": "x", "error": None}) + '\n{"id": "p1", "outp'
    out.write_text(torn)
    before = digest(out)
    done = run_motio("run", prompts, "-o", out, "--base-url", closed_port_url)
    assert done.returncode == 3 and digest(out) == before


# -- 7: Ctrl-C during start-up ---------------------------------------------------------


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
# Not earlier than 30 ms: before that the interrupt lands in CPython's own
# start-up (site, the warnings filters), which reports it and carries on.
@pytest.mark.parametrize("delay", [0.03, 0.06, 0.1, 0.2, 0.4])
def test_ctrl_c_during_start_up_is_exit_130_without_traceback(
    tmp_path: Path, delay: float, entry: str
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    env = motio_env()
    # An interrupt inside CPython's own import machinery can leave the .py
    # or .pyc it was reading unclosed (importlib's get_data): that file's
    # ResourceWarning is the interpreter's, not motio's, so it is not an error
    # here; every other warning still is.
    env["PYTHONWARNINGS"] += ",ignore::ResourceWarning"
    proc = subprocess.Popen(
        [sys.executable, *ENTRY_POINTS[entry], "run", str(prompts), "-o", str(out), "--backend", "llamacpp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A runner started in the background passes SIGINT on as ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not signal_handled(proc.pid, signal.SIGINT) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)  # polling another process's state; bounded by the deadline
    time.sleep(delay)  # the instant under test, counted from Python's own start-up
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=EVENT_TIMEOUT)
    assert code == 130, err
    assert "Traceback" not in err and "0 of 0" not in err
    assert_clean(err)
    assert not out.exists()
