"""How a thunk takes in what ``send_to_queue`` puts: the slow paths.

A thunk is itself the queue its producer fills (``put_nowait``/``put``, the
asyncio.Queue protocol), so there is no real queue, no second task and no
extra object per generation. The thunk's ``put_nowait`` handles the hot
case (a ``str`` chunk, no callbacks) inline; everything else comes here.
``receive`` raises ``QueueFull`` when an async ``process`` or
``post_process`` must be awaited, which makes ``send_to_queue`` call
``put``, which lands in ``areceive``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._thunk import ModelOutputThunk

__all__ = ["PostProcessFn", "ProcessFn", "areceive", "receive"]

ProcessFn = Callable[["ModelOutputThunk[Any]", Any], "str | None | Awaitable[str | None]"]
PostProcessFn = Callable[["ModelOutputThunk[Any]"], "None | Awaitable[None]"]


def receive(mot: ModelOutputThunk[Any], item: Any) -> None:
    """Fold one queue item (chunk, ``None`` or exception) into ``mot``."""
    if item is None:
        _end(mot)
    elif isinstance(item, BaseException):
        _stop(mot, item)
    else:
        mot._mark_first_chunk()
        _chunk(mot, item)


async def areceive(mot: ModelOutputThunk[Any], item: Any) -> None:
    """``receive``, awaiting the callback result it left pending."""
    extra = mot._extra
    pending = None if extra is None else extra.pending
    if pending is None:
        receive(mot, item)
        return
    extra.pending = None  # type: ignore[union-attr]
    if item is not None:
        _add(mot, await pending)
        return
    try:
        await pending
    except Exception as exc:
        mot._fail(exc)
    else:
        mot._finish()


def _chunk(mot: ModelOutputThunk[Any], chunk: Any) -> None:
    extra = mot._extra
    process = None if extra is None else extra.process
    if process is None:
        if not isinstance(chunk, str):
            raise TypeError(
                f"got a {type(chunk).__name__} chunk; the default process accepts str "
                "chunks only: pass process=... to ModelOutputThunk.from_response"
            )
        _add(mot, chunk)
        return
    text = process(mot, chunk)
    if inspect.isawaitable(text):
        extra.pending = text  # type: ignore[union-attr]
        raise asyncio.QueueFull
    _add(mot, text)


def _add(mot: ModelOutputThunk[Any], text: str | None) -> None:
    if text is None:
        return
    if not isinstance(text, str):
        raise TypeError(f"process() must return str or None, got {type(text).__name__}")
    if text:
        mot._add_text(text)


def _end(mot: ModelOutputThunk[Any]) -> None:
    extra = mot._extra
    post_process = None if extra is None else extra.post_process
    if post_process is not None:
        try:
            result = post_process(mot)
        except Exception as exc:
            mot._fail(exc)
            return
        if inspect.isawaitable(result):
            extra.pending = result  # type: ignore[union-attr]
            raise asyncio.QueueFull
    mot._finish()


def _stop(mot: ModelOutputThunk[Any], error: BaseException) -> None:
    # A cancelled producer (aclose) leaves a computed thunk with the partial
    # text: cancellation is not an error of the generation.
    if isinstance(error, asyncio.CancelledError):
        mot._finish(cancelled=True)
    else:
        mot._fail(error)
