"""The worker pool: fetch bodies concurrently, call handlers, never two versions of one key at once.

Items arrive on a bounded queue in per-key order. A worker that takes an item whose key another worker
is busy with parks it behind that key; the busy worker runs the parked items, in order, when it is
done. So different keys run in parallel and one key's versions run one after another, oldest first.
Parked items still count against ``queue_size``: the total of queued, parked and running items is
bounded, and pollers wait when it is reached.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote

import structlog

from s3stream import segments
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
                 on_idle: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue(maxsize=queue_size)
        self._slots = asyncio.Semaphore(queue_size)
        self._active: dict[tuple[int, str], deque[WorkItem]] = {}
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._handler_retry = RetryPolicy(attempts=handler_attempts, max_elapsed=float("inf"))
        self._on_idle = on_idle

    @property
    def pending(self) -> int:
        """Items handed to the pool and not yet completed (queued, parked or running)."""
        return self._pending

    async def put(self, item: WorkItem) -> None:
        """Hand an item to the pool, waiting while the pool is full."""
        await self._slots.acquire()
        self._pending += 1
        self._idle.clear()
        self.queue.put_nowait(item)

    async def wait_idle(self) -> None:
        """Return once every handed-out item has completed."""
        await self._idle.wait()

    async def worker(self) -> None:
        """One worker: runs until cancelled."""
        while True:
            item = await self.queue.get()
            lane = (id(item.shard), item.entry.lane or item.entry.key)
            parked = self._active.get(lane)
            if parked is not None:
                parked.append(item)
                continue
            parked = self._active[lane] = deque()
            try:
                await self._run(item)
                while parked:
                    await self._run(parked.popleft())
            finally:
                del self._active[lane]

    async def _run(self, item: WorkItem) -> None:
        shard, entry = item.shard, item.entry
        bound = log.bind(shard=shard.name, key=entry.key, version_id=entry.version_id)
        for message in await self._fetch(item, bound):
            await self._dispatch(shard, message, bound)
        shard.cursor.complete(entry.ident)
        self._pending -= 1
        self._slots.release()
        if self._pending == 0:
            self._idle.set()
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
            try:
                lines = segments.decode(obj.body, name.suffix)
            except segments.SegmentError as exc:
                raise HandlerFailed(f"s3://{shard.bucket}/{entry.key}: {exc}") from None
            return [make(body, key, i) for i, (key, body) in enumerate(lines)]
        quoted = obj.metadata.get(KEY_METADATA)
        return [make(obj.body, unquote(quoted) if quoted is not None else None)]

    async def _dispatch(self, shard: Shard, message: Message,
                        bound: structlog.typing.FilteringBoundLogger) -> None:
        attempts = 0

        async def once() -> None:
            nonlocal attempts
            attempts += 1
            try:
                await shard.handler.handle(message)
            except Exception as exc:
                bound.warning("handler failed", attempt=attempts, error=repr(exc))
                raise

        try:
            await self._handler_retry.call(once, what="handler", retry_on=(Exception,))
        except Exception as exc:
            raise HandlerFailed(
                f"handler {shard.handler.name!r} failed {attempts} times on "
                f"s3://{message.bucket}/{message.key} version {message.version_id}: {exc!r}"
            ) from exc
