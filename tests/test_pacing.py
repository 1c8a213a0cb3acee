"""A shard's listing cadence (:class:`s3stream.pipeline.pacing.Pacer`), pure: example tests and a
Hypothesis state machine against a reference model.

The promises: a full page, or a pass that stopped short of the present, is followed at once;
while messages flow, passes start ``poll_interval`` apart; an idle shard backs off to
``max_poll_interval`` without a head, and waits for the head (up to the reconcile delay) with one,
after lingering on the back-off up to the head's read interval when it had just found messages; a
reconciling pass that finds messages shows writers the head does not announce, and the shard then
never waits longer than ``max_poll_interval`` for ten reconcile intervals, so those writers are
found within the back-off, as without a head.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from s3stream.config import ProducerSettings
from s3stream.pipeline.pacing import (
    LINGER_FLOOR,
    UNANNOUNCED_HOLD,
    Next,
    Pacer,
    Wait,
    flow_interval,
    head_interval,
)

HEAD = 0.3  # the head's read interval


def pacer() -> Pacer:
    return Pacer(poll_interval=0.05, max_poll_interval=5.0, reconcile_interval=60.0, head_interval=HEAD)


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
        Next(Wait.RECONCILE, 6000.0)  # a pass of 100 pages does not linger: the head is the cheaper wait


def test_a_stream_that_pauses_is_listed_on_a_short_back_off_before_the_head_takes_over() -> None:
    """An empty pass right after passes that found messages (a stream of a few messages a second,
    listed every 50 ms) does not hand the shard to the head at once: it lists again on a doubling
    back-off while that back-off, times the pass's listing requests, is no longer than the head's read
    interval, so the stream's next message waits a poll interval or two, not a head read and a head
    write. Only then does the shard wait for the head; the next message found starts the short
    back-off again. A pass of many pages (a long history) goes to the head at once."""
    p = pacer()
    assert p.after_pass(found=2, full=False, pages=1, head_seen=True, now=0).wait is Wait.FLOW
    waits = [p.after_pass(found=0, full=False, pages=1, head_seen=True, now=t) for t in (1, 2, 3)]
    assert waits == [Next(Wait.BACKOFF, 0.1), Next(Wait.BACKOFF, 0.2), Next(Wait.RECONCILE, 60.0)]
    p.rung()
    assert p.after_pass(found=1, full=False, pages=1, head_seen=True, now=4).wait is Wait.FLOW
    assert p.after_pass(found=0, full=False, pages=1, head_seen=True, now=5) == Next(Wait.BACKOFF, 0.1)
    assert p.after_pass(found=1, full=False, pages=1, head_seen=True, now=6) == Next(Wait.FLOW, 0.05)
    # a pass of two listing requests lingers half as long; one of many pages not at all
    assert p.after_pass(found=0, full=False, pages=2, head_seen=True, now=7) == Next(Wait.BACKOFF, 0.1)
    assert p.after_pass(found=0, full=False, pages=2, head_seen=True, now=8) == Next(Wait.RECONCILE, 120.0)
    p.rung()
    assert p.after_pass(found=9, full=False, pages=7, head_seen=True, now=9).wait is Wait.FLOW
    assert p.after_pass(found=0, full=False, pages=7, head_seen=True, now=10) == Next(Wait.RECONCILE, 420.0)


def test_a_head_read_often_does_not_cut_lingering_shorter_than_the_producers_head_gap() -> None:
    """While a stream flows, producers rewrite the head at most every ``head_gap`` (0.25 s by
    default), so a shard that waits for the head mid-stream may wait that long for a ring however
    often it reads the head. With the head read every 0.1 s (a directory bucket), a shard that lists
    three directories a pass still lingers on 20, 40 and 80 ms before it waits for the head; the
    floor is the producers' default gap. Lingering ends where the back-off stops growing
    (``max_poll_interval`` below the floor): it never turns into listing for good."""
    p = Pacer(poll_interval=0.01, max_poll_interval=5.0, reconcile_interval=60.0, head_interval=0.1)
    assert p.after_pass(found=1, full=False, pages=3, head_seen=True, now=0).wait is Wait.FLOW
    waits = [p.after_pass(found=0, full=False, pages=3, head_seen=True, now=t) for t in (1, 2, 3, 4)]
    assert waits == [Next(Wait.BACKOFF, 0.02), Next(Wait.BACKOFF, 0.04), Next(Wait.BACKOFF, 0.08),
                     Next(Wait.RECONCILE, 180.0)]
    assert ProducerSettings.model_fields["head_gap"].default == LINGER_FLOOR
    capped = Pacer(poll_interval=0.05, max_poll_interval=0.2, reconcile_interval=3.0, head_interval=0.1)
    capped.after_pass(found=1, full=False, pages=1, head_seen=True, now=0)
    waits = [capped.after_pass(found=0, full=False, pages=1, head_seen=True, now=t) for t in (1, 2, 3)]
    assert waits == [Next(Wait.BACKOFF, 0.1), Next(Wait.BACKOFF, 0.2), Next(Wait.RECONCILE, 3.0)]


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
    lingering = [p.after_pass(found=0, full=False, pages=1, head_seen=True, now=hold_ends + 2)
                 for _ in range(2)]
    assert [after.wait for after in lingering] == [Wait.BACKOFF, Wait.BACKOFF]
    idle = p.after_pass(found=0, full=False, pages=1, head_seen=True, now=hold_ends + 3)
    assert idle.wait is Wait.RECONCILE


class PacingModel(RuleBasedStateMachine):
    """Passes (finding nothing, some, a page), failures, rings and the head appearing or going,
    against a model that keeps only: the current back-off, whether messages were found since the last
    wait for the head, and when the last unannounced find was."""

    def __init__(self) -> None:
        super().__init__()
        self.pacer = pacer()
        self.now = 0.0
        self.backoff = 0.05
        self.last_unannounced: float | None = None
        self.waiting_for_head = False  # the last wait was a reconcile wait the head did not end
        self.lingering = False  # messages were found since the last reconcile wait began
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
        if found:
            self.backoff, self.lingering = 0.05, True
        if full:  # more to list: at once, whatever the head
            assert after.wait is Wait.NONE
        elif found:
            assert after.wait is Wait.FLOW
        elif head and not self.holding() and not (  # lingering: a growing back-off within the horizon
                self.lingering and self.backoff < (longer := min(5.0, self.backoff * 2))
                and longer * pages <= max(HEAD, LINGER_FLOOR)):
            assert after == Next(Wait.RECONCILE, 60.0 * pages)
            self.waiting_for_head, self.lingering = True, False
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


def test_the_flow_interval_is_ten_milliseconds_in_a_directory_bucket_unless_configured() -> None:
    """Unset, ``poll_interval`` is 10 ms in a directory bucket (S3 Express: a request takes about 5 ms,
    so a longer wait would be most of a message's latency) and 50 ms elsewhere; a configured value
    is used as it is, in either kind of bucket."""
    assert flow_interval(None, directory_bucket=True) == 0.01
    assert flow_interval(None, directory_bucket=False) == 0.05
    assert flow_interval(0.2, directory_bucket=True) == flow_interval(0.2, directory_bucket=False) == 0.2


def test_the_head_is_read_every_tenth_of_a_second_in_a_directory_bucket_unless_configured() -> None:
    """Unset, ``head_interval`` is 0.1 s in a directory bucket (a GET there costs about 37 times less
    than a LIST, so ten reads a second cost a topic about $0.03 a day and halve the wait of a message
    after silence) and 0.3 s elsewhere (S3 Standard's GET price); a configured value is used as it is."""
    assert head_interval(None, directory_bucket=True) == 0.1
    assert head_interval(None, directory_bucket=False) == 0.3
    assert head_interval(0.5, directory_bucket=True) == head_interval(0.5, directory_bucket=False) == 0.5
