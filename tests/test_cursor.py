"""Pure unit tests of the versions-mode cursor, listing order, and checkpoint encoding (no I/O, no S3).

DESIGN.md promises 2 (no loss with whole-second timestamps), 3 (bounded duplicates), 4 (order) and
5 (checkpoints commit only completed work and do not grow with history) rest on these pieces.
"""

from __future__ import annotations

import re

import orjson
import pytest

from s3stream.errors import ConfigError
from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.message import Entry
from s3stream.pipeline.checkpoint import decode, encode, shard_name
from s3stream.s3.versionorder import oldest_first

SECOND = 1000
FAR_AHEAD = 10**13  # a horizon far beyond every LastModified used here


def entry(key: str, version_id: str, last_modified_ms: int, *, deleted: bool = False,
          latest: bool = False) -> Entry:
    return Entry(key=key, version_id=version_id, last_modified_ms=last_modified_ms, deleted=deleted,
                 latest=latest)


def handle(cursor: VersionCursor, e: Entry) -> None:
    """Hand ``e`` out and complete it, as poller + worker would."""
    assert cursor.is_new(e)
    cursor.start(e)
    cursor.complete(e.ident)


# --- VersionCursor -----------------------------------------------------------------------------------


def test_fresh_cursor_sees_everything_as_new() -> None:
    """A cursor without a checkpoint starts at watermark 0: any listed version is new."""
    cursor = VersionCursor()
    assert cursor.watermark_ms == 0
    assert cursor.in_flight == 0
    assert cursor.is_new(entry("k", "v1", 1))
    assert cursor.checkpoint() == Checkpoint(watermark_ms=0, done=())


def test_version_older_than_watermark_is_not_new() -> None:
    """A version stamped before the watermark was already handled; one at or after it is new."""
    cursor = VersionCursor(Checkpoint(watermark_ms=50 * SECOND))
    assert not cursor.is_new(entry("k", "old", 50 * SECOND - 1))
    assert not cursor.is_new(entry("k", "older", 0))
    assert cursor.is_new(entry("k", "at", 50 * SECOND))
    assert cursor.is_new(entry("k", "after", 51 * SECOND))


def test_started_version_is_not_new_and_counts_in_flight() -> None:
    """Once handed out, a version is not new again (a second listing pass must not re-deliver it)."""
    cursor = VersionCursor()
    e = entry("k", "v1", 10 * SECOND)
    cursor.start(e)
    assert not cursor.is_new(e)
    assert cursor.in_flight == 1
    cursor.complete(e.ident)
    assert cursor.in_flight == 0
    assert not cursor.is_new(e)


def test_a_version_in_flight_below_the_watermark_is_pending() -> None:
    """The watermark follows complete passes even while a version is in flight; the checkpoint taken
    meanwhile lists that version as pending, so a restart delivers it again and not the completed one."""
    cursor = VersionCursor()
    slow = entry("a", "slow", 10 * SECOND)
    fast = entry("b", "fast", 20 * SECOND)
    cursor.start(slow)
    handle(cursor, fast)
    cursor.pass_complete(FAR_AHEAD)
    assert cursor.watermark_ms == FAR_AHEAD
    cp = cursor.checkpoint()
    assert cp.pending == (("a", "slow", slow.last_modified_ms),)
    assert cp.done == ()
    assert not cursor.is_new(slow)  # still in flight here
    restarted = VersionCursor(cp)
    assert restarted.is_new(slow)
    assert not restarted.is_new(fast)


def test_completing_a_pending_version_empties_the_checkpoint() -> None:
    """When the pending version completes, the checkpoint is the watermark alone, and it is due."""
    cursor = VersionCursor()
    slow = entry("a", "slow", 10 * SECOND)
    cursor.start(slow)
    cursor.pass_complete(100 * SECOND)
    assert cursor.checkpoint().pending == (("a", "slow", 10 * SECOND),)
    g = cursor.generation
    cursor.complete(slow.ident)
    assert cursor.generation != g
    cp = cursor.checkpoint()
    assert cp == Checkpoint(watermark_ms=100 * SECOND)


