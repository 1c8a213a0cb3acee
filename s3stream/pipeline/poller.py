"""Pollers: one per shard, listing new versions and handing them to the workers in order per key.

A pass lists *every* page of ``ListObjectVersions`` under the prefix. S3 lists keys ascending and each
key's versions newest first, and a key's versions may straddle a page break; so a key's new versions
are held until the listing moves past that key, then handed out oldest first. Only the key at a page
break is held across pages, so memory does not grow with the backlog. When the pass has been fully
handed out, the cursor's horizon moves to the pass's start (server clock: before the server read the
first page) minus the settle window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from s3stream.config import ConsumerSettings
from s3stream.errors import RetriableError
from s3stream.groups.lease import clock as lease_clock
from s3stream.layouts.cursor import VersionCursor
from s3stream.layouts.topics import is_directory_bucket
from s3stream.message import Entry
from s3stream.pipeline.headwatch import Bell, rest
from s3stream.pipeline.pacing import Pacer, Wait, flow_interval
from s3stream.pipeline.shard import Shard, WorkItem
from s3stream.pipeline.workers import WorkerPool
from s3stream.s3.s3xml import VersionPage
from s3stream.s3.serverclock import listed_after_ms
from s3stream.s3.store import Store
from s3stream.s3.versionorder import KeyRun
from s3stream.service.logs import get_logger

log = get_logger("s3stream.pipeline.poller")


async def list_page(store: Store, bucket: str, prefix: str, *, objects: bool, key_marker: str | None,
                    version_marker: str | None, max_keys: int) -> VersionPage:
    """One page of versions under ``prefix``; with ``objects`` (a bucket without versioning), one page
    of ``ListObjectsV2`` as current versions whose id is ``<etag>@<LastModified ms>``, so an overwrite
    is a new version to the cursor (the continuation token travels as ``key_marker``)."""
    if not objects:
        return await store.list_versions(bucket, prefix, key_marker=key_marker,
                                          version_id_marker=version_marker, max_keys=max_keys)
    page = await store.list_objects(bucket, prefix, token=key_marker, max_keys=max_keys)
    entries = [Entry(e.key, f"{e.etag}@{e.last_modified_ms}", e.last_modified_ms, size=e.size, etag=e.etag,
                     latest=True) for e in page.entries]
    return VersionPage(entries=entries, truncated=page.next_token is not None,
                       next_key_marker=page.next_token, next_version_id_marker=None,
                       server_time_ms=page.server_time_ms)


C = TypeVar("C")


class ShardPoller(Generic[C]):
    """What every poller shares: its shard and cursor, the store, the pool, and the polling loop.
    Subclasses provide ``poll_once`` (one pass over their layout's listing)."""

    def __init__(self, shard: Shard, cursor: C, store: Store, pool: WorkerPool,
                 settings: ConsumerSettings, on_pass: Callable[[], None], bell: Bell | None = None) -> None:
        self.shard = shard
        self.cursor = cursor
        self.store = store
        self.pool = pool
        self.settings = settings
        self.on_pass = on_pass
        self.bell = bell
        self.pages = 0  # listing requests sent, for pacing the reconciling listings
        self.behind = False  # the last pass stopped short of the present (more to list at once)
        self.log = log.bind(shard=shard.name)

    async def poll_once(self, *, skip: bool = False) -> int:
        raise NotImplementedError

    async def run(self) -> None:
        """Poll until cancelled: at once after a pass that found a page's worth, ``poll_interval``
        after the start of a pass that found something; while idle, backing off (doubling) up to
        ``max_poll_interval`` — or, once the topic's head object is known, waiting for its bell (rung
        whenever the head changes) up to a reconcile delay. Failures back off up to
        ``max_poll_interval``. A new group starting at ``latest`` skips what its first pass finds."""
        wake = self.bell.register() if self.bell is not None else None
        try:
            await self._poll(wake)
        finally:
            if wake is not None and self.bell is not None:
                self.bell.unregister(wake)

    async def _poll(self, wake: asyncio.Event | None) -> None:
        settings = self.settings
        every = flow_interval(settings.poll_interval, directory_bucket=is_directory_bucket(self.shard.bucket))
        pacer = Pacer(every, settings.max_poll_interval, settings.reconcile_interval,
                      head_interval=self.bell.interval if self.bell is not None else 0.0)
        skip = self.shard.fresh and settings.start_from == "latest"
        while True:
            started = time.monotonic()
            if not self.shard.holds(lease_clock()):  # a lease overdue: list nothing until the group decides
                await asyncio.sleep(pacer.delay)
                continue
            if wake is not None:
                wake.clear()  # a ring from now on calls for another pass
            pages = self.pages
            try:
                found = await self.poll_once(skip=skip)
            except RetriableError as exc:
                self.log.warning("poll failed; will retry", error=str(exc))
                after = pacer.after_failure()
            else:
                skip = False
                now = time.monotonic()
                after = pacer.after_pass(found=found, full=found >= settings.page_size or self.behind,
                                         pages=self.pages - pages, now=now, took=now - started,
                                         head_seen=self.bell is not None and self.bell.seen)
                if after.unannounced:
                    self.log.info("a listing of its own found messages no head announced (writers other "
                                  "than s3stream?): backing off as without a head for a while",
                                  minutes=round((pacer.listing_until - now) / 60, 1))
            if after.wait is not Wait.NONE and await rest(after.seconds, wake):
                pacer.rung()


class Poller(ShardPoller[VersionCursor]):
    """Lists one versions-layout shard again and again, handing new versions to the worker pool."""

    async def poll_once(self, *, skip: bool = False) -> int:
        """One full listing pass; returns how many versions were handed out (or skipped)."""
        shard, cursor, order = self.shard, self.cursor, self.store.listing
        objects = shard.layout == "objects"
        run: KeyRun | None = None
        key_marker: str | None = None
        version_marker: str | None = None
        found = 0
        while True:
            sent = time.monotonic()
            page = await list_page(self.store, shard.bucket, shard.prefix, objects=objects,
                                   key_marker=key_marker, version_marker=version_marker,
                                   max_keys=self.settings.page_size)
            self.pages += 1
            if run is None:  # before the server read the first page, minus the settle window
                listed_ms = listed_after_ms(page.server_time_ms, time.monotonic() - sent)
                horizon_ms = listed_ms - int(self.settings.settle_window * 1000)
                cursor.begin_pass(horizon_ms)
                run = KeyRun("", self.settings.page_size)
            for entry in (page.entries if objects else order.page(page.entries)):
                if entry.key != run.key:
                    found += await self._finish_key(run, skip)
                    cursor.listed_through(entry.key)
                    run = KeyRun(entry.key, self.settings.page_size)
                run.add(entry, new=shard.wants(entry.key) and cursor.is_new(entry))
            if not page.truncated:
                break
            key_marker, version_marker = page.next_key_marker, page.next_version_id_marker
        assert run is not None
        found += await self._finish_key(run, skip)
        cursor.pass_complete(horizon_ms)
        shard.last_poll = time.monotonic()
        self.on_pass()
        if found:
            self.log.debug("pass", new=found, watermark_ms=cursor.watermark_ms)
        return found

    async def _finish_key(self, run: KeyRun, skip: bool) -> int:
        """Hand out one key's new versions, oldest first. A key with more new versions than a page
        was not held: its versions are listed again a chunk at a time, oldest chunk first."""
        if not run.spilled:
            return await self._hand_out(run.held, skip) if run.held else 0
        found = 0
        for index in range(len(run.chunks) - 1, -1, -1):
            chunk = await self._relist(run, index)
            found += await self._hand_out(chunk, skip)
            self.cursor.listed_through(run.key, run.unstarted_before(index))
        return found

    async def _relist(self, run: KeyRun, index: int) -> list[Entry]:
        """The still-new versions of chunk ``index`` of a spilled key, in listing order."""
        chunk = run.chunks[index]
        end = run.chunks[index + 1].after if index + 1 < len(run.chunks) else None
        key_marker, version_marker = (run.key, chunk.after) if chunk.after is not None else (None, None)
        entries: list[Entry] = []
        started = chunk.after is not None  # the first chunk skips versions written since the pass listed it
        while True:
            page = await self.store.list_versions(self.shard.bucket, run.key, key_marker=key_marker,
                                                  version_id_marker=version_marker,
                                                  max_keys=self.settings.page_size)
            for entry in self.store.listing.page(page.entries):
                if entry.key != run.key:
                    return entries
                started = started or entry.version_id == chunk.first
                if started and self.cursor.is_new(entry):
                    entries.append(entry)
                if entry.version_id == end:
                    return entries
            if not page.truncated:
                return entries
            key_marker, version_marker = page.next_key_marker, page.next_version_id_marker

    async def _hand_out(self, held: list[Entry], skip: bool) -> int:
        for entry in self.store.listing.oldest_first(held):
            if skip:
                self.cursor.skip(entry)
                continue
            self.cursor.start(entry)
            await self.pool.put(WorkItem(self.shard, entry))
        return len(held)
