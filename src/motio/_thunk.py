"""``ModelOutputThunk``: a generation's text, usable before it is finished.

A thunk is fed by one producer task running ``send_to_queue``. Instead of a
real queue plus a second task that drains it, the producer writes into a
queue-shaped ``_Sink`` that folds each chunk into the thunk's list of parts
at once. Consumers keep their own cursor into that list and are woken once
per batch of new parts, so a consumer that falls behind receives the pending
deltas merged into one string instead of one wake-up per chunk.

Lifecycle (``_State``-like, derived from three fields)::

    running ──► computed            (value set; cancelled=True after aclose)
            └─► failed              (error set; value stays None)
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._feed import DEFAULT_CHUNK_TIMEOUT, send_to_queue

__all__ = ["GenerationMeta", "ModelOutputThunk"]

T = TypeVar("T")

ProcessFn = Callable[["ModelOutputThunk[Any]", Any], "str | None | Awaitable[str | None]"]
PostProcessFn = Callable[["ModelOutputThunk[Any]"], "None | Awaitable[None]"]

# Orders failures in time, so wait_for_all_mots raises the earliest one.
_failure_clock = itertools.count()


@dataclass(slots=True)
class GenerationMeta:
    """What is known about how a thunk's text was generated.

    The thunk fills ``ttfb_ms``; backends fill the rest.
    """

    model: str | None = None
    provider: str | None = None
    usage: dict[str, int] | None = None
    ttfb_ms: float | None = None
    streaming: bool | None = None
    finish_reasons: list[str] = field(default_factory=list)
    response_id: str | None = None


class ModelOutputThunk(Generic[T]):
    """A model's output: exists at once, computed in the background.

    Args:
        value: the finished text; a ``str`` makes the thunk computed.
        meta: free-form metadata for the caller.
        parsed_repr: a parsed form of the output (type ``T``), if any.
        tool_calls: tool calls the model asked for, if any.

    Raises:
        TypeError: ``value`` is neither ``None`` nor a ``str``.
    """

    __slots__ = (
        "_parts", "_value", "_computed", "_error", "_fail_seq", "_cancelled", "_loop",
        "_task", "_waiters", "_callbacks", "_stream_pos", "_t0", "_ttfb_ms", "_generation",
        "_meta", "parsed_repr", "tool_calls", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        value: str | None = None,
        meta: dict[str, Any] | None = None,
        parsed_repr: T | None = None,
        tool_calls: dict[str, Any] | None = None,
    ) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"ModelOutputThunk value must be a str or None, got {type(value).__name__}")
        self._parts: list[str] = [value] if value else []
        self._value = value
        self._computed = value is not None
        self._error: BaseException | None = None
        self._fail_seq = 0
        self._cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._callbacks: list[Callable[[ModelOutputThunk[Any]], None]] | None = None
        self._stream_pos = 0
        self._t0 = 0.0
        self._ttfb_ms: float | None = None
        # Created on first access: most in-flight thunks never need them yet.
        self._generation: GenerationMeta | None = None
        self._meta = meta
        self.parsed_repr = parsed_repr
        self.tool_calls = tool_calls

    @classmethod
    def from_response(
        cls,
        response: Any,
        *,
        process: ProcessFn | None = None,
        post_process: PostProcessFn | None = None,
        chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
        on_timeout: Callable[[], object] | None = None,
    ) -> ModelOutputThunk[Any]:
        """Start generating from a backend response on the running loop.

        Args:
            response: what ``send_to_queue`` accepts: a coroutine or
                awaitable, an async iterator, or a blocking iterator.
            process: ``process(mot, chunk)``, plain or async, folds one
                backend chunk into the thunk and returns the text it adds
                (or ``None``). The default accepts ``str`` chunks.
            post_process: ``post_process(mot)``, plain or async, runs once
                when the stream ends, before the thunk is marked computed.
            chunk_timeout: see ``send_to_queue``.
            on_timeout: see ``send_to_queue``.

        Returns:
            A thunk whose generation is already running.

        Raises:
            RuntimeError: no event loop is running in this thread.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(response):
                response.close()  # refused: never let it warn "never awaited"
            raise RuntimeError(
                "ModelOutputThunk.from_response() needs a running event loop; call it "
                "from async code, or from sync code through motio.run_sync(...)"
            ) from None
        mot: ModelOutputThunk[Any] = cls()
        mot._loop = loop
        mot._t0 = loop.time()
        sink = _Sink(mot, process, post_process)
        feed = send_to_queue(response, sink, chunk_timeout=chunk_timeout, on_timeout=on_timeout)  # type: ignore[arg-type]
        mot._task = task = loop.create_task(feed)
        if inspect.iscoroutine(response):
            task.add_done_callback(_ProducerDone(mot, response))
        return mot

    # -- metadata --------------------------------------------------------------

    @property
    def generation(self) -> GenerationMeta:
        """How the text was generated: model, usage, ttfb_ms, finish reasons..."""
        if self._generation is None:
            self._generation = GenerationMeta(ttfb_ms=self._ttfb_ms)
        return self._generation

    @generation.setter
    def generation(self, meta: GenerationMeta) -> None:
        self._generation = meta

    @property
    def meta(self) -> dict[str, Any]:
        """Free-form metadata for the caller."""
        if self._meta is None:
            self._meta = {}
        return self._meta

    @meta.setter
    def meta(self, meta: dict[str, Any]) -> None:
        self._meta = meta

    # -- reading the value -------------------------------------------------

    @property
    def value(self) -> str | None:
        """The full text once computed, else ``None``."""
        return self._value

    @value.setter
    def value(self, text: str) -> None:
        if self._task is not None and not self._is_done():
            raise RuntimeError("cannot set the value of a thunk while it is generating")
        if not isinstance(text, str):
            raise TypeError(f"ModelOutputThunk value must be a str, got {type(text).__name__}")
        self._parts = [text] if text else []
        self._stream_pos = 0
        self._value = text
        self._computed = True
        self._error = None

    @property
    def error(self) -> BaseException | None:
        """The generation's error, or ``None`` (a cancelled thunk has none)."""
        return self._error

    @property
    def cancelled(self) -> bool:
        """True when ``aclose()`` stopped the generation before its end."""
        return self._cancelled

    def is_computed(self) -> bool:
        """Return True once the full text is available."""
        return self._computed

    async def avalue(self) -> str:
        """Wait for the generation to finish.

        Returns:
            The full text (the partial text if the thunk was cancelled).

        Raises:
            Exception: the generation's error, to every caller, every time.
            RuntimeError: awaited from another loop, or the thunk has no
                generation.
        """
        if self._computed:
            return self._value  # type: ignore[return-value]
        self._check_loop()
        while not self._is_done():
            await self._wait_change()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, str]:
        return self.avalue().__await__()

    async def astream(self) -> str:
        """Return the text added since the previous ``astream()`` call.

        Waits for new text when there is none yet. A call that is waiting
        when the thunk completes returns the rest, possibly ``""``.

        Raises:
            RuntimeError: the thunk is computed and everything was already
                delivered (read ``.value`` instead).
            Exception: the generation's error, once pending text is delivered.
        """
        self._check_loop()
        pos = self._stream_pos
        if pos == len(self._parts):
            if self._is_done():
                if self._error is not None:
                    raise self._error
                raise RuntimeError(
                    "astream() called on a computed thunk whose text was all "
                    "delivered; read .value instead"
                )
            await self._wait_change()
        parts = self._parts
        end = self._stream_pos = len(parts)
        if pos == end and self._error is not None:
            raise self._error
        return "".join(parts[pos:end])

    def __aiter__(self) -> AsyncIterator[str]:
        self._check_loop()
        return _Deltas(self)

    # -- closing -----------------------------------------------------------

    async def aclose(self) -> None:
        """Cancel an unfinished generation and wait until it has stopped.

        The producer and the backend's iterator are stopped before this
        returns; the thunk is then computed with the partial text and
        ``cancelled`` is True. Does nothing on a finished thunk.
        """
        if self._is_done():
            return
        self._check_loop()
        task = self._task
        if task is None:
            self._finish(cancelled=True)
            return
        task.cancel()
        # asyncio.wait() does not raise the task's own CancelledError, but a
        # cancel() of *our* caller still propagates out of it.
        await asyncio.wait((task,))
        if not self._is_done():
            # Cancelled before its first step: send_to_queue never ran, so
            # no terminal marker came; settle here so no waiter hangs.
            self._finish(cancelled=True)

    async def __aenter__(self) -> ModelOutputThunk[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- presentation --------------------------------------------------------

    def __str__(self) -> str:
        return self._value or ""

    def __repr__(self) -> str:
        if self._error is not None:
            state = f"failed {type(self._error).__name__}"
        elif self._computed:
            state = "cancelled" if self._cancelled else "computed"
        else:
            state = "generating" if self._task is not None else "empty"
        text = "".join(self._parts)
        shown = text if len(text) <= 24 else text[:23] + "…"
        return f"<ModelOutputThunk {state} {shown!r}>"

    # -- internals -----------------------------------------------------------

    def _is_done(self) -> bool:
        return self._computed or self._error is not None

    def _check_loop(self) -> None:
        loop = self._loop
        if loop is None:
            if self._task is None and not self._computed:
                raise RuntimeError(
                    "this ModelOutputThunk has no generation: create it with "
                    "ModelOutputThunk.from_response(...) or a backend's generate()"
                )
            return
        running = asyncio.get_running_loop()
        if running is not loop:
            raise RuntimeError(
                f"this ModelOutputThunk belongs to event loop {loop!r} but was used from "
                f"{running!r}; await it on the loop that created it (for sync code, "
                "create and await it inside one motio.run_sync(...) call)"
            )

    async def _wait_change(self) -> None:
        if self._task is None:
            self._check_loop()  # raises: nothing will ever change
        waiter = self._loop.create_future()  # type: ignore[union-attr]
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        await waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, *, cancelled: bool = False) -> None:
        self._value = "".join(self._parts)
        self._computed = True
        self._cancelled = cancelled
        self._settle()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._fail_seq = next(_failure_clock)
        self._settle()

    def _settle(self) -> None:
        self._notify()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    def _add_done_callback(self, callback: Callable[[ModelOutputThunk[Any]], None]) -> None:
        if self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def _remove_done_callback(self, callback: Callable[[ModelOutputThunk[Any]], None]) -> None:
        if self._callbacks is not None and callback in self._callbacks:
            self._callbacks.remove(callback)


