"""The exception tree drawn in ``motio/_exceptions.py`` is every MotioError, each under its parent.

The classes are read from the source with ``ast`` rather than imported, so
that the Ray module (``batch/_ray.py``, which imports Ray) is checked
without Ray, and no module is left out for being costly to import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import motio
import motio._exceptions as exceptions_module

SOURCE = Path(motio.__file__).parent
NODE = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)")


def defined_classes() -> list[tuple[str, set[str]]]:
    """Every class defined under src/motio: its name and its bases' names."""
    classes = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ClassDef):
                classes.append((node.name, {_name(base) for base in node.bases}))
    return classes


def _name(base: ast.expr) -> str:
    return base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""


def motio_errors() -> dict[str, set[str]]:
    """Every subclass of MotioError defined in motio, with its bases' names."""
    classes = defined_classes()
    found = {"MotioError": {"Exception"}}
    while more := [(name, bases) for name, bases in classes if bases & found.keys() and name not in found]:
        for name, bases in more:
            assert name not in found, f"two errors named {name}: one tree needs one name each"
            found[name] = bases
    return found


def drawn_parents() -> dict[str, str | None]:
    """Each class drawn in the module docstring, and the class it is drawn under."""
    lines = (exceptions_module.__doc__ or "").splitlines()
    root = next(line.strip() for line in lines if line.strip())  # the summary line
    assert root.startswith("Every error motio raises")
    parents: dict[str, str | None] = {"MotioError": None}
    path = ["MotioError"]  # the drawn ancestors of the line being read
    for line in lines:
        match = NODE.match(line.removeprefix("    "))
        if match is None:
            continue
        depth = len(match["indent"]) // 4 + 1
        del path[depth:]
        parents[match["name"]] = path[-1]
        path.append(match["name"])
    return parents


def test_every_motio_error_defined_in_motio_is_drawn_under_its_parent() -> None:
    errors = motio_errors()
    parents = drawn_parents()
    assert set(parents) == set(errors)  # none missing, none drawn that is not one
    misplaced = {name: parent for name, parent in parents.items() if parent and parent not in errors[name]}
    assert not misplaced


def test_the_batch_errors_are_found_and_drawn() -> None:
    # The ones the drawing lacked; a guard on the search above.
    batch = {"BatchAborted", "MixedFormats", "ResultsFileLocked", "NotAResultsFile", "ClusterUnreachable"}
    batch.add("WorkerLost")
    parents = drawn_parents()
    assert batch <= set(motio_errors())
    assert {name: parents.get(name) for name in batch} == dict.fromkeys(batch, "MotioError")
    assert parents["BackendChunkTimeoutError"] == "BackendTimeoutError"
    assert parents["ServerError"] == "APIStatusError"
