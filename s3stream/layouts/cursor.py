"""The versions-mode cursor: a pure state machine, no I/O.

S3's ``ListObjectVersions`` has no time filter and ``LastModified`` is neither unique (whole seconds)
nor monotonic in visibility (a slow PUT or a multipart upload shows up after later writes). So the
cursor is not "the newest LastModified seen" but:

* a **watermark** ``W``, the horizon of the last complete listing pass: every version stamped before
  ``W`` was listed by that pass and handed out, so it is handled unless it is **pending** (still in
  flight, or in flight when the checkpoint was written);
* the **done set**: identities of handled versions at or above ``W``;
* the current pass's **progress**: the pass lists keys in ascending order, so once it has handed out
  every new version of the keys before position ``(key, t)``, every version there stamped before the
  pass's horizon is handled or pending. Those versions need no entry in the done set.

A pass's horizon is ``server_time_at_start - 1 s - settle_window``: the settle window is the promise
that anything stamped before it was visible to that pass. The done set therefore holds the versions
written within about one settle window plus the few completed ahead of the pass's progress, and the
pending set at most what fits in the worker queue: the checkpoint's size follows the write rate and
the queue, never the topic's history or a backlog being caught up.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from s3stream.message import Entry

Ident = tuple[str, str]
Version = tuple[str, str, int]  # (key, version id, LastModified ms)


@dataclass(frozen=True, slots=True)
class PassProgress:
    """How far one listing pass got: every version stamped before ``horizon_ms`` whose key sorts before
    ``key``, or which belongs to ``key`` and is stamped before ``before_ms``, is handled or pending."""

    horizon_ms: int
    key: str = ""
    before_ms: int = 0

    def covers(self, key: str, last_modified_ms: int) -> bool:
        if last_modified_ms >= self.horizon_ms:
            return False
        return key < self.key or (key == self.key and last_modified_ms < self.before_ms)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A committed cursor: the watermark, the done versions not covered otherwise, the pending versions
    (covered by the watermark or a pass but not handled: delivered again after a restart) and the
    progress of the passes that were under way."""

    watermark_ms: int
    done: tuple[Version, ...] = ()
    pending: tuple[Version, ...] = ()
    progress: tuple[PassProgress, ...] = ()


