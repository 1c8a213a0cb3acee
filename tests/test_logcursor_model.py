"""A model-based test of the log-layout cursor (Hypothesis stateful testing, no server).

The machine plays a shard against :class:`~s3stream.layouts.logcursor.LogCursor` as the log poller and the
workers use it: producers write messages whose objects become visible late (within the settle
window), a write answered after the producer's deadline is made again under a new time (two copies of
one message, the first possibly landing minutes late), listing passes hand new objects out in
delivery order, completions come in any order, checkpoints are taken, and the consumer crashes and
restarts from its last checkpoint. A simple reference model of what was handed out, completed and
committed checks:

* every message is handed out at least once (after a final drain);
* nothing is handed out twice between restarts, except a copy whose twin was handed out from a
  directory that has since been sealed (the documented "at least once" of rewritten messages);
* after a restart only what was not committed in the last checkpoint is handed out again (same
  exception);
* the keys the poller remembers as not new (:class:`~s3stream.layouts.knownkeys.KnownKeys`, which its
  listings leave out) are not new, and leaving them out loses nothing (the delivery checks above hold
  with them left out, as the poller lists);
* the checkpoint holds only open directories, and a pass with nothing in flight that lists every
  directory it may seal (they are listed at most every 250 ms) seals everything older than the
  settle window: its size follows the open window, not the history.
"""

from __future__ import annotations

import copy
import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from s3stream.layouts.knownkeys import KnownKeys
from s3stream.layouts.logcursor import LogCheckpoint, LogCursor
from s3stream.layouts.logpoller import delivery_order
from s3stream.layouts.topics import MINUTE_MS, log_key, parse_log_key
from s3stream.message import Entry

PREFIX = "t/00/"
T0 = 1_795_000_020_000 - 1_795_000_020_000 % MINUTE_MS
SETTLE = 30_000
DEADLINE = 10_000  # the producer's put_deadline, below the settle window
MAX_DIRS = 60

Ident = tuple[str, int]


def _ident(key: str) -> Ident:
    name = parse_log_key(key)
    assert name is not None
    return name.producer, name.seq


def _dir(key: str) -> int:
    name = parse_log_key(key)
    assert name is not None
    return name.dir_ms