class _Deltas:
    """One ``async for`` over a thunk: its own cursor, from the start."""

    __slots__ = ("_mot", "_pos")

    def __init__(self, mot: ModelOutputThunk[Any]) -> None:
        self._mot = mot
        self._pos = 0

    def __aiter__(self) -> _Deltas:
        return self

    async def __anext__(self) -> str:
        mot = self._mot
        while True:
            parts = mot._parts
            end = len(parts)
            pos = self._pos
            if pos < end:
                self._pos = end
                return parts[pos] if end - pos == 1 else "".join(parts[pos:end])
            if mot._is_done():
                if mot._error is not None:
                    raise mot._error
                raise StopAsyncIteration
            await mot._wait_change()


class _Sink:
    """The queue ``send_to_queue`` fills for a thunk: folds chunks in place.

    ``put_nowait`` handles everything that needs no await; it raises
    ``QueueFull`` when an async ``process``/``post_process`` must be
    awaited, which makes ``send_to_queue`` call ``put`` (the queue protocol).
    """

    __slots__ = ("_mot", "_process", "_post_process", "_pending", "_started")

    def __init__(
        self,
        mot: ModelOutputThunk[Any],
        process: ProcessFn | None,
        post_process: PostProcessFn | None,
    ) -> None:
        self._mot = mot
        self._process = process
        self._post_process = post_process
        self._pending: Awaitable[Any] | None = None
        self._started = False

    def put_nowait(self, item: Any) -> None:
        if item.__class__ is str and self._process is None and self._started:
            if item:
                mot = self._mot
                mot._parts.append(item)
                if mot._waiters:
                    mot._notify()
            return
        self._put_other(item)

    async def put(self, item: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            self.put_nowait(item)
            return
        if item is None:
            try:
                await pending
            except Exception as exc:
                self._mot._fail(exc)
                return
            self._mot._finish()
            return
        self._add(await pending)

    def _put_other(self, item: Any) -> None:
        if item is None:
            self._end()
        elif isinstance(item, BaseException):
            self._stop(item)
        else:
            self._chunk(item)

    def _chunk(self, chunk: Any) -> None:
        if not self._started:
            self._started = True
            mot = self._mot
            mot._ttfb_ms = (mot._loop.time() - mot._t0) * 1000.0  # type: ignore[union-attr]
            if mot._generation is not None:
                mot._generation.ttfb_ms = mot._ttfb_ms
        if self._process is None:
            if not isinstance(chunk, str):
                raise TypeError(
                    f"got a {type(chunk).__name__} chunk; the default process accepts str "
                    "chunks only: pass process=... to ModelOutputThunk.from_response"
                )
            self._add(chunk)
            return
        text = self._process(self._mot, chunk)
        if inspect.isawaitable(text):
            self._pending = text
            raise asyncio.QueueFull
        self._add(text)

    def _add(self, text: str | None) -> None:
        if text:
            mot = self._mot
            mot._parts.append(text)
            if mot._waiters:
                mot._notify()

    def _end(self) -> None:
        mot = self._mot
        if self._post_process is not None:
            try:
                result = self._post_process(mot)
            except Exception as exc:
                mot._fail(exc)
                return
            if inspect.isawaitable(result):
                self._pending = result
                raise asyncio.QueueFull
        mot._finish()

    def _stop(self, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError):
            self._mot._finish(cancelled=True)
        else:
            self._mot._fail(error)


class _ProducerDone:
    """Done-callback for producers of coroutine responses.

    A producer cancelled before its first step (by aclose() right after
    creation, or a loop shutting down) never awaits the response coroutine:
    close it so it cannot warn "never awaited", and settle the thunk, which
    no terminal marker will reach. Async iterators need none of this.
    """

    __slots__ = ("_mot", "_response")

    def __init__(self, mot: ModelOutputThunk[Any], response: Any) -> None:
        self._mot = mot
        self._response = response if inspect.iscoroutine(response) else None

    def __call__(self, task: asyncio.Task[None]) -> None:
        if self._response is not None:
            self._response.close()
        mot = self._mot
        if mot._is_done():
            return
        if task.cancelled():
            mot._finish(cancelled=True)
        else:
            mot._fail(task.exception() or RuntimeError("producer ended without a result"))