class VersionCursor:
    """Tracks which versions of one shard are done, in flight, or new."""

    def __init__(self, checkpoint: Checkpoint | None = None) -> None:
        cp = checkpoint or Checkpoint(watermark_ms=0)
        self.watermark_ms = cp.watermark_ms
        self._horizon_ms = cp.watermark_ms
        self._done: dict[Ident, int] = {}
        self._by_time: list[tuple[int, str, str]] = []  # done versions, pruned as the watermark rises
        self._by_position: list[tuple[str, int, str]] = []  # done during the pass, pruned as it progresses
        self._inflight: dict[Ident, int] = {}
        self._inflight_heap: list[tuple[int, str, str]] = []
        self._pending: dict[Ident, int] = {(k, v): lm for k, v, lm in cp.pending}
        self._restored: tuple[PassProgress, ...] = cp.progress  # until a pass of ours completes
        self._pass: PassProgress | None = None
        self.generation = 0  # bumps when the done or pending versions change: a commit is due
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

    @property
    def tracked(self) -> int:
        """How many versions the checkpoint would list (done and pending): what its size follows."""
        return len(self._done) + len(self._pending) + len(self._inflight)

    def oldest_in_flight_ms(self) -> int | None:
        """LastModified of the oldest version handed out and not complete (None when idle)."""
        heap = self._inflight_heap
        while heap and (heap[0][1], heap[0][2]) not in self._inflight:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def is_new(self, entry: Entry) -> bool:
        """True when ``entry`` has not been handled and is not being handled."""
        ident = entry.ident
        if ident in self._inflight:
            return False
        if ident in self._pending:
            return True
        return not self._covered(entry.key, entry.last_modified_ms) and ident not in self._done

    def start(self, entry: Entry) -> None:
        """``entry`` is handed to the workers; no checkpoint counts it handled until it completes."""
        self._pending.pop(entry.ident, None)
        self._inflight[entry.ident] = entry.last_modified_ms
        heapq.heappush(self._inflight_heap, (entry.last_modified_ms, entry.key, entry.version_id))

    def complete(self, ident: Ident) -> None:
        """The version ``ident`` was handled (or dead-lettered): it may be committed."""
        last_modified_ms = self._inflight.pop(ident)
        self._finish(ident, last_modified_ms, pending=True)

    def skip(self, entry: Entry) -> None:
        """Mark ``entry`` done without handling it (used to start a new group at ``latest``)."""
        pending = self._pending.pop(entry.ident, None) is not None
        self._finish(entry.ident, entry.last_modified_ms, pending=pending)

    def begin_pass(self, horizon_ms: int) -> None:
        """A listing pass starts; ``horizon_ms`` is its horizon (server time minus the settle window)."""
        self._pass = PassProgress(horizon_ms=max(horizon_ms, self.watermark_ms))
        self._by_position = []

    def listed_through(self, key: str, before_ms: int = 0) -> None:
        """The current pass has handed out every new version of the keys before ``key`` (and of ``key``
        itself stamped before ``before_ms``)."""
        current = self._pass
        if current is None or (key, before_ms) <= (current.key, current.before_ms):
            return
        self._pass = current = PassProgress(current.horizon_ms, key, before_ms)
        heap, done = self._by_position, self._done
        pruned = False
        while heap and current.covers(heap[0][0], heap[0][1]):
            key_done, _, version_id = heapq.heappop(heap)
            pruned |= done.pop((key_done, version_id), None) is not None
        if pruned:  # progress alone is not written: a stored checkpoint that covers less stays true
            self.generation += 1

    def pass_complete(self, horizon_ms: int) -> None:
        """A listing pass that began with ``horizon_ms`` as its horizon has been fully handed out."""
        self._horizon_ms = max(self._horizon_ms, horizon_ms)
        self._pass = None
        self._restored = ()
        self._pending.clear()  # what a restart left pending and this pass did not list is gone
        leftover = self._by_position
        self._by_position = []
        for key, last_modified_ms, version_id in leftover:  # uncovered by the progress: keep by time
            if (key, version_id) in self._done:
                heapq.heappush(self._by_time, (last_modified_ms, key, version_id))
        self._advance()

    def checkpoint(self) -> Checkpoint:
        """The state to commit: it counts completed work only."""
        covered = self._covered
        done = sorted((k, v, lm) for (k, v), lm in self._done.items() if not covered(k, lm))
        pending = {ident: lm for ident, lm in self._inflight.items() if covered(ident[0], lm)}
        pending.update(self._pending)
        progress = self._restored + ((self._pass,) if self._pass is not None else ())
        return Checkpoint(watermark_ms=self.watermark_ms, done=tuple(done),
                          pending=tuple(sorted((k, v, lm) for (k, v), lm in pending.items())),
                          progress=progress)

    def _covered(self, key: str, last_modified_ms: int) -> bool:
        """True when the watermark or a pass's progress counts this version handled (unless pending)."""
        if last_modified_ms < self.watermark_ms:
            return True
        current = self._pass
        if current is not None and current.covers(key, last_modified_ms):
            return True
        return any(p.covers(key, last_modified_ms) for p in self._restored)

    def _finish(self, ident: Ident, last_modified_ms: int, *, pending: bool) -> None:
        if self._covered(ident[0], last_modified_ms):
            if pending:
                self.generation += 1  # it leaves the pending list
            return
        self._add_done(ident, last_modified_ms)

    def _add_done(self, ident: Ident, last_modified_ms: int) -> None:
        if last_modified_ms < self.watermark_ms:
            return
        self._done[ident] = last_modified_ms
        current = self._pass
        if current is not None and last_modified_ms < current.horizon_ms:
            heapq.heappush(self._by_position, (ident[0], last_modified_ms, ident[1]))
        else:
            heapq.heappush(self._by_time, (last_modified_ms, ident[0], ident[1]))
        self.generation += 1

    def _advance(self) -> None:
        target = self._horizon_ms
        if target <= self.watermark_ms:
            return
        self.watermark_ms = target
        heap, done = self._by_time, self._done
        pruned = False
        while heap and heap[0][0] < target:
            _, key, version_id = heapq.heappop(heap)
            pruned |= done.pop((key, version_id), None) is not None
        if pruned:  # a watermark that moved alone is not written: idle shards cost no PUTs
            self.generation += 1
