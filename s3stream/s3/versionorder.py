"""The order of one key's versions: S3's own listing order, not ``LastModified`` (pure, no I/O).

S3 lists a key's versions and delete markers together, newest first, in the order they became the
key's current version. ``LastModified`` does not always follow that order: a multipart upload carries
the time it was *started*, so one completed after a later plain PUT is the current version yet has the
older timestamp. Delivery order is therefore the listing order, reversed.

Some servers (moto among them) list a page's versions first and its delete markers after them. Such a
page is recognised by keys going backwards (a marker of key ``a`` after a version of key ``b``); one key's
listing is recognised as interleaved when a delete marker comes before one of its versions. Where the
server is known to list markers apart, or a key's listing cannot tell (every version before every
marker), the two lists (each in the server's order) are merged by ``LastModified``, ``IsLatest``
breaking a tie. :class:`ListingOrder` remembers, per store, what the server was seen to do.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from s3stream.message import Entry


@dataclass(slots=True)
class ListingOrder:
    """What one server was seen to do: ``None`` until a listing tells; ``True`` when it interleaves
    delete markers with versions as S3 does; ``False`` when it lists them apart."""

    interleaved: bool | None = None

    def page(self, entries: list[Entry]) -> list[Entry]:
        """A page's entries grouped by key in ascending order (a no-op for S3's own listings)."""
        if all(a.key <= b.key for a, b in itertools.pairwise(entries)):
            return entries
        self.interleaved = False
        return sorted(entries, key=lambda e: e.key)  # stable: each list keeps the server's order

    def oldest_first(self, entries: list[Entry]) -> list[Entry]:
        """One key's versions (listing order) in delivery order, oldest first."""
        if not any(e.deleted for e in entries) or all(e.deleted for e in entries):
            return entries[::-1]
        if _marker_before_version(entries):
            if self.interleaved is None:
                self.interleaved = True
            if self.interleaved:
                return entries[::-1]
        elif self.interleaved:
            return entries[::-1]
        return _merged(entries)[::-1]


def oldest_first(entries: list[Entry], order: ListingOrder | None = None) -> list[Entry]:
    """One key's versions from listing order (newest first) to delivery order (oldest first)."""
    return (order or ListingOrder()).oldest_first(entries)


def _marker_before_version(entries: list[Entry]) -> bool:
    seen_marker = False
    for entry in entries:
        if entry.deleted:
            seen_marker = True
        elif seen_marker:
            return True
    return False


def _merged(entries: list[Entry]) -> list[Entry]:
    """Versions and delete markers, each list in the server's order, merged newest first."""
    versions = [e for e in entries if not e.deleted]
    markers = [e for e in entries if e.deleted]
    out: list[Entry] = []
    i = j = 0
    while i < len(versions) and j < len(markers):
        v, m = versions[i], markers[j]
        if (m.last_modified_ms, m.latest) > (v.last_modified_ms, v.latest):
            out.append(m)
            j += 1
        else:
            out.append(v)
            i += 1
    return out + versions[i:] + markers[j:]


@dataclass(slots=True)
class Chunk:
    """A run of one key's listing: where it starts and the oldest ``LastModified`` in it."""

    after: str | None  # the version id listed just before the run (None: the key's first version)
    first: str  # the run's first version id
    min_ms: int


class KeyRun:
    """One key's versions as a pass lists them (newest first). The new ones are held up to ``limit``;
    past that, only the boundaries of ``limit``-long chunks are kept, so a key with a huge backlog
    costs a few numbers per chunk instead of its whole history, and is listed again a chunk at a time."""

    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self.limit = limit
        self.held: list[Entry] = []
        self.chunks: list[Chunk] = []
        self.spilled = False
        self._last: str | None = None
        self._count = 0

    def add(self, entry: Entry, *, new: bool) -> None:
        """The next listed version of this key; ``new`` when the cursor has not seen it."""
        if not self.chunks or self._count >= self.limit:
            self.chunks.append(Chunk(after=self._last, first=entry.version_id, min_ms=entry.last_modified_ms))
            self._count = 0
        chunk = self.chunks[-1]
        chunk.min_ms = min(chunk.min_ms, entry.last_modified_ms)
        self._count += 1
        self._last = entry.version_id
        if new and not self.spilled:
            self.held.append(entry)
            if len(self.held) > self.limit:
                self.spilled = True
                self.held = []

    def unstarted_before(self, index: int) -> int:
        """Once chunks ``index`` and older are handed out, every version of the key stamped before
        this time has been: the oldest ``LastModified`` of the newer chunks."""
        return min((c.min_ms for c in self.chunks[:index]), default=2**63)
