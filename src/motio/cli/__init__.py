"""The ``motio`` command line.

Map of the package (everything below ``main`` is private):

- ``_main``: argument parsing (once, into ``_args``), dispatch, exit statuses on error
- ``_args``: the command line as typed values (``RunArgs``, ``ChatArgs``, ``ExportArgs``)
- ``_run``: ``motio run``: paths, resume plan, exit statuses, progress,
  around the batch job of :mod:`motio.batch` (prompts, results file, stats)
- ``_run_ray``: ``motio run --ray``: joining the cluster, the workers' backend
- ``_chat``: ``motio chat``, one answer streamed to stdout
- ``_export``: ``motio export``, a results file as a table joined back onto
  its dataset (the work is ``motio.data.export``'s)
- ``_progress``: the optional rich progress bar on stderr
- ``_backend``: options to a checked backend, errors to one line
- ``_errors``: ``CliError`` and the exit statuses

- ``_signals``: SIGTERM taken as Ctrl-C (exit 143), both held back together

Nothing in the core imports this package; rich and the backends are imported
only when a command needs them. This module itself imports nothing, so that
Ctrl-C at any instant of start-up lands inside ``main`` (exit 130), not in
an import above it (a traceback and death by signal); SIGTERM is taken the
same way from the first line of ``main`` on (exit 143).
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING` nor even collections.abc at run
# time: an import above main's try is a window where Ctrl-C ends in a traceback.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

_EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``motio`` command; returns the exit status."""
    restore = None
    try:
        from ._signals import take_sigterm

        restore = take_sigterm()
        from ._main import main as run_main

        return run_main(argv)
    except KeyboardInterrupt:
        import sys

        word, status = _stopped()
        print(f"motio: {word}", file=sys.stderr, flush=True)
        return status
    finally:
        if restore is not None:
            restore()


def _stopped() -> tuple[str, int]:
    try:
        from ._signals import stop_status
    except KeyboardInterrupt:  # a second Ctrl-C, during this very import
        return "interrupted", _EXIT_INTERRUPTED
    return stop_status()
