"""The one retry policy: exponential backoff with full jitter, bounded by attempts and by time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from s3stream import metrics
from s3stream.errors import RetriableError, Throttled

log = structlog.get_logger("s3stream.retry")
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


class Throttle:
    """Adaptive pacing shared by every S3 call of one client: slows down when S3 says SlowDown.

    Each ``Throttled`` answer doubles a pause taken before every request (from 10 ms up to
    ``max_pause``); each success shrinks it by 10 %. So pollers and producers back off together
    while S3 scales a prefix, instead of hammering it, and return to full speed once it has.
    """

    def __init__(self, max_pause: float = 2.0) -> None:
        self.pause = 0.0
        self.max_pause = max_pause

    async def wait(self) -> None:
        if self.pause > 0.001:
            await asyncio.sleep(self.pause)

    def observe(self, exc: BaseException | None) -> None:
        if isinstance(exc, Throttled):
            self.pause = min(self.max_pause, max(0.01, self.pause * 2))
        elif exc is None and self.pause:
            self.pause = self.pause * 0.9 if self.pause > 0.001 else 0.0
