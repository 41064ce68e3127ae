"""The public surface is exactly what is intended, and cheap to import."""

import ast
import inspect
import subprocess
import sys

import motio
import motio.helpers.async_helpers as helpers

EXPECTED = {
    "send_to_queue", "wait_for_all_mots", "get_current_event_loop", "ClientCache",
    "DEFAULT_CHUNK_TIMEOUT", "ModelOutputThunk", "GenerationMeta", "run_sync",
    "OpenAIBackend", "AnthropicBackend", "LlamaCppBackend", "create_backend", "__version__",
    "MotioError", "ChunkTimeoutError", "ConfigurationError", "BackendClosedError", "BackendError",
    "BackendConnectionError", "BackendTimeoutError", "StreamError", "APIStatusError",
    "BadRequestError", "AuthenticationError", "NotFoundError", "RateLimitError", "ServerError",
    "ConnectTimeoutError", "FirstTokenTimeoutError", "BackendChunkTimeoutError", "TotalTimeoutError",
    "UnsupportedOptionError", "MissingColumn", "InvalidOutput",
}  # fmt: skip


def test_all_is_exactly_the_public_api() -> None:
    assert set(motio.__all__) == EXPECTED


def test_every_core_name_resolves() -> None:
    for name in EXPECTED - {"OpenAIBackend", "LlamaCppBackend", "create_backend"}:
        assert getattr(motio, name) is not None, name


def test_documented_module_path_has_the_four_helpers() -> None:
    assert set(helpers.__all__) >= {
        "send_to_queue",
        "wait_for_all_mots",
        "get_current_event_loop",
        "ClientCache",
    }
    assert helpers.send_to_queue is motio.send_to_queue
    assert helpers.wait_for_all_mots is motio.wait_for_all_mots
    assert helpers.get_current_event_loop is motio.get_current_event_loop
    assert helpers.ClientCache is motio.ClientCache
    assert motio.DEFAULT_CHUNK_TIMEOUT == 120.0


def test_every_error_derives_from_the_root() -> None:
    for name in EXPECTED - {"OpenAIBackend", "LlamaCppBackend", "create_backend"}:
        obj = getattr(motio, name, None)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, motio.MotioError), name
    assert issubclass(motio.ChunkTimeoutError, TimeoutError)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        motio.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_motio_loads_no_sdk_and_no_asyncio_machinery() -> None:
    code = (
        "import sys, motio; "
        "bad = [m for m in ('openai', 'llama_cpp', 'httpx', 'rich', 'orjson', 'motio._thunk') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_type_checkers_imports_match_the_one_export_table() -> None:
    # The TYPE_CHECKING block cannot be derived at runtime; it must spell
    # exactly the lazy table, each name re-exported from the same module.
    tree = ast.parse(inspect.getsource(motio))
    [block] = [
        node for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    ]  # fmt: skip
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
            seen[alias.name] = "." * node.level + (node.module or "")
    assert seen == motio._EXPORTS
    assert set(motio.__all__) == set(seen) | {"__version__"}
