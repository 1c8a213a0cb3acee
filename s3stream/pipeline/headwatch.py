"""Waking idle pollers when a topic's head object changes (see :mod:`s3stream.layouts.heads`).

One :class:`HeadWatcher` per consumed topic reads the head every ``head_interval`` with a conditional
GET (a ``304`` while nothing was published). When its ETag changes it rings the topic's
:class:`Bell`, and every poller of the topic's shards held here lists at once. Until a head has been
read (no s3stream producer wrote one yet), ``Bell.seen`` is False and pollers back off as they always
did, and the watcher reads the missing head less and less often (up to ``max_poll_interval``, so a
prefix nobody writes heads to costs little more than its listings); once it is True an idle poller
lists on its own only to reconcile (:mod:`s3stream.pipeline.pacing`). A head that disappears again
sends the pollers back to listing.

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

    def __init__(self, interval: float) -> None:
        self.interval = interval  # how often the head is read: pollers linger on listing up to this
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


async def rest(seconds: float, wake: asyncio.Event | None) -> bool:
    """Sleep ``seconds``, or less if ``wake`` is set meanwhile; True when ``wake`` ended it."""
    if wake is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
            return True
    return False


class HeadWatcher:
    """Reads one topic's head every ``bell.interval`` seconds and rings its bell when the head changed."""

    def __init__(self, store: Store, bucket: str, topic: str, bell: Bell, *,
                 absent_interval: float | None = None) -> None:
        self.store = store
        self.bucket = bucket
        self.key = head_key(topic)
        self.bell = bell
        interval = self.interval = bell.interval
        self.absent_interval = max(interval, absent_interval or interval)
        self.wait = interval  # doubles up to absent_interval while there is no head
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
            await asyncio.sleep(self.wait)

    async def read_once(self) -> bool:
        """One conditional read; True when the head changed (or was seen for the first time), which
        rings the bell."""
        try:
            head = await self.store.get_object_if_changed(self.bucket, self.key, self.etag,
                                                         max_bytes=MAX_HEAD_BYTES)
        except NotFound:  # no producer writes one (yet, or any more): read it less and less often
            self.wait = min(self.absent_interval, self.wait * 2)
            if self.bell.seen:  # deleted (topic delete --data, heads turned off): back to listing
                self.etag, self.bell.seen = None, False
                self.bell.ring()
            return False
        self.wait = self.interval
        if head is None:
            return False
        self.etag = head.etag
        self.bell.seen = True
        self.bell.ring()  # the first sighting too: something may have been published since the first pass
        return True
