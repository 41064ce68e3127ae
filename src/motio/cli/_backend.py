"""Turning command-line options into a checked, ready backend.

Backends (and through them aiohttp or llama.cpp) are imported here,
inside functions, so ``motio --help`` stays instant.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError, MotioError, NotFoundError
from ._args import BackendArgs, GenerationArgs
from ._errors import EXIT_BACKEND, EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "BackendSpec",
    "build_backend",
    "generation_options",
    "one_line",
    "open_backend",
    "run_options",
    "server_urls",
    "startup_timeout",
]

#: ``--max-tokens`` when not given (an OpenAI Batch body is sent without it).
DEFAULT_MAX_TOKENS = 512

#: Upper bound of --concurrency auto, unless given as auto:N.
_AUTO_BOUND = 256
#: Seconds the start-up check of a server may take ($MOTIO_STARTUP_TIMEOUT).
STARTUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """Which backend to build, from ``--backend/--model/--base-url/--endpoints/--api-key-env``.

    ``base_url`` is the (first) server; ``base_urls`` lists them all when
    there are several, and is empty otherwise. ``ca_bundle``: the absolute
    path of ``--ca-bundle`` (a path, so a Ray worker can rebuild it).
    ``prefix_routing``: False with ``--no-prefix-routing``.
    """

    kind: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int | str = 1
    max_retries: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    first_token_timeout: float | None = None
    total_timeout: float | None = None
    base_urls: tuple[str, ...] = ()
    ca_bundle: str | None = None
    metrics: tuple[str, ...] | bool = True
    prefix_routing: bool = True

    @classmethod
    def from_args(cls, args: BackendArgs) -> BackendSpec:
        """The backend the command line names, its flags checked.

        Raises:
            CliError: server flags for a backend that runs in this process,
                an unreadable ``--endpoints`` or ``--ca-bundle`` file (usage errors).
        """
        from ..backends._registry import DEFAULT_BACKEND, SERVER_BACKEND, backend_class

        urls = server_urls(args)
        # --base-url only makes sense for a server, so it implies the server backend.
        kind = args.backend or (SERVER_BACKEND if urls else DEFAULT_BACKEND)
        backend = backend_class(kind)
        if not backend.remote and (urls or args.api_key_env or args.ca_bundle):
            raise CliError(
                f"--base-url, --endpoints, --api-key-env and --ca-bundle need --backend {_server_backends()} "
                f"(the {kind} backend runs the model in this process)",
                EXIT_USAGE,
            )
        # The backend's own default: "auto" finds a server's capacity (see
        # motio/backends/http/_adaptive.py); the embedded model serves one
        # generation at a time, so more would only inflate every latency figure.
        concurrency = args.concurrency or backend.default_concurrency
        if not backend.remote and isinstance(concurrency, str):
            concurrency = 1  # one model instance; "auto" is for servers
        first = urls[0] if urls else None
        several = urls if len(urls) > 1 else ()
        return cls(
            kind, args.model, first, args.api_key_env, concurrency,
            args.max_retries, args.rpm, args.tpm, args.first_token_timeout, args.total_timeout,
            base_urls=several,
            ca_bundle=None if args.ca_bundle is None else _readable_ca_bundle(args.ca_bundle),
            metrics=_metrics_pages(args, max(1, len(urls))),
            prefix_routing=args.prefix_routing,
        )  # fmt: skip

    @property
    def remote(self) -> bool:
        """The backend talks to servers (``Backend.remote``)."""
        from ..backends._registry import backend_class

        return backend_class(self.kind).remote

    @property
    def servers(self) -> int:
        """How many servers the backend spreads over (1 for the embedded model)."""
        return max(1, len(self.base_urls))

    @property
    def per_server(self) -> int:
        """Generations in flight at most on one server (or the embedded model)."""
        if isinstance(self.concurrency, int):
            return self.concurrency
        return _auto_bound(self.concurrency)

    @property
    def in_flight(self) -> int:
        """How many prompts the run keeps in flight (the gates may admit fewer):
        enough to fill every server's limit (the batch job keeps
        ``POOL_FACTOR`` times as many when routing by prefix)."""
        return self.per_server * self.servers


def _metrics_pages(args: BackendArgs, servers: int) -> tuple[str, ...] | bool:
    """``--metrics-url`` (one per server) or ``--no-metrics``: the pages given,
    False for none, True to find them.

    Raises:
        CliError: both flags, or a count of pages that is not the servers' (usage errors).
    """
    pages = tuple(url.strip() for url in args.metrics_urls)
    if args.no_metrics and pages:
        raise CliError("--metrics-url and --no-metrics: give one of them", EXIT_USAGE)
    if args.no_metrics:
        return False
    if not pages:
        return True
    if len(pages) != servers or not all(url.startswith(("http://", "https://")) for url in pages):
        raise CliError(
            f"--metrics-url: give one http(s) URL per server, in --base-url order "
            f"({servers} server{'s' if servers > 1 else ''}, {len(pages)} given)",
            EXIT_USAGE,
        )
    return pages


def _server_backends() -> str:
    """The backends that talk to servers, by name (the one ``--base-url`` implies first)."""
    from ..backends._registry import SERVER_BACKEND, backend_class, backend_names

    others = [name for name in backend_names() if name != SERVER_BACKEND and backend_class(name).remote]
    return " or ".join([SERVER_BACKEND, *others])


def server_urls(args: BackendArgs) -> tuple[str, ...]:
    """The servers from ``--base-url`` (repeatable) and ``--endpoints FILE``, in
    order, each once.

    Raises:
        CliError: an unreadable endpoints file, one without any URL, or a line
            that is not an http(s) URL (usage errors).
    """
    urls = [url.strip().rstrip("/") for url in args.base_urls]
    if args.endpoints is not None:
        urls += _read_endpoints(args.endpoints)
    return tuple(dict.fromkeys(urls))


def _readable_ca_bundle(path: str) -> str:
    """``--ca-bundle PATH`` as an absolute path, once it proved readable.

    Raises:
        CliError: a missing or unreadable file (a usage error).
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CliError(f"--ca-bundle {path}: cannot read it: {exc.strerror or exc}", EXIT_USAGE) from None
    return os.path.abspath(path)


