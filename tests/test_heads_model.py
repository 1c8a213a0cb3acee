"""The head object's write schedule (:class:`s3stream.layouts.heads.HeadSchedule`), pure: example tests
and a Hypothesis state machine against a reference model of "every publish is signalled".

The promise the schedule keeps for consumers: after every touch (a message stored) a head write
starts, and when a write fails the touches it carried wait for the next one; writes never overlap
and start at least ``gap`` apart, so a burst costs one write per gap, not one per message.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from s3stream.layouts.heads import HeadSchedule, head_key


def test_a_burst_costs_one_write_per_gap_and_its_last_touch_is_written() -> None:
    """Ten touches while a write runs lead to exactly one more write, ``gap`` after the first began."""
    schedule = HeadSchedule(gap=0.05)
    schedule.touch()
    assert schedule.due(10.0) == 10.0
    schedule.start(10.0)
    for _ in range(10):
        schedule.touch()
    assert schedule.due(10.01) is None  # one write at a time
    schedule.finish(ok=True)
    assert schedule.due(10.02) == pytest.approx(10.05)
    schedule.start(10.05)
    schedule.finish(ok=True)
    assert schedule.due(11.0) is None  # nothing left to signal


def test_a_failed_write_leaves_its_touches_pending() -> None:
    """A write that failed is done again: the messages it was to signal are not forgotten."""
    schedule = HeadSchedule(gap=0.0)
    schedule.touch()
    schedule.start(1.0)
    schedule.finish(ok=False)
    assert schedule.due(2.0) == 2.0


def test_heads_live_under_the_control_prefix() -> None:
    """A topic's head is a control object (never consumed as a message), one per topic or prefix."""
    assert head_key("orders") == "_s3stream/heads/orders.json"
    assert head_key("logs/app/") == "_s3stream/heads/logs/app.json"
    assert head_key("") == "_s3stream/heads/_.json"


class ScheduleModel(RuleBasedStateMachine):
    """Touches, time passing, writes starting when due and finishing (or failing), against a model
    that keeps the touches no successful write has covered yet."""

    def __init__(self) -> None:
        super().__init__()
        self.gap = 0.05
        self.schedule = HeadSchedule(gap=self.gap)
        self.now = 0.0
        self.uncovered: set[int] = set()  # touches not yet carried by a write that succeeded
        self.carried: set[int] = set()  # touches the running write started after
        self.touches = 0
        self.starts: list[float] = []

    @rule()
    def touch(self) -> None:
        self.touches += 1
        self.uncovered.add(self.touches)
        self.schedule.touch()

    @rule(seconds=st.floats(min_value=0.0, max_value=0.2))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: not self.schedule.writing)
    @rule()
    def start_when_due(self) -> None:
        due = self.schedule.due(self.now)
        if due is None:
            return
        self.now = max(self.now, due)
        self.schedule.start(self.now)
        self.carried = set(self.uncovered)
        self.starts.append(self.now)

    @precondition(lambda self: self.schedule.writing)
    @rule(ok=st.booleans())
    def finish(self, ok: bool) -> None:
        self.schedule.finish(ok)
        if ok:
            self.uncovered -= self.carried
        self.carried = set()

    @invariant()
    def a_write_is_due_while_touches_are_unsignalled(self) -> None:
        if not self.schedule.writing:
            assert (self.schedule.due(self.now) is not None) == bool(self.uncovered)

    @invariant()
    def writes_start_at_least_a_gap_apart(self) -> None:
        assert all(b - a >= self.gap - 1e-9 for a, b in zip(self.starts, self.starts[1:], strict=False))

    @invariant()
    def a_due_write_never_waits_longer_than_a_gap(self) -> None:
        due = self.schedule.due(self.now)
        if due is not None and self.starts:
            assert due <= max(self.now, self.starts[-1] + self.gap) + 1e-9


TestScheduleModel = ScheduleModel.TestCase
