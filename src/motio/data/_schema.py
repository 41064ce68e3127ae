"""Structured outputs: a JSON schema (or a pydantic model) asked for and checked.

One :class:`OutputSchema` holds what a run needs:

- :meth:`~OutputSchema.response_format`: the OpenAI ``response_format``
  body, ``{"type": "json_schema", "json_schema": {"name", "schema",
  "strict"}}``, which vLLM, llama.cpp's server and OpenAI read;
- :meth:`~OutputSchema.llamacpp_response_format`: the same schema in the
  form llama-cpp-python's ``create_chat_completion`` turns into a grammar,
  ``{"type": "json_object", "schema": ...}`` (it ignores ``json_schema``:
  ``_grammar_for_response_format`` in ``llama_cpp/llama_chat_format.py``,
  0.3.x, only reads ``json_object``);
- :meth:`~OutputSchema.validate`: an answer parsed as JSON and checked
  against the schema (``jsonschema``; a pydantic model's own
  ``model_validate_json`` when one was given), giving the value or why not;
- :meth:`~OutputSchema.reask`: the conversation with the invalid answer and
  the reason appended, for asking again.

``jsonschema`` is imported when a schema is first built, pydantic never by
motio: a model class passed in means the caller already has it.

``strict``: OpenAI constrains decoding to the schema only with ``"strict":
true``, and rejects (400) a strict schema in which an object does not list
all its properties as ``required`` with ``"additionalProperties": false``.
So by default ``strict`` is true exactly when the schema meets that rule;
every answer is validated by motio either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError

__all__ = ["Invalid", "OutputSchema", "Parsed", "output_schema"]

# How many of the schema's complaints an Invalid's message names (a re-ask
# with every error of a long wrong answer would swamp the conversation).
MAX_ERRORS = 5
_NAME = re.compile(r"[^a-zA-Z0-9_-]")  # OpenAI: the name matches ^[a-zA-Z0-9_-]{1,64}$

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Parsed:
    """A valid answer.

    Attributes:
        value: the JSON value (for a pydantic model, its ``model_dump(mode="json")``),
            what the result line's ``parsed`` holds.
        instance: the pydantic model instance, or None without a model.
    """

    value: Any
    instance: Any = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """An answer that is not valid JSON or breaks the schema; ``message`` says how."""

    message: str


class OutputSchema:
    """A JSON schema to ask for and to check answers against.

    Build it with :func:`output_schema` (from a dict, a file, a
    ``response_format`` body or a pydantic model class).

    Attributes:
        name: the schema's name for ``response_format`` (a file's stem, a
            model's class name, the schema's ``title``, else ``"output"``).
        schema: the JSON schema.
        strict: the ``strict`` flag sent.
        model: the pydantic model class, or None.
    """

    def __init__(
        self, schema: Mapping[str, Any], *, name: str, strict: bool | None = None, model: Any = None
    ) -> None:
        self.schema = dict(schema)
        self.name = _NAME.sub("_", name)[:64] or "output"
        self.strict = strict_compatible(self.schema) if strict is None else strict
        self.model = model
        self._validator = None if model is not None else _validator(self.schema)

    def response_format(self) -> dict[str, Any]:
        """The OpenAI ``response_format`` body for a server."""
        spec = {"name": self.name, "schema": self.schema, "strict": self.strict}
        return {"type": "json_schema", "json_schema": spec}

    def llamacpp_response_format(self) -> dict[str, Any]:
        """The ``response_format`` llama-cpp-python makes a grammar of (embedded model)."""
        return {"type": "json_object", "schema": self.schema}

    @property
    def properties(self) -> tuple[str, ...] | None:
        """The top-level fields when the schema is an object with properties (columns on export)."""
        props = self.schema.get("properties")
        return tuple(props) if isinstance(props, dict) else None

    def validate(self, answer: str) -> Parsed | Invalid:
        """Parse and check one answer; never raises for a bad answer."""
        if self.model is not None:
            return _validate_model(self.model, answer)
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as exc:
            return Invalid(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        assert self._validator is not None
        problems = _schema_errors(self._validator, value)
        return Invalid(problems) if problems else Parsed(value)

    def reask(self, messages: list[Message], answer: str, message: str) -> list[Message]:
        """The conversation to send again: ``messages``, the answer, and what is wrong with it."""
        why = (
            f"That answer is not valid: {message}. "
            "Answer again with only the JSON value, matching the schema exactly."
        )
        return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": why}]


def output_schema(spec: Any, *, name: str | None = None, strict: bool | None = None) -> OutputSchema:
    """An :class:`OutputSchema` from what a user gives.

    Args:
        spec: a JSON schema (dict); a path to a JSON file holding one
            (``--json-schema``); a ``response_format`` dict (``json_schema`` or
            llama.cpp's ``json_object`` with ``schema``); or a pydantic model class.
        name: the name sent in ``response_format``; by default from the spec.
        strict: OpenAI's ``strict``; None decides from the schema (see module docs).

    Raises:
        ConfigurationError: not a schema, a file that is not JSON, or a
            schema ``jsonschema`` rejects.
        OSError: the file cannot be read.
    """
    if isinstance(spec, (str, Path)):
        return _from_file(Path(spec), name, strict)
    if isinstance(spec, type) and hasattr(spec, "model_json_schema"):
        return OutputSchema(spec.model_json_schema(), name=name or spec.__name__, strict=strict, model=spec)
    if isinstance(spec, Mapping):
        return _from_mapping(spec, name, strict)
    raise ConfigurationError(
        f"cannot use a {type(spec).__name__} as an output schema: give a JSON schema (a dict or "
        "a .json file), a response_format dict or a pydantic model class"
    )


def _from_file(path: Path, name: str | None, strict: bool | None) -> OutputSchema:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(schema, dict):
        raise ConfigurationError(f"{path}: a JSON schema is an object, not {type(schema).__name__}")
    return _from_mapping(schema, name or path.stem, strict)


def _from_mapping(spec: Mapping[str, Any], name: str | None, strict: bool | None) -> OutputSchema:
    kind = spec.get("type")
    if kind == "json_schema" and isinstance(spec.get("json_schema"), Mapping):
        inner = spec["json_schema"]
        strict = inner.get("strict") if strict is None else strict
        return _from_mapping(inner.get("schema", {}), name or inner.get("name"), strict)
    if kind == "json_object" and isinstance(spec.get("schema"), Mapping):
        return _from_mapping(spec["schema"], name, strict)
    title = spec.get("title")
    return OutputSchema(spec, name=name or (title if isinstance(title, str) else "output"), strict=strict)


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI accepts the schema with ``strict``: every object lists all
    its properties as required and forbids others."""
    if isinstance(schema, list):
        return all(strict_compatible(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        closed = schema.get("additionalProperties") is False
        if not closed or not isinstance(props, dict) or set(schema.get("required", ())) != set(props):
            return False
    return all(strict_compatible(value) for value in schema.values() if isinstance(value, (dict, list)))


def _validator(schema: dict[str, Any]) -> Any:
    import jsonschema  # here: ~30 ms, and only a run with a schema needs it

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigurationError(f"not a valid JSON schema: {exc.message} (at {exc.json_path})") from None
    return cls(schema)


def _schema_errors(validator: Any, value: Any) -> str:
    errors = sorted(validator.iter_errors(value), key=lambda error: list(map(str, error.absolute_path)))
    described = [f"{error.json_path}: {error.message}" for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        described.append(f"and {len(errors) - MAX_ERRORS} more")
    return "; ".join(described)


def _validate_model(model: Any, answer: str) -> Parsed | Invalid:
    # pydantic's ValidationError is caught as the ValueError it is, so that
    # motio never imports pydantic itself.
    try:
        instance = model.model_validate_json(answer)
    except ValueError as exc:
        return Invalid(_pydantic_message(exc))
    return Parsed(instance.model_dump(mode="json"), instance)


def _pydantic_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    described = []
    for error in errors()[:MAX_ERRORS]:
        where = "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
        described.append(f"{where}: {error['msg']}")
    return "; ".join(described) or str(exc)