def _read_endpoints(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CliError(f"--endpoints {path}: cannot read it: {reason}", EXIT_USAGE) from None
    urls = []
    for number, line in enumerate(lines, 1):
        url = line.split("#", 1)[0].strip()
        if not url:
            continue
        if not url.startswith(("http://", "https://")) or " " in url:
            from ..backends.http import mask_url

            raise CliError(
                f"--endpoints {path}:{number}: expected one http(s) URL a line, got {mask_url(url)!r}",
                EXIT_USAGE,
            )
        urls.append(url.rstrip("/"))
    if not urls:
        raise CliError(f"--endpoints {path}: no server URL in it (one URL a line)", EXIT_USAGE)
    return urls


_SERVER_OPTIONS = ("max_retries", "rpm", "tpm", "first_token_timeout", "total_timeout")


def _auto_bound(concurrency: str) -> int:
    _, _, bound = concurrency.partition(":")
    return int(bound) if bound else _AUTO_BOUND


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


def build_backend(spec: BackendSpec) -> Backend:
    """The backend ``spec`` describes, not yet checked (Ray workers build theirs so)."""
    from ..backends._registry import backend_class

    cls = backend_class(spec.kind)
    if cls.remote:
        auto = not isinstance(spec.concurrency, int)
        options: dict[str, Any] = {
            name: getattr(spec, name) for name in _SERVER_OPTIONS if getattr(spec, name) is not None
        }
        # 0 on the command line means "no limit" for the optional timeouts.
        for name in ("first_token_timeout", "total_timeout"):
            if options.get(name) == 0:
                options[name] = None
        if spec.ca_bundle is not None:
            options["ssl"] = spec.ca_bundle
        if spec.metrics is not True:
            options["metrics_url"] = list(spec.metrics) if spec.metrics else False
        if not spec.prefix_routing:
            options["prefix_routing"] = False
        return cls(
            spec.model,
            base_url=list(spec.base_urls) if spec.base_urls else spec.base_url,
            api_key=read_api_key(spec.api_key_env),
            max_concurrency="auto" if auto else spec.per_server,
            concurrency_bound=spec.per_server,
            **options,
        )
    # Each extra slot is one more model instance generating in parallel.
    return cls(spec.model, max_concurrency=spec.in_flight)


async def open_backend(spec: BackendSpec) -> Backend:
    """Build the backend and run its fast preflight check.

    Raises:
        CliError: one clear line for an unreachable server, a refused key,
            an unknown model, a bad option or a missing optional dependency.
    """
    try:
        backend = build_backend(spec)
    except (MotioError, ModuleNotFoundError) as exc:
        raise _preflight_error(exc, spec) from exc
    try:
        await _bounded_check(backend, spec)
    except (MotioError, ModuleNotFoundError) as exc:
        await backend.aclose()
        raise _preflight_error(exc, spec) from exc
    except BaseException:
        await backend.aclose()
        raise
    return backend


def startup_timeout() -> float:
    """Seconds a server's start-up check may take: $MOTIO_STARTUP_TIMEOUT or 10."""
    text = os.environ.get("MOTIO_STARTUP_TIMEOUT")
    try:
        value = float(text) if text else STARTUP_TIMEOUT
    except ValueError:
        raise CliError(
            f"MOTIO_STARTUP_TIMEOUT must be a number of seconds, got {text!r}", EXIT_USAGE
        ) from None
    return value if value > 0 else STARTUP_TIMEOUT


async def _bounded_check(backend: Backend, spec: BackendSpec) -> None:
    # A server that accepts connections and never answers would otherwise
    # hold the start-up forever. Loading the embedded model is not bounded:
    # it is local work that finishes, however slow the disk.
    if not backend.remote:
        await backend.check()
        return
    limit = startup_timeout()
    if spec.base_urls:
        await _check_several(backend, limit)
        return
    try:
        async with asyncio.timeout(limit):
            await backend.check()
    except TimeoutError as exc:
        if isinstance(exc, MotioError):
            raise
        from ..backends.http import mask_url

        raise CliError(
            f"the server at {mask_url(spec.base_url or '')} did not answer within {limit:g} s "
            "(start-up check: GET /models); check that it is up and not overloaded, or set "
            "MOTIO_STARTUP_TIMEOUT",
            EXIT_BACKEND,
        ) from None


async def _check_several(backend: Backend, limit: float) -> None:
    """Start if one server answers; warn for each that does not.

    Raises:
        MotioError: none answered (one line naming each, and why).
    """
    from ..backends.http import none_passed, short_reason

    report = await backend.check_each(timeout=limit)
    failed = [(url, error) for url, error in report if error is not None]
    if len(failed) == len(report):
        raise none_passed(failed)
    for url, error in failed:
        # A server that answers without the model was started with another
        # one: it rejoins only once it lists the model (probed like a dead one).
        trouble = "does not serve the model" if isinstance(error, NotFoundError) else "does not answer"
        print(
            f"motio: warning: {url} {trouble} ({short_reason(url, error)}); running on the other "
            "servers, and trying it again from time to time",
            file=sys.stderr,
            flush=True,
        )


def _preflight_error(exc: BaseException, spec: BackendSpec) -> CliError:
    if isinstance(exc, ModuleNotFoundError):
        # Each backend's optional dependencies are the extra of its name.
        return CliError(
            f"the {spec.kind} backend needs the '{exc.name}' package: pip install 'motio[{spec.kind}]'",
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


def generation_options(args: GenerationArgs, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword options for ``backend.generate`` from the command line.

    Only options the user set are passed, so each backend keeps its own
    defaults; a ``--chunk-timeout`` of 0 disables the per-chunk limit.
    """
    options, defaults = run_options(args)
    return {**defaults, **options, **(overrides or {})}


def run_options(args: GenerationArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, defaults)`` for ``motio run``'s engine.

    ``options``: what the command line gave (it fills what a prompt line
    leaves out, OpenAI Batch bodies included); ``defaults``: what applies to
    motio's own lines only (``max_tokens`` 512 when not given), since a
    Batch body is sent as the Batch API would send it.
    """
    given: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "extra_body": args.extra_body,
    }
    options = {name: value for name, value in given.items() if value is not None}
    if args.chunk_timeout is not None:
        options["chunk_timeout"] = args.chunk_timeout or None
    return options, {"max_tokens": DEFAULT_MAX_TOKENS}
