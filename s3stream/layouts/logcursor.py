"""The log-layout cursor: a pure state machine, no I/O.

In the log layout every message is a new object ``<shard>/<dir>/<ms>-<producer>-<seq>-…``,
where ``<dir>`` names the span of time the name's ``ms`` falls in (``yyyymmddHHMMSS``, ten seconds by
default; ``yyyymmddHHMM`` for topics whose directories span a minute).
Directory buckets list in no particular order and refuse ``StartAfter``, so the cursor does not rely on
key order at all. Its state is:

* ``sealed_ms``: every directory that starts before it is **sealed**: it was listed in full
  after ``dir end + settle window`` (server clock), and everything listed in it was handled;
* for each **open** directory, what was handled, as ranges of sequence numbers per producer
  (``{producer: [[first, last], ...]}``): a producer numbers its objects 1, 2, 3…, so a whole directory of
  one producer is usually one range. Names written by other tools are kept as plain keys.

A message's identity is (producer, sequence), wherever its name's time put it: a producer that had to
write a message again under a new time (a write not answered within its deadline) leaves two copies,
possibly in two directories. Among the open directories a copy of a message that was handled is not
new and is recorded as handled in its own directory, so it stays known until that one is sealed; a
copy of a message in flight is not new either, and is recorded when that completes (not before: a
checkpoint must not hold a message as handled while its handling may still be lost to a crash).

A sealed directory's record is dropped, so the state holds only the open window (about
``settle_window`` + two directories' spans), whatever the topic's history. An object named with a
time in the past (a producer that could not read the server's clock and runs behind) lands in an older
directory; it is still delivered while that directory is open, that is less than ``settle_window``
after the directory's end.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

from s3stream.layouts.topics import MINUTE_MS, dir_start_ms, is_dir_name, parse_log_key
from s3stream.message import Entry

Ident = tuple[str, str]


class RangeSet:
    """A set of integers kept as sorted, disjoint, inclusive ``[lo, hi]`` ranges."""

    def __init__(self, ranges: list[list[int]] | None = None) -> None:
        self.ranges: list[list[int]] = sorted([lo, hi] for lo, hi in (ranges or []))

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self.ranges, [value, float("inf")]) - 1
        return i >= 0 and self.ranges[i][0] <= value <= self.ranges[i][1]

    def add(self, value: int) -> None:
        if value in self:
            return
        i = bisect.bisect_right(self.ranges, [value, float("inf")])
        joins_left = i > 0 and self.ranges[i - 1][1] == value - 1
        joins_right = i < len(self.ranges) and self.ranges[i][0] == value + 1
        if joins_left and joins_right:
            self.ranges[i - 1][1] = self.ranges[i][1]
            del self.ranges[i]
        elif joins_left:
            self.ranges[i - 1][1] = value
        elif joins_right:
            self.ranges[i][0] = value
        else:
            self.ranges.insert(i, [value, value])


_NONE: dict[int, RangeSet] = {}  # a producer with nothing handled (never written to)


@dataclass(frozen=True, slots=True)
class LogCheckpoint:
    """A committed log cursor: the sealed boundary and what was handled in each open directory."""

    sealed_ms: int
    done: tuple[tuple[int, str, tuple[tuple[int, int], ...]], ...] = ()  # (dir_ms, producer, ranges)
    others: tuple[tuple[int, str], ...] = ()  # (dir_ms, key) of objects s3stream did not name


HOT_MS = 3_000  # directories this close to now are listed often: where writes land
FRESH_MS = 250  # on every pass until this long after their end, then at most every WARM_MS
AHEAD_MS = 250  # on every pass from this long before their start: a producer's estimate of the
# server's time is never behind it, and ahead by about a round trip once the answers to its writes
# narrowed it (ServerClock); a producer further ahead (one just started, up to a second) writes where
# passes list at most every WARM_MS
WARM_MS = 250
COOL_MS = 5_000  # the other open ones at least this often: writes that landed late


class LogCursor:
    """Tracks which log objects of one shard are done, in flight, or new."""

    def __init__(self, prefix: str, checkpoint: LogCheckpoint | None = None, *, start_ms: int = 0,
                 span_ms: int = MINUTE_MS) -> None:
        self.prefix = prefix
        self.span_ms = span_ms  # how long one directory spans (a divisor of a minute)
        self.sealed_ms = checkpoint.sealed_ms if checkpoint else start_ms - start_ms % MINUTE_MS
        self._done: dict[int, dict[str, RangeSet]] = {}
        self._by_producer: dict[str, dict[int, RangeSet]] = {}  # the same ranges, by producer
        self._others: dict[int, set[str]] = {}
        self._inflight: dict[str, int] = {}
        self._inflight_ids: set[tuple[str, int]] = set()
        self._copies: dict[tuple[str, int], dict[str, int]] = {}  # copies of in-flight messages: key -> dir
        self._inflight_ms: dict[str, int] = {}
        self._inflight_dirs: Counter[int] = Counter()
        self._listed: dict[int, int] = {}  # open directory -> when a pass last listed it (server ms)
        self.horizon_ms = 0
        self.generation = 0
        self._noted_ms = self.sealed_ms
        for dir_ms, producer, ranges in checkpoint.done if checkpoint else ():
            self._ranges(dir_ms, producer).ranges = RangeSet([list(r) for r in ranges]).ranges
        for dir_ms, key in checkpoint.others if checkpoint else ():
            self._others.setdefault(dir_ms, set()).add(key)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def watermark_ms(self) -> int:
        """Same meaning as the versions cursor's: everything before it is handled."""
        return self.sealed_ms

    def oldest_in_flight_ms(self) -> int | None:
        """LastModified of the oldest object handed out and not complete (None when idle)."""
        return min(self._inflight_ms.values(), default=None)

    def open_dirs(self, now_ms: int, settle_ms: int, limit: int) -> list[int]:
        """Directories to list this pass: from the sealed boundary up to ``now + settle`` (clocks
        ahead), at most ``limit`` of them, and never none (``now`` behind the boundary lists it)."""
        last = max(now_ms + settle_ms, self.sealed_ms)
        return list(range(self.sealed_ms, last - last % self.span_ms + 1, self.span_ms))[:limit]

    def due_dirs(self, now_ms: int, settle_ms: int, limit: int, *, hot_ms: int = HOT_MS,
                 cool_ms: int = COOL_MS) -> list[int]:
        """The open directories (:meth:`open_dirs`) a pass lists: on every pass, those where writes land
        (filling now, beginning within ``AHEAD_MS``, or ended less than ``FRESH_MS`` ago); at most
        every ``WARM_MS``, those old enough to be sealed, those ended less than ``hot_ms`` ago and
        those beginning within ``hot_ms``; the older rest once ``cool_ms`` has passed since they were
        last listed. A write that landed seconds late in an older directory waits up to ``cool_ms``
        more; one named ahead of now (a writer whose server time runs ahead of this consumer's) up to
        ``WARM_MS`` more, or, more than ``hot_ms`` ahead, until now comes near. None is lost: a
        directory is sealed only by a pass that listed it in full after its end plus the settle
        window."""
        due = []
        for dir_ms in self.open_dirs(now_ms, settle_ms, limit):
            end = dir_ms + self.span_ms
            if dir_ms > now_ms + hot_ms:
                break
            if dir_ms > now_ms + AHEAD_MS:  # not begun: only writers whose clocks run ahead write there
                every = WARM_MS
            else:
                every = 0 if end > now_ms - FRESH_MS else WARM_MS if end > now_ms - hot_ms else cool_ms
            if end + settle_ms <= now_ms:  # may be sealed: by a pass whose Date shows it began after
                every = min(every, WARM_MS)  # that, up to 2 s later; a listing each pass costs pages
            last = self._listed.get(dir_ms)  # (the server clock's estimate may step back a little)
            if not every or last is None or now_ms - last >= every:
                due.append(dir_ms)
                self._listed[dir_ms] = now_ms
        return due

    def dir_of(self, key: str) -> int | None:
        """The directory start of a key under this shard, or None for keys outside any directory."""
        rel = key[len(self.prefix):]
        head, sep, _ = rel.partition("/")
        if not sep or not is_dir_name(head):
            return None
        return dir_start_ms(head)

    def is_new(self, entry: Entry) -> bool:
        key = entry.key
        dir_ms = self.dir_of(key)
        if dir_ms is None or dir_ms < self.sealed_ms or key in self._inflight:
            return False
        name = parse_log_key(key)
        if name is None:
            return key not in self._others.get(dir_ms, ())
        held = self._by_producer.get(name.producer, _NONE)
        own = held.get(dir_ms)
        if own is not None and name.seq in own:
            return False
        ident = (name.producer, name.seq)
        if ident in self._inflight_ids:  # a copy of a message being handled: done when that is
            self._copies.setdefault(ident, {})[key] = dir_ms
            return False
        if any(name.seq in ranges for ranges in held.values()):  # a copy of a handled message
            self._mark(key, dir_ms)
            return False
        return True

    def start(self, entry: Entry) -> None:
        dir_ms = self.dir_of(entry.key)
        assert dir_ms is not None
        name = parse_log_key(entry.key)
        if name is not None:
            self._inflight_ids.add((name.producer, name.seq))
        self._inflight[entry.key] = dir_ms
        self._inflight_ms[entry.key] = entry.last_modified_ms
        self._inflight_dirs[dir_ms] += 1

    def complete(self, ident: Ident) -> None:
        key = ident[0]
        dir_ms = self._inflight.pop(key)
        del self._inflight_ms[key]
        self._inflight_dirs[dir_ms] -= 1
        if not self._inflight_dirs[dir_ms]:
            del self._inflight_dirs[dir_ms]
        self._mark(key, dir_ms)
        name = parse_log_key(key)
        if name is not None:
            message = (name.producer, name.seq)
            self._inflight_ids.discard(message)
            for copy, copy_dir in self._copies.pop(message, {}).items():
                if copy_dir >= self.sealed_ms:  # its directory may have been sealed meanwhile
                    self._mark(copy, copy_dir)

    def skip(self, entry: Entry) -> None:
        dir_ms = self.dir_of(entry.key)
        if dir_ms is not None:
            self._mark(entry.key, dir_ms)

    def pass_complete(self, listed: list[int], pass_start_ms: int, settle_ms: int) -> None:
        """Seal directories, oldest first, that this pass listed in full after ``end + settle`` and
        that have nothing in flight."""
        self.horizon_ms = max(self.horizon_ms, pass_start_ms)
        for dir_ms in listed:
            if dir_ms != self.sealed_ms or dir_ms + self.span_ms + settle_ms > pass_start_ms:
                break
            if self._inflight_dirs.get(dir_ms):
                break
            self.sealed_ms = dir_ms + self.span_ms
            self._listed.pop(dir_ms, None)
            done = self._done.pop(dir_ms, None)
            for producer in done or ():
                held = self._by_producer[producer]
                del held[dir_ms]
                if not held:
                    del self._by_producer[producer]
            others = self._others.pop(dir_ms, None)
            if done is not None or others is not None or self.sealed_ms - self._noted_ms >= 10 * MINUTE_MS:
                self._noted_ms = self.sealed_ms  # idle shards commit every 10 minutes of sealing
                self.generation += 1

    def checkpoint(self) -> LogCheckpoint:
        done = tuple(sorted(
            (d, p, tuple((lo, hi) for lo, hi in rs.ranges))
            for d, producers in self._done.items() if d >= self.sealed_ms for p, rs in producers.items()
        ))
        others = tuple(sorted(
            (d, k) for d, keys in self._others.items() if d >= self.sealed_ms for k in keys
        ))
        return LogCheckpoint(sealed_ms=self.sealed_ms, done=done, others=others)

    def _mark(self, key: str, dir_ms: int) -> None:
        name = parse_log_key(key)
        if name is None:
            self._others.setdefault(dir_ms, set()).add(key)
        else:
            self._ranges(dir_ms, name.producer).add(name.seq)
        self.generation += 1

    def _ranges(self, dir_ms: int, producer: str) -> RangeSet:
        """The handled sequence numbers of ``producer`` in the directory ``dir_ms`` (created empty)."""
        ranges = self._done.setdefault(dir_ms, {}).get(producer)
        if ranges is None:
            ranges = self._done[dir_ms][producer] = RangeSet()
            self._by_producer.setdefault(producer, {})[dir_ms] = ranges
        return ranges
