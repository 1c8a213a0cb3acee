"""The positions ``group seek`` writes, checked without a server: a cursor resumed from them delivers
exactly the messages written at or after the seek's time (versions: by ``LastModified``, whole seconds;
log: by the time in the object's name), however the listings that follow see them, and ``--to`` is
parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3stream.cursor import Checkpoint, VersionCursor
from s3stream.errors import ConfigError
from s3stream.logcursor import LogCheckpoint, LogCursor
from s3stream.message import Entry
from s3stream.seekpos import (
    compare,
    earliest_log_ms,
    log_position,
    parse_target,
    position_text,
    versions_position,
)
from s3stream.topics import MINUTE_MS, log_key

BASE_MS = 1_780_000_020_000  # a minute boundary
SETTLE_MS = 2_000
PREFIX = "t/00/"

# a message: (real write time offset in ms, key number, visible at the first listing pass?)
messages_st = st.lists(st.tuples(st.integers(0, 300_000), st.integers(0, 5), st.booleans()),
                       min_size=1, max_size=40)


def versions(messages: list[tuple[int, int, bool]]) -> list[tuple[Entry, int, bool]]:
    """Each message as a listed version (LastModified in whole seconds), its real time and visibility."""
    out = []
    for i, (offset, key, visible) in enumerate(messages):
        real = BASE_MS + offset
        out.append((Entry(f"{PREFIX}k{key}", f"v{i}", real - real % 1000), real, visible))
    return out


def resume_versions(cursor: VersionCursor, passes: list[tuple[int, list[Entry]]]) -> set[str]:
    """Run listing passes (horizon, entries seen) through the cursor as the poller does; the version ids
    handed out."""
    delivered: set[str] = set()
    for horizon, seen in passes:
        cursor.begin_pass(horizon)
        for entry in sorted(seen, key=lambda e: (e.key, e.last_modified_ms)):
            if cursor.is_new(entry):
                cursor.start(entry)
                cursor.complete(entry.ident)
                delivered.add(entry.version_id)
            cursor.listed_through(entry.key, entry.last_modified_ms)
        cursor.pass_complete(horizon)
    return delivered


@settings(max_examples=300, deadline=None)
@given(messages_st, st.integers(-5_000, 305_000))
def test_versions_seek_redelivers_exactly_what_was_written_at_or_after_t(
        messages: list[tuple[int, int, bool]], offset: int) -> None:
    """For random write times and a seek time T, a cursor resumed from the seek's checkpoint hands out
    every version written at or after T and none stamped before T's second; when T is a whole second,
    exactly those stamped at or after T. Versions that become visible only at the second pass (within
    the settle window of the first pass's start) are not lost."""
    listed = versions(messages)
    at_ms = BASE_MS + offset
    now_ms = BASE_MS + 301_000
    first_horizon = now_ms - 1000 - SETTLE_MS
    listed = [(e, real, visible or e.last_modified_ms < first_horizon) for e, real, visible in listed]
    cursor = VersionCursor(versions_position(at_ms))
    delivered = resume_versions(cursor, [
        (first_horizon, [e for e, _, visible in listed if visible]),
        (now_ms + 10_000 - 1000 - SETTLE_MS, [e for e, _, _ in listed]),
    ])
    assert {e.version_id for e, real, _ in listed if real >= at_ms} <= delivered
    second = at_ms - at_ms % 1000
    assert delivered == {e.version_id for e, _, _ in listed if e.last_modified_ms >= second}
    if at_ms % 1000 == 0:
        assert delivered == {e.version_id for e, _, _ in listed if e.last_modified_ms >= at_ms}


@settings(max_examples=200, deadline=None)
@given(messages_st, st.integers(0, 300_000))
def test_versions_latest_skips_everything_listed_and_delivers_what_comes_later(
        messages: list[tuple[int, int, bool]], offset: int) -> None:
    """``latest`` at server time S: nothing listed by the seek is delivered; every version the seek did
    not list and stamped at or after S's second (written after the seek) is."""
    listed = versions(messages)
    now_ms = BASE_MS + offset
    stored = [e for e, real, _ in listed if real < now_ms]
    later = [e for e, real, _ in listed if real >= now_ms]
    cursor = VersionCursor(versions_position(now_ms, stored, latest=True))
    delivered = resume_versions(cursor, [(BASE_MS + 400_000, [e for e, _, _ in listed])])
    assert delivered == {e.version_id for e in later}


def log_messages(messages: list[tuple[int, int, bool]]) -> list[tuple[Entry, int, bool]]:
    """Each message as a log object named with its time, two producers numbering their own objects."""
    out = []
    seqs = {"p0": 0, "p1": 0}
    for offset, key, visible in sorted(messages):
        producer = f"p{key % 2}"
        seqs[producer] += 1
        ms = BASE_MS + offset
        name = log_key(PREFIX, ms, producer, seqs[producer], "_")
        out.append((Entry(name, "null", ms - ms % 1000 + 1000), ms, visible))
    return out


@settings(max_examples=300, deadline=None)
@given(messages_st, st.integers(-5_000, 305_000))
def test_log_seek_redelivers_exactly_what_was_named_at_or_after_t(
        messages: list[tuple[int, int, bool]], offset: int) -> None:
    """For random name times and a seek time T, a log cursor resumed from the seek's checkpoint (built
    from what the seek listed) finds new exactly the objects named at or after T, plus only those named
    earlier in T's own minute that the seek did not see."""
    listed = log_messages(messages)
    at_ms = BASE_MS + offset
    seen = [e for e, _, visible in listed if visible]
    cursor = LogCursor(PREFIX, log_position(PREFIX, at_ms, seen))
    delivered = {e.key for e, _, _ in listed if cursor.is_new(e)}
    expected = {e.key for e, ms, _ in listed if ms >= at_ms}
    assert expected <= delivered
    unseen_in_minute = {e.key for e, ms, visible in listed
                        if not visible and ms - ms % MINUTE_MS == at_ms - at_ms % MINUTE_MS}
    assert delivered - expected <= unseen_in_minute
    if all(visible for _, _, visible in listed):
        assert delivered == expected


@settings(max_examples=100, deadline=None)
@given(messages_st, st.integers(0, 300_000))
def test_log_latest_and_earliest(messages: list[tuple[int, int, bool]], offset: int) -> None:
    """``latest`` at S delivers none of what it listed and every later object; ``earliest`` starts at
    the oldest minute directory and delivers everything stored."""
    listed = log_messages(messages)
    now_ms = BASE_MS + offset
    stored = [e for e, ms, _ in listed if ms < now_ms]
    latest = LogCursor(PREFIX, log_position(PREFIX, now_ms, stored, latest=True))
    assert {e.key for e, _, _ in listed if latest.is_new(e)} == {e.key for e, ms, _ in listed if ms >= now_ms}
    all_entries = [e for e, _, _ in listed]
    earliest = LogCursor(PREFIX, log_position(PREFIX, earliest_log_ms(PREFIX, all_entries, now_ms)))
    assert all(earliest.is_new(e) for e in all_entries)
    assert earliest.sealed_ms == min(ms - ms % MINUTE_MS for _, ms, _ in listed)


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
    named = Entry(log_key(PREFIX, BASE_MS + 5, "p", 1, "_"), "null", 0)
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
