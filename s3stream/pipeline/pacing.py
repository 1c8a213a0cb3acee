"""When a shard's poller lists next: a pure state machine (the caller passes the time).

* A pass that filled a page, or stopped short of the present (a log-layout shard lists at most 60
  directories a pass), is followed at once: a backlog is read at full speed.
* While messages flow, passes *start* ``poll_interval`` apart.
* An idle shard backs off, doubling, up to ``max_poll_interval``; so does a failed pass.
* Once the topic's head object is known (s3stream producers rewrite it after publishing), a shard
  whose pass found nothing right after passes that found messages first *lingers*: it goes on
  listing on the doubling back-off while that grows and, times the pass's listing requests, is no
  longer than the head's read interval or, if that is shorter, the producers' default ``head_gap``
  (a stream of a few messages a second is found within a poll interval or two, not a head read and a
  head write later, the head being rewritten at most every ``head_gap`` while a stream flows; a pass
  of many pages does not linger, since the head is the cheaper wait), then waits for the head to
  change instead, and lists on its own only to *reconcile*: a pass of ``pages`` listing requests
  waits ``pages`` reconcile intervals, so a quiet shard with a long history costs about one listing
  request per interval.
* A reconciling pass (one the head did not call for) that finds messages shows writers that do not
  touch the head (``aws s3 cp``, or head writes that failed): that shard backs off as without a head
  for ``UNANNOUNCED_HOLD`` reconcile intervals after, so those writers wait minutes at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

UNANNOUNCED_HOLD = 10  # reconcile intervals of listing back-off after a pass found unannounced writes
POLL_INTERVAL = 0.05  # seconds between passes while messages flow, unless configured
DIRECTORY_POLL_INTERVAL = 0.01  # in a directory bucket (S3 Express), where a request takes ~5 ms
LINGER_FLOOR = 0.25  # producers rewrite the head at most every head_gap (0.25 s by default) while a
# stream flows, so a shard lingers on listing up to at least that, however often it reads the head
HEAD_INTERVAL = 0.3  # seconds between reads of a topic's head object, unless configured (S3 Standard)
DIRECTORY_HEAD_INTERVAL = 0.1  # in a directory bucket, where a GET costs about 37 times less than a LIST


def flow_interval(configured: float | None, *, directory_bucket: bool) -> float:
    """The ``poll_interval`` of a shard: as configured, else by the kind of bucket it lives in."""
    if configured is not None:
        return configured
    return DIRECTORY_POLL_INTERVAL if directory_bucket else POLL_INTERVAL


def head_interval(configured: float | None, *, directory_bucket: bool) -> float:
    """How often a topic's head object is read: as configured, else by the kind of bucket."""
    if configured is not None:
        return configured
    return DIRECTORY_HEAD_INTERVAL if directory_bucket else HEAD_INTERVAL


class Wait(Enum):
    """What ends the wait before the next pass."""

    NONE = "none"  # list again at once
    FLOW = "flow"  # poll_interval after the last pass started (the head may end it early)
    BACKOFF = "backoff"  # the back-off delay (the head may end it early)
    RECONCILE = "reconcile"  # the head changing, or else the reconcile delay


@dataclass(frozen=True, slots=True)
class Next:
    """The wait before the next pass: its kind, its length in seconds from the decision, and whether
    the pass just ended found writes no head announced (a hold of listing back-off began)."""

    wait: Wait
    seconds: float
    unannounced: bool = False


@dataclass
class Pacer:
    """One shard's listing cadence. ``after_pass``/``after_failure`` decide the next wait; ``rung()``
    says the head ended a wait early (the next pass was called for by a producer)."""

    poll_interval: float
    max_poll_interval: float
    reconcile_interval: float
    head_interval: float = 0.0  # how often the head is read: a shard lingers up to this or LINGER_FLOOR
    delay: float = 0.0
    listing_until: float = float("-inf")  # until then idle waits back off, head or not
    reconciling: bool = False  # the wait before the pass now running was a reconcile wait, not rung
    lingering: bool = False  # messages were found since the shard last waited for the head

    def __post_init__(self) -> None:
        self.delay = self.poll_interval

    def rung(self) -> None:
        self.reconciling = False

    def after_failure(self) -> Next:
        self.reconciling = False
        self.delay = min(self.max_poll_interval, self.delay * 2)
        return Next(Wait.BACKOFF, self.delay)

    def after_pass(self, *, found: int, full: bool, pages: int, head_seen: bool, now: float,
                   took: float = 0.0) -> Next:
        """A pass of ``pages`` listing requests, which took ``took`` seconds, handed out ``found``
        versions. ``full``: there is more to list at once (a whole page of versions was found, or the
        pass stopped short of the present)."""
        unannounced = bool(found) and self.reconciling
        if unannounced:
            self.listing_until = now + UNANNOUNCED_HOLD * self.reconcile_interval
        self.reconciling = False
        if found:
            self.delay, self.lingering = self.poll_interval, True
        if full:
            return Next(Wait.NONE, 0.0, unannounced)
        if found:
            return Next(Wait.FLOW, max(0.0, self.poll_interval - took), unannounced)
        longer = min(self.max_poll_interval, self.delay * 2)
        horizon = max(self.head_interval, LINGER_FLOOR)
        lingers = self.lingering and self.delay < longer and longer * max(1, pages) <= horizon
        if head_seen and now >= self.listing_until and not lingers:
            self.reconciling, self.lingering = True, False
            return Next(Wait.RECONCILE, self.reconcile_interval * max(1, pages))
        self.delay = longer
        return Next(Wait.BACKOFF, self.delay)
