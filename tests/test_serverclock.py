"""Times taken from the server's ``Date``: pure, no server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from s3stream.s3.serverclock import listed_after_ms

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
