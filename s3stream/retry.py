"""The one retry policy: exponential backoff with full jitter, bounded by attempts and by time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from s3stream.errors import RetriableError

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
                log.debug("retrying", what=what, attempt=attempt, error=str(exc), wait=round(wait, 3))
                await asyncio.sleep(wait)
