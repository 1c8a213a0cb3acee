"""Keys a log poller knows are not new, by open directory: a pure structure, no I/O.

A directory bucket lists in no order, so a pass lists each hot directory whole, and most of what it
lists was seen before. Once the cursor says an object is not new (handled, in flight, a copy of a
message handled or in flight), that stays so for the cursor's life, so the poller keeps its key here
and the next listings of that directory leave it out after reading only its ``<Key>``
(:func:`~s3stream.s3.s3xml.parse_object_page`). Objects handed out are added as they are. A
directory's keys are dropped once the cursor seals it; beyond ``limit`` keys nothing more is added
(those objects are read and asked about as before), so memory stays bounded whatever a directory holds.
"""

from __future__ import annotations

from collections.abc import Collection

LIMIT = 50_000  # keys remembered per shard at most
_NONE: frozenset[str] = frozenset()


class KnownKeys:
    """The keys of each open directory that a listing may leave out."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.size = 0
        self._by_dir: dict[int, set[str]] = {}

    def of(self, dir_ms: int | None) -> Collection[str]:
        """The known keys of the directory starting at ``dir_ms`` (none for None)."""
        return _NONE if dir_ms is None else self._by_dir.get(dir_ms, _NONE)

    def add(self, dir_ms: int | None, key: str) -> None:
        """Remember that ``key``, in the directory starting at ``dir_ms``, is not new."""
        if self.size >= self.limit or dir_ms is None:
            return
        keys = self._by_dir.setdefault(dir_ms, set())
        if key not in keys:
            keys.add(key)
            self.size += 1

    def forget_before(self, sealed_ms: int) -> None:
        """Drop the directories that start before ``sealed_ms``: sealed, never listed again."""
        for dir_ms in [d for d in self._by_dir if d < sealed_ms]:
            self.size -= len(self._by_dir.pop(dir_ms))
