"""The results file of ``motio run``: append-only JSONL that survives crashes.

Durability model:

- Each result is one ``os.write`` of a whole line on an ``O_APPEND`` file
  descriptor, so once ``append`` returns the line is in the kernel's page cache
  and survives the process being killed at any moment, ``kill -9`` included.
- ``fsync`` is only needed against power loss or a kernel crash; it costs
  milliseconds, so it runs at most once per ``sync_interval`` and on close
  rather than once per line.
- Whatever a crash does leave behind, a torn last line (a fragment that is
  not JSON and begins the way every result line begins, or the NUL bytes a
  power loss leaves) is cut off when the file is opened again, so appending
  after it keeps the file valid JSONL.
- Nothing is changed in a file motio cannot recognise as its own: every line
  must be a result (a JSON object with ``id``, ``output`` and ``error``, or
  an OpenAI Batch output line: ``id``, ``custom_id``, ``response``,
  ``error``), bar a torn last fragment. A prompts file given to ``-o`` by mistake, or
  any other JSONL, is refused with the first line that is not a result, and
  left byte for byte as it was.
- An exclusive ``flock`` keeps a second ``motio run`` from appending to the
  same file, which would otherwise write ids twice.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import MotioError
from ._formats import result_outcome
from ._ids import IdSet

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; locking is skipped
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "NotAResultsFile",
    "ResultsFile",
    "ResultsFileLocked",
    "ResultsStream",
    "ResumeState",
    "inspect_results",
]

# How every line encode_line writes begins ("id" is the first key of both shapes).
# A last fragment that does not begin so was not cut short by motio: a user's
# one-line note without its newline must be refused, not "repaired" to nothing.
_RESULT_START = b'{"id"'


class ResultsFileLocked(MotioError):
    """Another process is writing the same results file."""


class NotAResultsFile(MotioError):
    """The file holds lines that are not motio results: it is not ours to change.

    Attributes:
        line: the 1-based number of the first such line.
    """

    def __init__(self, path: Path, line: int, why: str) -> None:
        super().__init__(
            f"{path} is not a motio results file (line {line}: {why}); refusing to change it. "
            "Is -o pointing at the wrong file? Give a new file, or one a previous motio run wrote"
        )
        self.line = line


@dataclass
class ResumeState:
    """What an existing results file already holds.

    Attributes:
        done: id keys with a successful result (as 8-byte digests: ``_ids.IdSet``).
        failed: id keys whose result is an error (and none succeeded).
        torn_bytes: size of a torn last line (cut off on open; 0 if none).
        tail: ``(offset, valid)`` of a last line without its newline:
            where it starts, and whether it is a whole result (then only the
            newline is missing) or a fragment; None if the file ends cleanly.
        formats: the shapes of result seen (``"motio"``, ``"openai-batch"``).
    """

    done: IdSet = field(default_factory=IdSet)
    failed: IdSet = field(default_factory=IdSet)
    torn_bytes: int = 0
    tail: tuple[int, bool] | None = None
    formats: set[str] = field(default_factory=set)

    def add(self, key: str, ok: bool) -> None:
        if ok:
            self.done.add(key)
            self.failed.discard(key)
        elif key not in self.done:
            self.failed.add(key)


class ResultsFile:
    """An opened, locked, repaired results file ready for appending."""

    def __init__(self, path: Path, fd: int, state: ResumeState, sync_interval: float) -> None:
        self.path = path
        self.state = state
        self.written = 0
        self._fd = fd
        self._sync_interval = sync_interval
        self._last_sync = time.monotonic()
        self._dirty = False
        self._created = False

    @classmethod
    def open(cls, path: str | Path, *, sync_interval: float = 1.0) -> ResultsFile:
        """Open (creating if needed), lock, read and repair the results file.

        Raises:
            ResultsFileLocked: another process holds the file.
            OSError: the file cannot be created, read or written.
        """
        path = Path(path)
        created = not path.exists()
        fd = _open_locked(path)
        try:
            state = inspect_results(path)
            _repair_tail(fd, state)
        except BaseException:
            os.close(fd)
            raise
        results = cls(path, fd, state, sync_interval)
        results._created = created
        return results

    def append(self, record: dict[str, Any]) -> None:
        """Write one result line; it survives a crash of this process on return."""
        _write_all(self._fd, encode_line(record))
        outcome = result_outcome(record)
        assert outcome is not None, "not a result line"
        self.state.add(outcome[0], outcome[1])
        self.state.formats.add(outcome[2])
        self.written += 1
        self._dirty = True
        if time.monotonic() - self._last_sync >= self._sync_interval:
            self.sync()

    def sync(self) -> None:
        """Flush written lines to the disk itself (power-loss safety)."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def drop_failed(self, keys: set[str] | IdSet) -> int:
        """Remove the error lines of ``keys`` so they can be re-run.

        The file is rewritten to a temporary file and atomically renamed over
        the original, so a crash midway leaves either the old or the new file.
        Returns the number of lines removed.
        """
        keys = keys & self.state.failed
        if not keys:
            return 0
        tmp = self.path.with_name(self.path.name + ".motio-tmp")
        new_fd = _open_locked(tmp, truncate=True)
        try:
            dropped = _copy_without(self.path, new_fd, keys)
            os.fsync(new_fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            os.close(new_fd)
            raise
        # The lock travels with new_fd, which now is the file at self.path.
        os.close(self._fd)
        self._fd = new_fd
        self.state.failed -= keys
        return dropped

    def close(self) -> None:
        """Sync and release the file (and its lock). Idempotent.

        A file this object created and nothing was written to is removed: a run
        stopped before its first answer (Ctrl-C, a server gone) leaves no trace.
        """
        if self._fd < 0:
            return
        try:
            self.sync()
            self._remove_if_unused()
        finally:
            os.close(self._fd)
            self._fd = -1

    def _remove_if_unused(self) -> None:
        # Still holding the lock, and only if the path is still this very file
        # (not renamed over, not reached through a symlink), still empty.
        if not self._created or self.path.is_symlink() or not _same_file(self._fd, self.path):
            return
        if os.fstat(self._fd).st_size == 0:
            self.path.unlink(missing_ok=True)


class ResultsStream:
    """Results written to a stream (``-o -``: stdout) instead of a file.

    Nothing can be read back from a pipe, so there is no resume: ``state``
    stays empty, nothing is locked, and each line is flushed as written so
    that the next command in a pipeline sees it at once.
    """

    def __init__(self, stream: Any, name: str = "<stdout>") -> None:
        self.path = Path(name)
        self.state = ResumeState()
        self.written = 0
        self._stream = stream

    def append(self, record: dict[str, Any]) -> None:
        """Write one result line and flush it."""
        self._stream.write(encode_line(record))
        self._stream.flush()
        self.written += 1

    def drop_failed(self, keys: set[str] | IdSet) -> int:
        return 0

    def sync(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def encode_line(record: dict[str, Any]) -> bytes:
    """One JSONL line for ``record``, readable UTF-8 where possible."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A model can emit a lone surrogate; escaped JSON still round-trips.
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def _open_locked(path: Path, *, truncate: bool = False) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
    while True:
        fd = os.open(path, flags, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResultsFileLocked(f"{path} is being written by another motio process") from None
        # A concurrent --retry-errors may have renamed a new file over the path
        # between our open and our lock; then we locked an orphan: try again.
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def inspect_results(path: str | Path) -> ResumeState:
    """Read a results file without changing it: what it holds, and whether it is ours.

    A missing file is an empty one.

    Raises:
        NotAResultsFile: a line that is not a result (only a torn last
            fragment is allowed: not JSON, no newline, and either the start
            of a result line or NUL bytes).
        OSError: the file cannot be read.
    """
    path = Path(path)
    state = ResumeState()
    try:
        lines = open(path, "rb")
    except FileNotFoundError:
        return state
    offset = 0
    with lines:
        for number, raw in enumerate(lines, start=1):
            complete = raw.endswith(b"\n")
            if raw.strip():
                _classify(path, number, raw, complete, offset, state)
            offset += len(raw)
    return state


def _classify(path: Path, number: int, raw: bytes, complete: bool, offset: int, state: ResumeState) -> None:
    obj = _parse_json(raw)
    if obj is _NOT_JSON:
        if complete or not _torn_fragment(raw):
            raise NotAResultsFile(path, number, "not JSON")
        state.tail, state.torn_bytes = (offset, False), len(raw)  # a write cut short by a crash
        return
    outcome = result_outcome(obj)
    if outcome is None:
        raise NotAResultsFile(
            path,
            number,
            "a JSON line without the result keys (id, output, error; or custom_id, response, error)",
        )
    state.add(outcome[0], outcome[1])
    state.formats.add(outcome[2])
    if not complete:
        state.tail = (offset, True)  # a whole result whose newline never made it


_NOT_JSON = object()


def _torn_fragment(raw: bytes) -> bool:
    """Whether a last line (no newline, not JSON) can be a result write cut short.

    Either a prefix of a result line, longer or shorter than its first key, or
    what a power loss leaves: the file grew but its last block stayed NUL bytes.
    """
    head = raw.rstrip(b"\0")
    return head.startswith(_RESULT_START) or _RESULT_START.startswith(head)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return _NOT_JSON


def _repair_tail(fd: int, state: ResumeState) -> None:
    if state.tail is None:
        return
    offset, valid = state.tail
    if valid:
        # A complete result whose newline never made it: finish the line.
        _write_all(fd, b"\n")
    else:
        os.ftruncate(fd, offset)
    os.fsync(fd)


def _parse_result(raw: bytes) -> tuple[str, bool] | None:
    outcome = result_outcome(_parse_json(raw))
    return None if outcome is None else outcome[:2]


def _copy_without(path: Path, fd: int, keys: set[str] | IdSet) -> int:
    dropped = 0
    with open(path, "rb") as lines:
        for raw in lines:
            parsed = _parse_result(raw)
            if parsed is not None and parsed[0] in keys and not parsed[1]:
                dropped += 1
                continue
            _write_all(fd, raw)
    return dropped


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) everywhere.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
