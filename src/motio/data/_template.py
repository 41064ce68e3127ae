"""A row becomes a prompt through a template: ``'Classify the sentiment of: {text}'``.

Placeholders are Python's ``str.format`` fields naming columns (``{text}``,
``{review title}``; ``{score:.2f}`` with a format spec; ``{{`` and ``}}``
for literal braces). Python format rather than Jinja2:

- the fields a template uses are known exactly before any row is read
  (``string.Formatter.parse``), so a missing column is caught against the
  dataset's columns before anything is sent; a Jinja2 template can reach
  columns inside branches and loops that only some rows take;
- no dependency, and no template language to learn for one line on the
  command line; a prompt that needs loops or conditions is better built
  in Python, where ``motio.batch.run`` takes the messages directly;
- rendering is ``str.format_map``, in C: nothing per row beyond the
  string itself, which matters at millions of rows.

Only plain column names are accepted: ``{a.b}`` and ``{a[0]}`` (attribute
and index access) are refused, so a template can read a row's values and
nothing else. Values are rendered as text: a null as the empty string (as
an empty CSV cell), a list or an object as JSON, anything else with
``format()``.

``--system`` is sent as written, not as a template: system prompts often
show the JSON expected, and braces there should not need doubling.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError, MissingColumn
from ._readers import Row, RowProblem

__all__ = ["Prompt", "Template"]

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered row: what is sent for it, under its id.

    Attributes:
        id: the row's id (its ``--id-column`` value or ``"line-N"``).
        number: the row's 1-based number, for messages about it.
        messages: the chat messages: the system message if any, then the user's.
    """

    id: str | int
    number: int
    messages: list[Message]


class Template:
    """A user message made from each row, and an optional system message.

    Args:
        text: the user message, with ``{column}`` placeholders.
        system: the system message, sent as written; None for none.

    Raises:
        ConfigurationError: the template is not valid (an unmatched brace, a
            field naming no column, attribute or index access).
    """

    def __init__(self, text: str, *, system: str | None = None) -> None:
        self.text = text
        self.system = system
        self.fields = _fields(text)

    @classmethod
    def from_file(cls, path: str | Path, *, system: str | None = None) -> Template:
        """The template in a file (``--template-file``); one final newline is dropped.

        Raises:
            OSError: the file cannot be read.
            ConfigurationError: as for the constructor.
        """
        text = Path(path).read_text(encoding="utf-8").removesuffix("\n")
        return cls(text, system=system)

    def check(self, columns: Sequence[str]) -> None:
        """Check that every placeholder names one of ``columns`` (before sending anything).

        Raises:
            MissingColumn: the first placeholder whose column is not there.
        """
        present = set(columns)
        for field in self.fields:
            if field not in present:
                raise MissingColumn(field, columns)

    def render(self, values: Mapping[str, Any]) -> list[Message]:
        """The messages for one row's values.

        Raises:
            MissingColumn: the row lacks a column the template uses (a JSONL
                row or a dict can lack keys the first row had).
        """
        try:
            filled = {field: _as_text(values[field]) for field in self.fields}
        except KeyError as exc:
            raise MissingColumn(exc.args[0], list(values)) from None
        user: Message = {"role": "user", "content": self.text.format_map(filled)}
        return [{"role": "system", "content": self.system}, user] if self.system is not None else [user]

    def prompt(self, row: Row) -> Prompt:
        """:meth:`render` for a row read by :func:`~motio.data.open_rows`, with its id."""
        return Prompt(row.id, row.number, self.render(row.values))

    def prompts(self, rows: Iterable[Row | RowProblem]) -> Iterator[Prompt | RowProblem]:
        """Each row rendered, lazily; a row lacking a column becomes a :class:`RowProblem`."""
        for row in rows:
            if isinstance(row, RowProblem):
                yield row
                continue
            try:
                yield self.prompt(row)
            except MissingColumn as exc:
                yield RowProblem(row.number, f"has no column {exc.column!r}, which the template uses")


def _fields(text: str) -> tuple[str, ...]:
    """The columns a template names, each once, in order of first use."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigurationError(
            f"the template is not valid: {exc}; write {{{{ and }}}} for literal braces"
        ) from None
    fields: dict[str, None] = {}
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        _check_field(field, spec or "")
        fields[field] = None
    return tuple(fields)


def _check_field(field: str, spec: str) -> None:
    if not field.strip() or field.isdigit():
        raise ConfigurationError(
            f"the template has a placeholder {{{field}}} that names no column: write {{column_name}}"
        )
    if "." in field or "[" in field:
        raise ConfigurationError(
            f"the template's placeholder {{{field}}} reads an attribute or an index; "
            "a placeholder names a column, nothing more (a column named with '.' or '[' cannot be used)"
        )
    if "{" in spec:
        raise ConfigurationError(f"the template's placeholder {{{field}:{spec}}} nests another placeholder")


def _as_text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value
