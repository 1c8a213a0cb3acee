"""Waking idle pollers when a topic's head object changes (see :mod:`s3stream.layouts.heads`).

One :class:`HeadWatcher` per consumed topic reads the head every ``head_interval`` with a conditional
GET (a ``304`` while nothing was published). When its ETag changes it rings the topic's
:class:`Bell`, and every poller of the topic's shards held here lists at once. Until a head has been
read (no s3stream producer wrote one yet), ``Bell.seen`` is False and pollers back off as they always
did; once it is True an idle poller lists on its own only every ``reconcile_interval``.

The head is a hint: a missed or late ring only delays a message to the next listing, and a ring
with nothing new costs one listing per shard.
"""

from __future__ import annotations

import asyncio
import contextlib

from s3stream.errors import NotFound, RetriableError, S3StreamError
from s3stream.layouts.heads import head_key
from s3stream.s3.store import Store
from s3stream.service.logs import get_logger

log = get_logger("s3stream.pipeline.headwatch")

MAX_HEAD_BYTES = 64 << 10  # a head is a few dozen bytes; anything bigger is not ours


class Bell:
    """The pollers of one topic's shards, to be woken together."""

    def __init__(self) -> None:
        self.seen = False  # a head was read: producers write it, so idle pollers may wait for its ring
        self._events: set[asyncio.Event] = set()

    def register(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.add(event)
        return event

    def unregister(self, event: asyncio.Event) -> None:
        self._events.discard(event)

    def ring(self) -> None:
        for event in self._events:
            event.set()


async def rest(seconds: float, wake: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less if ``wake`` is set meanwhile."""
    if wake is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()


class HeadWatcher:
    """Reads one topic's head every ``interval`` seconds and rings its bell when the head changed."""

    def __init__(self, store: Store, bucket: str, topic: str, bell: Bell, *, interval: float) -> None:
        self.store = store
        self.bucket = bucket
        self.key = head_key(topic)
        self.bell = bell
        self.interval = interval
        self.etag: str | None = None
        self.log = log.bind(bucket=bucket, head=self.key)

    async def run(self) -> None:
        """Until cancelled. A head that cannot be read (refused, say) ends the watch: the pollers go on
        listing on their own, as without a head."""
        while True:
            try:
                await self.read_once()
            except RetriableError as exc:
                self.log.warning("head read failed; will retry", error=str(exc))
            except S3StreamError as exc:
                self.log.warning("head cannot be read; idle shards are found by listing", error=str(exc))
                self.bell.seen = False
                self.bell.ring()
                return
            await asyncio.sleep(self.interval)

    async def read_once(self) -> bool:
        """One conditional read; True when the head changed (or was seen for the first time), which
        rings the bell."""
        try:
            head = await self.store.get_object_if_changed(self.bucket, self.key, self.etag,
                                                         max_bytes=MAX_HEAD_BYTES)
        except NotFound:
            return False
        if head is None:
            return False
        self.etag = head.etag
        self.bell.seen = True
        self.bell.ring()  # the first sighting too: something may have been published since the first pass
        return True
