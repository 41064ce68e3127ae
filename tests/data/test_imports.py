"""motio.data's public names, and what it costs to import: no optional dependency until used."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys

import motio.data
from tests.cli.conftest import EVENT_TIMEOUT, motio_env

OPTIONAL = ("pyarrow", "jsonschema", "pydantic", "datasets")


def loaded_after(code: str) -> list[str]:
    """The optional dependencies in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {OPTIONAL!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=motio_env(),
        timeout=EVENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_the_public_names_are_exactly_these() -> None:
    assert set(motio.data.__all__) == {
        "DEFAULT_MAX_INVALID", "AnswerCheck", "ExportReport", "Invalid", "InvalidOutput", "MissingColumn", "OutputSchema", "Parsed", "Prompt",
        "ResponseCache", "Row", "RowProblem", "Rows", "Template", "default_cache_path", "export",
        "open_rows", "output_schema", "request_key",
    }  # fmt: skip
    assert all(getattr(motio.data, name) is not None for name in motio.data.__all__)
    assert motio.data.InvalidOutput is motio.InvalidOutput and motio.data.MissingColumn is motio.MissingColumn


def test_the_type_checkers_imports_match_the_lazy_table() -> None:
    # As for motio itself (tests/core/test_exports.py): the TYPE_CHECKING
    # block spells exactly the lazy table, each name from the same module.
    tree = ast.parse(inspect.getsource(motio.data))
    [block] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    ]
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
            seen[alias.name] = "." * node.level + (node.module or "")
    assert seen == motio.data._EXPORTS


def test_a_name_loads_only_its_own_module() -> None:
    code = "import sys, motio.data; motio.data.Template"
    probe = f"{code}; print(sorted(m for m in sys.modules if m.startswith('motio.data.')))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=motio_env(),
        timeout=EVENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['motio.data._readers',", "'motio.data._template']"]


def test_import_motio_loads_none_of_the_optional_dependencies() -> None:
    assert loaded_after("import motio; motio.MissingColumn; motio.InvalidOutput") == []
    assert loaded_after("import motio.data") == []


def test_a_jsonl_run_without_a_schema_loads_none_of_them(tmp_path: object) -> None:
    # What a run on a JSONL dataset does with these blocks: rows, a template,
    # the cache, and an export of its results, all without pyarrow & co.
    code = f"""
import json, pathlib
from motio.data import ResponseCache, Template, export, open_rows, request_key
folder = pathlib.Path({str(tmp_path)!r})
(folder / "d.jsonl").write_text('{{"text": "a"}}\\n{{"text": "b"}}\\n', encoding="utf-8")
template = Template("Say: {{text}}")
with open_rows(folder / "d.jsonl") as rows, ResponseCache(folder / "c.sqlite3") as cache, \\
        open(folder / "out.jsonl", "w", encoding="utf-8") as out:
    template.check(rows.columns)
    for prompt in template.prompts(rows):
        key = request_key({{"model": "m", "messages": prompt.messages}})
        cache.put(key, {{"output": "x"}})
        out.write(json.dumps({{"id": prompt.id, "output": cache.get(key)["output"], "error": None}}) + "\\n")
assert export(folder / "out.jsonl", folder / "o.jsonl", join=folder / "d.jsonl").answered == 2
"""
    assert loaded_after(code) == []


def test_each_dependency_loads_only_where_it_is_needed(tmp_path: object) -> None:
    schema = 'from motio.data import output_schema; output_schema({"type": "object"}).validate("{}")'
    assert loaded_after(schema) == ["jsonschema"]
