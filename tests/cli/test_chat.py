"""``motio chat`` end to end: tokens reach stdout as they arrive."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.servers.scripted import ScriptedServer, running, stall_after

from .conftest import EVENT_TIMEOUT, assert_clean, interrupt, run_motio, start_motio


def test_chat_prints_the_answer(server: ScriptedServer) -> None:
    done = run_motio(
        "chat",
        "hello there",
        "--base-url",
        server.base_url,
        "--system",
        "Be brief",
        "--max-tokens",
        "16",
    )
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    assert done.stdout == "echo: hello there\n"
    assert [r.prompt for r in server.chat_requests] == ["hello there"]


def test_chat_reads_the_prompt_from_stdin(server: ScriptedServer) -> None:
    done = run_motio("chat", "-", "--base-url", server.base_url, input="from stdin\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: from stdin\n"
    assert [r.prompt for r in server.chat_requests] == [
        "from stdin"
    ]  # echo's trailing newline is not the prompt's


def test_chat_refuses_an_empty_prompt() -> None:
    done = run_motio("chat", "-", input="  \n")
    assert done.returncode == 2 and "stdin is empty" in done.stderr


def test_chat_streams_before_the_answer_is_complete_and_ctrl_c_stops_it() -> None:
    with running(default=stall_after(1)) as server:
        proc = start_motio("chat", "wait for me", "--base-url", server.base_url)
        assert proc.stdout is not None
        # The server sent only its first chunk and stalls: if it is on
        # stdout now, chat streams rather than waiting for the whole answer.
        # (A blocking read, bounded by the server's own stall limit.)
        assert proc.stdout.read(len("echo")) == "echo"
        code, out, err = interrupt(proc)
        assert code == 130, err
        assert_clean(err)
        assert out == "\n"  # the cut-short line is ended for the shell
        server.wait_for(lambda s: s.disconnects == 1, EVENT_TIMEOUT)


def test_chat_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_motio("chat", "hi", "--base-url", f"http://127.0.0.1:{port}/v1")
    assert done.returncode == 3
    assert done.stderr.startswith("motio: error: ") and done.stderr.count("\n") == 1
    assert done.stdout == ""
