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

from s3stream.config import ConsumerSettings, Settings, SourceSettings
from s3stream.errors import CheckpointConflict, ConfigError, RetriableError
from s3stream.groups.lease import Tenure
from s3stream.groups.membership import Candidate, Membership, default_member_id
from s3stream.integrations.codecs import Decoder
from s3stream.integrations.notifications import NotifyCursor, notification_tasks
from s3stream.integrations.routing import handler_names, source_handler
from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.layouts.logcursor import LogCheckpoint, LogCursor
from s3stream.layouts.logpoller import LogPoller
from s3stream.layouts.topics import CONTROL_PREFIX, Topic, is_directory_bucket, resolve_topic
from s3stream.ops.doctorprobes import require_conditional_writes
from s3stream.pipeline.checkpoint import (
    CheckpointStore,
    FileCheckpointStore,
    MemoryCheckpointStore,
    S3CheckpointStore,
)
from s3stream.pipeline.checkpointer import Checkpointer
from s3stream.pipeline.handlers import Handler, as_handler, open_handler
from s3stream.pipeline.headwatch import Bell, HeadWatcher
from s3stream.pipeline.pacing import head_interval
from s3stream.pipeline.poller import Poller
from s3stream.pipeline.shard import Shard, ShardLayout
from s3stream.pipeline.workers import WorkerPool
from s3stream.s3.store import Store, open_store
from s3stream.service.deadletter import DeadLetters
from s3stream.service.logs import get_logger
from s3stream.service.metrics import HealthServer
from s3stream.service.tracing import MessageTracer

