"""What every backend offers, and the pieces they share.

A backend turns a prompt into a running :class:`~motio.ModelOutputThunk`.
``generate`` is one template for every backend: refuse unknown options
(``options``, a class attribute), parse the rest once into a
:class:`Request` (the messages, the three timeouts validated and defaulted
from the backend's own, whether to keep the whole answer, the backend's
remaining options), then the one step a backend implements, ``_open``: the
source of the answer (an opener coroutine or a stream, yielding text) and
the :class:`Fold` that folds what the source reads into the thunk. The
thunk is built here, in one place. Subclasses also implement ``check`` and
``aclose``; the open/closed state and the synchronous bridges
(``generate_sync``, ``stream_sync``, ``check_sync``, ``close``) live here.

The closed state, for subclasses: ``generate()`` calls ``_ensure_open()``
(it raises ``BackendClosedError``); call it first thing in ``check()``, and
again after a generation's wait for its slot, before opening a client or
loading a model (close() may have come during the wait); call
``self._mark_closed()`` first thing in ``aclose()``, then release what the
backend holds. ``close()`` is ``aclose()`` run through ``run_sync``; do not
override it.

Capabilities, for the command and the batch engine: every backend declares
them here with a default, and a backend that has one overrides it, so that
nothing outside ``backends/`` asks by attribute name or by kind:
``remote``, ``default_concurrency``, ``response_format_style`` and ``hedging`` (class
attributes, read before a backend is built), ``max_concurrency``, ``max_reruns``, ``recipe()``,
``endpoint_snapshot()``, ``adaptive_concurrency``, ``prefix_routing``, ``check_each()``, and for
Ray workers ``limits_to_share()`` (what the driver's backend gives) and
``share_limits()`` (what each worker's copy takes).
"""

from __future__ import annotations

import abc
import asyncio
import enum
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from .._exceptions import (
    BackendClosedError,
    ChunkTimeoutError,
    ConfigurationError,
    MotioError,
    UnsupportedOptionError,
)
from .._feed import DEFAULT_CHUNK_TIMEOUT
from .._fields import PLAIN_OPTIONS
from .._source import abandon_source, close_source, contextualise_timeout
from .._sync import run_sync
from .._thunk import ModelOutputThunk
from ._deadlines import Deadlines

if TYPE_CHECKING:
    from ._gate import Gate
    from .http._adaptive import AdaptiveConcurrency
    from .http._endpoints import EndpointSnapshot
    from .http._ratelimit import RateLimiter

__all__ = [
    "Backend",
    "COMMON_OPTIONS",
    "DEFAULT_FIRST_TOKEN_TIMEOUT",
    "Fold",
    "Request",
    "SharedLimits",
    "SlotStream",
    "check_options",
    "check_timeout",
    "refuse_hedge",
    "to_messages",
]

COMMON_OPTIONS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "chunk_timeout"})
"""Options every backend accepts in ``generate``."""

#: Default ``first_token_timeout``: generous, since it covers a server's
#: queue and prompt processing, which on a busy server take minutes.
DEFAULT_FIRST_TOKEN_TIMEOUT = 300.0

Messages = list[dict[str, Any]]


