"""Ids kept compact: what a batch remembers per prompt, at 8 bytes rather than ~200.

A batch must remember every id it has seen, twice over: the ids of its
input (a repeated id is reported and skipped) and the ids its results file
holds (a rerun skips them). As Python strings in a ``set`` or a ``dict``
that is a few hundred bytes per prompt (the JSON text of the id, the
object's header, the table's slot), 92 MB at 100,000 prompts and about
4 GB at ten million. :class:`IdSet` keeps each id as its 8-byte BLAKE2b
digest in an open-addressing table on an ``array('Q')`` (linear probing,
at most two thirds full), and optionally a 4-byte line number next to it:
16 to 36 bytes per id, whatever the id's length.

Collisions: two different ids with the same 64-bit digest are taken for
one. Among n ids the chance that any two collide is about n^2 / 2^65:
3e-8 at a million ids, 3e-6 at ten million, 3e-4 at a hundred million.
When it happens, the later of the two is reported as a duplicate of the
earlier (and skipped), or, on a rerun, taken for answered when the other
one was (and not run); the results file itself always holds the full ids,
so ``motio export`` and any reader of it see the truth.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["IdSet", "digest"]

_EMPTY, _GONE = 0, 1  # slot markers: never a digest (see digest())
_START = 64


def digest(key: str) -> int:
    """The 64-bit digest an id is kept as (never 0 nor 1: those mark empty and removed slots)."""
    # surrogatepass: a lone surrogate is a valid id in JSON text.
    value = int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return value if value > _GONE else value + 2


class IdSet:
    """A set of id keys (``PromptRecord.key``), 8 bytes each; with ``lines``, a line number per id.

    Behaves as a ``set[str]`` for what a batch asks of one: ``in``, ``add``,
    ``discard``, ``len``, ``&`` and ``-=`` (with another IdSet or with keys),
    and ``==`` with a set of keys. Ids cannot be listed back (only digests
    are kept): a caller that needs them keeps them itself.
    """

    __slots__ = ("_count", "_keys", "_lines", "_used")

    def __init__(self, keys: Iterable[str] = (), *, lines: bool = False) -> None:
        self._keys = array("Q", bytes(8 * _START))
        self._lines: array[int] | None = array("I", bytes(4 * _START)) if lines else None
        self._count = 0  # ids held
        self._used = 0  # slots not empty: ids and removed ones
        for key in keys:
            self.add(key)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(digest(key)) >= 0

    def add(self, key: str, line: int = 0) -> None:
        """Add ``key`` (with its ``line`` when lines are kept); nothing if it is there."""
        self.first_line(key, line)

    def first_line(self, key: str, line: int) -> int:
        """Add ``key`` at ``line`` unless it is there; the line it was first added at.

        Raises:
            OverflowError: ``line`` beyond 2^32 - 1.
        """
        return self._insert(digest(key), line)

    def discard(self, key: str) -> None:
        """Remove ``key`` if it is there."""
        self._remove(digest(key))

    def copy(self) -> IdSet:
        """Another IdSet holding the same ids (and lines)."""
        other = IdSet()
        other._keys = array("Q", self._keys)
        other._lines = None if self._lines is None else array("I", self._lines)
        other._count, other._used = self._count, self._used
        return other

    def _digests(self) -> Iterable[int]:
        return (value for value in self._keys if value > _GONE)

    def __and__(self, other: object) -> IdSet | set[str]:
        """With an IdSet: the ids in both (an IdSet). With keys: those of them held here."""
        if isinstance(other, IdSet):
            both = IdSet()
            for value in self._digests():
                if other._find(value) >= 0:
                    both._insert(value, 0)
            return both
        if isinstance(other, (set, frozenset, list, tuple)):
            return {key for key in other if key in self}
        return NotImplemented

    __rand__ = __and__

    def __isub__(self, other: Iterable[str] | IdSet) -> IdSet:
        if isinstance(other, IdSet):
            for value in list(other._digests()):
                self._remove(value)
        else:
            for key in other:
                self.discard(key)
        return self

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdSet):
            return len(self) == len(other) and all(other._find(value) >= 0 for value in self._digests())
        if isinstance(other, (set, frozenset)):
            return len(self) == len(other) and all(key in self for key in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, as a set

    def __repr__(self) -> str:
        return f"<IdSet of {self._count} ids>"

    # --- the table -------------------------------------------------------

    def _find(self, value: int) -> int:
        keys = self._keys
        mask = len(keys) - 1
        slot = value & mask
        while True:
            held = keys[slot]
            if held == value:
                return slot
            if held == _EMPTY:
                return -1
            slot = (slot + 1) & mask

    def _insert(self, value: int, line: int) -> int:
        found = self._find(value)
        if found >= 0:
            return self._lines[found] if self._lines is not None else line
        if 3 * (self._used + 1) > 2 * len(self._keys):
            self._grow()
        keys = self._keys
        mask = len(keys) - 1
        slot = value & mask
        while keys[slot] > _GONE:
            slot = (slot + 1) & mask
        if keys[slot] == _EMPTY:
            self._used += 1
        keys[slot] = value
        if self._lines is not None:
            self._lines[slot] = line
        self._count += 1
        return line

    def _remove(self, value: int) -> None:
        slot = self._find(value)
        if slot >= 0:
            # A tombstone, not an empty slot: ids placed after this one keep being found.
            self._keys[slot] = _GONE
            self._count -= 1

    def _grow(self) -> None:
        old_keys, old_lines = self._keys, self._lines
        # Doubled when mostly ids; kept the same size when mostly tombstones.
        size = len(old_keys) * 2 if 3 * self._count > len(old_keys) else len(old_keys)
        self._keys = array("Q", bytes(8 * size))
        self._lines = None if old_lines is None else array("I", bytes(4 * size))
        self._count = self._used = 0
        for slot, value in enumerate(old_keys):
            if value > _GONE:
                self._insert(value, 0 if old_lines is None else old_lines[slot])
