"""The one retry policy: exponential backoff with full jitter, bounded by attempts and by time; and
the handlers' backoff, which spreads a failing message's attempts over a set time."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from s3stream.errors import RetriableError, Throttled
from s3stream.service import metrics
from s3stream.service.logs import get_logger

log = get_logger("s3stream.s3.retry")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry :class:`~s3stream.errors.RetriableError` up to ``attempts`` times within ``max_elapsed`` s.

    The n-th wait is uniform in ``[0, min(cap, base * 2**n)]`` ("full jitter"), so many clients that
    failed together do not come back together.
    """

    attempts: int = 8
    max_elapsed: float = 60.0
    base: float = 0.1
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        return random.uniform(0.0, min(self.cap, self.base * (2**attempt)))

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str = "",
                   retry_on: tuple[type[Exception], ...] = (RetriableError,)) -> T:
        """Await ``fn()``, retrying ``retry_on`` errors under this policy; the last error propagates."""
        deadline = time.monotonic() + self.max_elapsed
        attempt = 0
        while True:
            try:
                return await fn()
            except retry_on as exc:
                attempt += 1
                wait = self.delay(attempt - 1)
                if attempt >= self.attempts or time.monotonic() + wait > deadline:
                    raise
                metrics.RETRIES.labels(what=what.split(" ")[0] or "call").inc()
                log.debug("retrying", what=what, attempt=attempt, error=str(exc), wait=round(wait, 3))
                await asyncio.sleep(wait)


@dataclass(frozen=True, slots=True)
class HandlerBackoff:
    """When to call a failing handler again: ``attempts`` calls spread over ``retry_time`` seconds.

    The waits double (``retry_time`` split in parts of 1, 2, 4 ... units), each drawn from the upper
    half of its step so that messages failing together do not come back together, and the last attempt
    is made ``retry_time`` after the first failure, never sooner: a downstream that is down for less
    than that loses nothing. 5 attempts over 60 s wait about 4, 8 and 16 s, then until 60 s.
    """

    attempts: int
    retry_time: float

    @property
    def steps(self) -> list[float]:
        """The nominal wait before each retry (they add up to ``retry_time``)."""
        return [self._step(retry) for retry in range(1, self.attempts)]

    def wait(self, retry: int, elapsed: float) -> float:
        """The wait before retry number ``retry`` (1-based), ``elapsed`` s after the first failure."""
        if retry >= self.attempts - 1:
            return max(0.0, self.retry_time - elapsed)
        step = self._step(retry)
        return random.uniform(step / 2, step)

    def _step(self, retry: int) -> float:
        waits = self.attempts - 1  # retry_time * 2**(retry-1) / (2**waits - 1), without overflow
        return math.ldexp(self.retry_time, retry - 1 - waits) / -math.expm1(-waits * math.log(2))


class Throttle:
    """Adaptive pacing of one S3 partition (prefix): additive increase, multiplicative decrease.

    Unpaced until S3 answers ``SlowDown``. Then requests are spaced to a rate: the first SlowDown
    sets it to 70 % of the rate requests were sent at over the last second; each further one cuts it
    by 30 %, except for requests sent before the last cut (a burst in flight fails together and is
    answered by one cut); successes raise it by about 10 % a second (at least one request/s a
    second), so the rate settles just under what S3 grants the prefix instead of swinging between
    hammering it and idling. A rate that has grown past ``max_rate`` goes back to unpaced.
    """

    def __init__(self, max_rate: float = 20_000.0, min_rate: float = 1.0) -> None:
        self.rate: float | None = None
        self.max_rate = max_rate
        self.min_rate = min_rate
        self._next = 0.0
        self._last_cut = float("-inf")
        self._window_start = time.monotonic()
        self._window_count = 0
        self._last_window_rate = 0.0

    async def wait(self) -> None:
        """Wait for this request's slot (at once while unpaced)."""
        now = time.monotonic()
        self._count(now)
        if self.rate is None:
            return
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def observe(self, exc: BaseException | None, started: float | None = None) -> None:
        """Feed the outcome of a request sent at ``started`` (``time.monotonic()``)."""
        now = time.monotonic()
        if isinstance(exc, Throttled):
            if started is not None and started < self._last_cut:
                return  # sent before the last cut: that cut already answered it
            self.rate = max(self.min_rate, 0.7 * (self.rate or self._recent_rate(now)))
            self._last_cut = now
        elif exc is None and self.rate is not None:
            self.rate += max(0.1, 1.0 / self.rate)  # about +10 % (at least +1 request/s) a second
            if self.rate > self.max_rate:
                self.rate = None

    def _count(self, now: float) -> None:
        if now - self._window_start >= 1.0:
            self._last_window_rate = self._window_count / (now - self._window_start)
            self._window_start, self._window_count = now, 0
        self._window_count += 1

    def _recent_rate(self, now: float) -> float:
        current = self._window_count / max(now - self._window_start, 0.25)
        return max(current, self._last_window_rate, self.min_rate)
