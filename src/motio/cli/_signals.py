"""SIGTERM taken as Ctrl-C: what Slurm, Kubernetes, systemd and ``timeout`` send to stop a command.

Python turns SIGINT into ``KeyboardInterrupt`` (and ``asyncio.run`` turns it
into a cancellation of its main task), but leaves SIGTERM to kill the process
on the spot: no summary, no resume hint, exit -15. The command takes SIGTERM
the way it takes Ctrl-C, with one handler for the whole process:

- inside ``asyncio.run``, it cancels the task registered with
  :func:`cancel_on_sigterm` (the run's main task), as ``asyncio.Runner``
  does for SIGINT: everything in flight is cancelled and cleaned up, and
  ``asyncio.run`` raises ``CancelledError``;
- anywhere else (start-up, imports, joining a Ray cluster) it raises
  ``KeyboardInterrupt`` where the program is, as Python does for SIGINT;
- a second SIGTERM while the first is being handled raises at once.

Every path that ends an interrupted run then asks :func:`stop_status` which
signal it was: only the word and the exit status (143 = 128 + SIGTERM, as
shells report it) differ from Ctrl-C. Where the command holds SIGINT back
(:func:`hold`), it holds SIGTERM back too.
"""

from __future__ import annotations

import signal

from ._errors import EXIT_INTERRUPTED, EXIT_TERMINATED

# main() imports this module first thing, before its handler is in place:
# only `signal` at run time (not typing, contextlib, asyncio, threading).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import FrameType, TracebackType

__all__ = ["cancel_on_sigterm", "hold", "keep_sigterm", "stop_status", "take_sigterm", "terminated"]

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _State:
    received = False
    task: asyncio.Task[None] | None = None


def take_sigterm() -> Callable[[], None]:
    """Take SIGTERM as Ctrl-C in this process from now on.

    Returns:
        A function that puts the previous handler back (for callers of
        ``main`` in a process of their own, such as tests).
    """
    _State.received, _State.task = False, None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: only it may set handlers
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    first, _State.received = not _State.received, True
    task = _State.task
    if first and task is not None and not task.done():
        task.cancel()
        task.get_loop().call_soon_threadsafe(lambda: None)  # wake a loop asleep in select
        return
    raise KeyboardInterrupt


def stop_status() -> tuple[str, int]:
    """How the stopped command reports itself: ``("terminated", 143)`` after
    a SIGTERM, else ``("interrupted", 130)``.

    Called once the ``KeyboardInterrupt`` is handled, it also tells CPython
    so: one raised inside ``exec`` of a string (dataclasses builds methods
    so, at import) marks the process as ended by an unhandled Ctrl-C even
    once caught, and ``python -m`` then ends it by SIGINT (-2) whatever
    status the command returns. Every ``exec`` of a string clears the mark
    before it runs (CPython's ``run_eval_code_obj``, 3.11 to 3.13).
    """
    exec("None")  # noqa: S102 (a constant; see above)
    return ("terminated", EXIT_TERMINATED) if _State.received else ("interrupted", EXIT_INTERRUPTED)


def terminated() -> bool:
    """Whether a SIGTERM arrived since :func:`take_sigterm`."""
    return _State.received


class cancel_on_sigterm:  # noqa: N801 (a context manager, named as one)
    """While inside, a SIGTERM cancels ``task`` (``asyncio.run``'s main task)."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def __enter__(self) -> None:
        _State.task = self._task
        if _State.received:
            # A SIGTERM arrived before, and its KeyboardInterrupt was lost:
            # raised inside a weakref callback or __del__ (importlib has
            # some), Python reports it and carries on. Stop now.
            self._task.cancel()

    def __exit__(self, *exc_info: object) -> None:
        _State.task = None


class keep_sigterm:  # noqa: N801 (a context manager, named as one)
    """Keep SIGTERM ours through code that installs its own handler.

    ``ray.init`` does: its handlers end the process with ``sys.exit`` (after
    stopping the local instance it was starting, if any). A SIGTERM in that
    window is taken as ours: ``KeyboardInterrupt``, the command's stop.

    SIGTERM is blocked in this thread meanwhile, and let through once ours
    is back: Ray's C++ core installs a crash handler for it (absl's, which
    aborts: exit -6, not 143) before its Python handlers replace it, and a
    SIGTERM in between killed the process. The threads Ray starts inside
    inherit the block, so a SIGTERM waits for this thread, and is not lost.
    """

    def __enter__(self) -> None:
        self._ours = signal.getsignal(signal.SIGTERM)
        self._blocked = _block_sigterm(True)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        replaced = signal.getsignal(signal.SIGTERM) is not self._ours
        if self._ours is not None and replaced:
            signal.signal(signal.SIGTERM, self._ours)
        if self._blocked:
            _block_sigterm(False)  # one that came meanwhile reaches our handler here
        if kind is not None and issubclass(kind, SystemExit) and replaced:
            # A SystemExit from inside can only be the replacing handler's.
            _State.received = True
            raise KeyboardInterrupt from None


def hold(held: bool) -> None:
    """Block (or let through) SIGINT and SIGTERM in this thread; a blocked one waits, it is not lost."""
    _mask(held, _STOP_SIGNALS)


def _block_sigterm(block: bool) -> bool:
    """Block (or let through) SIGTERM alone. Blocking returns whether it is
    ours to let through (False: it cannot be blocked here, or it already was)."""
    before = _mask(block, {signal.SIGTERM})
    return before is not None and signal.SIGTERM not in before


def _mask(block: bool, signals: set[signal.Signals]) -> set[int | signal.Signals] | None:
    """Block (or unblock) ``signals`` in the main thread; the mask before,
    or None where there is no per-thread mask or this is another thread."""
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK if block else signal.SIG_UNBLOCK, signals)
