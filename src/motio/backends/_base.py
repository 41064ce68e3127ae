"""What every backend offers, and the pieces they share.

A backend turns a prompt into a running :class:`~motio.ModelOutputThunk`.
Subclasses implement ``generate`` (async, returns at once) and ``aclose``;
the synchronous bridges (``generate_sync``, ``stream_sync``, ``close``) and
option checking live here.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from .._exceptions import ConfigurationError

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

    @abc.abstractmethod
    async def generate(
        self, prompt_or_messages: str | Messages, *, stream: bool = True, **options: Any
    ) -> Any:
        """Start a generation and return its running ``ModelOutputThunk`` at once.

        Args:
            prompt_or_messages: a prompt (sent as one user message) or a list
                of chat messages (``{"role": ..., "content": ...}``).
            stream: stream the answer chunk by chunk (True) or fetch it whole.
            **options: ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
                ``stop``, ``chunk_timeout`` and the backend's own extras.

        Raises:
            TypeError: an unknown option; errors of the generation itself are
                raised by the thunk (``await mot.avalue()``), as motio errors.
        """

    @abc.abstractmethod
    async def check(self) -> None:
        """Fail fast, with a message that says what to fix, if generating cannot work."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release clients, connections or the model. Idempotent."""

    def generate_sync(self, prompt_or_messages: str | Messages, **options: Any) -> Any:
        """Generate to the end from synchronous code and return the computed thunk.

        Raises:
            motio.MotioError: the generation failed.
        """
        from .. import run_sync

        return run_sync(_computed(self, prompt_or_messages, options))

    def stream_sync(self, prompt_or_messages: str | Messages, **options: Any) -> Iterator[str]:
        """Yield the answer's text deltas as they arrive, from synchronous code.

        Closing the iterator early (``break`` in a ``for`` loop, then garbage
        collection, or ``.close()``) stops the generation.
        """
        from .. import run_sync

        mot = run_sync(self.generate(prompt_or_messages, stream=True, **options))
        return _sync_deltas(mot, run_sync)

    def check_sync(self) -> None:
        """``check()`` from synchronous code."""
        from .. import run_sync

        run_sync(self.check())

    def close(self) -> None:
        """``aclose()`` from synchronous code."""
        from .. import run_sync

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


async def _computed(backend: Backend, prompt: str | Messages, options: dict[str, Any]) -> Any:
    mot = await backend.generate(prompt, **options)
    await mot.avalue()
    return mot


_END = object()


def _sync_deltas(mot: Any, run_sync: Callable[..., Any]) -> Iterator[str]:
    cursor = run_sync(_aiter(mot))
    try:
        while (delta := run_sync(_step(cursor))) is not _END:
            yield delta
    finally:
        if not mot.is_computed():
            run_sync(mot.aclose())


async def _aiter(mot: Any) -> AsyncIterator[str]:
    return mot.__aiter__()  # type: ignore[no-any-return]


async def _step(cursor: AsyncIterator[str]) -> Any:
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
    ends: exhausted, failed, or closed before its first item, when an async
    generator's own ``finally`` would never run.
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
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._close("aclose")

    async def abandon(self) -> None:
        """Close without waiting on the source, if it can be left that way (a
        stuck worker thread); the core calls this when a chunk timeout fires."""
        await self._close("abandon" if hasattr(self._source, "abandon") else "aclose")

    async def _close(self, how: str) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._source, how, None)
            if close is not None:
                await close()
        finally:
            release()