log = get_logger("s3stream.pipeline.consumer")


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
        self._candidates: list[Candidate] = []  # a group member's shards to share (leases enabled)
        self._pollers: dict[Shard, asyncio.Task[None]] = {}
        self._watchers: dict[tuple[str, str], HeadWatcher] = {}  # by (bucket, source prefix)
        self.membership: Membership | None = None
        self._store: Store | None = None
        self._control: Store | None = None  # leases' own connections: never queued behind data
        self._tg: asyncio.TaskGroup | None = None
        self._checkpointer: Checkpointer | None = None
        self._tracer = MessageTracer() if settings.tracing.enabled else None
        if settings.consumer.leases.enabled:
            _check_group(settings)

    def register_handler(self, name: str, handler: object) -> None:
        """Use ``handler`` (async callable, or object with handle/close) for sources naming ``name``."""
        self._handlers[name] = as_handler(handler, name)

    def stop(self) -> None:
        """Begin a graceful shutdown; :meth:`run` returns when it is complete."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; raises the first fatal error (after committing completed work)."""
        consumer = self.settings.consumer
        health = self._health_server()
        try:
            await self._open_handlers()
            if health is not None:
                await health.start()
                log.info("metrics and health endpoints", url=f"http://{health.host}:{health.port}/metrics")
            async with (open_store(self.settings.s3, max_connections=consumer.concurrency + 8) as store,
                        self._control_store(store) as control):
                self._store, self._control = store, control
                for src in self.settings.sources:
                    if consumer.leases.enabled:
                        self._candidates += await self._candidates_of(store, src)
                    else:
                        self.shards += await self._open_shards(store, src)
                if consumer.leases.enabled:  # leases are only exclusive where conditions are enforced
                    await require_conditional_writes(control, (src.bucket for src in self.settings.sources))
                await self._pipeline(store)
        finally:
            if health is not None:
                await health.stop()
            for handler in self._handlers.values():
                with contextlib.suppress(Exception):
                    await handler.close()

    async def _pipeline(self, store: Store) -> None:
        consumer = self.settings.consumer
        checkpointer = Checkpointer(self.shards, interval=consumer.checkpoint.interval,
                                    on_conflict=self._lost_fence if consumer.leases.enabled else None)
        dead_letters = (DeadLetters(store, control_prefix=CONTROL_PREFIX, group=consumer.group)
                        if consumer.dead_letters else None)
        pool = WorkerPool(store, queue_size=consumer.queue_size, handler_attempts=consumer.handler_attempts,
                          handler_retry_time=consumer.handler_retry_time,
                          handler_timeout=consumer.handler_timeout, dead_letters=dead_letters,
                          on_idle=checkpointer.wake.set, on_output_closed=self.stop,
                          max_body_mb=consumer.max_body_mb, max_inflight_mb=consumer.max_inflight_mb,
                          tracer=self._tracer)
        self.pool, self._checkpointer = pool, checkpointer
        self.membership = self._membership(self._control or store) if consumer.leases.enabled else None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                watching = [tg.create_task(w.run()) for w in self._watchers.values()]
                for shard in self.shards:
                    if not isinstance(shard.cursor, NotifyCursor):
                        self._start_poller(shard)
                notifying = [tg.create_task(run) for run in notification_tasks(
                    self._notified, store, pool, self.settings, checkpointer.wake.set)]
                renewing = tg.create_task(self.membership.run()) if self.membership is not None else None
                workers = [tg.create_task(pool.worker()) for _ in range(consumer.concurrency)]
                workers.append(tg.create_task(pool.watchdog()))
                committer = tg.create_task(checkpointer.run())
                log.info("consuming", shards=[s.name for s in self.shards], group=consumer.group,
                         member=self.membership.member if self.membership else None)
                self.started.set()
                await self._stopping.wait()
                log.info("stopping: pollers stopped, draining in-flight work", in_flight=pool.pending)
                if self.membership is not None:
                    self.membership.stop_taking()  # leases are still renewed until the final commit
                for task in [*notifying, *watching, *self._pollers.values()]:
                    task.cancel()
                try:
                    async with asyncio.timeout(consumer.shutdown_grace):
                        await pool.drain()
                except TimeoutError:
                    log.warning("grace period over; unfinished work will be redelivered", left=pool.pending)
                for task in [*workers, committer]:
                    task.cancel()
                if renewing is not None:
                    await asyncio.gather(*workers, committer, return_exceptions=True)
                    await self._final_commit(checkpointer, release=False)
                    renewing.cancel()
        except BaseExceptionGroup as group:  # a task failed: raise its error, not the TaskGroup's wrapper
            raise _first_error(group) from None
        finally:
            await asyncio.shield(self._final_commit(checkpointer))

    def _start_poller(self, shard: Shard) -> None:
        assert self._tg is not None
        assert self._store is not None
        assert self.pool is not None
        assert self._checkpointer is not None
        watcher = self._watchers.get((shard.bucket, shard.topic or shard.prefix))
        poller = _poller(shard, self._store, self.pool, self.settings.consumer, self._checkpointer.wake.set,
                         watcher.bell if watcher is not None else None)
        self._pollers[shard] = self._tg.create_task(poller.run())

    def _watch_head(self, store: Store, src: SourceSettings, topic: Topic) -> None:
        """Read the topic's head object (once per topic, for all its shards) to wake idle pollers."""
        if (src.bucket, src.prefix) in self._watchers:
            return
        interval = head_interval(self.settings.consumer.head_interval,
                                 directory_bucket=is_directory_bucket(src.bucket))
        self._watchers[(src.bucket, src.prefix)] = HeadWatcher(
            store, src.bucket, topic.name, Bell(interval),
            absent_interval=self.settings.consumer.max_poll_interval)

    def _control_store(self, store: Store) -> contextlib.AbstractAsyncContextManager[Store]:
        if not self.settings.consumer.leases.enabled:
            return contextlib.nullcontext(store)
        return open_store(self.settings.s3, max_connections=8)

    def _membership(self, store: Store) -> Membership:
        leases = self.settings.consumer.leases
        return Membership(store, group=self.settings.consumer.group,
                          member=leases.member_id or default_member_id(), duration=leases.duration,
                          renew_interval=leases.every, candidates=self._candidates,
                          take=self._take_shard, give_up=self._give_up_shard, lost=self._drop_shard)

    async def _take_shard(self, cand: Candidate, tenure: Tenure) -> bool:
        """A lease was taken: fence the checkpoint, open the shard, start its poller."""
        assert self._store is not None
        assert self.membership is not None
        src, layout, span_ms = cand.payload
        try:
            shard = await self._open_shard(self._store, src, cand.prefix, layout, span_ms,
                                           lease=(self.membership.member, tenure.generation))
        except (CheckpointConflict, RetriableError) as exc:
            log.warning("could not open a leased shard; giving the lease back", shard=cand.prefix,
                        error=str(exc))
            return False
        if self._stopping.is_set() or tenure.ended:
            return False
        shard.tenure = tenure
        self.shards.append(shard)
        self._start_poller(shard)
        return True

    async def _give_up_shard(self, cand: Candidate) -> None:
        """Rebalancing: stop polling the shard, let its in-flight work finish, commit, close it."""
        shard = self._shard_for(cand)
        if shard is None:
            return
        shard.open = False  # items not yet started stay uncommitted: the next holder delivers them
        task = self._pollers.pop(shard, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.consumer.shutdown_grace):
                await shard.idle.wait()
        assert self._checkpointer is not None
        try:
            await self._checkpointer.commit(shard)
        except RetriableError as exc:
            log.warning("final commit of a shard given up failed; its last work will be redelivered",
                        shard=shard.name, error=str(exc))
        self._forget(shard)

    def _drop_shard(self, cand: Candidate) -> None:
        """Another member took the lease: stop at once, commit nothing (its fence refuses us). Only
        the shard opened under the ended tenure goes; a newer holding of the same prefix stays."""
        for shard in [s for s in self.shards if s.bucket == cand.bucket and s.prefix == cand.prefix
                      and s.tenure is not None and s.tenure.ended]:
            log.warning("shard dropped: its lease is no longer ours", shard=shard.name)
            self._forget(shard)

    def _lost_fence(self, shard: Shard) -> bool:
        """A commit met another member's fence: the shard is theirs now."""
        if self.membership is None:
            return False
        self.membership.forfeit(shard.bucket, shard.prefix, shard.tenure)
        self._forget(shard)
        return True

    def _forget(self, shard: Shard) -> None:
        shard.open = False
        task = self._pollers.pop(shard, None)
        if task is not None:
            task.cancel()
        if shard in self.shards:
            self.shards.remove(shard)

    def _shard_for(self, cand: Candidate) -> Shard | None:
        return next((s for s in self.shards if s.bucket == cand.bucket and s.prefix == cand.prefix), None)

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
        member = self.membership
        if member is not None and member.clock() - member.last_renewal > member.duration:
            return False, f"no lease renewal for {member.duration:.0f}s (leases may be lost)"
        stale = [s.name for s in self.shards if time.monotonic() - s.last_poll > limit]
        return (not stale, f"not polled for {limit:.0f}s: {', '.join(stale)}" if stale else "ok")

    async def _final_commit(self, checkpointer: Checkpointer, *, release: bool = True) -> None:
        """Commit what was handled; then (``release``) give the leases back. In a group the commit
        comes first, while the leases are still renewed: the shards are ours until it is written."""
        try:
            await checkpointer.flush()
            log.info("final checkpoint committed", commits=checkpointer.commits)
        except Exception as exc:
            log.error("final checkpoint failed; work since the last commit will be redelivered",
                      error=str(exc))
        if self.membership is not None and release:
            try:
                await self.membership.release_all()
            except Exception as exc:
                log.warning("leases not released; they will expire", error=str(exc))

    async def _open_handlers(self) -> None:
        """Build each handler the sources name, awaiting async factories once; with tracing on, each
        is wrapped so its calls are spans (the handlers opened so far are closed if one fails)."""
        configured = self.settings.handlers
        for name in (name for src in self.settings.sources for name in handler_names(src)):
            if name in self._handlers:
                continue
            if name in configured:
                spec = configured[name]
                self._handlers[name] = await open_handler(spec.use, spec.options(), name=name)
            else:
                self._handlers[name] = await open_handler(name)
        if self._tracer is not None:
            self._handlers = {name: self._tracer.wrap(h) for name, h in self._handlers.items()}

    async def _open_shards(self, store: Store, src: SourceSettings) -> list[Shard]:
        """One shard per prefix of the source: a topic's shards, or the plain prefix itself."""
        prefixes, layout, span_ms = await self._source_shards(store, src)
        shards = [await self._open_shard(store, src, prefix, layout, span_ms) for prefix in prefixes]
        if src.notifications is not None:
            self._notified.append((src, shards))
        return shards

    async def _candidates_of(self, store: Store, src: SourceSettings) -> list[Candidate]:
        """A group member's view of a source: its shards, to be opened when leased."""
        prefixes, layout, span_ms = await self._source_shards(store, src)
        return [Candidate(src.bucket, prefix, (src, layout, span_ms), topic=src.prefix)
                for prefix in prefixes]

    async def _source_shards(self, store: Store,
                             src: SourceSettings) -> tuple[list[str], ShardLayout, int]:
        """The source's shard prefixes and how to list them: the layout, and how long a log-layout
        directory spans (ms). Checks the bucket on the way."""
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
        if self.settings.consumer.wakeup == "head" and src.notifications is None:
            self._watch_head(store, src, topic)
        if src.notifications is not None and topic.layout != "versions":
            raise ConfigError(f"sources ({src.url}): notifications need the versions layout, "
                              f"not {topic.layout!r}")
        return prefixes, layout, topic.span_ms

    async def _open_shard(self, store: Store, src: SourceSettings, prefix: str, layout: ShardLayout,
                          span_ms: int, lease: tuple[str, int] | None = None) -> Shard:
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
        if lease is not None:
            assert isinstance(checkpoints, S3CheckpointStore)
            saved = await checkpoints.fence(*lease)
        else:
            saved = await checkpoints.load()
        cursor: VersionCursor | LogCursor
        if layout == "log" and not isinstance(saved, Checkpoint):
            cursor = LogCursor(prefix, saved, span_ms=span_ms)
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
            topic=src.prefix, group=consumer.group,
        )
        shard.saved_generation = cursor.generation if saved is not None else -1
        log.info("shard opened", shard=shard.name, layout=layout, resumed=saved is not None,
                 start_from=None if saved else consumer.start_from)
        return shard


