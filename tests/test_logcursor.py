"""Pure tests of the log-layout cursor (ranges, sealing, state that does not grow with history) and of
its directories' names."""

from __future__ import annotations

import orjson
import pytest

from s3stream.layouts.logcursor import LogCheckpoint, LogCursor, RangeSet
from s3stream.layouts.topics import (
    DIR_SECONDS,
    MINUTE_MS,
    Topic,
    dir_name,
    dir_start_ms,
    log_key,
    parse_log_key,
)
from s3stream.message import Entry

PREFIX = "t/00/"
T0 = 1_795_000_020_000 - 1_795_000_020_000 % MINUTE_MS  # a minute boundary


def _entry(ms: int, producer: str = "p1", seq: int = 1) -> Entry:
    key = log_key(PREFIX, ms, producer, seq, "_", span_ms=MINUTE_MS)
    return Entry(key=key, version_id="null", last_modified_ms=ms)


def test_rangeset_merges_neighbours() -> None:
    """Adding 1..5 in any order gives one range; a gap keeps two; membership is exact."""
    rs = RangeSet()
    for v in (3, 1, 5, 2, 4, 9):
        rs.add(v)
    assert rs.ranges == [[1, 5], [9, 9]]
    assert 4 in rs
    assert 6 not in rs
    rs.add(7)
    rs.add(8)
    rs.add(6)
    assert rs.ranges == [[1, 9]]


def test_done_producer_sequence_is_compact() -> None:
    """10,000 messages of one producer in one directory are one range in the checkpoint."""
    cursor = LogCursor(PREFIX, start_ms=T0)
    for seq in range(1, 10_001):
        e = _entry(T0 + seq, seq=seq)
        assert cursor.is_new(e)
        cursor.start(e)
        cursor.complete(e.ident)
        assert not cursor.is_new(e)
    cp = cursor.checkpoint()
    assert cp.done == ((T0, "p1", ((1, 10_000),)),)


def test_directory_seals_only_after_settle_and_when_nothing_in_flight() -> None:
    """A directory seals once a pass started after its end plus the settle window and nothing in
    it is in flight; sealing drops its record, so the checkpoint holds only open directories."""
    cursor = LogCursor(PREFIX, start_ms=T0)
    e = _entry(T0 + 5)
    cursor.start(e)
    cursor.pass_complete([T0], T0 + MINUTE_MS + 10_000, settle_ms=30_000)
    assert cursor.sealed_ms == T0  # too early: end + settle not reached
    cursor.pass_complete([T0], T0 + MINUTE_MS + 31_000, settle_ms=30_000)
    assert cursor.sealed_ms == T0  # in flight
    cursor.complete(e.ident)
    assert cursor.checkpoint().done != ()
    cursor.pass_complete([T0, T0 + MINUTE_MS], T0 + MINUTE_MS + 31_000, settle_ms=30_000)
    assert cursor.sealed_ms == T0 + MINUTE_MS
    assert cursor.checkpoint() == LogCheckpoint(sealed_ms=T0 + MINUTE_MS)
    assert not cursor.is_new(_entry(T0 + 7, seq=2))  # sealed: a straggler there is out of bounds


def test_open_dirs_span_sealed_boundary_to_now_plus_settle() -> None:
    """Listing covers every directory from the sealed boundary to now + settle (clocks ahead)."""
    cursor = LogCursor(PREFIX, start_ms=T0)
    dirs = cursor.open_dirs(T0 + 2 * MINUTE_MS + 40_000, settle_ms=30_000, limit=60)
    assert dirs == [T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS, T0 + 3 * MINUTE_MS]
    capped = cursor.open_dirs(T0 + 100 * MINUTE_MS, settle_ms=0, limit=5)
    assert capped == [T0 + i * MINUTE_MS for i in range(5)]


