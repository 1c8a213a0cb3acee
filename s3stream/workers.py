"""The worker pool: fetch bodies concurrently, call handlers, never two versions of one key at once.

Items arrive on a bounded queue in per-key order. A worker that takes an item whose key another worker
is busy with parks it behind that key; the busy worker runs the parked items, in order, when it is
done. So different keys run in parallel and one key's versions run one after another, oldest first.
Parked items still count against ``queue_size``: the total of queued, parked and running items is
bounded, and pollers wait when it is reached.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote

import structlog

from s3stream import metrics, segments
from s3stream.deadletter import DeadLetters
from s3stream.errors import HandlerFailed, NotFound, RetriableError
from s3stream.message import Message, ms_to_datetime
from s3stream.retry import RetryPolicy
from s3stream.shard import Shard, WorkItem
from s3stream.store import Store
from s3stream.topics import KEY_METADATA, parse_log_key

log = structlog.get_logger("s3stream.workers")


class WorkerPool:
    """A bounded queue of :class:`WorkItem` and the workers that drain it."""

    def __init__(self, store: Store, *, queue_size: int, handler_attempts: int,
                 handler_timeout: float | None = None, dead_letters: DeadLetters | None = None,
                 on_idle: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue(maxsize=queue_size)
        self._slots = asyncio.Semaphore(queue_size)
        self._active: dict[tuple[int, str], deque[WorkItem]] = {}
        self._pending = 0
        self._running = 0
        self._none_running = asyncio.Event()
        self._none_running.set()
        self._stopping = False
        self._handler_retry = RetryPolicy(attempts=handler_attempts, max_elapsed=float("inf"))
        self._handler_timeout = handler_timeout
        self._dead_letters = dead_letters
        self._on_idle = on_idle

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
        self._stopping = True
        await self._none_running.wait()

    async def worker(self) -> None:
        """One worker: runs until cancelled."""
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
                await self._run(item)
                while parked and not self._stopping:
                    await self._run(parked.popleft())
            finally:
                del self._active[lane]

    async def _run(self, item: WorkItem) -> None:
        self._running += 1
        self._none_running.clear()
        try:
            await self._handle(item)
        finally:
            self._running -= 1
            if not self._running:
                self._none_running.set()

    async def _handle(self, item: WorkItem) -> None:
        shard, entry = item.shard, item.entry
        bound = log.bind(shard=shard.name, key=entry.key, version_id=entry.version_id)
        try:
            messages = await self._fetch(item, bound)
        except segments.SegmentError as exc:  # nothing to retry: set it aside with the reason
            raw = Message(bucket=shard.bucket, key=entry.key, version_id=entry.version_id,
                          last_modified=ms_to_datetime(entry.last_modified_ms), size=entry.size,
                          etag=entry.etag, body=b"")
            await self._dead_letter(shard, raw, f"undecodable: {exc}", 0, bound)
            messages = []
        for message in messages:
            await self._dispatch(shard, message, bound)
        shard.cursor.complete(entry.ident)
        self._pending -= 1
        metrics.IN_FLIGHT.set(self._pending)
        self._slots.release()
        if self._pending == 0:
            self._on_idle()

    async def _fetch(self, item: WorkItem, bound: structlog.typing.FilteringBoundLogger) -> list[Message]:
        """The message(s) of one item: a version, a deletion, a log object or a segment's lines."""
        shard, entry = item.shard, item.entry
        when = ms_to_datetime(entry.last_modified_ms)
        if entry.deleted:
            return [Message(bucket=shard.bucket, key=entry.key, version_id=entry.version_id,
                            last_modified=when, size=0, etag="", body=b"", deleted=True)]
        version = entry.version_id if shard.layout == "versions" else None
        while True:
            try:
                obj = await self.store.get_object(shard.bucket, entry.key, version)
                break
            except NotFound:
                bound.warning("object vanished before it was fetched; skipping")
                return []
            except RetriableError as exc:  # the store's policy gave up; the item must not be lost
                bound.warning("fetch keeps failing; retrying", error=str(exc))
                await asyncio.sleep(self.store.retry.cap)

        def make(body: bytes, partition_key: str | None, offset: int | None = None) -> Message:
            return Message(bucket=shard.bucket, key=entry.key, version_id=entry.version_id,
                           last_modified=when, size=len(body), etag=entry.etag or obj.etag, body=body,
                           metadata=obj.metadata, partition_key=partition_key, offset=offset)

        name = parse_log_key(entry.key) if shard.layout == "log" else None
        if name is not None and name.is_segment:
            lines = segments.decode(obj.body, name.suffix)
            return [make(body, key, i) for i, (key, body) in enumerate(lines)]
        quoted = obj.metadata.get(KEY_METADATA)
        return [make(obj.body, unquote(quoted) if quoted is not None else None)]

    async def _dispatch(self, shard: Shard, message: Message,
                        bound: structlog.typing.FilteringBoundLogger) -> None:
        """Call the handler under the retry policy and timeout; dead-letter it if it keeps failing."""
        attempts = 0
        handler = shard.handler

        async def once() -> None:
            nonlocal attempts
            attempts += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._handler_timeout):
                    await handler.handle(message)
            except Exception as exc:
                metrics.ERRORS.labels(kind=f"handler:{metrics.error_kind(exc)}").inc()
                bound.warning("handler failed", attempt=attempts, error=repr(exc))
                raise
            finally:
                metrics.HANDLER_SECONDS.labels(handler=handler.name).observe(time.perf_counter() - started)

        try:
            await self._handler_retry.call(once, what="handler", retry_on=(Exception,))
        except Exception as exc:
            error = "timed out" if isinstance(exc, TimeoutError) else repr(exc)
            if self._dead_letters is None:
                raise HandlerFailed(
                    f"handler {handler.name!r} failed {attempts} times on "
                    f"s3://{message.bucket}/{message.key} version {message.version_id}: {error}"
                ) from exc
            await self._dead_letter(shard, message, error, attempts, bound)
            return
        metrics.MESSAGES_CONSUMED.labels(shard=shard.name).inc()
        metrics.BYTES_CONSUMED.labels(shard=shard.name).inc(len(message.body))

    async def _dead_letter(self, shard: Shard, message: Message, error: str, attempts: int,
                           bound: structlog.typing.FilteringBoundLogger) -> None:
        if self._dead_letters is None:
            raise HandlerFailed(f"s3://{message.bucket}/{message.key}: {error}")
        while True:
            try:
                where = await self._dead_letters.add(shard.prefix, message, error=error, attempts=attempts)
                break
            except RetriableError as exc:  # the message must land somewhere before it is passed
                bound.warning("dead letter write keeps failing; retrying", error=str(exc))
                await asyncio.sleep(self.store.retry.cap)
        metrics.DEAD_LETTERS.labels(shard=shard.name).inc()
        bound.error("dead-lettered", attempts=attempts, error=error, dead_letter=where)
