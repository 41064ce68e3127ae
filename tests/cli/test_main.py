"""Argument parsing, help, version and the package's public surface."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import motio.cli
from motio.cli._args import BackendArgs, GenerationArgs
from motio.cli._backend import BackendSpec, generation_options
from motio.cli._main import build_parser, main, parse_args

from .conftest import motio_env, run_motio


def test_exports_exactly_main() -> None:
    assert motio.cli.__all__ == ["main"]


def test_version_from_package_metadata() -> None:
    done = run_motio("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"motio {version('motio')}"


def test_help_lists_commands_and_run_help_documents_every_option() -> None:
    top = run_motio("--help")
    assert top.returncode == 0 and "run" in top.stdout and "chat" in top.stdout
    run = run_motio("run", "--help").stdout
    for option in (
        "--backend",
        "--model",
        "--base-url",
        "--api-key-env",
        "--concurrency",
        "--max-tokens",
        "--temperature",
        "--seed",
        "--chunk-timeout",
        "--quiet",
        "--retry-errors",
        "exit status",
        "resume",
        '"line-N"',
        "explicit ids",
        "MOTIO_STARTUP_TIMEOUT",
        "--retry-errors",
        "only what was answered",
    ):
        assert option in " ".join(run.split()), option
    chat = run_motio("chat", "--help").stdout
    assert "--system" in chat and "stdin" in chat


def test_no_command_shows_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["run", "p", "-o", "o", "--concurrency", "0"], id="zero-concurrency"),
        pytest.param(["run", "p", "-o", "o", "--max-tokens", "x"], id="word-max-tokens"),
        pytest.param(["run", "p", "-o", "o", "--temperature", "-1"], id="negative-temperature"),
        pytest.param(["run", "p", "-o", "o", "--chunk-timeout", "nan"], id="nan-timeout"),
        pytest.param(["run", "p", "-o", "o", "--backend", "vllm"], id="unknown-backend"),
        pytest.param(["run", "p"], id="no-output"),
        pytest.param(["run", "p", "-o", "o", "--base-url"], id="missing-url"),
    ],
)
def test_bad_command_lines_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--api-key", "--api-key=sk-secret"])
def test_api_key_on_the_command_line_is_refused_without_echoing_it(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "p", "-o", "o", option] + ([] if "=" in option else ["sk-secret"])
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--api-key-env VAR" in err and "sk-secret" not in err


def _backend_args(argv: list[str]) -> BackendArgs:
    args = parse_args(argv)
    assert args is not None
    return args.backend


def test_base_url_implies_the_openai_backend_and_its_default_concurrency() -> None:
    spec = BackendSpec.from_args(_backend_args(["run", "p", "-o", "o", "--base-url", "http://h/v1"]))
    assert spec == BackendSpec("openai", None, "http://h/v1", None, "auto") and spec.in_flight == 256
    args = _backend_args(["run", "p", "-o", "o", "--base-url", "http://h/v1", "-c", "auto:64"])
    assert BackendSpec.from_args(args).in_flight == 64
    args = _backend_args(["run", "p", "-o", "o"])
    assert BackendSpec.from_args(args).kind == "llamacpp"
    assert BackendSpec.from_args(args).concurrency == 1


def _generation_args(argv: list[str]) -> GenerationArgs:
    args = parse_args(argv)
    assert args is not None
    return args.generation


def test_generation_options_pass_only_what_was_set() -> None:
    assert generation_options(_generation_args(["chat", "x"])) == {"max_tokens": 512}
    args = _generation_args(["chat", "x", "--temperature", "0", "--seed", "3", "--chunk-timeout", "0"])
    assert generation_options(args, {"max_tokens": 9}) == {
        "max_tokens": 9,
        "temperature": 0.0,
        "seed": 3,
        "chunk_timeout": None,
    }


def test_import_motio_loads_neither_the_cli_nor_rich() -> None:
    code = "import sys, motio; assert not [m for m in sys.modules if m.startswith(('motio.cli', 'rich'))]"
    done = subprocess.run([sys.executable, "-c", code], env=motio_env(), timeout=60, check=False)
    assert done.returncode == 0


def test_the_start_up_check_limit_is_10_s_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from motio.cli._backend import STARTUP_TIMEOUT, startup_timeout
    from motio.cli._errors import EXIT_USAGE, CliError

    monkeypatch.delenv("MOTIO_STARTUP_TIMEOUT", raising=False)
    assert STARTUP_TIMEOUT == startup_timeout() == 10
    monkeypatch.setenv("MOTIO_STARTUP_TIMEOUT", "1.5")
    assert startup_timeout() == 1.5
    monkeypatch.setenv("MOTIO_STARTUP_TIMEOUT", "soon")
    with pytest.raises(CliError, match="MOTIO_STARTUP_TIMEOUT") as caught:
        startup_timeout()
    assert caught.value.exit_code == EXIT_USAGE


def test_the_command_line_is_parsed_once_into_frozen_typed_values() -> None:
    import dataclasses

    from motio.cli._args import ChatArgs, RunArgs

    argv = ["run", "p.jsonl", "-o", "o.jsonl", "--base-url", "http://a/v1", "--base-url", "http://b/v1"]
    args = parse_args([*argv, "-c", "auto:8", "--rpm", "60", "--extra-body", '{"top_k": 2}', "-q"])
    assert isinstance(args, RunArgs)
    assert (args.prompts, args.output, args.quiet, args.retry_errors) == ("p.jsonl", "o.jsonl", True, False)
    assert args.backend.base_urls == ("http://a/v1", "http://b/v1")
    assert (args.backend.concurrency, args.backend.rpm) == ("auto:8", 60.0)
    assert args.generation.extra_body == {"top_k": 2} and args.ray is None and args.ray_workers is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.quiet = False  # type: ignore[misc]
    chat = parse_args(["chat", "hi", "--system", "be brief", "--seed", "3"])
    assert isinstance(chat, ChatArgs) and (chat.prompt, chat.system) == ("hi", "be brief")
    assert chat.backend.concurrency is None and chat.generation.seed == 3  # chat has no --concurrency
    assert parse_args([]) is None


def test_nothing_below_main_sees_argparse() -> None:
    import ast
    from pathlib import Path

    cli = Path(motio.cli.__file__).parent
    for path in sorted(cli.glob("*.py")):
        if path.name == "_main.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "args: Any" not in text and "Namespace" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert "argparse" not in names, f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                first = node.args[0]
                assert not (isinstance(first, ast.Name) and first.id == "args"), f"{path.name}:{node.lineno}"
