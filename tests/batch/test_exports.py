"""motio.batch: an explicit public surface, importable without any backend."""

from __future__ import annotations

import subprocess
import sys

import motio.batch


def test_public_names_are_exactly_the_engine_records_results_and_stats() -> None:
    assert sorted(motio.batch.__all__) == motio.batch.__all__
    for name in motio.batch.__all__:
        assert getattr(motio.batch, name).__module__.startswith("motio.batch.")


def test_importing_the_batch_engine_imports_no_backend_and_no_third_party_package() -> None:
    code = (
        "import sys; import motio.batch; "
        "print(sorted(m for m in sys.modules if m.startswith(('motio.backends', 'motio.cli', "
        "'aiohttp', 'llama_cpp', 'rich', 'ray'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
