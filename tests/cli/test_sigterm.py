"""SIGTERM (Slurm, Kubernetes, systemd, ``timeout``) stops ``motio run`` as Ctrl-C does.

Each test sends a real SIGTERM to the real command at one moment (start-up,
mid-run with many streams in flight, near the end) and checks what a batch
system's user sees: exit 143, the summary and the resume hint on stderr, a
results file of whole lines, the server seeing every stream in flight
dropped, and the same command run again finishing every id exactly once.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.scripted import RequestRecord, running, stall_after

from .conftest import (
    ENTRY_POINTS,
    EVENT_TIMEOUT,
    REPO,
    assert_clean,
    complete_lines,
    finish,
    motio_env,
    run_motio,
    signal_handled,
    start_motio,
    wait_for_results,
    write_prompts,
)

_SUMMARY = "prompts in"  # "N of M prompts in 1.2s: ..."
_RESUME = "run the same command again to resume"


def terminate(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    return finish(proc, timeout=EVENT_TIMEOUT)


def each_id_once(out: Path, count: int) -> None:
    lines = complete_lines(out)
    assert Counter(line["id"] for line in lines) == Counter(f"p{i}" for i in range(count))
    for line in lines:
        assert line["error"] is None and line["output"] == f"echo: Say the number {line['id'][1:]}."


def stalling(when: Callable[[int], bool]) -> tuple[Callable[[RequestRecord], Any], Callable[[], None]]:
    """A rule that stalls the prompts ``when`` picks (by number) until healed, and the healer."""
    healed = False

    def rule(record: RequestRecord) -> Any:
        number = int(record.prompt.rsplit(" ", 1)[-1].rstrip("."))
        return stall_after(1) if not healed and when(number) else None

    def heal() -> None:
        nonlocal healed
        healed = True

    return rule, heal


@pytest.mark.parametrize(
    ("count", "stalls", "answered"),
    [
        # Mid-run: 40 answered, then every slot (16) holds a stream that never ends.
        (200, lambda n: n >= 40, 40),
        # Near the end: all but the last three answered.
        (200, lambda n: n >= 197, 197),
    ],
    ids=["mid-run", "near-the-end"],
)
def test_sigterm_cancels_in_flight_keeps_results_and_the_rerun_completes(
    tmp_path: Path, count: int, stalls: Callable[[int], bool], answered: int
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    rule, heal = stalling(stalls)
    in_flight = min(16, count - answered)
    with running(rule=rule) as server:
        argv = ("run", prompts, "-o", out, "--base-url", server.base_url, "-c", "16")
        proc = start_motio(*argv)
        wait_for_results(out, answered, proc)
        server.wait_for(lambda s: s.in_flight == in_flight, EVENT_TIMEOUT, f"{in_flight} streams held")
        code, _, err = terminate(proc)
        # Cancellation reached the server: every stream in flight was dropped.
        server.wait_for(lambda s: s.disconnects == in_flight, EVENT_TIMEOUT, "the disconnects")
        assert code == 143, err
        assert_clean(err)
        assert f"{answered} of {count} {_SUMMARY}" in err
        assert f"terminated: {answered} new results saved in {out}; {_RESUME}" in err
        assert len(complete_lines(out)) == answered and out.read_bytes().endswith(b"\n")

        heal()
        again = run_motio(*argv)
    assert again.returncode == 0, again.stderr
    assert f"{answered} already done" in again.stderr
    each_id_once(out, count)


def read_lines(proc: subprocess.Popen[str], count: int) -> bytes:
    """What ``proc`` wrote to stdout, once it holds ``count`` whole lines (bounded)."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"fewer than {count} lines: {data[-200:]!r}"
        if select.select([fd], [], [], left)[0]:
            data += os.read(fd, 65536)
    return data


def test_sigterm_with_results_on_stdout_says_how_many_were_written(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 100)
    rule, _ = stalling(lambda n: n >= 30)
    with running(rule=rule) as server:
        proc = start_motio("run", prompts, "-o", "-", "--base-url", server.base_url, "-c", "8")
        first = read_lines(proc, 30)
        server.wait_for(lambda s: s.in_flight == 8, EVENT_TIMEOUT, "8 streams held")
        code, rest, err = terminate(proc)
        server.wait_for(lambda s: s.disconnects == 8, EVENT_TIMEOUT, "the disconnects")
    assert code == 143, err
    assert_clean(err)
    lines = [json.loads(line) for line in (first.decode() + rest).splitlines()]
    assert len(lines) == 30 and all(line["error"] is None for line in lines)
    assert "terminated: 30 results written to stdout; there is no resume with -o -" in err


# -- start-up -------------------------------------------------------------------------------


