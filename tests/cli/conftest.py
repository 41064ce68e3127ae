"""Helpers to run the real ``motio`` command in a subprocess and watch its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every wait in these tests is bounded by one of these.
COMMAND_TIMEOUT = 180.0
EVENT_TIMEOUT = 60.0

# Run the module with SIGINT restored to its default first: a test runner
# started in the background inherits SIGINT as *ignored*, and then Python
# installs no KeyboardInterrupt handler and Ctrl-C could not be tested.
_SIGINT_READY = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'motio'; runpy.run_module('motio', run_name='__main__', alter_sys=True)"
)


_LLAMA_CPP_DEVNULL = "ignore:unclosed file <_io.TextIOWrapper name='/dev/null':ResourceWarning"


def motio_env(**extra: str) -> dict[str, str]:
    """The child's environment: this checkout first, warnings as errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    # Warnings are errors, except one that is not motio's: llama-cpp-python
    # opens /dev/null twice at import (llama_cpp/_utils.py) and never closes it.
    env["PYTHONWARNINGS"] = "error," + _LLAMA_CPP_DEVNULL
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def motio_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", _SIGINT_READY, *map(str, args)]


def run_motio(
    *args: str | Path,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m motio ARGS`` to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "motio", *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        env=env or motio_env(),
        timeout=timeout,
        check=False,
    )


def start_motio(*args: str | Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
    """Start ``motio ARGS`` in the background, SIGINT-able, pipes captured."""
    return subprocess.Popen(
        motio_argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or motio_env(),
        **popen,
    )


def finish(proc: subprocess.Popen[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
    """Wait for a started command (bounded); kill it if the bound passes."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=EVENT_TIMEOUT)
        pytest.fail(f"motio did not finish within {timeout}s; stderr:\n{err}")
    return proc.returncode, out, err


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    return finish(proc, timeout=EVENT_TIMEOUT)


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """The results file's complete lines (a torn tail is not counted)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def wait_for_results(
    path: Path, count: int, proc: subprocess.Popen[str], timeout: float = EVENT_TIMEOUT
) -> list[dict[str, Any]]:
    """Wait until ``path`` holds ``count`` result lines, or fail with stderr.

    Polls the file (there is no other signal a separate process can give);
    the deadline bounds it, and a process that exits early fails at once.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = complete_lines(path)
        if len(lines) >= count:
            return lines
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=EVENT_TIMEOUT)
            pytest.fail(f"motio exited ({proc.returncode}) before {count} results:\n{err}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"fewer than {count} results in {path} after {timeout}s")


def write_prompts(path: Path, count: int, *, max_tokens: int | None = None) -> Path:
    """``count`` prompt lines with ids p0..p{count-1}."""
    lines = []
    for i in range(count):
        record: dict[str, Any] = {"id": f"p{i}", "prompt": f"Say the number {i}."}
        if max_tokens is not None:
            record["max_tokens"] = max_tokens
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def ids_of(lines: list[dict[str, Any]]) -> list[Any]:
    return [line["id"] for line in lines]


def assert_clean(stderr: str) -> None:
    """No traceback, warning or swallowed exception in the command's stderr."""
    for marker in ("Traceback", "Warning", "Exception ignored", "Task was destroyed", "never retrieved"):
        assert marker not in stderr, stderr


def signal_handled(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has installed a handler for ``signum`` (its ``SigCgt`` mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signum - 1)))


#: `python -m motio`, and what the `motio` console script runs.
ENTRY_POINTS = {
    "module": ["-m", "motio"],
    "console-script": ["-c", "import sys; from motio.cli import main; sys.exit(main())"],
}