class LogCursorMachine(RuleBasedStateMachine):
    """The cursor of one shard against a reference model of delivery (see the module docstring)."""

    SPAN = MINUTE_MS  # how long a directory spans: a minute, as topics made before shorter ones
    KNOWN_LIMIT = 50_000  # keys the poller remembers as not new

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.cursor = LogCursor(PREFIX, start_ms=T0, span_ms=self.SPAN)
        self.objects: list[Entry] = []  # every copy written: last_modified_ms is when it is visible
        self.messages: set[Ident] = set()
        self.seqs: dict[str, int] = {}
        self.one_shots = itertools.count(1)
        self.in_flight: list[Entry] = []
        self.handed: dict[Ident, int] = {}  # since the last restart: ident -> directory handed out from
        self.completed: dict[Ident, int] = {}  # completed since the last restart
        self.committed: dict[Ident, int] = {}  # completed as of the last checkpoint
        self.saved: LogCheckpoint | None = None
        self.ever: set[Ident] = set()
        self.known = KnownKeys(self.KNOWN_LIMIT)

    # --- producers ---

    @rule(producer=st.sampled_from(["pa", "pb", "one-shot"]), late=st.integers(0, 5 * MINUTE_MS),
          again_late=st.integers(0, DEADLINE))
    def write(self, producer: str, late: int, again_late: int) -> None:
        """A message stamped now and visible ``late`` ms later; if that is past the deadline the
        producer writes it again under a new time, visible within the deadline."""
        if producer == "one-shot":
            producer = f"o{next(self.one_shots)}"
        seq = self.seqs[producer] = self.seqs.get(producer, 0) + 1
        self.messages.add((producer, seq))
        self._copy(producer, seq, self.now, self.now + late)
        if late > DEADLINE:  # not answered in time: a copy named at the moment the answer came
            self._copy(producer, seq, self.now + late, self.now + late + again_late)

    def _copy(self, producer: str, seq: int, stamp: int, visible: int) -> None:
        key = log_key(PREFIX, stamp, producer, seq, "_", span_ms=self.SPAN)
        self.objects.append(Entry(key=key, version_id="null", last_modified_ms=visible))

    @rule(ms=st.integers(0, 90_000))
    def advance(self, ms: int) -> None:
        self.now += ms

    # --- the consumer ---

    @rule()
    def list_pass(self) -> None:
        """A pass as the log poller makes it: the open directories, each listed whole but for the keys
        known not to be new, and its new objects handed out in delivery order, then sealing with the
        pass's start (whole seconds, minus one) as the server time. The keys left out are checked
        against a copy of the cursor (asking the cursor itself would change what it records)."""
        dirs = self.cursor.due_dirs(self.now, SETTLE, MAX_DIRS)
        pass_start = self.now - self.now % 1000 - 1000
        sealable = {d for d in self.cursor.open_dirs(self.now, SETTLE, MAX_DIRS)
                    if d + self.SPAN + SETTLE <= pass_start}
        idle = not self.in_flight
        aside = copy.deepcopy(self.cursor)
        for dir_ms in dirs:
            visible = [e for e in self.objects if _dir(e.key) == dir_ms and e.last_modified_ms <= self.now]
            known = self.known.of(dir_ms)
            assert not any(aside.is_new(e) for e in visible if e.key in known), "a known key is new"
            new = []
            for e in (e for e in visible if e.key not in known):
                if self.cursor.is_new(e):
                    new.append(e)
                else:
                    self.known.add(dir_ms, e.key)
            for entry in sorted(new, key=delivery_order):
                self.known.add(dir_ms, entry.key)
                if self.cursor.is_new(entry):  # asked again, as the poller does: copies in one listing
                    self._hand_out(entry, dir_ms)
        self.cursor.pass_complete(dirs, pass_start, SETTLE)
        self.known.forget_before(self.cursor.sealed_ms)
        assert self.known.size == sum(len(self.known.of(d)) for d in {_dir(e.key) for e in self.objects})
        if idle and not self.in_flight and len(dirs) < MAX_DIRS and sealable <= set(dirs):
            assert self.cursor.sealed_ms + self.SPAN + SETTLE > pass_start, "an idle pass sealed too little"

    def _hand_out(self, entry: Entry, dir_ms: int) -> None:
        ident = _ident(entry.key)
        earlier = self.handed.get(ident, self.committed.get(ident))
        if earlier is not None:  # only a copy whose twin's directory was sealed may come again
            assert earlier < self.cursor.sealed_ms, f"{entry.key} handed out again"
        self.handed[ident] = dir_ms
        self.cursor.start(entry)
        self.in_flight.append(entry)

    @precondition(lambda self: self.in_flight)
    @rule(pick=st.integers(0, 1 << 16))
    def complete(self, pick: int) -> None:
        entry = self.in_flight.pop(pick % len(self.in_flight))
        self.cursor.complete(entry.ident)
        ident = _ident(entry.key)
        self.completed[ident] = self.handed[ident]
        self.ever.add(ident)

    @rule()
    def checkpoint(self) -> None:
        self.saved = self.cursor.checkpoint()
        self.committed = {**self.committed, **self.completed}

    @rule()
    def restart(self) -> None:
        """A crash: in-flight work is lost; the cursor comes back from the last checkpoint."""
        self.cursor = LogCursor(PREFIX, self.saved, start_ms=T0, span_ms=self.SPAN)
        self.known = KnownKeys(self.KNOWN_LIMIT)  # a new poller
        self.in_flight.clear()
        self.handed.clear()
        self.completed.clear()

    # --- invariants ---

    @invariant()
    def checkpoint_holds_only_the_open_window(self) -> None:
        saved = self.cursor.checkpoint()
        assert all(d >= saved.sealed_ms for d, _, _ in saved.done)
        open_pairs = {(_dir(e.key), _ident(e.key)[0]) for e in self.objects}
        assert len(saved.done) <= len({p for p in open_pairs if p[0] >= saved.sealed_ms})

    def teardown(self) -> None:
        """Drain: complete everything, let time pass and list until every directory holding a copy
        is sealed; then every message was handled at least once."""
        last = max((_dir(e.key) for e in self.objects), default=T0)
        for _ in range(200):
            while self.in_flight:
                self.complete(0)
            if self.cursor.sealed_ms > last and all(e.last_modified_ms <= self.now for e in self.objects):
                break
            self.now += MINUTE_MS
            self.list_pass()
        assert self.messages <= self.ever, f"never handled: {sorted(self.messages - self.ever)[:5]}"


class TenSecondDirsMachine(LogCursorMachine):
    """The same with directories of ten seconds, as new topics have, and a poller that remembers
    at most 6 keys (beyond it, objects are listed and asked about as before)."""

    SPAN = 10_000
    KNOWN_LIMIT = 6


LogCursorMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TenSecondDirsMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_log_cursor_against_its_model = LogCursorMachine.TestCase
test_log_cursor_with_ten_second_dirs = TenSecondDirsMachine.TestCase