class StoppedServer:
    """A scripted server in a process of its own, stopped (SIGSTOP) until :meth:`resume`.

    The kernel still completes connections to it, so a client's start-up
    check connects and then waits for an answer, as with a server that is
    busy loading its model.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.scripted", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the server prints it at once, or exits
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def clients(self) -> int:
        """Connections to the server that the kernel has completed."""
        count = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if int(remote.split(":")[1], 16) == self.port and state == "01":  # ESTABLISHED
                count += 1
        return count

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.communicate(timeout=EVENT_TIMEOUT)


@pytest.fixture
def stopped() -> Iterator[StoppedServer]:
    server = StoppedServer()
    try:
        yield server
    finally:
        server.close()


def test_sigterm_while_the_server_check_waits_is_exit_143_and_the_rerun_completes(
    tmp_path: Path, stopped: StoppedServer
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 20), tmp_path / "out.jsonl"
    argv = ("run", prompts, "-o", out, "--base-url", stopped.base_url)
    proc = start_motio(*argv)
    deadline = time.monotonic() + EVENT_TIMEOUT
    while stopped.clients() == 0:  # motio connected: its start-up check waits for the answer
        assert time.monotonic() < deadline and proc.poll() is None, "motio never connected"
        time.sleep(0.01)
    code, _, err = terminate(proc)
    assert code == 143, err
    assert_clean(err)
    assert "terminated before any prompt ran; nothing was written" in err
    assert not out.exists()

    stopped.resume()
    again = run_motio(*argv)
    assert again.returncode == 0, again.stderr
    each_id_once(out, 20)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_sigterm_at_any_instant_of_start_up_is_exit_143_without_traceback(
    tmp_path: Path, stopped: StoppedServer, delay: float, entry: str
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    env = motio_env()
    # A signal inside CPython's own import machinery can leave the .py or
    # .pyc it was reading unclosed (importlib's get_data): that warning is
    # the interpreter's, not motio's; every other warning is still an error.
    env["PYTHONWARNINGS"] += ",ignore::ResourceWarning"
    proc = subprocess.Popen(
        [sys.executable, *ENTRY_POINTS[entry], "run", str(prompts), "-o", str(out)]
        + ["--base-url", stopped.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not signal_handled(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)  # polling another process's state; bounded by the deadline
    time.sleep(delay)  # the instant under test, counted from the handler's installation
    code, _, err = terminate(proc)
    assert code == 143, err
    assert_clean(err)
    assert "terminated" in err and "0 of 0" not in err
    assert not out.exists()


def test_sigterm_of_a_background_job_with_sigint_ignored_stops_cleanly(tmp_path: Path) -> None:
    # A batch script's `motio run ... &` starts with SIGINT ignored: Python
    # then has no Ctrl-C handler and asyncio.run none either; SIGTERM must
    # not depend on them.
    prompts, out = write_prompts(tmp_path / "p.jsonl", 100), tmp_path / "out.jsonl"
    rule, heal = stalling(lambda n: n >= 20)
    with running(rule=rule) as server:
        argv = ["run", str(prompts), "-o", str(out), "--base-url", server.base_url, "-c", "8"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "motio", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=motio_env(),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        wait_for_results(out, 20, proc)
        server.wait_for(lambda s: s.in_flight == 8, EVENT_TIMEOUT, "8 streams held")
        code, _, err = terminate(proc)
        server.wait_for(lambda s: s.disconnects == 8, EVENT_TIMEOUT, "the disconnects")
        heal()
        again = run_motio(*argv)
    assert code == 143, err
    assert_clean(err)
    assert f"terminated: 20 new results saved in {out}; {_RESUME}" in err
    assert again.returncode == 0, again.stderr
    each_id_once(out, 100)


def test_sigterm_of_motio_chat_mid_answer_is_exit_143_and_the_stream_is_dropped() -> None:
    with running(default=stall_after(2)) as server:
        proc = start_motio("chat", "hello there", "--base-url", server.base_url)
        server.wait_for(lambda s: s.in_flight == 1, EVENT_TIMEOUT, "the answer streaming")
        code, out, err = terminate(proc)
        server.wait_for(lambda s: s.disconnects == 1, EVENT_TIMEOUT, "the disconnect")
    assert code == 143, err
    assert_clean(err)
    assert out.rstrip("\n") in ("", "echo:", "echo: hello")  # what had arrived when it stopped


_KEPT = """
import os, signal
from motio.cli import _signals
_signals.take_sigterm()
try:
    with _signals.keep_sigterm():
        # What Ray's C++ core does as it connects: a handler of its own for
        # SIGTERM (absl's aborts), until its Python handlers replace it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        print("held", flush=True)
except KeyboardInterrupt:
    print("stopped", _signals.stop_status(), flush=True)
"""


def test_a_sigterm_while_a_join_replaces_the_handler_waits_for_ours() -> None:
    done = subprocess.run([sys.executable, "-c", _KEPT], capture_output=True, text=True, timeout=30)
    # Not killed by the handler in place when it came (-15, or -6 from
    # absl's): held, then taken by ours once it is back, as the command's stop.
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split("\n")[:2] == ["held", "stopped ('terminated', 143)"], done.stdout
