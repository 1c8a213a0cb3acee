"""The ``notifications`` discovery source: S3 Event Notifications from SQS, reconciled with listings.

A notification is a hint, a listing is the truth. For each object named by an event, the receiver
lists that one key's versions (``ListObjectVersions`` with the key as prefix, stopping at the first
other key) and hands out the versions the shard's cursor has not seen, oldest first, exactly as a
poller would. So events need no version id or sequencer (moto sends neither), a duplicated event
finds nothing new, a delete marker arrives as a deletion message even when no event announced it,
and one key's versions keep their order.

Every ``reconcile_interval`` a :class:`ReconcilePoller`, an ordinary versions-layout poller over the
source's prefix, lists everything and hands out what notifications missed (lost or late events,
objects written before the notification configuration). Both paths share one
:class:`NotifyCursor` per shard: a version handed out by either is in flight or done for the other,
checked immediately before it is started, so it is delivered once; the checkpoint is an ordinary
versions checkpoint. They also share one :class:`HandOut` per shard, through which the versions they
start reach the worker pool in the order they were started, whichever path is waiting for room in the
pool: one key's versions keep their order even when both paths found some of them.

An SQS message is held while its objects are handled: a heartbeat extends the visibility timeout of
every held message every third of the timeout, and the message is deleted only when every version
its events led to (including versions the other path had already started) has been handled or
dead-lettered. Its event identities then go into a bounded
:class:`~s3stream.integrations.s3events.RecentSet`, so
a later duplicate is deleted without a listing. At shutdown receiving stops; held messages are not
deleted and reappear when their visibility runs out (their versions are then found done).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import Counter

from s3stream.config import ConsumerSettings, NotificationSettings, Settings, SourceSettings
from s3stream.errors import AccessDenied, PermanentError, RetriableError, S3StreamError
from s3stream.integrations.s3events import NotAnS3Event, ObjectEvent, RecentSet, parse_message
from s3stream.layouts.cursor import Checkpoint, Ident, VersionCursor
from s3stream.message import Entry
from s3stream.pipeline.poller import Poller, list_page
from s3stream.pipeline.shard import Shard, WorkItem
from s3stream.pipeline.workers import WorkerPool
from s3stream.s3.sqs import InMessage, Queue, QueueNotFound, open_sqs
from s3stream.s3.store import Store
from s3stream.s3.versionorder import ListingOrder, oldest_first
from s3stream.service.logs import get_logger
from s3stream.service.metrics import SHARD_LABELS, shard_labels

log = get_logger("s3stream.integrations.notifications")

LISTED = Counter("s3stream_notifications_listed_total", "Versions handed out by the reconciling listing "
                 "rather than by a notification (a steady rate means notifications are lost).", SHARD_LABELS)
NOTIFIED = Counter("s3stream_notifications_delivered_total", "Versions handed out because of a notification.",
                   SHARD_LABELS)
EXTENDED = Counter("s3stream_notifications_visibility_extended_total", "SQS visibility extensions sent.")


class NotifyCursor(VersionCursor):
    """A :class:`VersionCursor` that can tell a waiter when an in-flight version completes."""

    def __init__(self, checkpoint: Checkpoint | None = None) -> None:
        super().__init__(checkpoint)
        self._waiters: dict[Ident, asyncio.Event] = {}

    def waiter(self, ident: Ident) -> asyncio.Event | None:
        """An event set when ``ident`` completes, or None when it is not in flight."""
        if ident not in self._inflight:
            return None
        event = self._waiters.get(ident)
        if event is None:
            event = self._waiters[ident] = asyncio.Event()
        return event

    def complete(self, ident: Ident) -> None:
        super().complete(ident)
        event = self._waiters.pop(ident, None)
        if event is not None:
            event.set()


def claim(cursor: VersionCursor, entries: list[Entry], *, skip: bool, deletes: bool,
          order: ListingOrder | None = None) -> list[Entry]:
    """Start (or skip) the entries still new, oldest first (``entries`` in listing order, put in
    delivery order by ``order``, what the store's server was seen to do); returns the started ones.
    No await may come between listing a version and claiming it here: that is what keeps the two
    paths apart."""
    started = []
    for entry in oldest_first(entries, order):
        if not cursor.is_new(entry):
            continue
        if skip or (entry.deleted and not deletes):
            cursor.skip(entry)
        else:
            cursor.start(entry)
            started.append(entry)
    return started


class HandOut:
    """One shard's way into the worker pool, shared by the receiver and the reconciling poller.

    A path starts the versions it found in the cursor at once (:meth:`claim`, no await) and appends
    them here; :meth:`flush` then puts everything appended into the pool, in order, one path at a
    time. A path waiting for room in a full pool therefore holds its place: versions the other path
    starts meanwhile (a key's later versions) queue behind the ones already started, never before.
    """

    def __init__(self, shard: Shard, cursor: NotifyCursor, pool: WorkerPool, order: ListingOrder) -> None:
        self.shard = shard
        self.cursor = cursor
        self.pool = pool
        self.order = order
        self._started: deque[Entry] = deque()  # started in the cursor, not yet in the pool
        self._putting = asyncio.Lock()

    def claim(self, entries: list[Entry], *, skip: bool, deletes: bool) -> list[Entry]:
        """Start the entries still new (see :func:`claim`) and queue them for the pool."""
        started = claim(self.cursor, entries, skip=skip, deletes=deletes, order=self.order)
        self._started.extend(started)
        return started

    async def flush(self) -> None:
        """Put every started version into the pool in the order started; returns once all are in.
        An entry leaves the queue only once the pool took it, so a cancelled flush loses nothing
        that a later one would not put."""
        async with self._putting:
            started = self._started
            while started:
                await self.pool.put(WorkItem(self.shard, started[0]))
                started.popleft()


class ReconcilePoller(Poller):
    """The listing side: a versions poller that passes every ``reconcile_interval`` seconds and
    re-checks each version just before handing it out (the notification path may have taken it)."""

    def __init__(self, handout: HandOut, store: Store, settings: ConsumerSettings,
                 on_pass: Callable[[], None], opts: NotificationSettings) -> None:
        every = opts.reconcile_interval
        paced = settings.model_copy(update={"poll_interval": every, "max_poll_interval": every})
        super().__init__(handout.shard, handout.cursor, store, handout.pool, paced, on_pass)
        self.handout = handout
        self.deletes = opts.deletes
        self._listed = LISTED.labels(**shard_labels(handout.shard))

    async def _hand_out(self, held: list[Entry], skip: bool) -> int:
        started = self.handout.claim(held, skip=skip, deletes=self.deletes)
        await self.handout.flush()
        if started:
            self._listed.inc(len(started))
            self.log.debug("listing found versions no notification announced", key=started[0].key,
                           versions=len(started))
        return len(held)


async def key_entries(store: Store, bucket: str, key: str, *, objects: bool = False) -> list[Entry]:
    """Every version and delete marker of exactly ``key``. Keys list ascending and ``key`` sorts
    before every other key it is a prefix of, so the listing stops at the first other key."""
    found: list[Entry] = []
    key_marker: str | None = None
    version_marker: str | None = None
    while True:
        page = await list_page(store, bucket, key, objects=objects, key_marker=key_marker,
                               version_marker=version_marker, max_keys=100)
        mine = [e for e in page.entries if e.key == key]
        found += mine
        if not page.truncated or len(mine) < len(page.entries):
            return found
        key_marker, version_marker = page.next_key_marker, page.next_version_id_marker


class Receiver:
    """Receives one queue's notifications for the shards of every source reading that queue."""

    def __init__(self, queue_url: str, targets: list[tuple[HandOut, NotificationSettings]], store: Store,
                 settings: Settings) -> None:
        self.queue_url = queue_url
        self.targets = sorted(targets, key=lambda t: len(t[0].shard.prefix), reverse=True)  # longest first
        self.store = store
        self.settings = settings
        options = [opts for _, opts in targets]
        self.visibility = max(o.visibility_timeout for o in options)
        self.wait_seconds = min(o.wait_seconds for o in options)
        self.max_in_flight = max(o.max_in_flight for o in options)
        self.seen = RecentSet()
        self.held: dict[str, InMessage] = {}  # receipt handle → message being handled
        self._room = asyncio.Event()
        self.log = log.bind(queue=queue_url)

    async def run(self) -> None:
        """Receive and handle until cancelled (at shutdown: held messages stay in the queue)."""
        try:
            async with open_sqs(self.settings.s3) as queue, asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeat(queue))
                await self._receive(queue, tg)
        except BaseExceptionGroup as group:  # fail like a poller: with the error itself
            raise _first(group) from None

    async def _receive(self, queue: Queue, tg: asyncio.TaskGroup) -> None:
        delay = 0.1
        while True:
            room = self.max_in_flight - len(self.held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batch = await queue.receive(
                    self.queue_url, max_messages=min(10, room), wait_seconds=self.wait_seconds,
                    visibility_timeout=self.visibility)
            except RetriableError as exc:
                self.log.warning("receiving notifications failed; will retry", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(self.settings.consumer.max_poll_interval, delay * 2)
                continue
            delay = 0.1
            now = time.monotonic()
            for handout, _ in self.targets:
                handout.shard.last_poll = now
            for message in batch:
                self.held[message.receipt_handle] = message
                tg.create_task(self._process(queue, message))

    async def _heartbeat(self, queue: Queue) -> None:
        """Every third of the visibility timeout, extend every held message by the timeout."""
        while True:
            await asyncio.sleep(self.visibility / 3)
            held = list(self.held.values())
            results = await asyncio.gather(*(self._extend(queue, m) for m in held), return_exceptions=True)
            for message, result in zip(held, results, strict=True):
                if isinstance(result, S3StreamError) and message.receipt_handle in self.held:
                    self.log.warning("could not extend a notification's visibility; it may be received "
                                     "again (its versions will be found done)", message_id=message.message_id,
                                     error=str(result))
                elif isinstance(result, BaseException) and not isinstance(result, S3StreamError):
                    raise result

    async def _extend(self, queue: Queue, message: InMessage) -> None:
        if message.receipt_handle in self.held:
            await queue.change_visibility(self.queue_url, message.receipt_handle, self.visibility)
            EXTENDED.inc()

    async def _process(self, queue: Queue, message: InMessage) -> None:
        """Handle one SQS message: its objects first, then delete it. A message that is not an S3
        event is left alone (the queue's redrive policy moves it aside)."""
        bound = self.log.bind(message_id=message.message_id)
        try:
            parsed = parse_message(message.body)
            if parsed.test:
                bound.info("s3:TestEvent received and deleted")
            waits: list[asyncio.Event] = []
            for event in _unique([e for e in parsed.events if e.ident not in self.seen]):
                waits += await self._hand_out(event)
            for waiter in waits:
                await waiter.wait()
            for event in parsed.events:
                self.seen.add(event.ident)
            await self._delete(queue, message)
        except NotAnS3Event as exc:
            bound.warning("not an S3 event notification; left in the queue", error=str(exc))
        except RetriableError as exc:
            bound.warning("notification not handled yet; it will be received again", error=str(exc))
        finally:
            self.held.pop(message.receipt_handle, None)
            self._room.set()

    async def _delete(self, queue: Queue, message: InMessage) -> None:
        """Delete a handled message; if SQS refuses (its receipt handle expired), it comes back and
        its versions are found done then."""
        try:
            await queue.delete(self.queue_url, message.receipt_handle)
        except PermanentError as exc:
            if isinstance(exc, AccessDenied | QueueNotFound):
                raise
            self.log.warning("could not delete a handled notification; it will be received again",
                             message_id=message.message_id, error=str(exc))

    async def _hand_out(self, event: ObjectEvent) -> list[asyncio.Event]:
        """List the event's key, hand out its new versions; the events to wait on before deleting."""
        target = self._target(event.bucket, event.key)
        if target is None:
            return []
        handout, opts = target
        shard, cursor = handout.shard, handout.cursor
        entries = await key_entries(self.store, shard.bucket, event.key, objects=shard.layout == "objects")
        started = handout.claim(entries, skip=False, deletes=opts.deletes)
        waits = [w for e in entries if (w := cursor.waiter(e.ident)) is not None]
        await handout.flush()
        if started:
            NOTIFIED.labels(**shard_labels(shard)).inc(len(started))
        return waits

    def _target(self, bucket: str, key: str) -> tuple[HandOut, NotificationSettings] | None:
        for handout, opts in self.targets:
            shard = handout.shard
            if shard.bucket == bucket and key.startswith(shard.prefix) and shard.wants(key):
                return handout, opts
        return None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    inner = group.exceptions[0]
    return _first(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _unique(events: list[ObjectEvent]) -> list[ObjectEvent]:
    """One event per (bucket, key): a key's listing covers all of its events in the message."""
    seen: dict[tuple[str, str], ObjectEvent] = {}
    for event in events:
        seen.setdefault((event.bucket, event.key), event)
    return list(seen.values())


def notification_tasks(notified: list[tuple[SourceSettings, list[Shard]]], store: Store, pool: WorkerPool,
                       settings: Settings, on_pass: Callable[[], None]) -> list[Coroutine[Any, Any, None]]:
    """The coroutines to run for notification sources: a reconciling poller per shard and a receiver
    per queue (sources that share a queue share its receiver)."""
    runs: list[Coroutine[Any, Any, None]] = []
    by_queue: dict[str, list[tuple[HandOut, NotificationSettings]]] = {}
    for src, shards in notified:
        opts = src.notifications
        assert opts is not None
        for shard in shards:
            assert isinstance(shard.cursor, NotifyCursor)
            handout = HandOut(shard, shard.cursor, pool, store.listing)
            runs.append(ReconcilePoller(handout, store, settings.consumer, on_pass, opts).run())
            by_queue.setdefault(opts.queue_url, []).append((handout, opts))
    runs += [Receiver(url, targets, store, settings).run() for url, targets in by_queue.items()]
    return runs