class Backend(abc.ABC):
    """A source of model output thunks.

    Attributes:
        provider: the backend kind, such as ``"openai"`` or ``"llamacpp"``.
        model: the model generations use (None until a server backend has
            asked its server, when no model was given).
    """

    provider: str
    model: str | None
    #: The server generations go to (None: no server; for errors and ``mot.generation``).
    base_url: str | None = None
    #: The options ``generate`` accepts, besides ``stream``; any other is a TypeError.
    options: ClassVar[frozenset[str]] = COMMON_OPTIONS | {
        "first_token_timeout",
        "total_timeout",
        "keep_response",
    }
    #: The defaults of ``generate``'s three timeouts (seconds, None: no limit);
    #: a backend's constructor sets them, checked by ``check_timeout``.
    first_token_timeout: float | None = DEFAULT_FIRST_TOKEN_TIMEOUT
    chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT
    total_timeout: float | None = None
    #: True for a backend that talks to servers: a server can vanish
    #: mid-run (the batch engine then stops the run, and re-runs a stream
    #: that broke mid-answer), its start-up check is bounded in time, and
    #: server options (``--base-url``...) apply. False: local work (the
    #: embedded model), whose failures are its prompts' own.
    remote: ClassVar[bool] = False
    #: ``--concurrency`` of the command when not given: an int, or
    #: ``"auto"`` (find a server's capacity; only for a remote backend).
    default_concurrency: ClassVar[int | str] = 1
    #: How a JSON schema's answers are asked for (``--json-schema``):
    #: ``"json_schema"``, OpenAI's ``response_format`` (servers);
    #: ``"json_object"``, llama-cpp-python's ``json_object`` with ``schema``,
    #: which it makes a grammar; None: the backend has no way to ask.
    response_format_style: ClassVar[str | None] = "json_schema"
    #: Generations in flight at once at most (per server, for a remote
    #: backend): an int, ``"auto"``, or None for no cap.
    max_concurrency: int | str | None = 1
    #: Whether ``generate(hedge=...)`` can race a second request against a
    #: late first token (a backend of servers). A backend without it refuses
    #: any hedge but False/None with ``UnsupportedOptionError`` (``refuse_hedge``):
    #: the embedded model has no second server, and a second request would
    #: only share the first one's CPU.
    hedging: ClassVar[bool] = False
    # A class attribute, so subclasses need not call Backend.__init__.
    _closed = False
    _recipe: Callable[[], Backend]

    def __new__(cls, *args: Any, **kwargs: Any) -> Backend:
        # The constructor's own arguments are the recipe of a copy: kept here
        # once, for every backend, rather than restated in each constructor.
        self = super().__new__(cls)
        self._recipe = functools.partial(cls, *args, **kwargs)
        return self

    def recipe(self) -> Callable[[], Backend]:
        """A function that builds a new, unopened backend configured as this one
        (this one's constructor, with the same arguments).

        It pickles when those arguments do, so another process (a Ray
        worker) can build its own copy: connections and models are never
        shared across processes.
        """
        return self._recipe

    @property
    def max_reruns(self) -> int:
        """How many times a batch may run one prompt again from its start
        after its stream broke mid-answer (the batch engine's re-run, never
        ``generate``'s own). 0 here: a backend without servers has no
        connection to break; a server backend returns its bound, and its
        ``generate`` accepts ``avoid_servers=`` to steer the re-run away
        from the server that broke."""
        return 0

    def endpoint_snapshot(self) -> list[EndpointSnapshot]:
        """Per server: requests in flight, limit, rotation, generations served
        (a read-only copy). Empty here: a backend without servers."""
        return []

    @property
    def prefix_routing(self) -> bool:
        """Whether prompts are routed to servers by their prefix key (and a
        batch dispatches them grouped by it); False here: no servers to choose."""
        return False

    @prefix_routing.setter
    def prefix_routing(self, on: bool) -> None:
        """Turn routing by prefix off (or back on, where there are servers to
        choose among; here there are none)."""

    @property
    def adaptive_concurrency(self) -> AdaptiveConcurrency | None:
        """The controller of ``max_concurrency="auto"`` (its ``limit`` and
        ``snapshot()``), when there is one; None here."""
        return None

    async def check_each(self, timeout: float | None = None) -> list[tuple[str, MotioError | None]]:
        """Check each server on its own: ``(base URL, error or None)`` per
        server. Here: a backend without servers runs ``check()`` (which
        raises what is wrong) and has no server to report.

        Raises:
            MotioError: what ``check()`` raises.
        """
        await self.check()
        return []

    def limits_to_share(self) -> SharedLimits | None:
        """The limits that copies of this backend in several processes (Ray
        workers) must hold together rather than each; None here: nothing to
        share (each copy has its own model)."""
        return None

    def share_limits(
        self, *, limiter: RateLimiter | None = None, gates: Mapping[str, Gate] | None = None
    ) -> None:
        """Take limits shared with other processes, before the first request
        (see ``limits_to_share``). Here: there is nothing to take.

        Raises:
            ConfigurationError: limits given to a backend that has none to share.
        """
        if limiter is not None or gates:
            raise ConfigurationError(f"{type(self).__name__} has no limits to share")

    @property
    def is_closed(self) -> bool:
        """True once ``aclose()`` or ``close()`` was called; then generating raises."""
        return self._closed

    def _ensure_open(self) -> None:
        """Call first in ``generate()`` and ``check()``.

        Raises:
            BackendClosedError: the backend has been closed.
        """
        if self._closed:
            raise BackendClosedError(
                f"this {type(self).__name__} has been closed; create a new one to generate again"
            )

    def _mark_closed(self) -> bool:
        """Call first in ``aclose()``; return True the first time (False if already closed)."""
        first = not self._closed
        self._closed = True
        return first

    async def generate(
        self, prompt_or_messages: str | Messages, *, stream: bool = True, **options: Any
    ) -> ModelOutputThunk[Any]:
        """Start a generation and return its running ``ModelOutputThunk`` at once.

        Args:
            prompt_or_messages: a prompt (sent as one user message) or a list
                of chat messages (``{"role": ..., "content": ...}``).
            stream: stream the answer chunk by chunk (True) or fetch it whole.
            **options: ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
                ``stop``, ``chunk_timeout``, ``first_token_timeout``,
                ``total_timeout`` and the backend's own extras (for a
                server: every chat-completions field and ``extra_body``).
                ``keep_response``: keep the whole answer in
                ``mot.generation.response`` (default: whenever an option may
                shape more than the text, such as ``tools`` or ``logprobs``).
                ``hedge``: on a backend with ``hedging`` (servers), True or
                a number of seconds sends a second request when the first
                has no content after the recent p95 time to first token (or
                those seconds); the first to bring content wins. False or
                None (default): off.

        Raises:
            TypeError: an unknown option; errors of the generation itself are
                raised by the thunk (``await mot.avalue()``), as motio errors.
            ConfigurationError: a bad timeout or prompt.
            UnsupportedOptionError: a known field this backend cannot honour.
            BackendClosedError: the backend has been closed.
        """
        self._ensure_open()
        check_options(options, self.options, type(self).__name__)
        request = self._request(prompt_or_messages, stream, options)
        source, fold = self._open(request)
        mot: ModelOutputThunk[Any] = ModelOutputThunk.from_response(
            source, post_process=fold.finish, chunk_timeout=request.chunk if stream else None
        )
        fold.bind(mot)
        meta = mot.generation
        meta.provider, meta.model, meta.streaming = self.provider, self.model, stream
        meta.base_url = self.base_url
        return mot

    def _request(self, prompt_or_messages: str | Messages, stream: bool, options: dict[str, Any]) -> Request:
        """The options parsed once: what ``_open`` works from.

        Raises:
            ConfigurationError: a bad timeout or prompt.
            UnsupportedOptionError: see ``_take_options`` and ``keep_response``.
        """
        self._take_options(options)
        first_token = _option_timeout(options, "first_token_timeout", self.first_token_timeout)
        chunk = _option_timeout(options, "chunk_timeout", self.chunk_timeout)
        total = _option_timeout(options, "total_timeout", self.total_timeout)
        keep = keep_response(options, type(self).__name__)
        messages = to_messages(prompt_or_messages)
        return Request(messages, stream, keep, first_token, chunk, total, options)

    def _take_options(self, options: dict[str, Any]) -> None:
        """A backend's own look at ``generate``'s options before they are
        parsed (they are known ones): refuse what it cannot honour, rename
        synonyms. Nothing here.

        Raises:
            UnsupportedOptionError: an option the backend would have to drop.
        """

    def _open(self, request: Request) -> tuple[Any, Fold]:
        """The one step of ``generate`` a backend implements: start nothing
        yet, but return what the thunk runs.

        Returns:
            The source (an opener coroutine, or an async iterator), whose
            items are text, and the ``Fold`` that folds what the source reads
            into the thunk (``bind`` is called before the source runs,
            ``finish`` when it ends). With ``request.stream`` False the
            source is a coroutine returning the whole text.

        Raises:
            MotioError: what the backend refuses before anything is sent.
            NotImplementedError: a backend that neither implements this
                step nor overrides ``generate``.
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither _open() nor generate()")

    @abc.abstractmethod
    async def check(self) -> None:
        """Fail fast, with a message that says what to fix, if generating cannot work.

        Raises:
            BackendClosedError: the backend has been closed.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release clients, connections or the model; later generations raise
        ``BackendClosedError``. Idempotent."""

    def generate_sync(self, prompt_or_messages: str | Messages, **options: Any) -> ModelOutputThunk[Any]:
        """Generate to the end from synchronous code and return the computed thunk.

        Raises:
            motio.MotioError: the generation failed.
            BackendClosedError: the backend has been closed.
        """
        return run_sync(_computed(self, prompt_or_messages, options))

    def stream_sync(self, prompt_or_messages: str | Messages, **options: Any) -> Iterator[str]:
        """Yield the answer's text deltas as they arrive, from synchronous code.

        Closing the iterator early (``break`` in a ``for`` loop, then garbage
        collection, or ``.close()``) stops the generation.
        """
        mot = run_sync(self.generate(prompt_or_messages, stream=True, **options))
        return _sync_deltas(mot, run_sync)

    def check_sync(self) -> None:
        """``check()`` from synchronous code."""
        run_sync(self.check())

    def close(self) -> None:
        """``aclose()`` from synchronous code (on motio's background loop). Idempotent."""
        run_sync(self.aclose())

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r}>"


