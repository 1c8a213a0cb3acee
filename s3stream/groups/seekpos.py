"""Where ``group seek`` puts a group in one shard: the checkpoint to write, computed without I/O.

A position is a checkpoint the cursor resumes from, so "seek to time T" is whatever checkpoint makes
the cursor deliver the messages whose time is at or after T and skip those the seek saw before T:

* **versions layout**: a message's time is its ``LastModified`` (when its write began, by the server's
  clock), which listings give in whole seconds; T counts from the start of its second, so a version
  written at or after T is never skipped and one written earlier in T's second may be delivered again.
* **log layout**: a message's time is the time in its object name (``<dir>/<ms>-…``, the server's
  time when the producer named it). Objects other tools wrote (names s3stream did not make) go by
  their ``LastModified``.

The watermark (versions) or the sealed boundary (log) is put one settle window (and, for versions,
one second) before T, as a consumer's own listing pass would put it, and what the seek's listing saw
between there and T is marked handled. So a version that becomes visible only after the seek, within
the settle window, is delivered rather than lost, exactly as the cursor would have treated it.

``latest`` is a seek to the server's time at the seek with everything listed marked handled: nothing
stored now is delivered again, anything written after the seek is (a new group started with
``--from latest`` is placed the same way). ``earliest`` is a watermark of 0 (versions) or the oldest
directory (log): everything still stored is delivered again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from s3stream.errors import ConfigError
from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.layouts.logcursor import LogCheckpoint, LogCursor
from s3stream.layouts.topics import MINUTE_MS, parse_log_key
from s3stream.message import Entry, iso

Position = Checkpoint | LogCheckpoint
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,6})?)?(Z|[+-]\d\d:?\d\d)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Target:
    """What ``--to`` asked for: ``earliest``, ``latest``, a time (``at_ms``) or a position file."""

    kind: Literal["earliest", "latest", "time", "file"]
    at_ms: int = 0
    path: Path | None = None

    def describe(self) -> str:
        if self.kind == "time":
            return iso(self.at_ms)
        return str(self.path) if self.kind == "file" else self.kind


def parse_target(text: str) -> Target:
    """``--to``: ``earliest``, ``latest``, an ISO 8601 time with a timezone, or an existing file."""
    value = text.strip()
    if value.lower() in ("earliest", "latest"):
        return Target("earliest" if value.lower() == "earliest" else "latest")
    if _ISO.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"--to {text!r}: not a valid time ({exc})") from None
        return Target("time", at_ms=(moment - EPOCH) // timedelta(milliseconds=1))  # rounded down
    path = Path(value)
    if path.is_file():
        return Target("file", path=path)
    if re.match(r"\d{4}-\d\d-\d\d", value):
        raise ConfigError(f"--to {text!r}: give a time with its timezone, e.g. 2026-01-31T12:00:00Z or "
                          "2026-01-31T13:00:00+01:00")
    raise ConfigError(f"--to {text!r}: use earliest, latest, an ISO 8601 time with a timezone "
                      "(2026-01-31T12:00:00Z) or a position file saved by `s3stream group export`")


def message_ms(entry: Entry) -> int:
    """The time a seek compares with: the name's time of a log object s3stream named, else
    ``LastModified``."""
    name = parse_log_key(entry.key)
    return name.ms if name is not None else entry.last_modified_ms


def versions_position(at_ms: int, listed: Iterable[Entry] = (), *, settle_ms: int = 0,
                      latest: bool = False) -> Checkpoint:
    """The versions checkpoint that delivers every version stamped in ``at_ms``'s second or later and
    those not in ``listed`` stamped up to a settle window (and a second) before it; ``listed`` versions
    stamped before ``at_ms``'s second (``latest``: all of them) count as handled."""
    second = at_ms - at_ms % 1000
    watermark = max(0, second - 1000 - settle_ms)
    done = sorted({(e.key, e.version_id, e.last_modified_ms) for e in listed
                   if e.last_modified_ms >= watermark and (latest or e.last_modified_ms < second)})
    return Checkpoint(watermark_ms=watermark, done=tuple(done))


def log_position(prefix: str, at_ms: int, listed: Iterable[Entry] = (), *, settle_ms: int = 0,
                 latest: bool = False, not_before_ms: int = 0) -> LogCheckpoint:
    """The log checkpoint that delivers every object named at ``at_ms`` or later, and those not in
    ``listed`` in the directories from a settle window before it: directories before that are sealed;
    in the open ones, what ``listed`` holds named before ``at_ms`` (``latest``: all of it) is handled.
    The boundary is never before ``not_before_ms`` (see :func:`log_floor_ms`)."""
    start = max(0, at_ms - settle_ms, not_before_ms)
    cursor = LogCursor(prefix, LogCheckpoint(sealed_ms=start - start % MINUTE_MS))
    for entry in listed:
        dir_ms = cursor.dir_of(entry.key)
        if dir_ms is None or dir_ms < cursor.sealed_ms:
            continue
        if latest or message_ms(entry) < at_ms:
            cursor.skip(entry)
    return cursor.checkpoint()


def earliest_log_ms(prefix: str, listed: Iterable[Entry], now_ms: int) -> int:
    """The start of the oldest directory under ``prefix`` (``now_ms`` without one)."""
    probe = LogCursor(prefix)
    dirs = [d for e in listed if (d := probe.dir_of(e.key)) is not None]
    return min(dirs, default=now_ms - now_ms % MINUTE_MS)


def log_floor_ms(prefix: str, listed: Iterable[Entry], now_ms: int, settle_ms: int) -> int:
    """The earliest sealed boundary worth having: the oldest directory of the shard, or the minute a
    settle window before now if that is older. No object can appear before it (a producer names
    objects with the server's time, at most a settle window late), and a cursor never lists the empty
    minutes before it one by one."""
    start = now_ms - settle_ms
    return min(earliest_log_ms(prefix, listed, start), start - start % MINUTE_MS)


def cursor_of(prefix: str, position: Position | None, layout: str) -> VersionCursor | LogCursor:
    """A cursor resumed from ``position`` (None: a group that has handled nothing in the shard)."""
    if layout == "log":
        return LogCursor(prefix, position if isinstance(position, LogCheckpoint) else None)
    return VersionCursor(position if isinstance(position, Checkpoint) else None)


@dataclass(frozen=True, slots=True)
class Change:
    """What moving from one position to another does to the messages stored now."""

    replay: int  # handled at the current position, delivered again at the new one
    skip: int  # not handled yet, and never delivered at the new one
    deliver: int  # delivered at the new position (replayed or not)


def compare(prefix: str, layout: str, current: Position | None, new: Position,
            listed: Iterable[Entry]) -> Change:
    """Count, over the messages ``listed``, what the move from ``current`` to ``new`` replays and
    skips."""
    before, after = cursor_of(prefix, current, layout), cursor_of(prefix, new, layout)
    replay = skip = deliver = 0
    for entry in listed:
        was, will = before.is_new(entry), after.is_new(entry)
        replay += will and not was
        skip += was and not will
        deliver += will
    return Change(replay, skip, deliver)


def position_text(position: Position | None) -> str:
    """A position as a few words: where the watermark (or sealed boundary) is and what is done past it."""
    if position is None:
        return "no checkpoint"
    if isinstance(position, LogCheckpoint):
        done = sum(hi - lo + 1 for _, _, ranges in position.done for lo, hi in ranges) + len(position.others)
        return f"sealed {iso(position.sealed_ms)}" + (f" +{done} done" if done else "")
    done = len(position.done)
    return f"watermark {iso(position.watermark_ms)}" + (f" +{done} done" if done else "")
