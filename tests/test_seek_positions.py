"""The positions ``group seek`` writes, checked without a server: a cursor resumed from them delivers
exactly the messages written at or after the seek's time (versions: by ``LastModified``, whole seconds;
log: by the time in the object's name), however the listings that follow see them, and ``--to`` is
parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3stream.errors import ConfigError
from s3stream.groups.seekpos import (
    compare,
    earliest_log_ms,
    log_floor_ms,
    log_position,
    parse_target,
    position_text,
    versions_position,
)
from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.layouts.logcursor import LogCheckpoint, LogCursor
from s3stream.layouts.topics import MINUTE_MS, log_key
from s3stream.message import Entry

BASE_MS = 1_780_000_020_000  # a minute boundary
SETTLE_MS = 2_000
PREFIX = "t/00/"

# a message: (write time offset in ms, key number, visible to the seek's listing if written before it?)
messages_st = st.lists(st.tuples(st.integers(0, 300_000), st.integers(0, 5), st.booleans()),
                       min_size=1, max_size=40)
offsets_st = st.integers(-5_000, 310_000)


def versions(messages: list[tuple[int, int, bool]], seek_ms: int) -> list[tuple[Entry, int, bool]]:
    """Each message as a version (LastModified: its write time in whole seconds), its write time and
    whether the seek at ``seek_ms`` listed it: written before, and visible (a version stamped more than
    the settle window and a second before a listing is always visible to it)."""
    out = []
    for i, (offset, key, visible) in enumerate(messages):
        real = BASE_MS + offset
        stamp = real - real % 1000
        listed = real < seek_ms and (visible or stamp < seek_ms - 1000 - SETTLE_MS)
        out.append((Entry(f"{PREFIX}k{key}", f"v{i}", stamp), real, listed))
    return out


def resume_versions(cursor: VersionCursor, entries: list[Entry]) -> set[str]:
    """A listing pass over ``entries``, after all of them were written, through the cursor as the poller
    runs it; the version ids handed out."""
    delivered: set[str] = set()
    horizon = BASE_MS + 400_000
    cursor.begin_pass(horizon)
    for entry in sorted(entries, key=lambda e: (e.key, e.last_modified_ms)):
        if cursor.is_new(entry):
            cursor.start(entry)
            cursor.complete(entry.ident)
            delivered.add(entry.version_id)
        cursor.listed_through(entry.key, entry.last_modified_ms)
    cursor.pass_complete(horizon)
    return delivered


@settings(max_examples=300, deadline=None)
@given(messages_st, offsets_st, offsets_st)
def test_versions_seek_redelivers_exactly_what_was_written_at_or_after_t(
        messages: list[tuple[int, int, bool]], at_offset: int, seek_offset: int) -> None:
    """For random write times, a seek to T made at a random server time S, and a cursor resumed from the
    seek's checkpoint: every version written at or after T is delivered; of what the seek listed, exactly
    the versions stamped in T's second or later; of what it did not list (written after it, or visible
    late), every version stamped from a settle window and a second before T's second. With every version
    listed and T a whole second, that is exactly the versions stamped at or after T."""
    at_ms, seek_ms = BASE_MS + at_offset, BASE_MS + seek_offset
    msgs = versions(messages, seek_ms)
    seen = [e for e, _, listed in msgs if listed]
    cursor = VersionCursor(versions_position(at_ms, seen, settle_ms=SETTLE_MS))
    delivered = resume_versions(cursor, [e for e, _, _ in msgs])
    assert {e.version_id for e, real, _ in msgs if real >= at_ms} <= delivered
    second = at_ms - at_ms % 1000
    horizon = second - 1000 - SETTLE_MS
    assert delivered == {e.version_id for e, _, listed in msgs if listed and e.last_modified_ms >= second} | {
        e.version_id for e, _, listed in msgs if not listed and e.last_modified_ms >= horizon}
    if at_ms % 1000 == 0 and all(listed for _, _, listed in msgs):
        assert delivered == {e.version_id for e, _, _ in msgs if e.last_modified_ms >= at_ms}


@settings(max_examples=200, deadline=None)
@given(messages_st, offsets_st)
def test_versions_latest_skips_everything_listed_and_delivers_what_comes_later(
        messages: list[tuple[int, int, bool]], seek_offset: int) -> None:
    """``latest`` at server time S: nothing the seek listed is delivered; everything written after the
    seek is, and so is a version written before it that was not visible yet, if stamped within the
    settle window (and a second) of S, as for a new group started at ``latest``."""
    seek_ms = BASE_MS + seek_offset
    msgs = versions(messages, seek_ms)
    cursor = VersionCursor(versions_position(seek_ms, [e for e, _, listed in msgs if listed],
                                             settle_ms=SETTLE_MS, latest=True))
    delivered = resume_versions(cursor, [e for e, _, _ in msgs])
    assert {e.version_id for e, real, _ in msgs if real >= seek_ms} <= delivered
    horizon = seek_ms - seek_ms % 1000 - 1000 - SETTLE_MS
    assert delivered == {e.version_id for e, _, listed in msgs
                         if not listed and e.last_modified_ms >= horizon}


def log_messages(messages: list[tuple[int, int, bool]], seek_ms: int) -> list[tuple[Entry, int, bool]]:
    """Each message as a log object named with its time (two producers numbering their own objects),
    that time, and whether the seek at ``seek_ms`` listed it (as for versions)."""
    out = []
    seqs = {"p0": 0, "p1": 0}
    for offset, key, visible in sorted(messages):
        producer = f"p{key % 2}"
        seqs[producer] += 1
        ms = BASE_MS + offset
        name = log_key(PREFIX, ms, producer, seqs[producer], "_", span_ms=MINUTE_MS)
        listed = ms < seek_ms and (visible or ms < seek_ms - SETTLE_MS)
        out.append((Entry(name, "null", ms - ms % 1000 + 1000), ms, listed))
    return out


def minute(ms: int) -> int:
    return ms - ms % MINUTE_MS


@settings(max_examples=300, deadline=None)
@given(messages_st, offsets_st, offsets_st)
def test_log_seek_redelivers_exactly_what_was_named_at_or_after_t(
        messages: list[tuple[int, int, bool]], at_offset: int, seek_offset: int) -> None:
    """For random name times and a seek to T made at server time S, a log cursor resumed from the seek's
    checkpoint finds new every object named at or after T; of what the seek listed, exactly those; of
    what it did not, every object in the minute directories from a settle window before T."""
    at_ms, seek_ms = BASE_MS + at_offset, BASE_MS + seek_offset
    msgs = log_messages(messages, seek_ms)
    seen = [e for e, _, listed in msgs if listed]
    floor = log_floor_ms(PREFIX, seen, seek_ms, SETTLE_MS)
    cursor = LogCursor(PREFIX, log_position(PREFIX, at_ms, seen, settle_ms=SETTLE_MS, not_before_ms=floor))
    assert cursor.sealed_ms >= floor  # a seek far back does not make the cursor list empty minutes
    delivered = {e.key for e, _, _ in msgs if cursor.is_new(e)}
    assert {e.key for e, ms, _ in msgs if ms >= at_ms} <= delivered
    assert delivered == {e.key for e, ms, listed in msgs if listed and ms >= at_ms} | {
        e.key for e, ms, listed in msgs if not listed and minute(ms) >= minute(at_ms - SETTLE_MS)}


@settings(max_examples=100, deadline=None)
@given(messages_st, offsets_st)
def test_log_latest_and_earliest(messages: list[tuple[int, int, bool]], seek_offset: int) -> None:
    """``latest`` at S delivers none of what the seek listed and every object written after it;
    ``earliest`` starts at the oldest minute directory and delivers everything stored."""
    seek_ms = BASE_MS + seek_offset
    msgs = log_messages(messages, seek_ms)
    seen = [e for e, _, listed in msgs if listed]
    latest = LogCursor(PREFIX, log_position(PREFIX, seek_ms, seen, settle_ms=SETTLE_MS, latest=True,
                                            not_before_ms=log_floor_ms(PREFIX, seen, seek_ms, SETTLE_MS)))
    delivered = {e.key for e, _, _ in msgs if latest.is_new(e)}
    assert {e.key for e, ms, _ in msgs if ms >= seek_ms} <= delivered
    assert delivered == {e.key for e, ms, listed in msgs
                         if not listed and minute(ms) >= minute(seek_ms - SETTLE_MS)}
    everything = [e for e, _, _ in msgs]
    earliest = LogCursor(PREFIX, log_position(PREFIX, log_floor_ms(PREFIX, everything, seek_ms, SETTLE_MS)))
    assert all(earliest.is_new(e) for e in everything)
    assert earliest.sealed_ms == min(minute(seek_ms - SETTLE_MS), *(minute(ms) for _, ms, _ in msgs))
    assert earliest_log_ms(PREFIX, everything, seek_ms) == min(minute(ms) for _, ms, _ in msgs)


def test_compare_counts_replays_and_skips() -> None:
    """Moving a watermark back counts the versions handled before it as replays; moving it forward
    counts the unhandled ones it passes as skips; ``deliver`` is what the new position delivers."""
    entries = [Entry(f"{PREFIX}k{i}", f"v{i}", BASE_MS + i * 1000) for i in range(10)]
    middle = Checkpoint(watermark_ms=BASE_MS + 5000)
    back = compare(PREFIX, "versions", middle, Checkpoint(watermark_ms=BASE_MS + 2000), entries)
    assert (back.replay, back.skip, back.deliver) == (3, 0, 8)
    ahead = compare(PREFIX, "versions", middle, Checkpoint(watermark_ms=BASE_MS + 8000), entries)
    assert (ahead.replay, ahead.skip, ahead.deliver) == (0, 3, 2)
    fresh = compare(PREFIX, "versions", None, Checkpoint(watermark_ms=BASE_MS + 8000), entries)
    assert (fresh.replay, fresh.skip) == (0, 8)
    named = Entry(log_key(PREFIX, BASE_MS + 5, "p", 1, "_", span_ms=MINUTE_MS), "null", 0)
    logged = compare(PREFIX, "log", LogCheckpoint(sealed_ms=BASE_MS + MINUTE_MS),
                     LogCheckpoint(sealed_ms=BASE_MS), [named])
    assert (logged.replay, logged.skip, logged.deliver) == (1, 0, 1)
    assert position_text(None) == "no checkpoint"
    one_done = Checkpoint(watermark_ms=BASE_MS, done=((f"{PREFIX}a", "v", BASE_MS),))
    assert position_text(one_done).endswith("+1 done")


@pytest.mark.parametrize(("text", "at_ms"), [
    ("2026-05-29T10:40:00Z", 1_780_051_200_000),
    ("2026-05-29T12:40:00+02:00", 1_780_051_200_000),
    ("2026-05-29T10:40:00.250z", 1_780_051_200_250),
    ("2026-05-29 10:40Z", 1_780_051_200_000),
    ("2026-05-29T10:40:00.123999Z", 1_780_051_200_123),  # rounded down: a later message is never skipped
])
def test_to_accepts_times_with_a_timezone(text: str, at_ms: int) -> None:
    """An ISO 8601 time with ``Z`` or an offset (seconds and fractions optional) is a time target."""
    target = parse_target(text)
    assert (target.kind, target.at_ms) == ("time", at_ms)


@pytest.mark.parametrize("text", ["2026-05-29T10:40:00", "2026-05-29", "2026-13-29T10:40:00Z", "yesterday",
                                  "2026-05-29T25:00:00Z", "/no/such/position.json"])
def test_to_refuses_naive_and_ill_formed_values_naming_the_option(text: str) -> None:
    """A time without a timezone, an impossible date, a word or a missing file is a ConfigError that
    names ``--to`` and the value."""
    with pytest.raises(ConfigError, match="--to") as info:
        parse_target(text)
    assert text in str(info.value)


def test_to_keywords_and_files(tmp_path: Path) -> None:
    """``earliest`` and ``latest`` (any case) are keywords; an existing file is a position file."""
    assert parse_target("earliest").kind == "earliest"
    assert parse_target("LATEST").kind == "latest"
    path = tmp_path / "pos.json"
    path.write_text("{}")
    assert parse_target(str(path)).path == path
