"""``motio run --json-schema/--max-invalid/--no-reask-feedback/--cache``: checked once, opened for the run.

Everything here happens before anything is sent: the schema file is read
and checked (exit 2 when it is not one), the backend is asked whether it
can be asked for a schema at all (Anthropic's Messages API cannot: exit 2),
and only then, for the run, the cache file is opened. Without any of these
flags, nothing is imported (no jsonschema, no sqlite3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._args import AnswerArgs
from ._errors import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..batch._structured import Answering
    from ..data import OutputSchema, ResponseCache
    from ._backend import BackendSpec

__all__ = ["AnswerPlan"]


@dataclass(slots=True)
class AnswerPlan:
    """The run's schema (read and checked) and cache (opened by :meth:`open`)."""

    args: AnswerArgs
    schema: OutputSchema | None = None
    cache: ResponseCache | None = None

    @property
    def wanted(self) -> bool:
        """Whether the run has a schema or a cache (else the engine's plain path)."""
        return self.args.json_schema is not None or self.args.cache is not None

    @classmethod
    def check(cls, args: AnswerArgs, spec: BackendSpec) -> AnswerPlan:
        """The flags checked against each other and the backend; the schema read.

        Raises:
            CliError: a schema file that is not one, a flag that needs
                ``--json-schema``, or a backend that cannot be asked for a
                schema (usage errors, exit 2).
        """
        plan = cls(args)
        if args.json_schema is None and (args.max_invalid is not None or not args.reask_feedback):
            raise CliError("--max-invalid and --no-reask-feedback need --json-schema", EXIT_USAGE)
        if args.json_schema is not None:
            plan.schema = _read_schema(args.json_schema)
            _check_backend(spec)
        return plan

    def check_format(self, fmt: str | None) -> None:
        """Refuse the flags with an OpenAI Batch file, whose bodies are sent as written.

        Raises:
            CliError: a usage error (exit 2).
        """
        from ..batch import PromptFormat

        if self.wanted and fmt == PromptFormat.OPENAI_BATCH:
            raise CliError(
                "--json-schema and --cache apply to motio's own prompt lines; an OpenAI Batch body is "
                "sent as written (put response_format in its body)",
                EXIT_USAGE,
            )

    def open(self) -> Answering | None:
        """What the batch engine wraps each prompt in; None without a schema or a cache.

        Raises:
            CliError: the cache file cannot be opened (exit 2).
        """
        if not self.wanted:
            return None
        from ..batch._structured import Answering
        from ..data import DEFAULT_MAX_INVALID

        if self.args.cache is not None and self.cache is None:
            self.cache = _open_cache(self.args.cache)
        max_invalid = DEFAULT_MAX_INVALID if self.args.max_invalid is None else self.args.max_invalid
        return Answering(self.schema, max_invalid, self.args.reask_feedback, self.cache)

    def cache_path(self) -> str | None:
        """The cache's file, as the summary names it (None: no cache)."""
        if self.args.cache is None:
            return None
        if self.args.cache:
            return self.args.cache
        from ..data import default_cache_path

        return str(default_cache_path())

    def close(self) -> None:
        """Close the cache, if open. Idempotent."""
        if self.cache is not None:
            self.cache.close()


def _read_schema(path: str) -> OutputSchema:
    from .._exceptions import ConfigurationError
    from ..data import output_schema

    try:
        return output_schema(path)
    except ConfigurationError as exc:
        raise CliError(f"--json-schema: {exc}", EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"--json-schema: cannot read {path!r}: {exc.strerror}", EXIT_USAGE) from exc


def _check_backend(spec: BackendSpec) -> None:
    from ..backends._registry import backend_class

    backend = backend_class(spec.kind)
    if backend.response_format_style is None:
        raise CliError(
            f"--json-schema: the {spec.kind} backend has no way to ask for a JSON schema (no "
            "response_format); use an OpenAI-compatible server or the embedded model",
            EXIT_USAGE,
        )


def _open_cache(path: str) -> ResponseCache:
    import sqlite3

    from ..data import ResponseCache

    try:
        return ResponseCache(path or None)
    except (sqlite3.Error, OSError) as exc:
        raise CliError(f"--cache: cannot use {path or 'the default cache'}: {exc}", EXIT_USAGE) from exc
