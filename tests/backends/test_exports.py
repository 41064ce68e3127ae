"""The backends package's public surface, and that nothing heavy loads eagerly."""

from __future__ import annotations

import subprocess
import sys

import pytest

import motio.backends
from motio import ConfigurationError
from motio.backends import create_backend


def test_public_names_are_exactly_these() -> None:
    assert sorted(motio.backends.__all__) == sorted(
        [
            "AnthropicBackend",
            "Backend",
            "COMMON_OPTIONS",
            "Fold",
            "Request",
            "EndpointSnapshot",
            "OpenAIBackend",
            "LlamaCppBackend",
            "create_backend",
        ]
    )
    for name in motio.backends.__all__:
        assert getattr(motio.backends, name) is not None


def test_the_http_packages_face_is_exactly_these() -> None:
    # What other layers (the command, the Ray code) and protocols take from
    # backends/http: its private modules stay private.
    import motio.backends.http

    assert sorted(motio.backends.http.__all__) == sorted(
        [
            "DEFAULT_CONCURRENCY_BOUND",
            "HTTP_OPTIONS",
            "BoundFold",
            "ErrorAfterText",
            "ErrorEvent",
            "HTTPClient",
            "TLSOption",
            "data_as_json_array",
            "parse_events",
            "server_error_event",
            "stream_error",
            "AdaptiveConcurrency",
            "EndpointSnapshot",
            "Gate",
            "HTTPBackend",
            "HTTPFold",
            "RateLimiter",
            "Reservation",
            "SharedGate",
            "mask_url",
            "none_passed",
            "short_reason",
        ]
    )
    for name in motio.backends.http.__all__:
        assert getattr(motio.backends.http, name) is not None


def test_sdks_load_only_when_a_backend_is_used() -> None:
    code = (
        "import sys, motio, motio.backends; "
        "motio.backends.OpenAIBackend('m', base_url='http://127.0.0.1:1/v1'); "
        "motio.backends.LlamaCppBackend('/nowhere.gguf'); "
        "print(sorted(m for m in ('openai', 'httpx', 'httpx2', 'aiohttp', 'llama_cpp', 'msgspec', 'llm') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_create_backend_by_kind() -> None:
    backend = create_backend("openai", model="m", base_url="http://127.0.0.1:1/v1")
    assert backend.provider == "openai" and backend.model == "m"
    with pytest.raises(ConfigurationError, match="llamacpp, openai"):
        create_backend("vllm")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrency": 0},
        {"first_token_timeout": 0},
        {"chunk_timeout": -1},
        {"total_timeout": 0},
        {"connect_timeout": 0},
        {"max_concurrency": True},
        {"max_concurrency": "fast"},
        {"max_retries": -1},
    ],
    ids=str,
)
def test_bad_constructor_arguments_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        motio.backends.OpenAIBackend("m", **kwargs)  # type: ignore[arg-type]


def test_protocols_take_the_http_parts_from_the_packages_face() -> None:
    # A protocol on HTTPBackend (openai/, _anthropic.py) is a second layer:
    # it imports motio.backends.http, never that package's private modules.
    import ast
    from pathlib import Path

    import motio.backends

    root = Path(motio.backends.__file__).parent
    protocols = [root / "_anthropic.py", *sorted((root / "openai").glob("*.py"))]
    for path in protocols:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "http." in node.module:
                raise AssertionError(f"{path.name} imports {node.module}: use motio.backends.http")