@dataclass(frozen=True, slots=True)
class SharedLimits:
    """What a remote backend's copies on several workers share, read once
    from the driver's backend (``Backend.limits_to_share``).

    Attributes:
        servers: the servers' base URLs.
        rpm, tpm: the rate limits (None: none).
        concurrency: per server, the limit (an int), ``"auto"``, or None (no cap).
        bound: the upper bound of ``"auto"``.
        initial: where the backend's own limit stands now (``"auto"`` starts there).
        model: the model the backend uses (found by its check, if not given).
    """

    servers: tuple[str, ...]
    rpm: float | None
    tpm: float | None
    concurrency: int | str | None
    bound: int
    initial: int
    model: str | None


class Fold(Protocol):
    """Folds what one generation's source reads into its thunk.

    The source calls ``fold`` on each thing it reads (a network read's SSE
    events, a model's chunk dict) and yields the text it returns, so the
    core's chunk watchdog sees what carried output; ``bind`` comes before
    the source runs, ``finish`` once it has ended (the thunk's
    ``post_process``: metadata the end decides, such as usage).
    """

    def bind(self, mot: ModelOutputThunk[Any]) -> None:
        """Fold into ``mot`` (its ``generation`` is where metadata goes)."""

    def fold(self, chunk: Any) -> str | None:
        """Fold one chunk into the thunk's metadata; its text, or None (no output)."""

    def finish(self, mot: ModelOutputThunk[Any]) -> None:
        """The source ended: complete ``mot.generation``.

        Raises:
            MotioError: the answer was not whole (a stream cut short).
        """


