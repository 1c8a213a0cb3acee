"""The server's clock, as its answers tell it: log-layout names, starting points and sealing use it.

Consumers and producers may run on hosts whose clocks are off by minutes or hours; the store's
``Date`` header is the one clock they share. A :class:`ServerClock` keeps the latest reading and
moves it on with the monotonic clock, so neither a skewed host clock nor an NTP step changes it.
"""

from __future__ import annotations

import time


def listed_after_ms(date_ms: int, took: float) -> int:
    """A time (server clock, epoch ms) before the server read a listing answered with ``Date``
    ``date_ms``, ``took`` seconds after it was asked for.

    The server read the listing after the request left, and stamped ``Date`` (whole seconds, rounded
    down) before the answer arrived; so it read it no earlier than ``Date`` minus the round trip. A
    server slow to send what it read (an overloaded one, or a slow link) stamps ``Date`` seconds after
    the reading. The bound is never less than a second before ``Date``."""
    return date_ms - max(1000, int(took * 1000) + 1)


class ServerClock:
    """The server's time in epoch milliseconds, from the ``Date`` of its latest answer."""

    def __init__(self) -> None:
        self._date_ms: int | None = None
        self._at = 0.0

    @property
    def known(self) -> bool:
        """True once an answer's ``Date`` was read."""
        return self._date_ms is not None

    def age(self) -> float:
        """Seconds since the reading (infinite before the first)."""
        return float("inf") if self._date_ms is None else time.monotonic() - self._at

    def observe(self, date_ms: int, received: float | None = None) -> None:
        """Read an answer's ``Date`` (``date_ms``) received at ``received`` (``time.monotonic()``).

        ``Date`` has whole seconds and was written before the answer travelled back, so the server's
        time on receipt lies between ``date_ms`` and one second plus a round trip later. The estimate
        takes ``date_ms + 1 s``: never behind the server by more than a round trip (a name a little
        ahead only waits a little longer to be sealed), at most one second ahead."""
        self._date_ms = date_ms + 1000
        self._at = time.monotonic() if received is None else received

    def assume_local(self) -> None:
        """No answer to read (a listing refused): use this host's clock."""
        self._date_ms = int(time.time() * 1000)
        self._at = time.monotonic()

    def now_ms(self) -> int:
        """The server's time now; this host's clock until a ``Date`` was read."""
        if self._date_ms is None:
            return int(time.time() * 1000)
        return self._date_ms + int((time.monotonic() - self._at) * 1000)