def test_checkpoint_round_trip_and_foreign_names() -> None:
    """A cursor rebuilt from its checkpoint knows what was done, including keys other tools wrote."""
    cursor = LogCursor(PREFIX, start_ms=T0)
    ours = _entry(T0 + 1)
    minute = log_key("", T0, "x", 1, "_", span_ms=MINUTE_MS).split("/")[0]
    foreign = Entry(key=f"{PREFIX}{minute}/hand-written.json",
                    version_id="null", last_modified_ms=T0)
    outside = Entry(key=f"{PREFIX}not-a-directory.json", version_id="null", last_modified_ms=T0)
    for e in (ours, foreign):
        cursor.start(e)
        cursor.complete(e.ident)
    assert not cursor.is_new(outside)
    again = LogCursor(PREFIX, cursor.checkpoint())
    assert not again.is_new(ours)
    assert not again.is_new(foreign)
    assert again.is_new(_entry(T0 + 2, seq=2))


def test_copies_of_one_message_in_two_directories_are_handed_out_once() -> None:
    """A message written again under a new time (same producer and sequence, another directory) is
    one message: while the first copy is in flight or handled, the second is not new, and it stays
    known after the first copy's directory is sealed; a different sequence still is new."""
    cursor = LogCursor(PREFIX, start_ms=T0)
    first, second = _entry(T0 + 59_000, seq=7), _entry(T0 + MINUTE_MS + 500, seq=7)
    assert cursor.is_new(first)
    cursor.start(first)
    assert not cursor.is_new(second)  # its twin is in flight
    cursor.complete(first.ident)
    assert not cursor.is_new(second)
    cursor.pass_complete([T0, T0 + MINUTE_MS], T0 + MINUTE_MS + 31_000, settle_ms=30_000)
    assert cursor.sealed_ms == T0 + MINUTE_MS
    assert not cursor.is_new(second)  # recorded in its own directory
    assert not LogCursor(PREFIX, cursor.checkpoint()).is_new(second)
    assert cursor.is_new(_entry(T0 + MINUTE_MS + 600, seq=8))


def test_directory_names_for_every_span() -> None:
    """For every span a directory may have, the name of the directory holding a time parses back to
    the start of that span; a minute keeps the 12-digit name topics made before shorter spans use."""
    t = T0 + 37_250
    assert len(dir_name(t, MINUTE_MS)) == 12
    for seconds in DIR_SECONDS:
        span = seconds * 1000
        name = dir_name(t, span)
        assert dir_start_ms(name) == t - t % span
        parsed = parse_log_key(log_key(PREFIX, t, "p1", 3, "_", span_ms=span))
        assert parsed is not None
        assert (parsed.dir_ms, parsed.ms, parsed.seq) == (t - t % span, t, 3)


def test_ten_second_directories_open_and_seal_ten_seconds_at_a_time() -> None:
    """A cursor over ten-second directories lists each of them up to now plus the settle window, and
    seals one once a pass started its span plus the settle window after its start."""
    cursor = LogCursor(PREFIX, start_ms=T0, span_ms=10_000)
    assert cursor.open_dirs(T0 + 25_000, settle_ms=2_000, limit=60) == [T0, T0 + 10_000, T0 + 20_000]
    assert cursor.is_new(Entry(key=log_key(PREFIX, T0 + 11_000, "p1", 1, "_", span_ms=10_000),
                               version_id="null", last_modified_ms=T0 + 11_000))
    cursor.pass_complete([T0, T0 + 10_000, T0 + 20_000], T0 + 21_999, settle_ms=2_000)
    assert cursor.sealed_ms == T0 + 10_000
    cursor.pass_complete([T0 + 10_000, T0 + 20_000], T0 + 22_000, settle_ms=2_000)
    assert cursor.sealed_ms == T0 + 20_000


@pytest.mark.parametrize(("stored", "expected"), [
    ({"format": 1, "name": "t", "layout": "log", "shards": 2, "created_ms": 5}, 60),
    ({"format": 1, "name": "t", "layout": "log", "shards": 2, "created_ms": 5, "dir_seconds": 10}, 10),
])
def test_topic_metadata_says_how_long_a_directory_spans(stored: dict[str, object], expected: int) -> None:
    """A log topic's metadata carries its directories' span; metadata from before it means a minute.
    It survives a round trip, and a span that does not divide a minute is refused as damage."""
    topic = Topic.from_json("b", orjson.dumps(stored))
    assert topic.dir_seconds == expected
    assert Topic.from_json("b", topic.to_json()) == topic
    with pytest.raises(ValueError, match="dir_seconds 7"):
        Topic.from_json("b", orjson.dumps({**stored, "dir_seconds": 7}))


