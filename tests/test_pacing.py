"""A shard's listing cadence (:class:`s3stream.pipeline.pacing.Pacer`), pure: example tests and a
Hypothesis state machine against a reference model.

The promises: a full page, or a pass that stopped short of the present, is followed at once;
while messages flow, passes start ``poll_interval`` apart; an idle shard backs off to
``max_poll_interval`` without a head, and waits for the head (up to the reconcile delay) with one; a
reconciling pass that finds messages shows writers the head does not announce, and the shard then
never waits longer than ``max_poll_interval`` for ten reconcile intervals, so those writers are
found within the back-off, as without a head.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from s3stream.pipeline.pacing import UNANNOUNCED_HOLD, Next, Pacer, Wait


def pacer() -> Pacer:
    return Pacer(poll_interval=0.05, max_poll_interval=5.0, reconcile_interval=60.0)


def test_without_a_head_an_idle_shard_backs_off_to_the_maximum() -> None:
    """Empty passes double the wait up to ``max_poll_interval``; a pass that finds something goes back
    to ``poll_interval`` measured from the pass's start; a full page is followed at once."""
    p = pacer()
    waits = [p.after_pass(found=0, full=False, pages=1, head_seen=False, now=t).seconds for t in range(9)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert p.after_pass(found=3, full=False, pages=1, head_seen=False, now=10, took=0.02) == \
        Next(Wait.FLOW, pytest.approx(0.03))
    assert p.after_pass(found=1000, full=True, pages=1, head_seen=False, now=11) == Next(Wait.NONE, 0.0)
    assert p.after_failure() == Next(Wait.BACKOFF, 0.1)


def test_with_a_head_an_idle_shard_waits_for_it_and_reconciles_by_pages() -> None:
    """Once the head is known an idle shard waits for it; its own listing comes one reconcile interval
    per listing request of the pass, so a long history costs about one request per interval."""
    p = pacer()
    assert p.after_pass(found=0, full=False, pages=1, head_seen=True, now=0) == Next(Wait.RECONCILE, 60.0)
    p.rung()  # the head changed: a producer published
    assert p.after_pass(found=2, full=False, pages=100, head_seen=True, now=1) == Next(Wait.FLOW, 0.05)
    assert p.after_pass(found=0, full=False, pages=100, head_seen=True, now=2) == \
        Next(Wait.RECONCILE, 6000.0)


def test_a_reconciling_pass_that_finds_messages_turns_to_listing_for_a_while() -> None:
    """Messages found by a listing the head did not call for were written by something that does not
    touch the head: for ten reconcile intervals the shard backs off as without a head, then trusts the
    head again. Messages found after a ring change nothing."""
    p = pacer()
    p.after_pass(found=0, full=False, pages=1, head_seen=True, now=0)  # waits, and the wait runs out
    after = p.after_pass(found=1, full=False, pages=1, head_seen=True, now=60)
    assert after.unannounced
    assert p.after_pass(found=0, full=False, pages=1, head_seen=True, now=61).wait is Wait.BACKOFF
    hold_ends = 60 + UNANNOUNCED_HOLD * 60.0
    assert p.after_pass(found=0, full=False, pages=1, head_seen=True, now=hold_ends - 1).wait is Wait.BACKOFF
    assert p.after_pass(found=0, full=False, pages=1, head_seen=True, now=hold_ends).wait is Wait.RECONCILE
    p.rung()
    assert not p.after_pass(found=1, full=False, pages=1, head_seen=True, now=hold_ends + 1).unannounced
    idle = p.after_pass(found=0, full=False, pages=1, head_seen=True, now=hold_ends + 2)
    assert idle.wait is Wait.RECONCILE


class PacingModel(RuleBasedStateMachine):
    """Passes (finding nothing, some, a page), failures, rings and the head appearing or going,
    against a model that keeps only: the current back-off, and when the last unannounced find was."""

    def __init__(self) -> None:
        super().__init__()
        self.pacer = pacer()
        self.now = 0.0
        self.backoff = 0.05
        self.last_unannounced: float | None = None
        self.waiting_for_head = False  # the last wait was a reconcile wait the head did not end
        self.last: Next | None = None

    def holding(self) -> bool:
        return self.last_unannounced is not None and self.now < self.last_unannounced + UNANNOUNCED_HOLD * 60

    @rule(found=st.sampled_from([0, 0, 1, 7, 1000]), pages=st.integers(1, 5), head=st.booleans(),
          elapsed=st.floats(0, 900), behind=st.booleans())
    def a_pass(self, found: int, pages: int, head: bool, elapsed: float, behind: bool) -> None:
        self.now += elapsed
        if found and self.waiting_for_head:
            self.last_unannounced = self.now
        full = found == 1000 or behind
        after = self.pacer.after_pass(found=found, full=full, pages=pages, head_seen=head, now=self.now)
        assert after.unannounced == (found > 0 and self.waiting_for_head)
        self.waiting_for_head = False
        if full:  # more to list: at once, whatever the head
            assert after.wait is Wait.NONE
            if found:
                self.backoff = 0.05
        elif found:
            self.backoff = 0.05
            assert after.wait is Wait.FLOW
        elif head and not self.holding():
            assert after == Next(Wait.RECONCILE, 60.0 * pages)
            self.waiting_for_head = True
        else:
            self.backoff = min(5.0, self.backoff * 2)
            assert after == Next(Wait.BACKOFF, self.backoff)
        self.last = after

    @rule()
    def a_failure(self) -> None:
        self.waiting_for_head = False
        self.backoff = min(5.0, self.backoff * 2)
        self.last = self.pacer.after_failure()
        assert self.last == Next(Wait.BACKOFF, self.backoff)

    @rule()
    def the_head_rings(self) -> None:
        self.waiting_for_head = False
        self.pacer.rung()

    @invariant()
    def never_longer_than_the_backoff_while_holding(self) -> None:
        if self.last is not None and self.holding():
            assert self.last.seconds <= 5.0


TestPacingModel = PacingModel.TestCase
