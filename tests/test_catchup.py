"""Pure tests of catching up a backlog: the checkpoint stays small while a pass hands out a huge backlog,
one key's history is never held whole, and a key's versions go out in S3's order, not LastModified's.

DESIGN.md promises 4 (order), 5 (checkpoint size grows neither with history nor with a backlog) and 6
(memory is bounded by settings, not by one key's history) rest on these pieces.
"""

from __future__ import annotations

from s3stream.layouts.cursor import Checkpoint, PassProgress, VersionCursor
from s3stream.message import Entry
from s3stream.pipeline.checkpoint import decode, encode
from s3stream.s3.versionorder import KeyRun, ListingOrder, oldest_first

SECOND = 1000
HORIZON = 10**9


def entry(key: str, version_id: str, last_modified_ms: int, *, deleted: bool = False,
          latest: bool = False, etag: str = "") -> Entry:
    return Entry(key=key, version_id=version_id, last_modified_ms=last_modified_ms, deleted=deleted,
                 latest=latest, etag=etag)


def backlog(keys: int, per_key: int) -> list[Entry]:
    """A key-ordered backlog, every version stamped well before the pass's horizon."""
    return [entry(f"k{k:05d}", f"v{i}", (k * per_key + i) * SECOND)
            for k in range(keys) for i in range(per_key)]


def test_checkpoint_stays_small_while_a_pass_catches_up_a_backlog() -> None:
    """A new group's first pass over 20,000 versions: with 50 in flight at a time, no checkpoint taken
    during the pass lists more than about the in-flight window, though the watermark has not moved."""
    cursor = VersionCursor()
    cursor.begin_pass(HORIZON)
    in_flight: list[Entry] = []
    largest = 0
    previous_key = ""
    for e in backlog(2000, 10):
        if e.key != previous_key:
            cursor.listed_through(e.key)
            previous_key = e.key
        assert cursor.is_new(e)
        cursor.start(e)
        in_flight.append(e)
        if len(in_flight) >= 50:
            done = in_flight.pop(0)
            cursor.complete(done.ident)
        cp = cursor.checkpoint()
        largest = max(largest, len(cp.done) + len(cp.pending))
    assert cursor.watermark_ms == 0
    assert largest <= 60, largest


def test_a_restart_mid_pass_redelivers_only_what_was_not_handled() -> None:
    """A checkpoint taken mid-pass restores a cursor that treats everything handled as not new and
    everything in flight or not yet listed as new: nothing is lost and nothing handled comes back."""
    cursor = VersionCursor()
    cursor.begin_pass(HORIZON)
    entries = backlog(100, 5)
    handled, _running = entries[:230], entries[230:240]
    previous_key = ""
    for e in entries[:240]:
        if e.key != previous_key:
            cursor.listed_through(e.key)
            previous_key = e.key
        cursor.start(e)
    for e in handled:
        cursor.complete(e.ident)
    cp = decode(encode(cursor.checkpoint(), bucket="b", prefix="p/"), where="test")
    restarted = VersionCursor(cp)
    assert [e for e in entries if restarted.is_new(e)] == entries[230:]
    assert len(cp.done) + len(cp.pending) <= 20


def test_an_entry_in_flight_from_before_the_pass_stays_pending() -> None:
    """A version still in flight when a pass begins is not counted handled when the pass moves past
    its key: the checkpoint names it pending, so a restart delivers it."""
    cursor = VersionCursor()
    slow = entry("a", "slow", 5 * SECOND)
    cursor.start(slow)
    cursor.begin_pass(HORIZON)
    cursor.listed_through("z")
    cp = cursor.checkpoint()
    assert cp.pending == (("a", "slow", 5 * SECOND),)
    assert VersionCursor(cp).is_new(slow)


def test_restored_progress_is_kept_until_a_pass_completes() -> None:
    """The progress of a pass cut short by a restart keeps covering what it covered, and is written
    again, until a pass of the new process completes."""
    cp = Checkpoint(watermark_ms=0, progress=(PassProgress(HORIZON, "m", 0),))
    cursor = VersionCursor(cp)
    assert not cursor.is_new(entry("c", "1", SECOND))
    assert cursor.is_new(entry("x", "1", SECOND))
    cursor.begin_pass(HORIZON + SECOND)
    assert cursor.checkpoint().progress[0] == PassProgress(HORIZON, "m", 0)
    cursor.pass_complete(HORIZON + SECOND)
    assert cursor.checkpoint() == Checkpoint(watermark_ms=HORIZON + SECOND)


