"""The consumer daemon, top-down: open the store, open shards, run pollers, workers and checkpointer.

Shutdown is an awaitable in two phases, like uvicorn's: :meth:`Consumer.stop` stops the pollers;
in-flight work then has ``shutdown_grace`` seconds to finish; the final checkpoint is written under
``asyncio.shield`` whatever happened. Signals belong to the command line, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from s3stream.checkpoint import (
    CheckpointStore,
    FileCheckpointStore,
    MemoryCheckpointStore,
    S3CheckpointStore,
)
from s3stream.checkpointer import Checkpointer
from s3stream.codecs import Decoder
from s3stream.config import ConsumerSettings, Settings, SourceSettings
from s3stream.cursor import Checkpoint, VersionCursor
from s3stream.deadletter import DeadLetters
from s3stream.errors import ConfigError
from s3stream.handlers import Handler, as_handler, build_handler
from s3stream.logcursor import LogCheckpoint, LogCursor
from s3stream.logpoller import LogPoller
from s3stream.metrics import HealthServer
from s3stream.notifications import NotifyCursor, notification_tasks
from s3stream.poller import Poller
from s3stream.routing import handler_names, source_handler
from s3stream.shard import Shard, ShardLayout
from s3stream.store import Store, open_store
from s3stream.topics import CONTROL_PREFIX, resolve_topic
from s3stream.workers import WorkerPool

log = structlog.get_logger("s3stream.consumer")


class Consumer:
    """Streams every version under each configured prefix to its handler."""

    def __init__(self, settings: Settings) -> None:
        if not settings.sources:
            raise ConfigError("sources: at least one source (s3://BUCKET/PREFIX) is required")
        _check_overlaps(settings.sources)
        self.settings = settings
        self.shards: list[Shard] = []
        self.pool: WorkerPool | None = None
        self.health: HealthServer | None = None
        self.started = asyncio.Event()
        self._stopping = asyncio.Event()
        self._handlers: dict[str, Handler] = {}
        self._notified: list[tuple[SourceSettings, list[Shard]]] = []  # notification sources' shards

    def register_handler(self, name: str, handler: object) -> None:
        """Use ``handler`` (async callable, or object with handle/close) for sources naming ``name``."""
        self._handlers[name] = as_handler(handler, name)

    def stop(self) -> None:
        """Begin a graceful shutdown; :meth:`run` returns when it is complete."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; raises the first fatal error (after committing completed work)."""
        consumer = self.settings.consumer
        self._build_handlers()
        health = self._health_server()
        try:
            if health is not None:
                await health.start()
                log.info("metrics and health endpoints", url=f"http://{health.host}:{health.port}/metrics")
            async with open_store(self.settings.s3, max_connections=consumer.concurrency + 8) as store:
                for src in self.settings.sources:
                    self.shards += await self._open_shards(store, src)
                await self._pipeline(store)
        finally:
            if health is not None:
                await health.stop()
            for handler in self._handlers.values():
                with contextlib.suppress(Exception):
                    await handler.close()

    async def _pipeline(self, store: Store) -> None:
        consumer = self.settings.consumer
        checkpointer = Checkpointer(self.shards, interval=consumer.checkpoint.interval)
        dead_letters = (DeadLetters(store, control_prefix=CONTROL_PREFIX, group=consumer.group)
                        if consumer.dead_letters else None)
        pool = WorkerPool(store, queue_size=consumer.queue_size, handler_attempts=consumer.handler_attempts,
                          handler_timeout=consumer.handler_timeout, dead_letters=dead_letters,
                          on_idle=checkpointer.wake.set)
        self.pool = pool
        try:
            async with asyncio.TaskGroup() as tg:
                pollers = [
                    tg.create_task(_poller(shard, store, pool, consumer, checkpointer.wake.set).run())
                    for shard in self.shards if not isinstance(shard.cursor, NotifyCursor)
                ]
                pollers += [tg.create_task(run) for run in notification_tasks(
                    self._notified, store, pool, self.settings, checkpointer.wake.set)]
                workers = [tg.create_task(pool.worker()) for _ in range(consumer.concurrency)]
                workers.append(tg.create_task(pool.watchdog()))
                committer = tg.create_task(checkpointer.run())
                log.info("consuming", shards=[s.name for s in self.shards], group=consumer.group)
                self.started.set()
                await self._stopping.wait()
                log.info("stopping: pollers stopped, draining in-flight work", in_flight=pool.pending)
                for task in pollers:
                    task.cancel()
                try:
                    async with asyncio.timeout(consumer.shutdown_grace):
                        await pool.drain()
                except TimeoutError:
                    log.warning("grace period over; unfinished work will be redelivered", left=pool.pending)
                for task in [*workers, committer]:
                    task.cancel()
        except BaseExceptionGroup as group:  # a task failed: raise its error, not the TaskGroup's wrapper
            raise _first_error(group) from None
        finally:
            await asyncio.shield(self._final_commit(checkpointer))

    def _health_server(self) -> HealthServer | None:
        settings = self.settings.metrics
        if settings.port is None:
            return None
        self.health = HealthServer(settings.host, settings.port, self.readiness)
        return self.health

    def readiness(self) -> tuple[bool, str]:
        """Ready when the pipeline runs and every shard completed a poll within ``ready_after`` s."""
        if not self.started.is_set() or self._stopping.is_set():
            return False, "starting" if not self._stopping.is_set() else "stopping"
        limit = self.settings.metrics.ready_after
        stale = [s.name for s in self.shards if time.monotonic() - s.last_poll > limit]
        return (not stale, f"not polled for {limit:.0f}s: {', '.join(stale)}" if stale else "ok")

    async def _final_commit(self, checkpointer: Checkpointer) -> None:
        try:
            await checkpointer.flush()
            log.info("final checkpoint committed", commits=checkpointer.commits)
        except Exception as exc:
            log.error("final checkpoint failed; work since the last commit will be redelivered",
                      error=str(exc))

    def _build_handlers(self) -> None:
        configured = self.settings.handlers
        for name in (name for src in self.settings.sources for name in handler_names(src)):
            if name in self._handlers:
                continue
            if name in configured:
                spec = configured[name]
                self._handlers[name] = build_handler(spec.use, spec.options(), name=name)
            else:
                self._handlers[name] = build_handler(name)

    async def _open_shards(self, store: Store, src: SourceSettings) -> list[Shard]:
        """One shard per prefix of the source: a topic's shards, or the plain prefix itself."""
        await store.check_bucket(src.bucket)
        topic = await resolve_topic(store, src.bucket, src.prefix)
        layout: ShardLayout = topic.layout
        if topic.layout == "versions" and not topic.plain:
            await store.require_versioning(src.bucket)
        elif topic.layout == "versions" and await store.versioning_status(src.bucket) != "Enabled":
            layout = "objects"
            log.warning("bucket is not versioned: listing current objects; an overwrite is delivered "
                        "once seen, overwrites between two polls only as the last, deletions not at all",
                        source=src.url)
        prefixes = [src.prefix] if topic.plain else topic.prefixes
        if src.notifications is not None and topic.layout != "versions":
            raise ConfigError(f"sources ({src.url}): notifications need the versions layout, "
                              f"not {topic.layout!r}")
        shards = [await self._open_shard(store, src, prefix, layout) for prefix in prefixes]
        if src.notifications is not None:
            self._notified.append((src, shards))
        return shards

    async def _open_shard(self, store: Store, src: SourceSettings, prefix: str, layout: ShardLayout) -> Shard:
        consumer = self.settings.consumer
        ckpt = consumer.checkpoint
        checkpoints: CheckpointStore
        if ckpt.store == "s3":
            checkpoints = S3CheckpointStore(store, bucket=src.bucket, prefix=prefix,
                                            control_prefix=ckpt.prefix, group=consumer.group)
        elif ckpt.store == "file":
            checkpoints = FileCheckpointStore(ckpt.directory, bucket=src.bucket, prefix=prefix,
                                              group=consumer.group)
        else:
            checkpoints = MemoryCheckpointStore()
        saved = await checkpoints.load()
        cursor: VersionCursor | LogCursor
        if layout == "log" and not isinstance(saved, Checkpoint):
            cursor = LogCursor(prefix, saved)
        elif layout != "log" and not isinstance(saved, LogCheckpoint):
            cursor = (NotifyCursor if src.notifications else VersionCursor)(saved)
        else:
            raise ConfigError(f"the checkpoint of s3://{src.bucket}/{prefix} (group {consumer.group!r}) "
                              f"was written for another layout than {layout!r}")
        control = {f"{CONTROL_PREFIX}/", ckpt.prefix.strip("/") + "/"}
        shard = Shard(
            bucket=src.bucket, prefix=prefix, handler=source_handler(src, self._handlers),
            checkpoints=checkpoints, cursor=cursor, layout=layout, fresh=saved is None,
            exclude=tuple(sorted(c for c in control if c.startswith(prefix))),
            decoder=Decoder(src.codec, src.framing, src.compression, src.max_decompressed_mb << 20),
        )
        shard.saved_generation = cursor.generation if saved is not None else -1
        log.info("shard opened", shard=shard.name, layout=layout, resumed=saved is not None,
                 start_from=None if saved else consumer.start_from)
        return shard


def _poller(shard: Shard, store: Store, pool: WorkerPool, settings: ConsumerSettings,
            on_pass: Callable[[], None]) -> Poller | LogPoller:
    if isinstance(shard.cursor, LogCursor):
        return LogPoller(shard, shard.cursor, store, pool, settings, on_pass)
    assert isinstance(shard.cursor, VersionCursor)
    return Poller(shard, shard.cursor, store, pool, settings, on_pass)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    inner = group.exceptions[0]
    return _first_error(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _check_overlaps(sources: list[SourceSettings]) -> None:
    seen: list[SourceSettings] = []
    for src in sources:
        for other in seen:
            if src.bucket == other.bucket and (
                src.prefix.startswith(other.prefix) or other.prefix.startswith(src.prefix)
            ):
                raise ConfigError(f"sources: {src.url!r} overlaps {other.url!r}; prefixes must not overlap")
        seen.append(src)