def test_a_pass_lists_the_directories_near_now_and_the_older_ones_every_few_seconds() -> None:
    """With ten-second directories and a 30 s settle window, 35 s after T0: the directories within
    3 s of now are listed on every pass, the older open ones on the first pass and then once 5 s
    have passed, those that may be sealed every 250 ms until they are (a pass seals one only once
    the server's ``Date`` shows it began after the settle window, up to two seconds after that), and
    those named more than 3 s ahead not until now comes near them."""
    cursor = LogCursor(PREFIX, start_ms=T0, span_ms=10_000)
    now = T0 + 35_000
    assert cursor.due_dirs(now, 30_000, 60) == [T0, T0 + 10_000, T0 + 20_000, T0 + 30_000]
    assert cursor.due_dirs(now + 1_000, 30_000, 60) == [T0 + 30_000]  # T0 + 40 s: 4 s ahead
    assert cursor.due_dirs(now + 4_000, 30_000, 60) == [T0 + 30_000, T0 + 40_000]  # 1 s ahead: near
    assert cursor.due_dirs(now + 5_000, 30_000, 60) == [T0, T0 + 10_000, T0 + 20_000, T0 + 30_000,
                                                        T0 + 40_000]  # which starts now
    # T0's end plus the settle window has passed: it may be sealed, so it is listed every 250 ms
    assert cursor.due_dirs(now + 7_500, 30_000, 60) == [T0, T0 + 30_000, T0 + 40_000]
    assert cursor.due_dirs(now + 7_600, 30_000, 60) == [T0 + 40_000]
    assert cursor.due_dirs(now + 7_750, 30_000, 60) == [T0, T0 + 30_000, T0 + 40_000]


def test_a_directory_not_yet_begun_is_listed_every_quarter_second_until_it_is_near() -> None:
    """With five-second directories, passes every 10 ms: the next directory, named by writers only
    when their server time runs ahead of the consumer's, is listed at most every 250 ms from 3 s before
    its start, and on every pass from 250 ms before it (a producer's estimate of the server's time is
    never behind it, and ahead by no more than a round trip once a few answers narrowed it)."""
    cursor = LogCursor(PREFIX, start_ms=T0 + 60_000, span_ms=5_000)
    start = T0 + 61_000
    listed = [now - start for now in range(start, start + 4_500, 10)
              if T0 + 65_000 in cursor.due_dirs(now, 30_000, 60)]
    assert [t for t in listed if t < 1_000] == []  # more than 3 s ahead
    assert [t for t in listed if 1_000 <= t < 3_750] == list(range(1_000, 3_750, 250))
    assert [t for t in listed if t >= 3_750] == list(range(3_750, 4_500, 10))


def test_a_directory_just_ended_is_listed_on_every_pass_then_every_quarter_second() -> None:
    """With five-second directories, passes every 10 ms: the directory now filling is listed on every
    pass; the one before it on every pass for 250 ms after its end (where writes still land), then
    at most every 250 ms until 3 s after its end (a write that slow waits up to 250 ms more), then
    with the older ones every 5 s."""
    cursor = LogCursor(PREFIX, start_ms=T0 + 60_000, span_ms=5_000)
    start = T0 + 65_000  # the directory T0 + 60 s has just ended
    listed: dict[int, list[int]] = {}
    for now in range(start, start + 4_000, 10):
        for dir_ms in cursor.due_dirs(now, 30_000, 60):
            listed.setdefault(dir_ms, []).append(now - start)
    assert len(listed[T0 + 65_000]) == 400  # every pass
    previous = listed[T0 + 60_000]
    assert [t for t in previous if t < 250] == list(range(0, 250, 10))
    warm = [t for t in previous if 250 <= t < 3_000]
    assert warm == list(range(240 + 250, 3_000, 250))  # 250 ms after the last listing, and so on
    assert [t for t in previous if t >= 3_000] == []  # cool: next due 5 s after it was last listed
