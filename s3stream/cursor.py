"""The versions-mode cursor: a pure state machine, no I/O.

S3's ``ListObjectVersions`` has no time filter and ``LastModified`` is neither unique (whole seconds)
nor monotonic in visibility (a slow PUT or a multipart upload shows up after later writes). So the
cursor is not "the newest LastModified seen" but two things:

* a **watermark** ``W``: every version with ``LastModified < W`` has been handled;
* the **done set**: identities of handled versions with ``LastModified >= W``.

A listed version is *new* when ``LastModified >= W`` and it is neither done nor in flight.

``W`` may only rise to the **horizon** of a complete listing pass, ``H = server_time_at_start - 1 s -
settle_window``: the settle window is the promise that anything stamped before ``H`` was visible to
that pass. It may not pass a version still in flight either, so ``W = min(H, oldest in-flight)``.
Everything below ``W`` is dropped from the done set, which therefore holds only about one settle
window of versions: the checkpoint's size follows the write rate, never the topic's history.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from s3stream.message import Entry

Ident = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A committed cursor: the watermark and the done versions at or above it, sorted."""

    watermark_ms: int
    done: tuple[tuple[str, str, int], ...] = ()


class VersionCursor:
    """Tracks which versions of one shard are done, in flight, or new."""

    def __init__(self, checkpoint: Checkpoint | None = None) -> None:
        cp = checkpoint or Checkpoint(watermark_ms=0)
        self.watermark_ms = cp.watermark_ms
        self._horizon_ms = cp.watermark_ms
        self._done: dict[Ident, int] = {}
        self._done_heap: list[tuple[int, str, str]] = []
        self._inflight: dict[Ident, int] = {}
        self._inflight_heap: list[tuple[int, str, str]] = []
        self.generation = 0  # bumps whenever the done set changes: the checkpoint is then stale
        for key, version_id, last_modified_ms in cp.done:
            self._add_done((key, version_id), last_modified_ms)

    @property
    def in_flight(self) -> int:
        """How many versions were handed out and are not complete yet."""
        return len(self._inflight)

    @property
    def horizon_ms(self) -> int:
        """Every version stamped before this was visible to a complete listing pass."""
        return self._horizon_ms

    def oldest_in_flight_ms(self) -> int | None:
        """LastModified of the oldest version handed out and not complete (None when idle)."""
        heap = self._inflight_heap
        while heap and (heap[0][1], heap[0][2]) not in self._inflight:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def is_new(self, entry: Entry) -> bool:
        """True when ``entry`` has not been handled and is not being handled."""
        if entry.last_modified_ms < self.watermark_ms:
            return False
        ident = entry.ident
        return ident not in self._done and ident not in self._inflight

    def start(self, entry: Entry) -> None:
        """``entry`` is handed to the workers; the watermark will not pass it until it completes."""
        self._inflight[entry.ident] = entry.last_modified_ms
        heapq.heappush(self._inflight_heap, (entry.last_modified_ms, entry.key, entry.version_id))

    def complete(self, ident: Ident) -> None:
        """The version ``ident`` was handled (or dead-lettered): it may be committed."""
        last_modified_ms = self._inflight.pop(ident)
        self._add_done(ident, last_modified_ms)

    def skip(self, entry: Entry) -> None:
        """Mark ``entry`` done without handling it (used to start a new group at ``latest``)."""
        self._add_done(entry.ident, entry.last_modified_ms)

    def pass_complete(self, horizon_ms: int) -> None:
        """A listing pass that began with ``horizon_ms`` as its horizon has been fully handed out."""
        self._horizon_ms = max(self._horizon_ms, horizon_ms)
        self._advance()

    def checkpoint(self) -> Checkpoint:
        """The state to commit: it covers completed work only."""
        self._advance()
        done = sorted((k, v, lm) for (k, v), lm in self._done.items())
        return Checkpoint(watermark_ms=self.watermark_ms, done=tuple(done))

    def _add_done(self, ident: Ident, last_modified_ms: int) -> None:
        if last_modified_ms < self.watermark_ms:
            return
        self._done[ident] = last_modified_ms
        heapq.heappush(self._done_heap, (last_modified_ms, ident[0], ident[1]))
        self.generation += 1

    def _advance(self) -> None:
        oldest = self.oldest_in_flight_ms()
        target = self._horizon_ms if oldest is None else min(self._horizon_ms, oldest)
        if target <= self.watermark_ms:
            return
        self.watermark_ms = target
        done_heap = self._done_heap
        pruned = False
        while done_heap and done_heap[0][0] < target:
            _, key, version_id = heapq.heappop(done_heap)
            if self._done.pop((key, version_id), None) is not None:
                pruned = True
        if pruned:
            self.generation += 1

