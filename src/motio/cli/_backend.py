"""Turning command-line options into a checked, ready backend.

Backends (and through them the openai SDK or llama.cpp) are imported here,
inside functions, so ``motio --help`` stays instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError, MotioError
from ._errors import EXIT_BACKEND, EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["BackendSpec", "generation_options", "one_line", "open_backend"]

# The embedded model serves one generation at a time, the others just queue,
# so more than one worker would only inflate every latency figure.
_DEFAULT_CONCURRENCY = {"llamacpp": 1, "openai": 16}


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """Which backend to build, from ``--backend/--model/--base-url/--api-key-env``."""

    kind: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 1

    @classmethod
    def from_args(cls, args: Any) -> BackendSpec:
        # --base-url only makes sense for a server, so it implies --backend openai.
        kind = args.backend or ("openai" if args.base_url else "llamacpp")
        if kind == "llamacpp" and (args.base_url or args.api_key_env):
            raise CliError(
                "--base-url and --api-key-env need --backend openai "
                "(the llamacpp backend runs the model in this process)",
                EXIT_USAGE,
            )
        concurrency = getattr(args, "concurrency", None) or _DEFAULT_CONCURRENCY[kind]
        return cls(kind, args.model, args.base_url, args.api_key_env, concurrency)


def read_api_key(variable: str | None) -> str | None:
    """The API key from the named environment variable (never from argv).

    Raises:
        CliError: the variable is named but not set.
    """
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise CliError(f"--api-key-env {variable}: environment variable is not set", EXIT_USAGE)
    return key


def _build(spec: BackendSpec) -> Backend:
    from ..backends import LlamaCppBackend, OpenAIBackend

    if spec.kind == "openai":
        return OpenAIBackend(
            spec.model,
            base_url=spec.base_url,
            api_key=read_api_key(spec.api_key_env),
            max_concurrency=spec.concurrency,
        )
    # Each extra slot is one more model instance generating in parallel.
    return LlamaCppBackend(spec.model, max_concurrency=spec.concurrency)


async def open_backend(spec: BackendSpec) -> Backend:
    """Build the backend and run its fast preflight check.

    Raises:
        CliError: one clear line for an unreachable server, a refused key,
            an unknown model, a bad option or a missing optional dependency.
    """
    try:
        backend = _build(spec)
    except (MotioError, ModuleNotFoundError) as exc:
        raise _preflight_error(exc, spec) from exc
    try:
        await backend.check()
    except (MotioError, ModuleNotFoundError) as exc:
        await backend.aclose()
        raise _preflight_error(exc, spec) from exc
    except BaseException:
        await backend.aclose()
        raise
    return backend


def _preflight_error(exc: BaseException, spec: BackendSpec) -> CliError:
    if isinstance(exc, ModuleNotFoundError):
        extra = "openai" if spec.kind == "openai" else "llamacpp"
        return CliError(
            f"the {spec.kind} backend needs the '{exc.name}' package: pip install 'motio[{extra}]'",
            EXIT_USAGE,
        )
    # A bad option or model path is the user's to fix (usage); anything else
    # means the server: unreachable, refusing the key, or lacking the model.
    code = EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_BACKEND
    return CliError(one_line(exc), code)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def generation_options(args: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword options for ``backend.generate`` from the command line.

    Only options the user set are passed, so each backend keeps its own
    defaults; a ``--chunk-timeout`` of 0 disables the per-chunk limit.
    """
    options: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    options = {name: value for name, value in options.items() if value is not None}
    if args.chunk_timeout is not None:
        options["chunk_timeout"] = args.chunk_timeout or None
    options.update(overrides or {})
    return options
