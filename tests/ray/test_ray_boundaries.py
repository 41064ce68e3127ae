"""Where Ray stops: never imported without --ray, clear errors at its edges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import COMMAND_TIMEOUT, motio_env, run_motio, write_prompts
from tests.servers.scripted import running

_REPORT_RAY = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('ray imported' if 'ray' in sys.modules else 'ray not imported', file=sys.stderr)); "
    "sys.argv = ['motio', *sys.argv[1:]]; runpy.run_module('motio', run_name='__main__')"
)


def test_import_motio_and_the_batch_api_never_import_ray() -> None:
    code = "import sys, motio, motio.batch, motio.backends, motio.cli; print('ray' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=motio_env(), timeout=COMMAND_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_command_without_ray_never_imports_it(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 5), tmp_path / "out.jsonl"
    with running() as a:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _REPORT_RAY,
                "run",
                str(prompts),
                "-o",
                str(out),
                "--base-url",
                a.base_url,
            ],
            capture_output=True,
            text=True,
            env=motio_env(),
            timeout=COMMAND_TIMEOUT,
        )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("ray not imported"), done.stderr


def test_workers_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 1), tmp_path / "out.jsonl"
    done = run_motio("run", prompts, "-o", out, "--base-url", "http://127.0.0.1:9/v1", "--workers", "2")
    assert done.returncode == 2
    assert "--workers needs --ray" in done.stderr and not out.exists()


def test_a_prompts_file_right_after_ray_is_the_prompts_not_an_address(tmp_path: Path) -> None:
    from motio.cli._args import RunArgs
    from motio.cli._main import parse_args

    prompts = write_prompts(tmp_path / "p.jsonl", 1)
    args = parse_args(["run", "--ray", str(prompts), "-o", "out.jsonl"])
    assert isinstance(args, RunArgs)
    assert (args.prompts, args.ray) == (str(prompts), "local")
    args = parse_args(["run", "--ray", "auto", str(prompts), "-o", "out.jsonl"])
    assert isinstance(args, RunArgs)
    assert (args.prompts, args.ray) == (str(prompts), "auto")
    missing = run_motio("run", "--ray", "10.0.0.1:6379", "-o", tmp_path / "out.jsonl")
    assert missing.returncode == 2 and "required: PROMPTS.jsonl" in missing.stderr