class Request(Deadlines):
    """One ``generate`` call's options, parsed once (``Backend._request``),
    and its deadlines (``Deadlines``: the same object, so a generation
    allocates one value for both).

    Attributes:
        messages: the chat messages.
        stream: stream the answer (True) or fetch it whole.
        keep: keep the whole answer in ``mot.generation.response``.
        first_token, chunk, total: the three timeouts, in seconds (None: no
            limit), validated, the backend's own where not given.
        options: the rest, for the backend (its generation fields).
    """

    __slots__ = ("messages", "stream", "keep", "options")

    def __init__(
        self,
        messages: Messages,
        stream: bool,
        keep: bool,
        first_token: float | None,
        chunk: float | None,
        total: float | None,
        options: dict[str, Any],
    ) -> None:
        # Deadlines' fields set here, not through its __init__: one call less per request.
        self.first_token = first_token
        self.chunk = chunk
        self.total = total
        self.total_at: float | None = None
        self.messages = messages
        self.stream = stream
        self.keep = keep
        self.options = options


class _Unset(enum.Enum):
    """No value given (None means "no limit" for a timeout)."""

    TOKEN = 0


_UNSET: Final = _Unset.TOKEN


def check_timeout(value: object, *, allow_none: bool = True) -> None:
    """The one check of a timeout, for constructors and ``generate`` alike.

    Raises:
        ConfigurationError: not a positive number of seconds (or None, where allowed).
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"timeouts must be positive numbers of seconds (or None where allowed), got {value!r}"
        )


def _option_timeout(options: dict[str, Any], name: str, default: float | None) -> float | None:
    value: float | None | _Unset = options.pop(name, _UNSET)
    if value is _UNSET:
        return default
    check_timeout(value)
    return value


def keep_response(options: dict[str, Any], backend: str) -> bool:
    """Whether to keep the whole answer (``mot.generation.response``),
    ``keep_response`` taken out of ``options``.

    By default, whenever an option may shape more than the text (``tools``,
    ``logprobs``, ``n``, ``response_format``, ``extra_body``...): what the
    model answered for them must not be dropped.

    Raises:
        UnsupportedOptionError: ``n`` > 1 with ``keep_response=False``: the
            thunk holds one text, the other choices would be lost.
    """
    keep = options.pop("keep_response", None)
    if keep is None:
        keep = any(key not in PLAIN_OPTIONS for key in options)
    n = options.get("n")
    if n is not None and n != 1 and not keep:
        raise UnsupportedOptionError(
            f"{backend}.generate(n={n!r}) with keep_response=False: the thunk holds one text "
            "(choice 0); keep the whole answer (keep_response=True, the default with n) to get "
            "every choice in mot.generation.response",
            option="n",
            backend=backend,
        )
    return bool(keep)


async def _computed(
    backend: Backend, prompt: str | Messages, options: dict[str, Any]
) -> ModelOutputThunk[Any]:
    mot = await backend.generate(prompt, **options)
    await mot.avalue()
    return mot


_END = object()


def _sync_deltas(mot: ModelOutputThunk[Any], run_sync: Callable[..., Any]) -> Iterator[str]:
    cursor = run_sync(_aiter(mot))
    try:
        while (delta := run_sync(_step(cursor))) is not _END:
            yield delta
    finally:
        if not mot.is_computed():
            run_sync(mot.aclose())


async def _aiter(mot: ModelOutputThunk[Any]) -> AsyncIterator[str]:
    return mot.__aiter__()


async def _step(cursor: AsyncIterator[str]) -> str | object:
    try:
        return await cursor.__anext__()
    except StopAsyncIteration:
        return _END


def to_messages(prompt_or_messages: str | Messages) -> Messages:
    """A prompt as one user message; a message list checked and passed through.

    Raises:
        ConfigurationError: neither a str nor a list of role/content dicts.
    """
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    if isinstance(prompt_or_messages, list) and all(
        isinstance(m, Mapping) and "role" in m for m in prompt_or_messages
    ):
        return prompt_or_messages
    raise ConfigurationError(
        "a prompt must be a str or a list of chat messages such as "
        f"[{{'role': 'user', 'content': '...'}}], got {type(prompt_or_messages).__name__}"
    )


def refuse_hedge(options: dict[str, Any], backend: str) -> None:
    """Take ``hedge`` out of ``options`` for a backend without ``hedging``:
    off (False, None) passes.

    Raises:
        UnsupportedOptionError: any other value.
    """
    hedge = options.pop("hedge", None)
    if hedge is not None and hedge is not False:
        raise UnsupportedOptionError(
            f"{backend} cannot honour hedge={hedge!r}: it has no second server to race a late "
            "first token on; hedge= is for backends of servers (OpenAIBackend, AnthropicBackend)",
            option="hedge",
            backend=backend,
        )


def check_options(options: Mapping[str, Any], allowed: frozenset[str], backend: str) -> None:
    """Raise TypeError naming the first option ``backend`` does not know."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"{backend}.generate() got unknown option {unknown[0]!r}; "
            f"known options: {', '.join(sorted(allowed))}"
        )


