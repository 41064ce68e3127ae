"""``ModelOutputThunk``: a generation's text, usable before it is finished.

A thunk is fed by one producer task running ``send_to_queue``, and the
thunk itself is the queue that task fills (``put_nowait``/``put``): each chunk
is folded into the thunk's list of parts at once, with no real queue and no
second task. Consumers keep their own cursor into that list and are woken
once per batch of new parts, so a consumer that falls behind receives the
pending deltas merged into one string instead of one wake-up per chunk.

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
from ._sink import PostProcessFn, ProcessFn, areceive, receive

__all__ = ["GenerationMeta", "ModelOutputThunk"]

T = TypeVar("T")


# Orders failures in time, so wait_for_all_mots raises the earliest one.
_failure_clock = itertools.count(1)

_NO_PARTS: tuple[()] = ()


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
    attempts: Any = None
    """Requests made for this generation (retries included), where a backend
    retries: count, HTTP statuses and waits (``Attempts.as_dict()``)."""
    base_url: str | None = None
    """The server that answered (its API root), where a backend talks to servers."""
    queued_ms: float | None = None
    """Time spent waiting for a concurrency slot and the rate limiter before
    the request went out (all attempts), where a backend limits either;
    ``ttfb_ms - queued_ms`` is the server's own time to first token."""


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

    # Kept small on purpose: tens of thousands may be in flight at once.
    # Computed <=> _value is not None; failed <=> _extra.error is not None.
    __slots__ = ("_parts", "_value", "_task", "_waiters", "_callbacks", "_clock", "_extra")

    def __init__(
        self,
        value: str | None = None,
        meta: dict[str, Any] | None = None,
        parsed_repr: T | None = None,
        tool_calls: dict[str, Any] | None = None,
    ) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"ModelOutputThunk value must be a str or None, got {type(value).__name__}")
        # A shared empty tuple until the first text arrives: a waiting
        # generation should not pay for a list it does not use yet.
        self._parts: list[str] | tuple[()] = [value] if value else _NO_PARTS
        self._value = value
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._callbacks: list[Callable[[ModelOutputThunk[Any]], None]] | None = None
        # Minus the start time (loop clock) until the first chunk, then the
        # time to first chunk in ms: one slot, the sign tells which.
        self._clock = 0.0
        # Rarely needed state lives here, created on first use.
        self._extra: _Extra | None = None
        if meta is not None or parsed_repr is not None or tool_calls is not None:
            extra = self._more()
            extra.meta, extra.parsed_repr, extra.tool_calls = meta, parsed_repr, tool_calls

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
        mot._clock = -loop.time()
        if process is not None or post_process is not None:
            extra = mot._more()
            extra.process, extra.post_process = process, post_process
        feed = send_to_queue(response, mot, chunk_timeout=chunk_timeout, on_timeout=on_timeout)  # type: ignore[arg-type]
        mot._task = task = loop.create_task(feed)
        if inspect.iscoroutine(response):
            task.add_done_callback(_ProducerDone(mot, response))
        return mot

    # -- metadata --------------------------------------------------------------

    @property
    def generation(self) -> GenerationMeta:
        """How the text was generated: model, usage, ttfb_ms, finish reasons..."""
        extra = self._more()
        if extra.generation is None:
            extra.generation = GenerationMeta(ttfb_ms=self.ttfb_ms)
        return extra.generation

    @generation.setter
    def generation(self, meta: GenerationMeta) -> None:
        self._more().generation = meta

    @property
    def meta(self) -> dict[str, Any]:
        """Free-form metadata for the caller."""
        extra = self._more()
        if extra.meta is None:
            extra.meta = {}
        return extra.meta

    @meta.setter
    def meta(self, meta: dict[str, Any]) -> None:
        self._more().meta = meta

    @property
    def parsed_repr(self) -> T | None:
        """A parsed form of the output, if any."""
        return None if self._extra is None else self._extra.parsed_repr

    @parsed_repr.setter
    def parsed_repr(self, parsed: T | None) -> None:
        self._more().parsed_repr = parsed

    @property
    def tool_calls(self) -> dict[str, Any] | None:
        """Tool calls the model asked for, if any."""
        return None if self._extra is None else self._extra.tool_calls

    @tool_calls.setter
    def tool_calls(self, calls: dict[str, Any] | None) -> None:
        self._more().tool_calls = calls

    @property
    def ttfb_ms(self) -> float | None:
        """Milliseconds from the start to the first chunk, once it came."""
        return self._clock if self._clock >= 0 and self._task is not None else None

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
        self._parts = [text] if text else _NO_PARTS
        self._value = text
        if self._extra is not None:
            self._extra.error = None
            self._extra.stream_pos = 0

    @property
    def text(self) -> str:
        """The text received so far, in any state: the partial text of a
        failed or running generation, the whole value of a computed one."""
        if self._value is not None:
            return self._value
        return "".join(self._parts)

    @property
    def error(self) -> BaseException | None:
        """The generation's error, or ``None`` (a cancelled thunk has none)."""
        return None if self._extra is None else self._extra.error

    @property
    def cancelled(self) -> bool:
        """True when ``aclose()`` stopped the generation before its end."""
        return self._extra is not None and self._extra.cancelled

    def is_computed(self) -> bool:
        """Return True once the full text is available."""
        return self._value is not None

    async def avalue(self) -> str:
        """Wait for the generation to finish.

        Returns:
            The full text (the partial text if the thunk was cancelled).

        Raises:
            Exception: the generation's error, to every caller, every time.
            RuntimeError: awaited from another loop, or the thunk has no
                generation.
        """
        if self._value is not None:
            return self._value
        self._check_loop()
        while not self._is_done():
            await self._wait_change()
        if self.error is not None:
            raise self.error
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
        extra = self._more()  # the astream() cursor lives there
        pos = extra.stream_pos
        if pos == len(self._parts):
            if self._is_done():
                if extra.error is not None:
                    raise extra.error
                raise RuntimeError(
                    "astream() called on a computed thunk whose text was all "
                    "delivered; read .value instead"
                )
            await self._wait_change()
        parts = self._parts
        end = extra.stream_pos = len(parts)
        if pos == end and extra.error is not None:
            raise extra.error
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
        if self.error is not None:
            state = f"failed {type(self.error).__name__}"
        elif self._value is not None:
            state = "cancelled" if self.cancelled else "computed"
        else:
            state = "generating" if self._task is not None else "empty"
        text = "".join(self._parts)
        shown = text if len(text) <= 24 else text[:23] + "…"
        return f"<ModelOutputThunk {state} {shown!r}>"

    # -- the queue protocol, for send_to_queue --------------------------------

    def put_nowait(self, item: Any) -> None:
        """Take one item from the producer: a chunk, ``None`` (end) or an error.

        A thunk is the queue ``send_to_queue`` fills: ``from_response`` runs
        ``send_to_queue(response, thunk)``. Raises ``asyncio.QueueFull``
        when an async callback must be awaited through ``put``.
        """
        if item.__class__ is str and self._clock >= 0 and self._extra is None:
            # The hot path: a str chunk after the first, no callbacks.
            if item:
                self._add_text(item)
            return
        receive(self, item)

    async def put(self, item: Any) -> None:
        """``put_nowait``, awaiting an async ``process``/``post_process``."""
        await areceive(self, item)

    # -- internals -----------------------------------------------------------

    def _is_done(self) -> bool:
        return self._value is not None or (self._extra is not None and self._extra.error is not None)

    def _more(self) -> _Extra:
        if self._extra is None:
            self._extra = _Extra()
        return self._extra

    def _check_loop(self) -> None:
        task = self._task
        if task is None:
            if not self._is_done():
                raise RuntimeError(
                    "this ModelOutputThunk has no generation: create it with "
                    "ModelOutputThunk.from_response(...) or a backend's generate()"
                )
            return
        loop = task.get_loop()
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
        waiter = self._task.get_loop().create_future()  # type: ignore[union-attr]
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

    def _add_text(self, text: str) -> None:
        if self._parts is _NO_PARTS:
            self._parts = [text]
        else:
            self._parts.append(text)  # type: ignore[union-attr]
        if self._waiters:
            self._notify()

    def _mark_first_chunk(self) -> None:
        if self._clock < 0:
            self._clock = (self._task.get_loop().time() + self._clock) * 1000.0  # type: ignore[union-attr]
            if self._extra is not None and self._extra.generation is not None:
                self._extra.generation.ttfb_ms = self._clock

    def _finish(self, *, cancelled: bool = False) -> None:
        if cancelled:
            self._more().cancelled = True
        self._value = "".join(self._parts)
        self._settle()

    def _fail(self, error: BaseException) -> None:
        extra = self._more()
        extra.error = error
        extra.fail_seq = next(_failure_clock)
        self._settle()

    def _settle(self) -> None:
        self._notify()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    def _failed_at(self) -> int:
        """Order of this thunk's failure among all failures (lower is earlier)."""
        return self._extra.fail_seq if self._extra is not None else 0

    def _add_done_callback(self, callback: Callable[[ModelOutputThunk[Any]], None]) -> None:
        if self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def _remove_done_callback(self, callback: Callable[[ModelOutputThunk[Any]], None]) -> None:
        if self._callbacks is not None and callback in self._callbacks:
            self._callbacks.remove(callback)


class _Extra:
    """A thunk's rarely used state, allocated on first use."""

    __slots__ = (
        "generation", "meta", "parsed_repr", "tool_calls", "cancelled", "error", "fail_seq",
        "stream_pos", "process", "post_process", "pending",
    )  # fmt: skip

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.stream_pos = 0
        self.process: ProcessFn | None = None
        self.post_process: PostProcessFn | None = None
        self.pending: Awaitable[Any] | None = None
        self.generation: GenerationMeta | None = None
        self.meta: dict[str, Any] | None = None
        self.parsed_repr: Any = None
        self.tool_calls: dict[str, Any] | None = None
        self.cancelled = False
        self.fail_seq = 0


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
                if mot.error is not None:
                    raise mot.error
                raise StopAsyncIteration
            await mot._wait_change()


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