def test_progress_within_one_key_covers_only_older_stamps() -> None:
    """Progress inside one key covers its versions stamped before the bound, and nothing newer."""
    cursor = VersionCursor()
    cursor.begin_pass(HORIZON)
    old, new = entry("hot", "1", 10 * SECOND), entry("hot", "2", 20 * SECOND)
    cursor.start(old)
    cursor.complete(old.ident)
    cursor.listed_through("hot", 15 * SECOND)
    cp = cursor.checkpoint()
    assert cp.done == ()
    restarted = VersionCursor(cp)
    assert not restarted.is_new(old)
    assert restarted.is_new(new)


def test_versions_written_during_the_pass_are_kept_in_the_done_set() -> None:
    """A version stamped after the pass's horizon is not covered by its progress: it stays in the done
    set until the watermark passes it."""
    cursor = VersionCursor()
    cursor.begin_pass(100 * SECOND)
    late = entry("a", "late", 150 * SECOND)
    cursor.start(late)
    cursor.complete(late.ident)
    cursor.listed_through("b")
    cursor.pass_complete(100 * SECOND)
    assert cursor.checkpoint().done == (("a", "late", 150 * SECOND),)


# --- one key's order ----------------------------------------------------------------------------------


def test_a_multipart_upload_completed_last_is_delivered_last() -> None:
    """A multipart upload started before a plain PUT but completed after it is S3's current version:
    listed first, with the older LastModified. It is delivered after the plain PUT."""
    listed = [entry("k", "multipart", 10 * SECOND, latest=True, etag="abc-2"),
              entry("k", "plain", 20 * SECOND)]
    assert [e.version_id for e in oldest_first(listed)] == ["plain", "multipart"]


def test_interleaved_delete_markers_keep_listing_order() -> None:
    """Where a delete marker is listed between versions, the listing order is the truth, whatever the
    timestamps say, and the server is remembered as interleaving."""
    order = ListingOrder()
    listed = [entry("k", "v3", 10 * SECOND, latest=True), entry("k", "d2", 20 * SECOND, deleted=True),
              entry("k", "v1", 5 * SECOND)]
    assert [e.version_id for e in order.oldest_first(listed)] == ["v1", "d2", "v3"]
    assert order.interleaved is True


def test_markers_listed_apart_are_merged_by_time() -> None:
    """A server that lists a page's versions before its delete markers (keys going backwards) is
    remembered; its pages are regrouped by key and each key's two lists merged by LastModified."""
    order = ListingOrder()
    page = [entry("a", "v3", 3 * SECOND, latest=True), entry("a", "v1", 1 * SECOND),
            entry("b", "v1", 1 * SECOND, latest=True), entry("a", "d2", 2 * SECOND, deleted=True)]
    grouped = order.page(page)
    assert [(e.key, e.version_id) for e in grouped] == [("a", "v3"), ("a", "v1"), ("a", "d2"), ("b", "v1")]
    assert order.interleaved is False
    assert [e.version_id for e in order.oldest_first(grouped[:3])] == ["v1", "d2", "v3"]


# --- a hot key ----------------------------------------------------------------------------------------


def test_a_hot_key_is_held_up_to_the_limit_then_only_its_chunks_are_kept() -> None:
    """Past ``limit`` new versions a key's entries are dropped and only chunk boundaries kept: one per
    ``limit`` listed versions, each with where it starts and its oldest stamp."""
    run = KeyRun("hot", limit=100)
    listed = [entry("hot", f"v{i}", (1000 - i) * SECOND) for i in range(1000)]  # newest first
    for e in listed[:100]:
        run.add(e, new=True)
    assert not run.spilled
    assert len(run.held) == 100
    for e in listed[100:]:
        run.add(e, new=True)
        assert len(run.held) <= 100
    assert run.spilled
    assert run.held == []
    assert len(run.chunks) == 10
    assert run.chunks[0].after is None
    assert run.chunks[0].first == "v0"
    assert run.chunks[3].after == "v299"
    assert run.chunks[3].first == "v300"
    assert run.unstarted_before(3) == run.chunks[2].min_ms == 701 * SECOND
    assert run.unstarted_before(0) == 2**63


def test_passes_over_an_idle_shard_leave_nothing_to_commit() -> None:
    """Passes that find nothing new move the watermark and the progress but not ``generation``: an idle
    shard's checkpoint is not written again (the stored one, covering less, stays true)."""
    cursor = VersionCursor()
    old = entry("a", "1", 10 * SECOND)
    cursor.begin_pass(100 * SECOND)
    cursor.listed_through("a")
    cursor.start(old)
    cursor.complete(old.ident)
    cursor.pass_complete(100 * SECOND)
    g = cursor.generation
    for horizon in range(101, 110):
        cursor.begin_pass(horizon * SECOND)
        cursor.listed_through("a")
        assert not cursor.is_new(old)
        cursor.listed_through("b")
        cursor.pass_complete(horizon * SECOND)
    assert cursor.generation == g
    assert cursor.checkpoint() == Checkpoint(watermark_ms=109 * SECOND)
