"""A prompt's answer through the output schema and the response cache.

The batch engine's per-prompt step is ``Engine.generate``; with a schema
(``--json-schema``, ``response_format=``) or a cache (``--cache``,
``cache=``) the engine calls :meth:`Answering.answer` instead, which wraps
it. Without either the engine never comes here: a run of plain prompts does
no work of this module's, and imports neither jsonschema nor sqlite3.

For one prompt, in this order:

1. the cache (if any): the request's key (:func:`~motio.data.request_key`
   of its body: model, messages, sampling options, ``response_format``);
   a hit is written as the stored line with this prompt's id,
   ``"cached": true``, no request sent;
2. the schema (if any): the request is sent with the backend's kind of
   ``response_format``; each answer is checked (:class:`~motio.data.AnswerCheck`)
   and an invalid one is asked again, up to ``max_invalid`` times, with the
   answer and the complaint appended (``reask``) or the same messages again;
   the line gets ``parsed`` (the JSON value) and ``reasks``; when the bound
   is spent, the line is an ``InvalidOutput`` error whose ``output`` is the
   last answer and whose ``error.message`` says what is wrong;
3. a successful line is stored in the cache under the key of step 1 (the
   prompt's first request, so a rerun gets the final, valid answer at once).

A line's ``usage`` adds up every answer asked for (re-asks are paid for),
its ``latency_ms`` spans them all. Only motio's own prompt lines go through
here: an OpenAI Batch body carries its own ``response_format`` and is sent
as written (``motio run`` refuses ``--json-schema`` and ``--cache`` with one).
On Ray, each worker opens its own (validator, cache connection) from the
driver's :class:`AnsweringRecipe`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._exceptions import ConfigurationError, InvalidOutput, UnsupportedOptionError
from ._records import OPENAI_BATCH, PromptRecord

if TYPE_CHECKING:
    from ..backends import Backend
    from ..data import OutputSchema, ResponseCache

__all__ = ["Answering", "AnsweringRecipe", "Generating", "cache_body", "open_answering"]

# Options that say how motio waits or routes, not what is asked: never part of a cache key.
_NOT_ASKED = frozenset(
    {"chunk_timeout", "first_token_timeout", "total_timeout", "keep_response", "avoid_servers", "extra_body",
     "hedge"}
)  # fmt: skip
_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


class Generating(Protocol):
    """What :class:`Answering` asks of the engine it wraps (``Engine``; named
    here so that this module does not import the engine that imports it)."""

    backend: Backend

    async def generate(self, record: PromptRecord) -> tuple[dict[str, Any], Any]: ...

    def options_for(self, record: PromptRecord) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Answering:
    """What a batch does around each prompt's generation: the schema, the cache.

    Attributes:
        schema: every answer must match it (None: any text).
        max_invalid: invalid answers asked again before ``InvalidOutput``.
        reask: append the invalid answer and the complaint to the re-ask.
        cache: answers by request (None: no cache). Not closed here.
    """

    schema: OutputSchema | None = None
    max_invalid: int = 2
    reask: bool = True
    cache: ResponseCache | None = None

    def recipe(self) -> AnsweringRecipe:
        """What a Ray worker needs to build its own (a validator and a SQLite
        connection do not cross processes; a schema, a model class and a path do)."""
        schema = self.schema
        return AnsweringRecipe(
            None if schema is None else (dict(schema.schema), schema.name, schema.strict, schema.model),
            self.max_invalid,
            self.reask,
            None if self.cache is None else str(self.cache.path),
        )

    def close(self) -> None:
        """Close the cache, if any. Idempotent."""
        if self.cache is not None:
            self.cache.close()

    def check_backend(self, backend: Backend) -> None:
        """Refuse, before anything is sent, a schema the backend has no way to ask for.

        Raises:
            UnsupportedOptionError: ``backend.response_format_style`` is None
                (Anthropic's Messages API has no ``response_format``).
        """
        if self.schema is not None and backend.response_format_style is None:
            name = type(backend).__name__
            raise UnsupportedOptionError(
                f"{name} cannot be asked for a JSON schema (it has no response_format): every answer "
                "would be a guess at the shape, re-asked; use a backend that constrains its output "
                "(an OpenAI-compatible server, the embedded model), or put the schema in the prompt "
                "and parse the text yourself",
                option="response_format",
                backend=name,
            )

    async def answer(self, engine: Generating, record: PromptRecord) -> tuple[dict[str, Any], Any]:
        """One record's result line and its ``Attempts``, as ``Engine.generate`` returns them."""
        if record.fmt == OPENAI_BATCH:
            return await engine.generate(record)
        started = time.perf_counter()
        record = self._asking(engine.backend, record)
        key = None if self.cache is None else _key(engine, record)
        if key is not None:
            hit = self._cached(key, record, started)
            if hit is not None:
                return hit, None
        if self.schema is None:
            result, attempts = await engine.generate(record)
        else:
            result, attempts = await self._checked(engine, record, started)
        if key is not None and result["error"] is None:
            self._store(key, result)
        return result, attempts

    def _asking(self, backend: Backend, record: PromptRecord) -> PromptRecord:
        """The record with the schema's ``response_format`` among its options (ours win)."""
        if self.schema is None:
            return record
        if backend.response_format_style == "json_object":
            response_format = self.schema.llamacpp_response_format()
        else:
            response_format = self.schema.response_format()
        return replace(record, options={**record.options, "response_format": response_format})

    def _cached(self, key: str, record: PromptRecord, started: float) -> dict[str, Any] | None:
        assert self.cache is not None
        stored = self.cache.get(key)
        if not isinstance(stored, dict):
            return None
        # "id" first, as in every result line (a torn last line is recognised
        # by how it begins: _results.py). Then this run's own facts: no
        # request, no wait; the answer is the stored one.
        line = {"id": record.id, **stored}
        line.update(ttfb_ms=None, queued_ms=None, retries=0, attempts=1, cached=True)
        if "reasks" in line:
            line["reasks"] = 0  # this run asked nothing again
        line["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return line

    def _store(self, key: str, result: dict[str, Any]) -> None:
        assert self.cache is not None
        kept = {name: value for name, value in result.items() if name not in ("id", "cached")}
        self.cache.put(key, kept)

    async def _checked(
        self, engine: Generating, record: PromptRecord, started: float
    ) -> tuple[dict[str, Any], Any]:
        from ..data import AnswerCheck

        assert self.schema is not None
        check = AnswerCheck(
            self.schema, _messages(record.request), max_invalid=self.max_invalid, reask=self.reask
        )
        usage: dict[str, int] = {}
        while True:
            result, attempts = await engine.generate(record)
            _add_usage(usage, result.get("usage"))
            if result["error"] is not None:
                return _finished(result, None, usage, check.reasks, started), attempts
            try:
                parsed = check.check(result["output"] or "")
            except InvalidOutput as invalid:
                _invalid(result, invalid)
                return _finished(result, None, usage, check.reasks, started), attempts
            if parsed is not None:
                return _finished(result, parsed.value, usage, check.reasks, started), attempts
            record = replace(record, request=check.messages)


@dataclass(frozen=True, slots=True)
class AnsweringRecipe:
    """An :class:`Answering` as it travels to a Ray worker, which opens its own.

    Attributes:
        schema: ``(schema, name, strict, model)`` of the :class:`~motio.data.OutputSchema`, or None.
        cache: the cache file's path (the workers must share its machine), or None.
    """

    schema: tuple[dict[str, Any], str, bool, Any] | None
    max_invalid: int
    reask: bool
    cache: str | None

    def open(self) -> Answering:
        """This process's :class:`Answering` (its own validator, its own cache connection).

        Raises:
            sqlite3.Error, OSError: the cache file cannot be used.
        """
        from ..data import OutputSchema, ResponseCache

        schema = None
        if self.schema is not None:
            spec, name, strict, model = self.schema
            schema = OutputSchema(spec, name=name, strict=strict, model=model)
        cache = None if self.cache is None else ResponseCache(self.cache)
        return Answering(schema, self.max_invalid, self.reask, cache)


def open_answering(
    response_format: Any = None,
    cache: str | Path | bool | None = None,
    *,
    max_invalid: int = 2,
    reask: bool = True,
) -> Answering | None:
    """``motio.batch.run``'s ``response_format=`` and ``cache=`` as an :class:`Answering`.

    Args:
        response_format: a JSON schema (dict), a ``response_format`` dict, a
            pydantic model class or a path to a JSON schema file; None: none.
        cache: a SQLite file's path, True for :func:`~motio.data.default_cache_path`,
            None or False for no cache.

    Returns:
        None when neither is given. Its cache is the caller's to close
        (:meth:`Answering.close`).

    Raises:
        ConfigurationError: not a schema, or a bad ``max_invalid``.
        sqlite3.Error, OSError: the cache file cannot be used.
    """
    if response_format is None and cache in (None, False):
        return None
    from ..data import ResponseCache, output_schema

    if max_invalid < 0:
        raise ConfigurationError(f"max_invalid must be 0 or more, got {max_invalid}")
    schema = None if response_format is None else output_schema(response_format)
    opened = None
    if cache is not None and cache is not False:
        opened = ResponseCache(None if cache is True else cache)
    return Answering(schema, max_invalid, reask, opened)


def _finished(
    result: dict[str, Any], parsed: Any, usage: dict[str, int], reasks: int, started: float
) -> dict[str, Any]:
    """The line over every answer asked for: ``parsed`` right after ``output`` (null
    without a valid answer), their usage summed, the whole time, the re-asks."""
    line: dict[str, Any] = {}
    for name, value in result.items():
        line[name] = value
        if name == "output":
            line["parsed"] = parsed
    if usage:
        line["usage"] = usage
    line["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    line["reasks"] = reasks
    return line


def _invalid(result: dict[str, Any], invalid: InvalidOutput) -> None:
    """The line of a prompt whose re-asks are spent: the last answer kept as ``output``."""
    result["output"] = invalid.output
    result["error"] = {"type": type(invalid).__name__, "message": str(invalid)}


def _add_usage(total: dict[str, int], usage: Any) -> None:
    if not usage:
        return
    for name in _USAGE_FIELDS:
        value = usage.get(name)
        if isinstance(value, int):
            total[name] = total.get(name, 0) + value


def _messages(request: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A prompt as the conversation a re-ask extends."""
    return [{"role": "user", "content": request}] if isinstance(request, str) else list(request)


def cache_body(engine: Generating, record: PromptRecord) -> dict[str, Any]:
    """What the request asks (its cache key's body): the model, the messages, every
    sampling option and ``response_format``, a server's own fields from ``extra_body``."""
    options = engine.options_for(record)
    body: dict[str, Any] = {"model": options.get("model") or engine.backend.model}
    body.update(options.get("extra_body") or {})
    body.update((name, value) for name, value in options.items() if name not in _NOT_ASKED)
    body["messages"] = _messages(record.request)
    return body


def _key(engine: Generating, record: PromptRecord) -> str | None:
    from ..data import request_key

    try:
        return request_key(cache_body(engine, record))
    except TypeError:
        return None  # an option that is not JSON (a Python object): not cacheable, sent as is
