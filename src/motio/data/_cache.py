"""The response cache (``--cache``): a request answered before is not sent again.

A request is known by :func:`request_key`, a SHA-256 of its canonical body
(the model, the messages, every sampling option, the ``response_format``
schema; keys sorted, no spaces): the same body asked again, in this run or
another, by this process or another, reads the stored answer. Fields that
only say how the answer travels (``stream``, ``stream_options``) are left
out, so they never split the cache. A request with ``temperature`` > 0 is
cached too: the cache is for reruns (an edited dataset pays for its edited
rows only), not for drawing more samples.

Storage is one SQLite file (stdlib ``sqlite3``), shared safely by any
number of motio processes at once:

- WAL journal: readers never block the writer nor each other, and a reader
  sees only whole transactions;
- each ``put`` is one transaction (an ``INSERT OR IGNORE`` in autocommit),
  so a process killed mid-write leaves the file as it was before that row;
- a busy timeout (``timeout``): a writer waits for another's transaction
  instead of failing with "database is locked";
- ``synchronous=NORMAL``: with WAL, a crash of the process loses nothing
  committed; a power cut may lose the last answers, which are then asked
  again (a cache can afford that, a results file could not).

The processes must share one machine's filesystem: WAL keeps its index in
shared memory beside the file, which network filesystems (NFS) do not
provide; Ray workers on several machines need one cache each, or none.

Default location: ``$XDG_CACHE_HOME/motio/responses.sqlite3``, else
``~/.cache/motio/responses.sqlite3``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

__all__ = ["TRANSPORT_FIELDS", "ResponseCache", "default_cache_path", "request_key"]

# Fields of a request body that change how the answer travels, not what it is.
TRANSPORT_FIELDS = frozenset({"stream", "stream_options"})
# Part of every key: a change in what is stored or how keys are made bumps it,
# and the old entries are simply never found again.
_KEY_VERSION = b"motio-cache-1\n"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses "
    "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
)


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/motio/responses.sqlite3``, or under ``~/.cache`` (XDG's default)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative value is invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "motio" / "responses.sqlite3"


def request_key(body: Mapping[str, Any]) -> str:
    """The cache key of a request body: a hex SHA-256 of its canonical JSON.

    Raises:
        TypeError: the body holds something that is not JSON.
    """
    kept = {name: value for name, value in body.items() if name not in TRANSPORT_FIELDS}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(_KEY_VERSION + canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers stored by request key, in a SQLite file any process can share.

    Args:
        path: the SQLite file (created with its folders); None for
            :func:`default_cache_path`.
        timeout: how long a write waits for another process's, in seconds.

    Attributes:
        path: the file.
        hits: lookups that found an answer, since opening.
        misses: lookups that found none.

    Raises:
        sqlite3.Error: the file is not a SQLite database, or stays locked
            longer than ``timeout``.
        OSError: the folder cannot be made.
    """

    def __init__(self, path: str | Path | None = None, *, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.hits = 0
        self.misses = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection used from whichever thread calls (the event loop's,
        # a worker's): the lock serialises them, as sqlite3 would refuse to.
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = _connect(self.path, timeout)

    def get(self, key: str) -> Any | None:
        """The answer stored under ``key``, or None (counted as a hit or a miss)."""
        with self._lock:
            row = self._open().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (anything JSON) under ``key``; the first answer stored stays.

        Two processes that both missed and both asked store the same kind of
        answer; keeping the first means every later reader sees one answer.
        """
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._open().execute(
                "INSERT OR IGNORE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._open().execute("SELECT count(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the file; the cache cannot be used afterwards. Closing twice is allowed."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the response cache {self.path} is closed; open a new ResponseCache")
        return self._db


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    # isolation_level=None: autocommit, each statement its own transaction.
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        _set_up(db, timeout)
    except BaseException:
        db.close()
        raise
    return db


def _set_up(db: sqlite3.Connection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Turning WAL on takes an exclusive lock for a moment; a process
            # creating the file at the same instant can make it fail at once
            # (SQLite does not always run the busy handler here), so retry.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # a retry pause against another process, not a wait for an event
