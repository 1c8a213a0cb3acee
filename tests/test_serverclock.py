"""Times taken from the server's ``Date``: pure, no server. Example tests and a Hypothesis state
machine of :class:`~s3stream.s3.serverclock.ServerClock` against a simulated server clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from s3stream.s3.serverclock import DRIFT, ServerClock, listed_after_ms

SECOND = 1000


@given(read_ms=st.integers(0, 2**41), wait_ms=st.integers(0, 60 * SECOND),
       back_ms=st.integers(0, 60 * SECOND))
def test_a_listing_is_never_read_before_the_bound(read_ms: int, wait_ms: int, back_ms: int) -> None:
    """A server that read a listing at ``read_ms``, spent ``wait_ms`` before stamping ``Date`` (whole
    seconds, rounded down) and ``back_ms`` sending it back: the bound from the answer is never after
    the reading, whatever the wait, and never within a second of ``Date``."""
    stamped = read_ms + wait_ms
    date_ms = stamped - stamped % SECOND
    took = (wait_ms + back_ms) / 1000  # the request's own way out only makes it longer
    bound = listed_after_ms(date_ms, took)
    assert bound <= read_ms
    assert bound <= date_ms - SECOND


def test_a_prompt_answer_is_bounded_a_second_before_its_date() -> None:
    """An answer that came back in 20 ms keeps the one-second step back from its ``Date``; one that
    took 4 s steps back the whole 4 s."""
    assert listed_after_ms(1_000_000, 0.02) == 999_000
    assert listed_after_ms(1_000_000, 4.0) == 995_999


def answer(clock: ServerClock, server_ms: float, sent: float, rtt: float, stamped: float = 0.5) -> None:
    """The clock reads an answer whose request left at ``sent`` and took ``rtt`` seconds; the server
    stamped ``Date`` (whole seconds, rounded down) ``stamped`` of the way through, reading
    ``server_ms`` then."""
    clock.observe(int(server_ms // SECOND) * SECOND, received=sent + rtt, sent=sent)


def test_one_answer_puts_the_clock_up_to_a_second_and_a_round_trip_ahead() -> None:
    """After one answer the clock is never behind the server and at most a second plus the round trip
    ahead; it moves on with the monotonic clock."""
    clock = ServerClock()
    offset = 1_780_000_000_000.0  # the server's epoch ms minus this host's monotonic ms
    answer(clock, offset + 100_020.5, sent=100.0, rtt=0.04)
    true = offset + 100_040
    assert true <= clock.now_ms(at=100.04) <= true + SECOND + 40
    assert clock.uncertainty_ms(at=100.04) <= SECOND + 40 + 1
    assert clock.now_ms(at=160.04) - clock.now_ms(at=100.04) == pytest.approx(60_000, abs=30)


def test_answers_at_different_fractions_of_a_second_narrow_it_to_about_a_round_trip() -> None:
    """A hundred answers with 10 ms round trips, asked at different fractions of a second, leave the
    clock within 40 ms of the server's (from a second after the first)."""
    clock = ServerClock()
    offset = 1_780_000_000_000.0
    for k in range(100):
        sent = 100.0 + k * 1.013
        answer(clock, offset + (sent + 0.005) * 1000, sent=sent, rtt=0.01)
    at = 100.0 + 99 * 1.013 + 0.01
    assert clock.uncertainty_ms(at=at) <= 40
    assert offset + at * 1000 <= clock.now_ms(at=at) <= offset + at * 1000 + 40


def test_a_stepped_server_clock_is_followed_within_a_few_answers() -> None:
    """When the server's clock jumps half a second ahead, the answers that no longer fit the narrowed
    interval start it again, so the clock is not behind the server for long."""
    clock = ServerClock()
    offset = 1_780_000_000_000.0
    sent = 100.0
    for k in range(60):
        sent = 100.0 + k * 1.37
        answer(clock, offset + (sent + 0.005) * 1000, sent=sent, rtt=0.01)
    offset += 500
    behind = 0
    for k in range(60, 80):
        sent = 100.0 + k * 1.37
        answer(clock, offset + (sent + 0.005) * 1000, sent=sent, rtt=0.01)
        behind += clock.now_ms(at=sent + 0.01) < offset + (sent + 0.01) * 1000
    assert behind <= 5
    assert clock.now_ms(at=sent + 0.01) >= offset + (sent + 0.01) * 1000


class ServerClockModel(RuleBasedStateMachine):
    """A server whose clock runs from this host's monotonic clock by an offset and drifts (less than
    ``DRIFT``), answering requests of any round trip, out of order too, stamped at any instant in
    between; against it, the clock must never read behind the server, never further ahead than its
    own uncertainty, and that uncertainty never exceeds the latest answer's second and round trip
    plus the drift since."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ServerClock()
        self.t = 1000.0  # this host's monotonic seconds
        self.offset = 0.0
        self.rate = 0.0
        self.last: tuple[float, float] | None = None  # the latest answer's arrival and round trip

    @initialize(offset=st.floats(1.5e12, 2.5e12), rate=st.floats(-DRIFT * 0.9, DRIFT * 0.9))
    def a_server(self, offset: float, rate: float) -> None:
        self.offset, self.rate = offset, rate

    def server_ms(self, t: float) -> float:
        return self.offset + t * 1000 * (1 + self.rate)

    @rule(wait=st.floats(0, 700), rtt=st.floats(0, 3), stamped=st.floats(0, 1), early=st.floats(0, 2))
    def an_answer(self, wait: float, rtt: float, stamped: float, early: float) -> None:
        """An answer arrives ``wait`` s after the last one; its request left ``rtt`` before, possibly
        before an answer already read (``early`` moves the arrival back, as concurrent requests do)."""
        self.t += wait
        received = self.t - min(early, wait)
        sent = received - rtt
        date = int(self.server_ms(sent + stamped * rtt) // SECOND) * SECOND
        self.clock.observe(date, received=received, sent=sent)
        self.last = (received, rtt)

    @rule(wait=st.floats(0, 3600))
    def time_passes(self, wait: float) -> None:
        self.t += wait

    @invariant()
    def never_behind_and_never_further_ahead_than_it_says(self) -> None:
        if self.last is None:
            return
        true = self.server_ms(self.t)
        now = self.clock.now_ms(at=self.t)
        uncertainty = self.clock.uncertainty_ms(at=self.t)
        assert true - 1 <= now <= true + uncertainty + 1
        received, rtt = self.last
        assert uncertainty <= SECOND + rtt * 1000 + 2 * DRIFT * 1000 * abs(self.t - received) + 1


TestServerClockModel = ServerClockModel.TestCase
