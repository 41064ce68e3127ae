"""``run_sync``: call async motio from plain scripts and notebooks.

One long-lived event loop runs in a daemon thread (a "portal", as anyio's
BlockingPortal), so loop-bound clients and thunks survive between calls,
unlike ``asyncio.run`` which makes and destroys a loop every time.

Why not just ``asyncio.run``: it refuses to run inside a running loop (a
notebook cell), and an HTTP client cached by the first call is bound to a
loop that the second call no longer has.

A call made *on* the portal thread itself (sync code reached from a
coroutine that run_sync is running) cannot block that loop waiting for
itself, so it gets a nested portal of its own: one more thread per nesting
depth, created once and reused. Which portal a call uses is found from the
loop running in the calling thread, keyed weakly on that loop object (as all
per-loop state in motio), never from a thread id or a depth number.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loops import get_current_event_loop

__all__ = ["run_sync"]

T = TypeVar("T")


class _Portal:
    """An event loop running forever in a daemon thread."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        # The portal for calls made on this one's own thread, once needed.
        self.nested: _Portal | None = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"motio-run-sync-{depth}", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit(
        self, coro: Coroutine[Any, Any, T], context: contextvars.Context
    ) -> tuple[concurrent.futures.Future[T], list[asyncio.Task[T]]]:
        """Schedule ``coro`` as a task on this loop, in ``context``."""
        result: concurrent.futures.Future[T] = concurrent.futures.Future()
        holder: list[asyncio.Task[T]] = []

        def start() -> None:
            if not result.set_running_or_notify_cancel():
                coro.close()
                return
            task = self.loop.create_task(coro, context=context)
            holder.append(task)
            task.add_done_callback(lambda t: _copy_outcome(t, result))

        self.loop.call_soon_threadsafe(start)
        return result, holder

    def cancel(self, holder: list[asyncio.Task[Any]]) -> None:
        def cancel() -> None:
            for task in holder:
                task.cancel()

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(cancel)

    def shutdown(self) -> None:
        """Cancel what is left, finish async generators, close the loop."""
        if self.loop.is_closed() or not self.thread.is_alive():
            return
        done = concurrent.futures.Future[None]()

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        def stop(_: object) -> None:
            self.loop.stop()
            done.set_result(None)

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(drain()).add_done_callback(stop))
        done.result(timeout=10)
        self.thread.join(timeout=10)
        self.loop.close()


def _copy_outcome(task: asyncio.Task[T], result: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        result.set_exception(concurrent.futures.CancelledError())
        return
    error = task.exception()
    if error is not None:
        result.set_exception(error)
    else:
        result.set_result(task.result())


# Every portal, keyed weakly on its own loop. (Each portal holds its loop, so
# these entries live as long as the process: portals are never replaced.)
_portals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Portal] = weakref.WeakKeyDictionary()
# The portal for calls made anywhere but on a portal's own loop.
_root: _Portal | None = None
_portals_lock = threading.Lock()


def _portal_for_this_thread() -> _Portal:
    """The root portal, or the one nested under the portal running this thread."""
    running = get_current_event_loop()
    parent = None if running is None else _portals.get(running)
    found = _root if parent is None else parent.nested
    if found is not None:
        return found
    with _portals_lock:  # single flight: two threads must not start two loops
        found = _root if parent is None else parent.nested
        if found is None:
            found = _start_portal(parent)
    return found


def _start_portal(parent: _Portal | None) -> _Portal:
    global _root
    portal = _Portal(0 if parent is None else parent.depth + 1)
    _portals[portal.loop] = portal
    if parent is None:
        _root = portal
    else:
        parent.nested = portal
    return portal


def run_sync(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run a coroutine to completion from synchronous code.

    The coroutine runs on motio's long-lived background loop, so clients and
    thunks it creates are reused by later calls. It works from inside a
    running event loop (the caller's thread blocks) and nested inside itself.
    The caller's context variables are visible inside; changes stay inside.

    Args:
        coro: the coroutine to run.
        timeout: seconds to wait; ``None`` waits until it finishes.

    Returns:
        What the coroutine returns.

    Raises:
        TimeoutError: ``timeout`` expired; the coroutine was cancelled.
        KeyboardInterrupt: Ctrl-C while waiting; the coroutine was cancelled.
        Exception: whatever the coroutine raises.
    """
    if not asyncio.iscoroutine(coro):
        raise TypeError(
            f"run_sync() needs a coroutine, got {type(coro).__name__}; "
            "call the async function and pass what it returns"
        )
    portal = _portal_for_this_thread()
    future, holder = portal.submit(coro, contextvars.copy_context())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        # Since 3.11 this is the builtin TimeoutError: the coroutine's own
        # (a ChunkTimeoutError, say) must pass through as it is.
        if future.done():
            raise
        portal.cancel(holder)
        _wait_quietly(future)
        raise TimeoutError(f"run_sync() timed out after {timeout:g} s; the coroutine was cancelled") from None
    except concurrent.futures.CancelledError:
        raise asyncio.CancelledError() from None
    except BaseException:
        # Ctrl-C (or any interruption of our wait): stop the work we started.
        if not future.done():
            portal.cancel(holder)
        raise


def _wait_quietly(future: concurrent.futures.Future[Any]) -> None:
    """Give a cancelled coroutine a moment to run its cleanup."""
    try:
        future.result(timeout=5)
    except Exception:
        pass  # its outcome is the cancellation we asked for, or too late to matter


def _forget_portals_after_fork() -> None:
    # The child has the parent's loop objects but not their threads.
    global _portals_lock, _root
    _portals.clear()
    _root = None
    _portals_lock = threading.Lock()


def _shutdown_portals() -> None:
    global _root
    chain = []
    portal = _root
    while portal is not None:
        chain.append(portal)
        portal = portal.nested
    for portal in reversed(chain):  # the deepest first: it may be serving a call above
        try:
            portal.shutdown()
        except Exception:
            pass
    _portals.clear()
    _root = None


os.register_at_fork(after_in_child=_forget_portals_after_fork)
atexit.register(_shutdown_portals)
