"""A budget of bytes held at once: what bounds the memory of bodies being fetched and handled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from s3stream.service import metrics


class ByteBudget:
    """``total`` bytes shared by every worker. A fetch holds its object's size (at most ``total``: a
    larger object waits until it can hold the whole budget) from before the GET until its handling
    is done, so the bodies in memory never add up to more than ``total`` plus one object over it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._room = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most ``total``) for the body of the ``async with``."""
        size = max(0, min(size, self.total))
        while self.free < size:
            self._room.clear()
            await self._room.wait()
        self.free -= size
        metrics.BODY_BYTES.set(self.total - self.free)
        try:
            yield
        finally:
            self.free += size
            metrics.BODY_BYTES.set(self.total - self.free)
            self._room.set()
