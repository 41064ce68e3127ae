"""What every backend offers, and the pieces they share.

A backend turns a prompt into a running :class:`~motio.ModelOutputThunk`.
Subclasses implement ``generate`` (async, returns at once), ``check`` and
``aclose``; the open/closed state, the synchronous bridges
(``generate_sync``, ``stream_sync``, ``check_sync``, ``close``) and option
checking live here.

The closed state, for subclasses: call ``self._ensure_open()`` first thing
in ``generate()`` and ``check()`` (it raises ``BackendClosedError``), and
again after a generation's wait for its slot, before opening a client or
loading a model (close() may have come during the wait); call
``self._mark_closed()`` first thing in ``aclose()``, then release what the
backend holds. ``close()`` is ``aclose()`` run through ``run_sync``; do not
override it.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from .._exceptions import BackendClosedError, ChunkTimeoutError, ConfigurationError
from .._source import abandon_source, close_source, contextualise_timeout
from .._sync import run_sync
from .._thunk import ModelOutputThunk

__all__ = ["Backend", "COMMON_OPTIONS", "to_messages", "check_options", "SlotStream"]

COMMON_OPTIONS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "chunk_timeout"})
"""Options every backend accepts in ``generate``."""

Messages = list[dict[str, Any]]


class Backend(abc.ABC):
    """A source of model output thunks.

    Attributes:
        provider: the backend kind, such as ``"openai"`` or ``"llamacpp"``.
        model: the model generations use (None until an OpenAI backend has
            asked its server, when no model was given).
    """

    provider: str
    model: str | None
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

    @abc.abstractmethod
    async def generate(
        self, prompt_or_messages: str | Messages, *, stream: bool = True, **options: Any
    ) -> ModelOutputThunk[Any]:
        """Start a generation and return its running ``ModelOutputThunk`` at once.

        Args:
            prompt_or_messages: a prompt (sent as one user message) or a list
                of chat messages (``{"role": ..., "content": ...}``).
            stream: stream the answer chunk by chunk (True) or fetch it whole.
            **options: ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
                ``stop``, ``chunk_timeout`` and the backend's own extras (for
                a server: every chat-completions field and ``extra_body``).
                ``keep_response``: keep the whole answer in
                ``mot.generation.response`` (default: whenever an option may
                shape more than the text, such as ``tools`` or ``logprobs``).

        Raises:
            TypeError: an unknown option; errors of the generation itself are
                raised by the thunk (``await mot.avalue()``), as motio errors.
            UnsupportedOptionError: a known field this backend cannot honour.
            BackendClosedError: the backend has been closed.
        """

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