def test_a_restored_pending_version_is_delivered_once_then_forgotten() -> None:
    """A pending version from a checkpoint is new after the restart; once handled, or once a complete
    pass did not list it (it was deleted meanwhile), the checkpoint no longer mentions it."""
    cp = Checkpoint(watermark_ms=100 * SECOND, pending=(("a", "1", 10 * SECOND), ("b", "2", 30 * SECOND)))
    cursor = VersionCursor(cp)
    first = entry("a", "1", 10 * SECOND)
    assert cursor.is_new(first)
    handle(cursor, first)
    assert not cursor.is_new(first)
    assert cursor.checkpoint().pending == (("b", "2", 30 * SECOND),)
    cursor.begin_pass(200 * SECOND)
    cursor.pass_complete(200 * SECOND)
    assert cursor.checkpoint() == Checkpoint(watermark_ms=200 * SECOND)


def test_watermark_never_exceeds_horizon() -> None:
    """Without a complete listing pass the watermark does not move: a completed version alone does
    not prove that everything before it was seen."""
    cursor = VersionCursor()
    handle(cursor, entry("k", "v1", 50 * SECOND))
    cp = cursor.checkpoint()
    assert cp.watermark_ms == 0
    assert cp.done == (("k", "v1", 50 * SECOND),)
    cursor.pass_complete(20 * SECOND)
    assert cursor.checkpoint().watermark_ms == 20 * SECOND
    # a lower horizon later never moves it back
    cursor.pass_complete(5 * SECOND)
    assert cursor.watermark_ms == 20 * SECOND
    assert cursor.horizon_ms == 20 * SECOND


def test_done_entries_below_watermark_are_pruned() -> None:
    """Done versions below the new watermark leave the checkpoint; ones at or above it stay."""
    cursor = VersionCursor()
    below = entry("k", "b", 10 * SECOND)
    at = entry("k", "a", 20 * SECOND)
    above = entry("k", "c", 30 * SECOND)
    for e in (below, at, above):
        handle(cursor, e)
    cursor.pass_complete(20 * SECOND)
    cp = cursor.checkpoint()
    assert cp.watermark_ms == 20 * SECOND
    assert cp.done == (("k", "a", 20 * SECOND), ("k", "c", 30 * SECOND))
    # the pruned one is still not new: the watermark covers it
    assert not cursor.is_new(below)
    assert not cursor.is_new(at)
    assert not cursor.is_new(above)


def test_checkpoint_size_does_not_grow_with_history() -> None:
    """10,000 completed versions, all stamped below a later horizon, leave an empty done set: the
    checkpoint's size follows the settle window, not the topic's history."""
    cursor = VersionCursor()
    for i in range(10_000):
        handle(cursor, entry(f"k{i % 37}", f"v{i}", 1_000_000 + i))
    assert len(cursor.checkpoint().done) == 10_000  # no pass complete yet: all of them are kept
    cursor.pass_complete(1_000_000 + 10_000)
    cp = cursor.checkpoint()
    assert cp.done == ()
    assert cp.watermark_ms == 1_000_000 + 10_000
    assert len(encode(cp, bucket="b", prefix="p/")) < 200
    # and the next round of history does not accumulate either
    for i in range(10_000, 20_000):
        handle(cursor, entry(f"k{i % 37}", f"v{i}", 1_000_000 + i))
    cursor.pass_complete(1_000_000 + 20_000)
    assert cursor.checkpoint().done == ()


def test_generation_changes_only_when_done_set_changes() -> None:
    """``generation`` bumps when versions complete, are skipped, or are pruned, and stays put when
    nothing changed (so the checkpointer skips redundant commits but never misses one)."""
    cursor = VersionCursor()
    g0 = cursor.generation
    e = entry("k", "v1", 10 * SECOND)
    assert cursor.is_new(e)
    cursor.checkpoint()
    cursor.pass_complete(0)
    assert cursor.generation == g0  # queries and no-op passes change nothing

    cursor.start(e)
    assert cursor.generation == g0  # in flight is not done
    cursor.complete(e.ident)
    g1 = cursor.generation
    assert g1 != g0

    cursor.checkpoint()
    cursor.checkpoint()
    assert cursor.generation == g1

    cursor.skip(entry("k", "v2", 11 * SECOND))
    g2 = cursor.generation
    assert g2 != g1

    cursor.pass_complete(12 * SECOND)  # prunes both done versions
    g3 = cursor.generation
    assert g3 != g2
    assert cursor.checkpoint().done == ()

    cursor.pass_complete(12 * SECOND)
    cursor.checkpoint()
    assert cursor.generation == g3


def test_generation_unchanged_when_skipping_below_watermark() -> None:
    """Skipping a version the watermark already covers changes nothing, so generation stays."""
    cursor = VersionCursor(Checkpoint(watermark_ms=100 * SECOND))
    g = cursor.generation
    cursor.skip(entry("k", "old", 5 * SECOND))
    assert cursor.generation == g
    assert cursor.checkpoint().done == ()


