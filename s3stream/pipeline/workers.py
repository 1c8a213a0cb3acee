"""The worker pool: fetch bodies concurrently, call handlers, never two versions of one key at once.

Items arrive on a bounded queue in per-key order. A worker that takes an item whose key another worker
is busy with parks it behind that key; the busy worker runs the parked items, in order, when it is
done. So different keys run in parallel and one key's versions run one after another, oldest first.
Parked items still count against ``queue_size``: the total of queued, parked and running items is
bounded, and pollers wait when it is reached.

A handler that fails is called again under :class:`~s3stream.s3.retry.HandlerBackoff` (``handler_attempts``
spread over ``handler_retry_time``), then the message is dead-lettered. :class:`OutputClosed` is not a
failure: the item stays in flight (uncommitted), the pool starts nothing more and asks the consumer to
stop. A stop also cuts short the waits between attempts: such an item stays in flight too.

An object is read whole only when it is at most ``max_body_mb``: its listed size is checked before the
GET, its ``Content-Length`` before the body is read, and a body sent without one while it is read. A
larger one, like one S3 refuses to give (:class:`ObjectUnreadable`), is dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import structlog

from s3stream.errors import (
    BodyTooLarge,
    DeadLetterNow,
    HandlerFailed,
    NotFound,
    ObjectUnreadable,
    OutputClosed,
    RetriableError,
)
from s3stream.integrations import codecs
from s3stream.layouts import segments
from s3stream.message import Message, ms_to_datetime
from s3stream.pipeline.budget import ByteBudget
from s3stream.pipeline.delivery import (
    Left,
    Lost,
    Watch,
    handler_seconds,
    holds,
    messages,
    note_failure,
    owned,
    reason,
    replaceable,
    shard_counters,
    unread,
    version_id,
)
from s3stream.pipeline.shard import Shard, WorkItem
from s3stream.s3.retry import HandlerBackoff
from s3stream.s3.store import Store
from s3stream.service import metrics, tracing
from s3stream.service.deadletter import DeadLetters
from s3stream.service.logs import get_logger

log = get_logger("s3stream.pipeline.workers")


class WorkerPool:
    """A bounded queue of :class:`WorkItem` and the workers that drain it."""

    def __init__(self, store: Store, *, queue_size: int, handler_attempts: int,
                 handler_retry_time: float = 60.0, handler_timeout: float | None = None,
                 dead_letters: DeadLetters | None = None, on_idle: Callable[[], None] = lambda: None,
                 on_output_closed: Callable[[], None] = lambda: None, max_body_mb: int = 256,
                 max_inflight_mb: int = 1024, tracer: tracing.MessageTracer | None = None) -> None:
        self.store = store
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue(maxsize=queue_size)
        self._slots = asyncio.Semaphore(queue_size)
        self._active: dict[tuple[int, str], deque[WorkItem]] = {}
        self._pending = 0
        self._running = 0
        self._none_running = asyncio.Event()
        self._none_running.set()
        self._stopping = False
        self._stopped = asyncio.Event()  # set with _stopping: wakes the waits between attempts
        self._backoff = HandlerBackoff(attempts=handler_attempts, retry_time=handler_retry_time)
        self._watches: set[Watch] = set()
        self._handler_timeout = handler_timeout
        self._dead_letters = dead_letters
        self._on_idle = on_idle
        self._on_output_closed = on_output_closed
        self._max_body_mb = max_body_mb
        self._max_body = max_body_mb << 20
        self._bodies = ByteBudget(max_inflight_mb << 20)
        self._tracer = tracer

    @property
    def pending(self) -> int:
        """Items handed to the pool and not yet completed (queued, parked or running)."""
        return self._pending

    async def put(self, item: WorkItem) -> None:
        """Hand an item to the pool, waiting while the pool is full."""
        await self._slots.acquire()
        self._pending += 1
        self.queue.put_nowait(item)
        metrics.QUEUE_DEPTH.set(self.queue.qsize())
        metrics.IN_FLIGHT.set(self._pending)

    async def drain(self) -> None:
        """Shutdown: start nothing new; return once the items already running have completed.
        Items still queued or parked stay in flight in their cursor and are redelivered later."""
        self._stop()
        await self._none_running.wait()

    async def worker(self) -> None:
        """One worker: runs until cancelled."""
        task = asyncio.current_task()
        assert task is not None
        watch = Watch(task)
        self._watches.add(watch)
        try:
            while not self._stopping:
                item = await self.queue.get()
                metrics.QUEUE_DEPTH.set(self.queue.qsize())
                if self._stopping:
                    return
                lane = (id(item.shard), item.entry.lane or item.entry.key)
                parked = self._active.get(lane)
                if parked is not None:
                    parked.append(item)
                    continue
                parked = self._active[lane] = deque()
                try:
                    await self._run(item, watch)
                    while parked and not self._stopping:
                        await self._run(parked.popleft(), watch)
                finally:
                    del self._active[lane]
        finally:
            self._watches.discard(watch)

    async def watchdog(self) -> None:
        """Enforce ``handler_timeout``: cancel a handler call that has run past it (checked every
        tenth of the timeout, at most every second). One timer for the pool instead of one per call:
        ``asyncio.timeout`` costs more per call than a segment's message budget."""
        if self._handler_timeout is None:
            return
        interval = min(1.0, self._handler_timeout / 10)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for watch in self._watches:
                if watch.deadline < now and not watch.fired:
                    watch.fired = True
                    watch.task.cancel()

    def _stop(self) -> None:
        self._stopping = True
        self._stopped.set()

    async def _run(self, item: WorkItem, watch: Watch) -> None:
        shard = item.shard
        self._running += 1
        self._none_running.clear()
        shard.running += 1
        shard.idle.clear()
        try:
            if await owned(shard):
                await self._handle(item, watch)
            else:
                self._discard(item)
        except Lost:
            self._discard(item)
        except OutputClosed as exc:
            if not self._stopping:
                log.info("output closed: stopping; the message being written stays uncommitted",
                         error=str(exc), shard=item.shard.name, key=item.entry.key)
                self._stop()
                self._on_output_closed()
        except Left:
            pass  # stopped while waiting to retry: the item stays in flight, redelivered next run
        finally:
            self._running -= 1
            if not self._running:
                self._none_running.set()
            shard.running -= 1
            if not shard.running:
                shard.idle.set()

    async def _handle(self, item: WorkItem, watch: Watch) -> None:
        shard, entry = item.shard, item.entry
        bound = log.bind(shard=shard.name, key=entry.key, version_id=entry.version_id)
        async with self._bodies.hold(0 if entry.deleted else entry.size):
            if self._tracer is not None:
                self._tracer.fetching()
            messages = await self._read(item, bound)
            await self._deliver(shard, messages, watch, bound)
        shard.cursor.complete(entry.ident)
        self._done()

    def _discard(self, item: WorkItem) -> None:
        """An item of a shard this member no longer holds: hand it to no handler and leave it
        uncommitted (the shard's next holder delivers it)."""
        log.debug("not handed out: the shard is no longer ours", shard=item.shard.name, key=item.entry.key)
        self._done()

    def _done(self) -> None:
        self._pending -= 1
        metrics.IN_FLIGHT.set(self._pending)
        self._slots.release()
        if self._pending == 0:
            self._on_idle()

    async def _read(self, item: WorkItem, bound: structlog.typing.FilteringBoundLogger) -> list[Message]:
        """The item's messages; an object that cannot be decoded or read is dead-lettered (none)."""
        shard, entry = item.shard, item.entry
        try:
            return await self._fetch(item, bound)
        except (segments.SegmentError, codecs.DecodeError) as exc:  # nothing to retry: set it aside
            decode = exc if isinstance(exc, codecs.DecodeError) else None
            raw = unread(shard, entry, decode.body if decode else b"", decode.offset if decode else None)
            await self._dead_letter(shard, raw, f"undecodable: {exc}", 0, bound, exc,
                                    body_read=decode is not None)
        except ObjectUnreadable as exc:  # this object only: the others flow
            if self._dead_letters is None:
                raise ObjectUnreadable(
                    f"s3://{shard.bucket}/{entry.key} version {version_id(shard, entry)}: {exc}; "
                    "with dead letters off the consumer stops here", code=exc.code,
                    operation=exc.operation) from exc
            limit = f" (max_body_mb = {self._max_body_mb})" if isinstance(exc, BodyTooLarge) else ""
            await self._dead_letter(shard, unread(shard, entry), f"unreadable: {exc}{limit}", 0, bound, exc,
                                    body_read=False)
        return []

    async def _fetch(self, item: WorkItem, bound: structlog.typing.FilteringBoundLogger) -> list[Message]:
        """The message(s) of one item: a version, a deletion, a log object or a segment's lines."""
        shard, entry = item.shard, item.entry
        when = ms_to_datetime(entry.last_modified_ms)
        if entry.deleted:
            return [Message(bucket=shard.bucket, key=entry.key, version_id=entry.version_id,
                            last_modified=when, size=0, etag="", body=b"", deleted=True)]
        version = entry.version_id if shard.layout == "versions" else None
        if entry.size > self._max_body:
            raise BodyTooLarge(self._max_body, entry.size)
        while True:
            try:
                obj = await self.store.get_object(shard.bucket, entry.key, version, max_bytes=self._max_body)
                if self._tracer is not None:
                    self._tracer.fetched()
                break
            except NotFound:
                bound.warning("object vanished before it was fetched; skipping")
                return []
            except RetriableError as exc:  # the store's policy gave up; the item must not be lost
                bound.warning("fetch keeps failing; retrying", error=str(exc))
                await asyncio.sleep(self.store.retry.cap)
        if replaceable(shard, entry) and obj.etag and obj.etag != entry.etag:
            bound.debug("object overwritten since it was listed; its new content will be listed next")
            return []
        try:
            return messages(shard, entry, obj, when)
        except codecs.DecodeError as exc:
            exc.body = obj.body  # the dead letter keeps the object as stored
            raise

    async def _deliver(self, shard: Shard, messages: list[Message], watch: Watch,
                       bound: structlog.typing.FilteringBoundLogger, traced: bool = False) -> None:
        """Hand each message to the handler in order. The loop is the hot path of a segment (a
        thousand messages an object): one call, one clock read and one histogram sample each; a failure
        leaves it for :meth:`_retry`. With tracing on, each message is delivered inside its span."""
        if self._tracer is not None and not traced:
            self._tracer.decoded()
            for message in messages:
                with self._tracer.message(shard, message):
                    await self._deliver(shard, [message], watch, bound, traced=True)
            return
        handler, tenure = shard.handler, shard.tenure
        handle, observe = handler.handle, handler_seconds(handler.name)
        timeout = self._handler_timeout if self._handler_timeout is not None else float("inf")
        done = size = 0
        for message in messages:
            started = time.monotonic()
            if tenure is not None and not await holds(tenure):
                raise Lost  # the lease was lost: hand out no more of this shard
            watch.deadline = started + timeout
            failure: BaseException | None = None
            try:
                await handle(message)
            except OutputClosed:
                raise
            except asyncio.CancelledError:
                if not watch.fired:
                    raise
                failure = TimeoutError(f"handler ran over {self._handler_timeout}s")
            except Exception as exc:
                failure = exc
            finally:
                watch.deadline = float("inf")
                if watch.fired:  # the watchdog fired, whether or not the handler finished
                    watch.fired = False
                    watch.task.uncancel()
            observe.observe(time.monotonic() - started)
            if failure is None or await self._retry(shard, message, failure, bound):
                done += 1
                size += len(message.body)
        consumed, consumed_bytes = shard_counters(shard)
        consumed.inc(done)
        consumed_bytes.inc(size)

    async def _retry(self, shard: Shard, message: Message, first: BaseException,
                     bound: structlog.typing.FilteringBoundLogger) -> bool:
        """The handler failed once on ``message``: call it again under the backoff, each call under the
        timeout; dead-letter it if it keeps failing. True when a later call succeeded."""
        handler, backoff = shard.handler, self._backoff
        attempts, last = 1, first
        note_failure(handler.name, first, attempts, bound, self._with_traceback(attempts))
        failed_at = time.monotonic()
        while attempts < backoff.attempts and not isinstance(last, DeadLetterNow):
            await self._pause(backoff.wait(attempts, time.monotonic() - failed_at))
            if not await owned(shard):
                raise Lost
            attempts += 1
            metrics.RETRIES.labels(what="handler").inc()
            try:
                async with asyncio.timeout(self._handler_timeout):
                    await handler.handle(replace(message, attempt=attempts))
                return True
            except OutputClosed:
                raise
            except Exception as exc:
                last = exc
                note_failure(handler.name, exc, attempts, bound, self._with_traceback(attempts))
        error = "timed out" if isinstance(last, TimeoutError) else reason(last)
        if self._dead_letters is None:
            raise HandlerFailed(
                f"handler {handler.name!r} failed {attempts} times on "
                f"s3://{message.bucket}/{message.key} version {message.version_id}: {error}"
            ) from last
        await self._dead_letter(shard, message, error, attempts, bound, last)
        return False

    def _with_traceback(self, attempt: int) -> bool:
        """Whether the log line of a handler's failed ``attempt`` carries the traceback: the first of
        several, and the last one when no dead letter (whose log line carries it) follows."""
        last = attempt == self._backoff.attempts
        return (attempt == 1 and not last) or (last and self._dead_letters is None)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt, unless the pool stops first (then :class:`Left`)."""
        if seconds > 0 and not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._stopped.wait()
        if self._stopped.is_set():
            raise Left

    async def _dead_letter(self, shard: Shard, message: Message, error: str, attempts: int,
                           bound: structlog.typing.FilteringBoundLogger, exc: BaseException | None = None,
                           *, body_read: bool = True) -> None:
        if self._dead_letters is None:
            raise HandlerFailed(f"s3://{message.bucket}/{message.key}: {error}")
        while True:
            try:
                where = await self._dead_letters.add(shard.prefix, message, error=error, attempts=attempts,
                                                     exc=exc, body_read=body_read)
                break
            except RetriableError as write_error:  # the message must land somewhere before it is passed
                bound.warning("dead letter write keeps failing; retrying", error=str(write_error))
                await asyncio.sleep(self.store.retry.cap)
        metrics.DEAD_LETTERS.labels(**metrics.shard_labels(shard)).inc()
        tracing.dead_lettered(error)
        bound.error("dead-lettered", attempts=attempts, error=error, dead_letter=where, exc_info=exc)


