"""The server's clock, as its answers tell it: log-layout names, starting points and sealing use it.

Consumers and producers may run on hosts whose clocks are off by minutes or hours; the store's
``Date`` header is the one clock they share. A :class:`ServerClock` narrows the server's time down
from the answers it reads and moves it on with the monotonic clock, so neither a skewed host clock
nor an NTP step changes it.
"""

from __future__ import annotations

import math
import time

SECOND_MS = 1000  # ``Date`` has whole seconds
DRIFT = 2e-4  # how fast this host's monotonic clock and the server's may drift apart (200 ppm)


def listed_after_ms(date_ms: int, took: float) -> int:
    """A time (server clock, epoch ms) before the server read a listing answered with ``Date``
    ``date_ms``, ``took`` seconds after it was asked for.

    The server read the listing after the request left, and stamped ``Date`` (whole seconds, rounded
    down) before the answer arrived; so it read it no earlier than ``Date`` minus the round trip. A
    server slow to send what it read (an overloaded one, or a slow link) stamps ``Date`` seconds after
    the reading. The bound is never less than a second before ``Date``."""
    return date_ms - max(1000, int(took * 1000) + 1)


class ServerClock:
    """The server's time in epoch milliseconds, from the ``Date`` of its answers.

    Each answer bounds the server's clock: ``Date`` (whole seconds, rounded down) was stamped between
    the request leaving and the answer arriving, so the offset from this host's monotonic clock lies
    between ``Date`` minus the arrival and ``Date`` plus a second minus the departure. The clock keeps
    the intersection of those intervals, widened as time passes by how far two clocks may drift apart
    (``DRIFT``), so answers stamped at different fractions of a second narrow it from a second to
    about a round trip. It reads the upper end: never behind the server, ahead by at most the
    interval's width (a second and a round trip after one answer). An answer outside the interval
    (the server's clock was stepped) starts it again from that answer."""

    def __init__(self) -> None:
        self._lo = 0.0  # bounds on the server's epoch ms minus this host's monotonic ms, at ``_at``
        self._hi = 0.0
        self._at: float | None = None  # monotonic seconds of the bounds; None before the first answer
        self._observed = 0.0

    @property
    def known(self) -> bool:
        """True once an answer's ``Date`` was read."""
        return self._at is not None

    def age(self) -> float:
        """Seconds since the latest reading (infinite before the first)."""
        return float("inf") if self._at is None else time.monotonic() - self._observed

    def observe(self, date_ms: int, *, sent: float, received: float) -> None:
        """Read an answer's ``Date`` (``date_ms``) that was asked for at ``sent`` and arrived at
        ``received`` (both ``time.monotonic()``)."""
        sent = min(sent, received)
        lo, hi = date_ms - received * 1000, date_ms + SECOND_MS - sent * 1000
        if self._at is not None:
            old_lo, old_hi = self._bounds(received)
            if max(lo, old_lo) <= min(hi, old_hi):
                lo, hi = max(lo, old_lo), min(hi, old_hi)
        self._lo, self._hi, self._at = lo, hi, received
        self._observed = max(self._observed, received)

    def assume_local(self) -> None:
        """No answer to read (a listing refused): use this host's clock."""
        offset = time.time() * 1000 - time.monotonic() * 1000
        self._lo = self._hi = offset
        self._at = self._observed = time.monotonic()

    def uncertainty_ms(self, at: float | None = None) -> float:
        """How far ahead of the server :meth:`now_ms` may be (infinite before the first reading)."""
        if self._at is None:
            return float("inf")
        lo, hi = self._bounds(time.monotonic() if at is None else at)
        return hi - lo

    def now_ms(self, at: float | None = None) -> int:
        """The server's time at ``at`` (``time.monotonic()``, default now), never behind it; this host's
        clock until a ``Date`` was read."""
        if self._at is None:
            return int(time.time() * 1000)
        at = time.monotonic() if at is None else at
        return math.ceil(at * 1000 + self._bounds(at)[1])

    def _bounds(self, at: float) -> tuple[float, float]:
        drift = DRIFT * abs(at - self._at) * 1000 if self._at is not None else 0.0
        return self._lo - drift, self._hi + drift