def test_cursor_rebuilt_from_checkpoint() -> None:
    """A cursor built from a checkpoint treats the checkpoint's done versions (and anything below its
    watermark) as not new, and everything else at or above the watermark as new."""
    original = VersionCursor()
    done_a, done_b = entry("a", "1", 100 * SECOND), entry("b", "1", 101 * SECOND)
    handle(original, done_a)
    handle(original, done_b)
    original.pass_complete(100 * SECOND)
    cp = original.checkpoint()
    assert cp.watermark_ms == 100 * SECOND
    assert len(cp.done) == 2

    rebuilt = VersionCursor(cp)
    assert rebuilt.watermark_ms == cp.watermark_ms
    assert not rebuilt.is_new(done_a)
    assert not rebuilt.is_new(done_b)
    assert not rebuilt.is_new(entry("old", "x", 99 * SECOND))
    assert rebuilt.is_new(entry("a", "2", 100 * SECOND))  # same second as a done one, other version
    assert rebuilt.is_new(entry("c", "1", 200 * SECOND))
    assert rebuilt.checkpoint() == cp  # round-trips unchanged


def test_rebuilt_cursor_ignores_done_entries_below_its_watermark() -> None:
    """Done entries a checkpoint lists below its own watermark are dropped, not carried forever."""
    cp = Checkpoint(watermark_ms=100 * SECOND, done=(("a", "1", 50 * SECOND), ("b", "1", 150 * SECOND)))
    cursor = VersionCursor(cp)
    assert cursor.checkpoint().done == (("b", "1", 150 * SECOND),)


def test_skip_marks_done_without_handing_out() -> None:
    """``skip()`` (start at ``latest``) makes a version done without putting it in flight, and a
    checkpoint then remembers it."""
    cursor = VersionCursor()
    e = entry("k", "v1", 10 * SECOND)
    cursor.skip(e)
    assert cursor.in_flight == 0
    assert not cursor.is_new(e)
    assert cursor.checkpoint().done == (("k", "v1", 10 * SECOND),)
    assert not VersionCursor(cursor.checkpoint()).is_new(e)


def test_same_second_versions_are_tracked_individually() -> None:
    """Many versions sharing one whole-second LastModified are each tracked by (key, version_id):
    handling some of them never hides the others, before or after a checkpoint round trip."""
    ts = 42 * SECOND
    same = [entry(f"k{i % 3}", f"v{i}", ts) for i in range(30)]
    cursor = VersionCursor()
    for e in same[:20]:
        handle(cursor, e)
    cursor.pass_complete(ts)  # horizon exactly at that second: all must stay individually
    assert all(not cursor.is_new(e) for e in same[:20])
    assert all(cursor.is_new(e) for e in same[20:])
    cp = cursor.checkpoint()
    assert len(cp.done) == 20
    rebuilt = VersionCursor(decode(encode(cp, bucket="b", prefix="p/"), where="test"))
    assert all(not rebuilt.is_new(e) for e in same[:20])
    assert all(rebuilt.is_new(e) for e in same[20:])


def test_same_key_different_versions_same_second() -> None:
    """Identity is the version, not the key: one done version of a key does not hide a sibling."""
    cursor = VersionCursor()
    handle(cursor, entry("k", "A", 5 * SECOND))
    assert cursor.is_new(entry("k", "B", 5 * SECOND))
    assert not cursor.is_new(entry("k", "A", 5 * SECOND))


# --- oldest_first ------------------------------------------------------------------------------------


def test_oldest_first_reverses_listing_order() -> None:
    """S3 lists a key's versions newest first; delivery is oldest first."""
    listed = [entry("k", "v3", 3 * SECOND), entry("k", "v2", 2 * SECOND), entry("k", "v1", 1 * SECOND)]
    assert [e.version_id for e in oldest_first(listed)] == ["v1", "v2", "v3"]


def test_oldest_first_ties_keep_s3_order_reversed() -> None:
    """Versions with the same whole-second LastModified keep S3's order (newest first), reversed."""
    listed = [
        entry("k", "v5", 2 * SECOND),
        entry("k", "v4", 1 * SECOND), entry("k", "v3", 1 * SECOND), entry("k", "v2", 1 * SECOND),
        entry("k", "v1", 0),
    ]
    assert [e.version_id for e in oldest_first(listed)] == ["v1", "v2", "v3", "v4", "v5"]