class SlotStream:
    """An async iterator that gives its concurrency slot back exactly once.

    The slot is taken before the stream starts (so waiting for it does not
    count against ``chunk_timeout``) and must come back however the stream
    ends: exhausted, failed, closed or abandoned, even before its first
    item, when an async generator's own ``finally`` would never run.

    It implements the core's ``Source`` protocol and passes ``abandon`` on
    to what it wraps, so a stuck worker thread underneath is abandoned on a
    chunk timeout, not waited for.

    A cancellation in ``__anext__`` leaves the stream open: its owner (the
    core's producer) decides whether to ``aclose`` it (waiting) or
    ``abandon`` it (a chunk timeout), and does either at once. Iterate it
    yourself only inside ``contextlib.aclosing``.
    """

    __slots__ = ("_source", "_release")

    def __init__(self, source: AsyncIterator[Any], release: Callable[[], object]) -> None:
        self._source = source
        self._release: Callable[[], object] | None = release

    def __aiter__(self) -> SlotStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._source.__anext__()
        except asyncio.CancelledError:
            raise  # the owner closes or abandons us (see the class docstring)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the wrapped stream, waiting for it, then give the slot back."""
        await self._close(close_source)

    async def abandon(self) -> None:
        """Stop the wrapped stream without waiting for it (a stuck worker
        thread), then give the slot back; the core calls this on a chunk timeout."""
        await self._close(abandon_source)

    def timeout_error(self, error: ChunkTimeoutError) -> ChunkTimeoutError:
        """The wrapped stream's context for the core's chunk timeout, if it adds any."""
        return contextualise_timeout(self._source, error)

    async def _close(self, how: Callable[[object], Awaitable[None]]) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            await how(self._source)
        finally:
            release()
