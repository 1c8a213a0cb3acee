"""Model-based test of the versions cursor (Hypothesis stateful testing, pure, no server).

A small simulated shard drives :class:`VersionCursor` the way the poller and the workers do: writes
stamped up to a settle window in the past, listing passes that advance one key at a time, workers that
complete one key's versions in order, checkpoints, and crashes that restart from the last committed
checkpoint. A simple reference model (sets of versions) checks the promises after every step:

* nothing is lost: at the end, every version written has been handled;
* bounded duplicates: a version handled before a committed checkpoint is never handled again;
* the checkpoint follows the write rate and the in-flight work, never the backlog: its size is bounded
  by what is in flight, what was written since the pass's horizon, the versions of the key the pass
  is on, and what completed or was running before the pass began.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.message import Entry
from s3stream.pipeline.checkpoint import decode, encode
from s3stream.s3.versionorder import oldest_first

SETTLE = 2_000
KEYS = ["a", "b", "c", "d", "e"]


class CursorModel(RuleBasedStateMachine):
    """The cursor against a shard of versions and a reference model of what was handled."""

    @initialize()
    def start(self) -> None:
        self.now = 100_000
        self.written: dict[tuple[str, str], Entry] = {}
        self.history: dict[str, list[Entry]] = defaultdict(list)  # per key, in write order
        self.cursor = VersionCursor()
        self.committed = Checkpoint(watermark_ms=0)
        self.handled: set[tuple[str, str]] = set()
        self.safe: set[tuple[str, str]] = set()  # handled before the last committed checkpoint
        self.queue: list[Entry] = []  # handed out, not complete (per key in order)
        self.pass_keys: list[str] | None = None
        self.pass_horizon = 0
        self.before_pass: set[tuple[str, str]] = set()
        self.seq = 0

    @rule(key=st.sampled_from(KEYS), lag=st.integers(0, SETTLE), count=st.integers(1, 4))
    def write(self, key: str, lag: int, count: int) -> None:
        """Versions of ``key`` become visible now, stamped up to a settle window in the past."""
        for _ in range(count):
            self.seq += 1
            e = Entry(key, f"v{self.seq}", self.now - lag)
            self.written[e.ident] = e
            self.history[key].append(e)

    @rule(ms=st.integers(1, 6_000))
    def tick(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: self.pass_keys is None)
    @rule()
    def begin_pass(self) -> None:
        self.pass_horizon = self.now - 1000 - SETTLE
        self.cursor.begin_pass(self.pass_horizon)
        self.pass_keys = sorted(k for k in KEYS if self.history[k])
        self.before_pass = set(self.handled) | {e.ident for e in self.queue}

    @precondition(lambda self: self.pass_keys is not None)
    @rule()
    def pass_step(self) -> None:
        """The pass lists the next key (newest first) and hands its new versions out, oldest first."""
        assert self.pass_keys is not None
        if not self.pass_keys:
            self.cursor.pass_complete(self.pass_horizon)
            self.pass_keys = None
            return
        key = self.pass_keys.pop(0)
        self.cursor.listed_through(key)
        listed = list(reversed(self.history[key]))
        for e in oldest_first([e for e in listed if self.cursor.is_new(e)]):
            self.cursor.start(e)
            self.queue.append(e)

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        """A worker completes the oldest in-flight version of some key."""
        heads = {}
        for e in self.queue:
            heads.setdefault(e.key, e)
        e = data.draw(st.sampled_from(sorted(heads.values(), key=lambda x: x.version_id)))
        self.queue.remove(e)
        assert e.ident not in self.safe, f"{e.ident} handled again after a committed checkpoint"
        self.handled.add(e.ident)
        self.cursor.complete(e.ident)

    @rule()
    def commit(self) -> None:
        self.committed = decode(encode(self.cursor.checkpoint(), bucket="b", prefix="p/"), where="model")
        restored = VersionCursor(self.committed)
        self.safe = {i for i in self.handled if not restored.is_new(self.written[i])}

    @rule()
    def crash(self) -> None:
        """kill -9: in-flight work and the pass are lost; the cursor restarts from the commit."""
        self.cursor = VersionCursor(self.committed)
        self.queue = []
        self.pass_keys = None

    @invariant()
    def committed_work_is_never_forgotten(self) -> None:
        restored = VersionCursor(self.committed)
        for ident in self.safe:
            assert not restored.is_new(self.written[ident])

    @invariant()
    def checkpoint_is_bounded(self) -> None:
        if not hasattr(self, "cursor"):
            return
        cp = self.cursor.checkpoint()
        reference = self.pass_horizon if self.pass_keys is not None else cp.watermark_ms
        recent = sum(1 for e in self.written.values() if e.last_modified_ms >= reference)
        current_key = self.cursor._pass.key if self.cursor._pass is not None else None
        on_key = len(self.history[current_key]) if current_key else 0
        earlier = sum(1 for i in self.before_pass if self.written[i].last_modified_ms >= cp.watermark_ms)
        restored = len(self.committed.pending)
        bound = len(self.queue) + recent + on_key + earlier + restored
        assert len(cp.done) + len(cp.pending) <= bound, (len(cp.done), len(cp.pending), bound)

    def teardown(self) -> None:
        """Quiesce: finish the work, run passes until the horizon passes every write; nothing is lost."""
        if not hasattr(self, "cursor"):
            return
        for _ in range(3):
            while self.queue:
                self.handled.add(self.queue.pop(0).ident)
            self.now += SETTLE + 2000
            self.pass_keys = None
            self.begin_pass()
            while self.pass_keys is not None:
                self.pass_step()
            for e in list(self.queue):
                self.queue.remove(e)
                self.handled.add(e.ident)
                self.cursor.complete(e.ident)
        missing = set(self.written) - self.handled
        assert not missing, f"never handled: {sorted(missing)}"


TestCursorModel = CursorModel.TestCase
TestCursorModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
