"""``ModelOutputThunk``: a generation's text, usable before it is finished.

A thunk is fed by one producer task running ``feed_sink`` (``send_to_queue``
with the thunk as its ``Sink``): each chunk is folded into the thunk's list
of parts at once, with no real queue and no second task. Consumers keep
their own cursor into that list and are woken once per batch of new parts,
so a consumer that falls behind receives the pending deltas merged into one
string instead of one wake-up per chunk.

Lifecycle: ``_State``, held in one slot; ``_TRANSITIONS`` is this graph, edge
for edge (``tests/core/test_thunk_state.py`` checks that they agree)::

    EMPTY     -> STARTED     from_response() starts the producer
    EMPTY     -> COMPUTED    value = text (or a hand-fed stream ended)
    EMPTY     -> CANCELLED   a hand-fed stream was cancelled
    EMPTY     -> FAILED      a hand-fed stream failed
    STARTED   -> STREAMING   the first chunk arrived (ttfb_ms is fixed)
    STARTED   -> COMPUTED    the stream ended, no chunk ever came
    STARTED   -> CANCELLED   aclose() before the first chunk
    STARTED   -> FAILED      error or chunk timeout before the first chunk
    STREAMING -> COMPUTED    the stream ended; value is the joined text
    STREAMING -> CANCELLED   aclose(): value is the partial text
    STREAMING -> FAILED      the stream's error or a chunk timeout
    COMPUTED  -> COMPUTED    value = text replaces the text
    CANCELLED -> CANCELLED   value = text replaces the text; still cancelled
    FAILED    -> COMPUTED    value = text clears the error

``ModelOutputThunk(text)`` starts in COMPUTED. "Hand-fed" means a thunk made
with ``ModelOutputThunk()`` and passed to ``send_to_queue`` by the caller:
it has no producer task of its own, so it stays EMPTY while chunks arrive.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._feed import DEFAULT_CHUNK_TIMEOUT, feed_sink

__all__ = ["GenerationMeta", "ModelOutputThunk"]

T = TypeVar("T")


class _State(enum.Enum):
    """Where a thunk is in its lifecycle (see the module docstring)."""

    # Members are singletons, so identity hashing is exact, and it runs in C:
    # Enum's own __hash__ (hash of the name, in Python) showed in the
    # lifecycle benchmark, three transitions per thunk.
    __hash__ = object.__hash__

    EMPTY = "empty"
    STARTED = "started"
    STREAMING = "streaming"
    COMPUTED = "computed"
    CANCELLED = "cancelled"
    FAILED = "failed"


_EMPTY, _STARTED, _STREAMING = _State.EMPTY, _State.STARTED, _State.STREAMING
_COMPUTED, _CANCELLED, _FAILED = _State.COMPUTED, _State.CANCELLED, _State.FAILED

_TRANSITIONS: dict[_State, frozenset[_State]] = {
    _EMPTY: frozenset({_STARTED, _COMPUTED, _CANCELLED, _FAILED}),
    _STARTED: frozenset({_STREAMING, _COMPUTED, _CANCELLED, _FAILED}),
    _STREAMING: frozenset({_COMPUTED, _CANCELLED, _FAILED}),
    _COMPUTED: frozenset({_COMPUTED}),
    _CANCELLED: frozenset({_CANCELLED}),
    _FAILED: frozenset({_COMPUTED}),
}

# Settled: the generation is over and nothing will change by itself. A
# tuple, not a set: `in` tests identity first, without hashing an Enum.
_SETTLED = (_COMPUTED, _CANCELLED, _FAILED)

# Orders failures in time, so wait_for_all_mots raises the earliest one.
_failure_clock = itertools.count(1)

_NO_PARTS: tuple[()] = ()

SettleCallback = Callable[["ModelOutputThunk[Any]", int], None]
"""``callback(mot, failed_at)``: ``failed_at`` orders failures in time, 0 if none."""

ProcessFn = Callable[["ModelOutputThunk[Any]", Any], "str | None | Awaitable[str | None]"]
"""``process(mot, chunk)``: folds one chunk into the thunk; the text it adds (or None), plain or awaited."""
PostProcessFn = Callable[["ModelOutputThunk[Any]"], "None | Awaitable[None]"]
"""``post_process(mot)``, plain or awaited: runs once when the stream ends, before the thunk is computed."""


@dataclass(slots=True)
class GenerationMeta:
    """What is known about how a thunk's text was generated.

    The thunk fills ``ttfb_ms``; backends fill the rest.
    """

    model: str | None = None
    provider: str | None = None
    usage: dict[str, int | None] | None = None
    ttfb_ms: float | None = None
    streaming: bool | None = None
    finish_reasons: list[str] = field(default_factory=list)
    response_id: str | None = None
    request_id: str | None = None
    """The server's id for the HTTP request that answered (its ``x-request-id``
    header), where it sends one."""
    attempts: Any = None
    """Requests made for this generation (retries included), where a backend
    retries: count, HTTP statuses and waits (``Attempts.as_dict()``)."""
    base_url: str | None = None
    """The server that answered (its API root), where a backend talks to servers."""
    queued_ms: float | None = None
    """Time spent waiting for a concurrency slot and the rate limiter before
    the request went out (all attempts), where a backend limits either;
    ``ttfb_ms - queued_ms`` is the server's own time to first token."""
    response: dict[str, Any] | None = None
    """The server's whole answer as it would be without streaming (a
    ``chat.completion`` object: every choice, tool calls, logprobs, usage),
    assembled from the stream; only with ``generate(..., keep_response=True)``."""
    hedged: bool = False
    """True when ``generate(..., hedge=...)`` sent a second request for this
    generation (whichever of the two won: ``base_url``, ``request_id``,
    ``attempts`` and ``queued_ms`` describe the winner)."""


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
    __slots__ = ("_state", "_parts", "_value", "_task", "_waiters", "_callbacks", "_clock", "_extra")

    def __init__(
        self,
        value: str | None = None,
        meta: dict[str, Any] | None = None,
        parsed_repr: T | None = None,
        tool_calls: dict[str, Any] | None = None,
    ) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"ModelOutputThunk value must be a str or None, got {type(value).__name__}")
        self._state = _EMPTY if value is None else _COMPUTED
        # A shared empty tuple until the first text arrives: a waiting
        # generation should not pay for a list it does not use yet.
        self._parts: list[str] | tuple[()] = [value] if value else _NO_PARTS
        self._value = value
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._callbacks: list[SettleCallback] | None = None
        # STARTED: the loop time the generation started. Later: the time to
        # first chunk in ms, or None when no chunk came.
        self._clock: float | None = None
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
        mot._become(_STARTED)
        mot._clock = loop.time()
        if process is not None or post_process is not None:
            extra = mot._more()
            extra.process, extra.post_process = process, post_process
        feed = feed_sink(response, mot, chunk_timeout=chunk_timeout, on_timeout=on_timeout)
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
        return None if self._state is _STARTED else self._clock

    # -- reading the value -------------------------------------------------

    @property
    def value(self) -> str | None:
        """The full text once computed, else ``None``."""
        return self._value

    @value.setter
    def value(self, text: str) -> None:
        if self._state is _STARTED or self._state is _STREAMING:
            raise RuntimeError("cannot set the value of a thunk while it is generating")
        if not isinstance(text, str):
            raise TypeError(f"ModelOutputThunk value must be a str, got {type(text).__name__}")
        self._become(_CANCELLED if self._state is _CANCELLED else _COMPUTED)
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
        return self._state is _CANCELLED

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
        while self._value is None:
            error = self.error
            if error is not None:
                raise error
            await self._wait_change()
        return self._value

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
                    "astream() called on a computed thunk whose text was all delivered; read .value instead"
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
        state = self._state
        if state is _FAILED:
            shown_state = f"failed {type(self.error).__name__}"
        elif state is _STARTED or state is _STREAMING:
            shown_state = "generating"
        else:
            shown_state = state.value
        text = "".join(self._parts)
        shown = text if len(text) <= 24 else text[:23] + "…"
        return f"<ModelOutputThunk {shown_state} {shown!r}>"

    # -- the queue protocol, for callers that treat a thunk as a queue ---------

    def put_nowait(self, item: Any) -> None:
        """Take one item as a producer would: a chunk, ``None`` (end) or an error.

        motio's own producer feeds the thunk through its ``Sink`` side
        (``_take``); this is the asyncio.Queue spelling of the same, for
        callers that pass a thunk where a queue is expected. Raises
        ``asyncio.QueueFull`` when an async callback must be awaited: then
        call ``put`` with the same item.
        """
        pending = self._take(item)
        if pending is not None:
            self._more().pending = pending
            raise asyncio.QueueFull

    async def put(self, item: Any) -> None:
        """``put_nowait``, awaiting an async ``process``/``post_process``."""
        extra = self._extra
        pending = None if extra is None else extra.pending
        if extra is not None and pending is not None:
            extra.pending = None  # left by put_nowait for this item
        else:
            pending = self._take(item)
        if pending is not None:
            await pending

    # -- the sink, fed by the producer task (see _sink.Sink) ------------------

    def _take(self, item: Any) -> Awaitable[None] | None:
        """Fold one item (chunk, ``None`` or exception) into the thunk.

        Returns:
            What the producer must await before the next item (an async
            ``process``/``post_process`` result), or None.

        Raises:
            TypeError: a chunk the default ``process`` cannot take, or a
                ``process`` that returned neither str nor None.
        """
        if item.__class__ is str and self._state is _STREAMING and self._extra is None:
            # The hot path: a str chunk after the first, no callbacks.
            if item:
                self._add_text(item)
            return None
        if item is None:
            return self._end_of_stream()
        if isinstance(item, BaseException):
            self._take_final(item)
            return None
        self._mark_first_chunk()
        return self._chunk(item)

    def _take_final(self, item: BaseException) -> None:
        """The stream ended with ``item``; never waits."""
        # A cancelled producer (aclose) leaves a computed thunk with the
        # partial text: cancellation is not an error of the generation.
        if isinstance(item, asyncio.CancelledError):
            self._finish(cancelled=True)
        else:
            self._fail(item)

    def _chunk(self, chunk: Any) -> Awaitable[None] | None:
        extra = self._extra
        process = None if extra is None else extra.process
        if process is None:
            if not isinstance(chunk, str):
                raise TypeError(
                    f"got a {type(chunk).__name__} chunk; the default process accepts str "
                    "chunks only: pass process=... to ModelOutputThunk.from_response"
                )
            self._add(chunk)
            return None
        text = process(self, chunk)
        if inspect.isawaitable(text):
            return self._add_later(text)
        self._add(text)
        return None

    async def _add_later(self, text: Awaitable[str | None]) -> None:
        self._add(await text)

    def _add(self, text: str | None) -> None:
        if text is None:
            return
        if not isinstance(text, str):
            raise TypeError(f"process() must return str or None, got {type(text).__name__}")
        if text:
            self._add_text(text)

    def _end_of_stream(self) -> Awaitable[None] | None:
        extra = self._extra
        post_process = None if extra is None else extra.post_process
        if post_process is not None:
            try:
                result = post_process(self)
            except Exception as exc:
                self._fail(exc)
                return None
            if inspect.isawaitable(result):
                return self._finish_later(result)
        self._finish()
        return None

    async def _finish_later(self, post_processing: Awaitable[None]) -> None:
        try:
            await post_processing
        except Exception as exc:
            self._fail(exc)
        else:
            self._finish()

    # -- the hook wait_for_all_mots uses ---------------------------------------

    def _watch(self, callback: SettleCallback, *, stop: bool = False) -> bool:
        """Call ``callback(self, failed_at)`` once the thunk is settled.

        Args:
            callback: called once, with the failure's place in time (0 if
                the thunk did not fail).
            stop: forget ``callback`` instead (idempotent), for a waiter
                that stops waiting before the thunk settles.

        Returns:
            True if the callback is kept for later; False if the thunk was
            already settled (the callback ran at once) or ``stop`` was given.

        Raises:
            RuntimeError: the thunk is unsettled and belongs to another
                loop, or has no generation.
        """
        if stop:
            if self._callbacks is not None and callback in self._callbacks:
                self._callbacks.remove(callback)
            return False
        if self._state in _SETTLED:
            callback(self, self._failed_at())
            return False
        self._check_loop()
        if self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)
        return True

    # -- internals -----------------------------------------------------------

    def _become(self, state: _State) -> None:
        """Move to ``state``, which ``_TRANSITIONS`` must allow."""
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"ModelOutputThunk cannot go from {self._state.value} to {state.value}")
        if self._state is _STARTED:
            self._clock = None  # settled before any chunk: no time to first chunk
        self._state = state

    def _is_done(self) -> bool:
        return self._state in _SETTLED

    def _more(self) -> _Extra:
        if self._extra is None:
            self._extra = _Extra()
        return self._extra

    def _check_loop(self) -> None:
        task = self._task
        if task is None:
            if self._state is _EMPTY:
                raise _no_generation()
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
        task = self._task
        if task is None:
            raise _no_generation()  # nothing will ever change
        waiter = task.get_loop().create_future()
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
        parts = self._parts
        if type(parts) is list:
            parts.append(text)
        else:  # the shared empty tuple: the first text
            self._parts = [text]
        if self._waiters:
            self._notify()

    def _mark_first_chunk(self) -> None:
        if self._state is not _STARTED:
            return
        started = self._clock
        assert started is not None  # STARTED <=> _clock holds the start time
        ttfb = (asyncio.get_running_loop().time() - started) * 1000.0
        self._become(_STREAMING)
        self._clock = ttfb
        if self._extra is not None and self._extra.generation is not None:
            self._extra.generation.ttfb_ms = ttfb

    def _finish(self, *, cancelled: bool = False) -> None:
        self._become(_CANCELLED if cancelled else _COMPUTED)
        self._value = "".join(self._parts)
        self._settle()

    def _fail(self, error: BaseException) -> None:
        self._become(_FAILED)
        extra = self._more()
        extra.error = error
        extra.fail_seq = next(_failure_clock)
        self._settle()

    def _settle(self) -> None:
        extra = self._extra
        if extra is not None:
            # Never called again once settled; and a backend's post_process is
            # often its fold's bound method, whose fold holds this thunk: left
            # here, every answered request would be a reference cycle that
            # waits for a full collection (rare in `motio run`, see its
            # _tune_gc), and a run's memory would grow with its length.
            extra.process = extra.post_process = None
        self._notify()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            failed_at = self._failed_at()
            for callback in callbacks:
                callback(self, failed_at)

    def _failed_at(self) -> int:
        """Order of this thunk's failure among all failures (lower is earlier), 0 if none."""
        return self._extra.fail_seq if self._state is _FAILED and self._extra is not None else 0


def _no_generation() -> RuntimeError:
    return RuntimeError(
        "this ModelOutputThunk has no generation: create it with "
        "ModelOutputThunk.from_response(...) or a backend's generate()"
    )


class _Extra:
    """A thunk's rarely used state, allocated on first use."""

    __slots__ = (
        "generation", "meta", "parsed_repr", "tool_calls", "error", "fail_seq",
        "stream_pos", "process", "post_process", "pending",
    )  # fmt: skip

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.stream_pos = 0
        self.process: ProcessFn | None = None
        self.post_process: PostProcessFn | None = None
        # What put_nowait() left for put() to await (the queue spelling only).
        self.pending: Awaitable[None] | None = None
        self.generation: GenerationMeta | None = None
        self.meta: dict[str, Any] | None = None
        self.parsed_repr: Any = None
        self.tool_calls: dict[str, Any] | None = None
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
