"""What a backend declares for the command and the batch engine, and the one registry.

Capabilities are members of ``Backend`` with defaults, overridden by the
backends that have them; nothing in ``motio/cli`` or ``motio/batch`` asks
for one by attribute name or tests a backend's kind.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import motio
from motio import ConfigurationError, ModelOutputThunk, batch
from motio.backends import Backend, LlamaCppBackend, OpenAIBackend, create_backend
from motio.backends._base import SharedLimits, to_messages
from motio.backends._registry import DEFAULT_BACKEND, SERVER_BACKEND, backend_class, backend_names
from motio.batch._share import SharePlan
from tests.asyncutil import agen, run

SRC = Path(motio.__file__).parent


class Echo(Backend):
    """The least a backend must write: generate, check, aclose. Echoes the last message."""

    provider = "echo"

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self.checked = 0

    async def generate(
        self, prompt_or_messages: str | list[dict[str, Any]], *, stream: bool = True, **options: Any
    ) -> ModelOutputThunk[Any]:
        self._ensure_open()
        words = str(to_messages(prompt_or_messages)[-1]["content"]).split()
        return ModelOutputThunk.from_response(agen([f"{w} " for w in words]))

    async def check(self) -> None:
        self._ensure_open()
        self.checked += 1

    async def aclose(self) -> None:
        self._mark_closed()


def test_a_backend_without_servers_gets_the_defaults() -> None:
    echo = Echo("m")
    assert Echo.remote is False and echo.remote is False
    assert Echo.default_concurrency == 1
    assert echo.max_concurrency == 1
    assert echo.max_reruns == 0
    assert echo.endpoint_snapshot() == []
    assert echo.adaptive_concurrency is None
    assert echo.limits_to_share() is None
    echo.share_limits()  # nothing given, nothing to take
    with pytest.raises(ConfigurationError, match="Echo has no limits to share"):
        echo.share_limits(gates={"http://a/v1": object()})  # type: ignore[dict-item]


def test_the_default_check_each_is_check_with_no_server_to_report() -> None:
    echo = Echo()
    assert run(echo.check_each(timeout=1.0)) == [] and echo.checked == 1
    echo.close()
    with pytest.raises(motio.BackendClosedError):
        run(echo.check_each())


def test_the_default_recipe_builds_an_unopened_copy_with_the_same_arguments() -> None:
    echo = Echo("m")
    echo.close()
    copy = pickle.loads(pickle.dumps(echo.recipe()))()
    assert isinstance(copy, Echo) and copy.model == "m" and not copy.is_closed


def test_the_two_backends_declare_what_they_are() -> None:
    assert OpenAIBackend.remote is True and OpenAIBackend.default_concurrency == "auto"
    assert LlamaCppBackend.remote is False and LlamaCppBackend.default_concurrency == 1
    local = LlamaCppBackend("/nowhere.gguf", max_concurrency=3)
    assert local.max_concurrency == 3 and local.limits_to_share() is None
    assert local.endpoint_snapshot() == [] and local.adaptive_concurrency is None


def test_each_backend_says_how_it_is_asked_for_a_json_schema() -> None:
    # --json-schema: OpenAI's response_format, llama-cpp-python's grammar
    # form, or no way at all (refused before anything is sent).
    from motio.backends import AnthropicBackend

    assert Echo.response_format_style == OpenAIBackend.response_format_style == "json_schema"
    assert LlamaCppBackend.response_format_style == "json_object"
    assert AnthropicBackend.response_format_style is None


def test_a_server_backend_names_the_limits_its_workers_share() -> None:
    backend = OpenAIBackend(
        "m", base_url=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"], max_concurrency=8, rpm=60
    )
    assert backend.limits_to_share() == SharedLimits(
        servers=("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"),
        rpm=60,
        tpm=None,
        concurrency=8,
        bound=256,
        initial=8,
        model="m",
    )
    plan = SharePlan.of(backend, 2)
    assert plan.servers == backend.base_urls and plan.concurrency == 8 and plan.rpm == 60
    assert plan.in_flight_per_worker() == 8


def test_a_backend_with_nothing_to_share_plans_nothing() -> None:
    assert SharePlan.of(Echo(), 3) == SharePlan(3)
    assert SharePlan.of(LlamaCppBackend("/nowhere.gguf"), 2) == SharePlan(2)


def test_a_minimal_backend_runs_a_batch_on_the_defaults() -> None:
    results = list(batch.run(["a b", "c"], Echo()))
    assert sorted((r["id"], r["output"]) for r in results) == [("line-1", "a b "), ("line-2", "c ")]
    assert all(r["error"] is None for r in results)
    built = list(batch.run(["x"], Echo))  # a function (here the class) that builds one
    assert [r["output"] for r in built] == ["x "]


@pytest.mark.parametrize("given", [object(), lambda: "not a backend"], ids=["object", "function"])
def test_batch_refuses_what_is_neither_a_backend_nor_builds_one(given: object) -> None:
    with pytest.raises(ConfigurationError, match="pass a motio backend or a function that builds one"):
        list(batch.run(["x"], given))


_UNKNOWN = "unknown backend kind 'vllm'; choose one of: anthropic, llamacpp, openai$"


def test_the_registry_maps_every_name_to_its_class() -> None:
    assert backend_names() == ("anthropic", "llamacpp", "openai")
    assert backend_class("openai") is OpenAIBackend
    assert backend_class("llamacpp") is LlamaCppBackend
    assert backend_class(SERVER_BACKEND).remote and not backend_class(DEFAULT_BACKEND).remote
    for name in backend_names():
        assert issubclass(backend_class(name), Backend)
        assert backend_class(name).provider == name
    with pytest.raises(ConfigurationError, match=_UNKNOWN):
        backend_class("vllm")
    assert isinstance(create_backend("llamacpp", model_path="/nowhere.gguf"), LlamaCppBackend)


def test_the_registry_imports_a_backend_only_when_asked_for_it() -> None:
    code = (
        "import sys; from motio.backends._registry import backend_class, backend_names; "
        "names = backend_names(); loaded = lambda: sorted(m for m in sys.modules "
        "if m.startswith('motio.backends.') and m != 'motio.backends._registry'); "
        "before = loaded(); backend_class('llamacpp'); "
        "print(before, 'motio.backends._llamacpp' in loaded(), 'motio.backends.openai' in loaded())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] True False"


def test_the_commands_backend_choices_are_the_registrys_names() -> None:
    import argparse

    from motio.cli._main import build_parser

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    seen = 0
    for command in commands.choices.values():
        for action in command._actions:
            if "--backend" in action.option_strings:
                assert tuple(action.choices or ()) == backend_names()
                seen += 1
    assert seen >= 2  # chat and run


# --- nothing outside backends/ asks by name or tests a kind --------------------

#: Backend members (declared on Backend, or public on a backend) that the
#: command and the batch engine must reach as members, never by name. "model"
#: is left out: it is also a field of every generation's metadata, which the
#: engine reads by name from the thunk.
_CAPABILITIES = (
    {name for name in vars(Backend) if not name.startswith("_")}
    | set(Backend.__annotations__)
    | {"concurrency_bound", "base_urls", "base_url", "rpm", "tpm", "several_servers", "retry_policy"}
) - {"model"}
_KIND_CLASSES = {"OpenAIBackend", "LlamaCppBackend", "AnthropicBackend", "HTTPBackend"}


def _modules() -> list[Path]:
    files = sorted((SRC / "cli").glob("*.py")) + sorted((SRC / "batch").glob("*.py"))
    assert len(files) > 10
    return files


def _problems(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name, args = node.func.id, node.args
            # argparse's namespace is read by name (command-line options share
            # some of these names); that is the typed-arguments part of the work.
            asked = len(args) >= 2 and ast.unparse(args[0]) not in ("args", "self.args")
            if name in ("hasattr", "getattr") and asked and _is_capability(args[1]):
                found.append(f"{where}: {name}(..., {ast.literal_eval(args[1])!r})")
            if name == "isinstance" and len(args) == 2 and _names(args[1]) & _KIND_CLASSES:
                found.append(f"{where}: isinstance(..., {ast.unparse(args[1])})")
        if isinstance(node, ast.Compare):
            kinds = [c for c in (node.left, *node.comparators) if _is_kind(c)]
            found += [f"{where}: compares with the kind {ast.literal_eval(k)!r}" for k in kinds]
        if isinstance(node, ast.Dict):
            kinds = [k for k in node.keys if k is not None and _is_kind(k)]
            found += [f"{where}: a table keyed by the kind {ast.literal_eval(k)!r}" for k in kinds]
    return found


def _is_capability(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in _CAPABILITIES


def _is_kind(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in backend_names()


def _names(node: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def test_the_check_below_finds_what_it_looks_for(tmp_path: Path) -> None:
    # The check itself, on code that does what was removed.
    sample = tmp_path / "sample.py"
    text = (
        "remote = spec.kind == 'openai'\n"
        "x = hasattr(backend, 'share_limits')\n"
        "y = getattr(backend, 'endpoint_snapshot', None)\n"
        "d = {'llamacpp': 1}\n"
        "ok = isinstance(backend, OpenAIBackend)\n"
    )
    sample.write_text(text, encoding="utf-8")
    assert len(_problems(sample)) == 5


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_cli_and_batch_ask_no_capability_by_name_and_test_no_kind(path: Path) -> None:
    assert _problems(path) == []


def test_the_commands_help_imports_no_backend_module() -> None:
    code = (
        "import sys; from motio.cli._main import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('motio.backends.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['motio.backends._registry']"


@pytest.mark.parametrize("argv", [[], ["--base-url", "http://127.0.0.1:1/v1"]], ids=["default", "base-url"])
def test_the_command_decides_remote_and_concurrency_from_the_backends_class(argv: list[str]) -> None:
    from motio.cli._args import ChatArgs
    from motio.cli._backend import BackendSpec
    from motio.cli._main import parse_args

    args = parse_args(["chat", "x", *argv])
    assert isinstance(args, ChatArgs)
    spec = BackendSpec.from_args(args.backend)
    cls = backend_class(spec.kind)
    assert spec.kind == (SERVER_BACKEND if argv else DEFAULT_BACKEND)
    assert spec.remote is cls.remote
    assert spec.concurrency == cls.default_concurrency
