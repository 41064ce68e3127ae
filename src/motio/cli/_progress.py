"""Live progress of ``motio run`` on stderr, drawn by rich when it is wanted.

rich is imported here only, and only when stderr is a terminal, so piping
``motio run`` into a log costs neither the import nor escape codes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..batch import RunStats

if TYPE_CHECKING:
    from ..backends import EndpointSnapshot

__all__ = ["Progress", "Servers", "make_progress", "server_loads", "servers_summary"]

#: What the progress line shows per server (None: one server, nothing to show).
ServerLoads = Callable[[], str] | None


class Progress(Protocol):
    """Where ``motio run`` reports while it works."""

    def start(self) -> None: ...

    def update(self) -> None: ...

    def note(self, message: str) -> None: ...

    def stop(self) -> None: ...


class _PlainProgress:
    """No live display: notes go straight to stderr."""

    def start(self) -> None:
        pass

    def update(self) -> None:
        pass

    def note(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass


class _RichProgress:
    """done/total, errors, tokens/s and ETA on one live line."""

    def __init__(self, stats: RunStats, servers: ServerLoads = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichBar,
        )

        self._stats = stats
        self._servers = servers
        self._bar = RichBar(
            TextColumn("[bold]motio run"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[errors]} errors"),
            TextColumn("{task.fields[retries]} retries"),
            TextColumn("{task.fields[reruns]}"),
            TextColumn("{task.fields[concurrency]}"),
            TextColumn("{task.fields[tps]:.1f} tok/s"),
            TextColumn("{task.fields[servers]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(
            "run",
            # Prompts read from stdin as they come: no total to show yet.
            total=None if stats.streaming_input else stats.to_run,
            errors=0,
            retries=0,
            reruns="",
            concurrency=_concurrency(stats),
            tps=0.0,
            servers=self._server_text(),
        )

    def start(self) -> None:
        self._bar.start()

    def update(self) -> None:
        stats = self._stats
        self._bar.update(
            self._task,
            completed=stats.ok + stats.failed,
            errors=stats.failed,
            retries=stats.retries,
            reruns=_reruns(stats),
            concurrency=_concurrency(stats),
            tps=stats.tokens_per_second(),
            servers=self._server_text(),
        )

    def _server_text(self) -> str:
        return "" if self._servers is None else self._servers()

    def note(self, message: str) -> None:
        # Through the live console, so the bar is redrawn below the note
        # instead of being torn apart by it.
        self._bar.console.print(message, markup=False, highlight=False)

    def stop(self) -> None:
        self.update()
        self._bar.stop()


def _reruns(stats: RunStats) -> str:
    # Said only once a stream broke: most runs never see one.
    return f"{stats.reruns} re-run" if stats.reruns else ""


def _concurrency(stats: RunStats) -> str:
    return "" if stats.concurrency is None else f"concurrency {stats.concurrency}"


def make_progress(
    stats: RunStats, *, quiet: bool, stream: Any = None, servers: ServerLoads = None
) -> Progress:
    """A rich progress bar if ``stream`` (stderr) is a terminal and not quiet;
    ``servers`` (see ``server_loads``) adds the per-server in-flight counts."""
    stream = sys.stderr if stream is None else stream
    if quiet or not _is_terminal(stream):
        return _PlainProgress()
    try:
        return _RichProgress(stats, servers)
    except ImportError:
        print("motio: install 'motio[cli]' for a progress bar", file=sys.stderr)
        return _PlainProgress()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class Servers(Protocol):
    """What tells the servers' loads: a backend (``Backend.endpoint_snapshot``,
    empty without servers) or the Ray workers (their sum)."""

    def endpoint_snapshot(self) -> list[EndpointSnapshot]: ...


def server_loads(backend: Servers) -> ServerLoads:
    """For a backend over several servers: a function that tells each one's
    requests in flight (and limit), such as ``a:8001 12/16  b:8001 9/16  c:8001 out``;
    None for one server."""
    snapshot = backend.endpoint_snapshot
    if len(snapshot()) < 2:
        return None

    def loads() -> str:
        return "  ".join(f"{_label(s.base_url)} {_load(s)}" for s in snapshot())

    return loads


def servers_summary(backend: Servers) -> str | None:
    """One line on what each server answered, for a run over several; else None."""
    servers = backend.endpoint_snapshot()
    if len(servers) < 2:
        return None
    parts = [
        f"{_label(s.base_url)} {s.served:,} answered" + ("" if s.in_rotation else " (out of rotation)")
        for s in servers
    ]
    return "servers: " + ", ".join(parts)


def _load(server: Any) -> str:
    if not server.in_rotation:
        return "out"
    return str(server.in_flight) if server.limit is None else f"{server.in_flight}/{server.limit}"


def _label(base_url: str) -> str:
    """host:port of a server's URL: what tells servers apart on a narrow line."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    return parts.netloc or base_url