def _poller(shard: Shard, store: Store, pool: WorkerPool, settings: ConsumerSettings,
            on_pass: Callable[[], None], bell: Bell | None) -> Poller | LogPoller:
    if isinstance(shard.cursor, LogCursor):
        return LogPoller(shard, shard.cursor, store, pool, settings, on_pass, bell)
    assert isinstance(shard.cursor, VersionCursor)
    return Poller(shard, shard.cursor, store, pool, settings, on_pass, bell)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    inner = group.exceptions[0]
    return _first_error(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _check_group(settings: Settings) -> None:
    """Leases need checkpoints every member can see and fence, and sources each member polls."""
    if settings.consumer.checkpoint.store != "s3":
        raise ConfigError("consumer.leases: a consumer group keeps its checkpoints in S3; "
                          f"checkpoint.store {settings.consumer.checkpoint.store!r} cannot be shared")
    for src in settings.sources:
        if src.notifications is not None:
            raise ConfigError(f"sources ({src.url}): a notifications source cannot be shared by leases; "
                              "its SQS queue already spreads messages over every consumer reading it")


def _check_overlaps(sources: list[SourceSettings]) -> None:
    seen: list[SourceSettings] = []
    for src in sources:
        for other in seen:
            if src.bucket == other.bucket and (
                src.prefix.startswith(other.prefix) or other.prefix.startswith(src.prefix)
            ):
                raise ConfigError(f"sources: {src.url!r} overlaps {other.url!r}; prefixes must not overlap")
        seen.append(src)