def test_oldest_first_latest_sorts_last_on_a_tie() -> None:
    """When a server lists the latest version (e.g. a delete marker) apart from the others, IsLatest
    puts it last among versions of the same second."""
    listed = [
        entry("k", "v2", 1 * SECOND),
        entry("k", "v1", 1 * SECOND),
        entry("k", "dm", 1 * SECOND, deleted=True, latest=True),  # listed separately, after the versions
    ]
    assert [e.version_id for e in oldest_first(listed)] == ["v1", "v2", "dm"]
    # an older timestamp still wins over IsLatest
    listed = [entry("k", "new", 2 * SECOND), entry("k", "old", 1 * SECOND, latest=True)]
    assert [e.version_id for e in oldest_first(listed)] == ["old", "new"]


def test_oldest_first_empty_and_does_not_mutate() -> None:
    """An empty list stays empty and the input list is left as it was."""
    assert oldest_first([]) == []
    listed = [entry("k", "v2", 2 * SECOND), entry("k", "v1", 1 * SECOND)]
    copy = list(listed)
    oldest_first(listed)
    assert listed == copy


# --- checkpoint encode / decode / shard_name ---------------------------------------------------------


def test_checkpoint_encode_decode_round_trip() -> None:
    """encode then decode gives back the same watermark and done set, with keys grouped."""
    cp = Checkpoint(
        watermark_ms=1_700_000_000_000,
        done=(("a/1", "v1", 1_700_000_000_000), ("a/1", "v2", 1_700_000_000_000),
              ("b/ü ?#", "null", 1_700_000_001_000)),
    )
    data = encode(cp, bucket="bkt", prefix="topic/")
    doc = orjson.loads(data)
    assert doc["bucket"] == "bkt"
    assert doc["prefix"] == "topic/"
    assert doc["watermark_ms"] == cp.watermark_ms
    assert sorted(doc["done"]) == ["a/1", "b/ü ?#"]
    assert decode(data, where="x") == cp


def test_checkpoint_round_trip_empty() -> None:
    """A checkpoint with no done versions survives a round trip."""
    cp = Checkpoint(watermark_ms=0)
    assert decode(encode(cp, bucket="b", prefix=""), where="x") == cp


@pytest.mark.parametrize("data", [
    b"",
    b"not json",
    b"null",
    b"[]",
    b'{"format": 99, "watermark_ms": 0, "done": {}}',
    b'{"format": 1, "done": {}}',
    b'{"format": 1, "watermark_ms": 0}',
    b'{"format": 1, "watermark_ms": "soon", "done": {}}',
    b'{"format": 1, "watermark_ms": 0, "done": {"k": [["v1"]]}}',
    b'{"format": 1, "watermark_ms": 0, "done": {"k": [["v1", null]]}}',
    b'{"format": 1, "watermark_ms": 0, "done": []}',
])
def test_damaged_checkpoint_is_a_clear_config_error(data: bytes) -> None:
    """A damaged checkpoint raises ConfigError naming where it is and what to do, never a silent
    restart from scratch or a raw parsing exception."""
    with pytest.raises(ConfigError) as info:
        decode(data, where="s3://bkt/_s3stream/checkpoints/g/x.json")
    message = str(info.value)
    assert "s3://bkt/_s3stream/checkpoints/g/x.json" in message
    assert "damaged" in message
    assert "move it aside" in message


def test_shard_name_is_stable_and_path_safe() -> None:
    """shard_name gives the same name for the same prefix, different names for different prefixes
    (even when their readable parts collide), and only characters safe in a file or key name."""
    prefixes = ["topic/0/", "topic/0", "topic_0/", "", "/", "../../etc/passwd", "a b/c?d#e*f|g\\h:i",
                "x" * 500, "ünï/cødé/"]
    names = [shard_name(p) for p in prefixes]
    assert names == [shard_name(p) for p in prefixes]  # stable
    assert shard_name("topic/0/") == shard_name("topic/0/")
    assert len(set(names)) == len(names)  # distinct, even topic/0/ vs topic/0 vs topic_0/
    for name in names:
        assert "/" not in name
        assert "\\" not in name
        assert name not in (".", "..")
        assert 0 < len(name) <= 100
        assert re.fullmatch(r"[\w.-]+", name), name
    assert shard_name("topic/0/").startswith("topic_0-")
    assert shard_name("").startswith("_root-")
