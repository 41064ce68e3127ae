"""The template every backend follows: ``generate`` in one place, one step per backend.

``Backend.generate`` refuses unknown options, parses the rest once into a
``Request`` (timeouts checked by one validator, the backend's own as
defaults), and builds the thunk from what ``_open`` returns; the deadlines
and their errors are shared (``_deadlines.py``). A backend written on it
here is the smallest one: its ``_open`` and a fold.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from motio import ConfigurationError, ModelOutputThunk
from motio._exceptions import BackendChunkTimeoutError, FirstTokenTimeoutError, TotalTimeoutError
from motio.backends import Backend, LlamaCppBackend, OpenAIBackend
from motio.backends._base import Fold, Request
from motio.backends._deadlines import Deadlines
from motio.backends._errors import Where
from motio.backends._llamacpp import _LlamaFold
from motio.backends.http import HTTPBackend
from motio.backends.openai._chat import ChatFold
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer, ok, status

SERVER = "http://127.0.0.1:1/v1"  # nothing listens: nothing here may be sent


class _WordFold:
    """Counts the words it folds; the usage at the end."""

    def __init__(self) -> None:
        self.words = 0
        self.bound: ModelOutputThunk[Any] | None = None

    def bind(self, mot: ModelOutputThunk[Any]) -> None:
        self.bound = mot

    def fold(self, chunk: Any) -> str | None:
        self.words += 1
        return f"{chunk} "

    def finish(self, mot: ModelOutputThunk[Any]) -> None:
        mot.generation.usage = {"completion_tokens": self.words}


class Words(Backend):
    """A backend on the template: only ``_open`` (plus check and aclose)."""

    provider = "words"
    chunk_timeout = 7.0

    def __init__(self) -> None:
        self.model = "w"
        self.requests: list[Request] = []

    def _open(self, request: Request) -> tuple[Any, Fold]:
        self.requests.append(request)
        fold = _WordFold()
        words = str(request.messages[-1]["content"]).split()

        async def source() -> Any:
            for word in words:
                await asyncio.sleep(0)
                yield fold.fold(word)

        return source(), fold

    async def check(self) -> None:
        self._ensure_open()

    async def aclose(self) -> None:
        self._mark_closed()


def test_a_backend_on_the_template_writes_only_its_step() -> None:
    backend = Words()

    async def main() -> ModelOutputThunk[Any]:
        mot = await backend.generate("one two three", first_token_timeout=3)
        await mot.avalue()
        return mot

    mot = run(main())
    assert mot.value == "one two three "
    meta = mot.generation
    assert (meta.provider, meta.model, meta.streaming, meta.base_url) == ("words", "w", True, None)
    assert meta.usage == {"completion_tokens": 3}
    [request] = backend.requests
    # Given, the backend's own, and the class's default: parsed once, here.
    assert (request.first_token, request.chunk, request.total) == (3, 7.0, None)
    assert request.messages == [{"role": "user", "content": "one two three"}]
    assert request.stream and not request.keep and request.options == {}


def test_the_template_refuses_unknown_options_before_the_step() -> None:
    backend = Words()
    with pytest.raises(TypeError, match="Words.generate\\(\\) got unknown option 'tools'"):
        run(backend.generate("hi", tools=[]))
    assert backend.requests == []


def _bad_timeouts() -> list[dict[str, Any]]:
    return [
        {"chunk_timeout": -1},
        {"first_token_timeout": 0},
        {"total_timeout": "3"},
        {"chunk_timeout": True},
    ]


@pytest.mark.parametrize("kwargs", _bad_timeouts(), ids=str)
def test_both_backends_refuse_a_bad_timeout_alike_when_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as server:
        OpenAIBackend("m", base_url=SERVER, **kwargs)
    with pytest.raises(ConfigurationError) as embedded:
        LlamaCppBackend("/nowhere.gguf", **kwargs)
    assert str(server.value) == str(embedded.value)
    assert "timeouts must be positive numbers of seconds" in str(embedded.value)


@pytest.mark.parametrize("kwargs", _bad_timeouts(), ids=str)
def test_both_backends_refuse_a_bad_timeout_alike_when_generating(kwargs: dict[str, Any]) -> None:
    errors = []
    for backend in (OpenAIBackend("m", base_url=SERVER), LlamaCppBackend("/nowhere.gguf")):
        with pytest.raises(ConfigurationError) as caught:
            run(backend.generate("hi", **kwargs))  # refused before anything is sent or loaded
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("fold", [ChatFold, _LlamaFold], ids=lambda c: c.__name__)
def test_every_fold_has_the_folds_methods(fold: type) -> None:
    for name in ("bind", "fold", "finish"):
        assert callable(getattr(fold, name)), name


def test_http_backends_are_built_on_the_template() -> None:
    assert issubclass(OpenAIBackend, HTTPBackend)
    assert "generate" not in vars(OpenAIBackend) and "generate" not in vars(HTTPBackend)
    assert "generate" not in vars(LlamaCppBackend)


# -- the shared deadlines --------------------------------------------------------------

WHERE = Where("words", "w", None)


async def _expiry(deadlines: Deadlines, limit: float | None) -> BaseException:
    deadlines.start()
    since = asyncio.get_running_loop().time()
    try:
        async with deadlines.scope(limit, since):
            await asyncio.Event().wait()
    except TimeoutError:
        return deadlines.expired("first_token", limit, since, WHERE, hint="(test)")
    raise AssertionError("the scope never expired")


def test_the_sooner_deadline_names_the_error() -> None:
    first = run(_expiry(Deadlines(0.05, None, 30.0), 0.05))
    assert isinstance(first, FirstTokenTimeoutError) and "first_token_timeout=0.05 s (test)" in str(first)
    total = run(_expiry(Deadlines(30.0, None, 0.05), 30.0))
    assert isinstance(total, TotalTimeoutError) and "total_timeout=0.05 s; raise total_timeout=" in str(total)
    watched = run(_expiry(Deadlines(None, 1.0, 0.05), None))  # a scope of the total alone
    assert isinstance(watched, TotalTimeoutError)


def test_a_chunk_deadline_counts_the_chunks_seen() -> None:
    deadlines = Deadlines(None, 0.5, None)
    error = deadlines.expired("chunk", 0.5, 0.0, WHERE, hint="no chunk within", seen=4)
    assert isinstance(error, BackendChunkTimeoutError) and error.chunks == 4 and error.timeout == 0.5
    assert "no chunk within chunk_timeout=0.5 s; raise chunk_timeout=" in str(error)


# -- 529, Anthropic's "overloaded": retried, and a congestion signal ---------------------


def test_529_is_an_overload_for_auto_concurrency(server: ScriptedServer) -> None:
    server.script(status(529, headers={"retry-after": "0"}), ok())
    backend = OpenAIBackend("scripted-model", base_url=server.base_url, max_concurrency="auto")

    async def main() -> ModelOutputThunk[Any]:
        async with backend:
            mot = await backend.generate("hello there")
            await mot.avalue()
            return mot

    mot = run(main())
    assert mot.generation.attempts.statuses == [529]
    adaptive = backend.adaptive_concurrency
    assert adaptive is not None and adaptive.snapshot().overloads == 1
