"""Log-layout pollers: list the open minute directories of one shard with ListObjectsV2.

Nothing here depends on key order or ``StartAfter`` (S3 Express directory buckets offer neither).
Each pass lists every open directory in full, oldest first; new objects of a directory are handed out
sorted by the time, producer and sequence in their names. After the pass, the cursor seals the
directories that were listed after their end plus the settle window and have nothing in flight.
Every time comes from the server (:class:`~s3stream.serverclock.ServerClock`): a new group's starting
point, the directories to list and the sealing, whatever this host's clock says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from s3stream.config import ConsumerSettings
from s3stream.logcursor import LogCursor
from s3stream.message import Entry
from s3stream.poller import ShardPoller
from s3stream.serverclock import ServerClock
from s3stream.shard import Shard, WorkItem
from s3stream.store import Store
from s3stream.topics import MINUTE_MS, dir_start_ms, minute_dir, parse_log_key
from s3stream.workers import WorkerPool

MAX_DIRS_PER_PASS = 60
DIRS_AT_ONCE = 4  # directories listed concurrently: a pass takes about one LIST's latency, not three


def delivery_order(entry: Entry) -> tuple[int, str, int, str]:
    """Objects s3stream named sort by (time, producer, sequence); others by LastModified, key."""
    name = parse_log_key(entry.key)
    if name is None:
        return (entry.last_modified_ms, "", 0, entry.key)
    return (name.ms, name.producer, name.seq, entry.key)


def with_lane(entry: Entry) -> Entry:
    """Messages with the same key share a lane (in order, one at a time); keyless ones do not."""
    name = parse_log_key(entry.key)
    lane = name.lane if name is not None and name.lane != "_" else entry.key
    return dataclasses.replace(entry, lane=lane)


class LogPoller(ShardPoller[LogCursor]):
    """Lists one log-layout shard again and again, handing new objects to the worker pool."""

    def __init__(self, shard: Shard, cursor: LogCursor, store: Store, pool: WorkerPool,
                 settings: ConsumerSettings, on_pass: Callable[[], None]) -> None:
        super().__init__(shard, cursor, store, pool, settings, on_pass)
        self.clock = ServerClock()  # read from every pass's first answer
        self._placed = not shard.fresh

    async def poll_once(self, *, skip: bool = False) -> int:
        """One pass over the open directories; returns how many objects were handed out (or skipped)."""
        settle_ms = int(self.settings.settle_window * 1000)
        if not self._placed:
            await self._place_new_group(settle_ms)
        elif not self.clock.known:
            await self._read_clock()
        dirs = self.cursor.open_dirs(self.clock.now_ms(), settle_ms, MAX_DIRS_PER_PASS)
        pass_start: int | None = None
        found = 0
        for first in range(0, len(dirs), DIRS_AT_ONCE):
            listed = await asyncio.gather(*(
                self._list_new(f"{self.shard.prefix}{minute_dir(dir_ms)}/")
                for dir_ms in dirs[first:first + DIRS_AT_ONCE]
            ))
            for new, server_ms in listed:
                pass_start = server_ms if pass_start is None else min(pass_start, server_ms)
                found += await self._hand_out(new, skip)
        self.cursor.pass_complete(dirs, (pass_start or self.clock.now_ms()) - 1000, settle_ms)
        self.shard.last_poll = time.monotonic()
        self.on_pass()
        return found

    async def _hand_out(self, new: list[Entry], skip: bool) -> int:
        """Hand one directory's new objects to the pool in delivery order (or skip them)."""
        for entry in sorted(new, key=delivery_order):
            if skip:
                self.cursor.skip(entry)
                continue
            entry = with_lane(entry)
            self.cursor.start(entry)
            await self.pool.put(WorkItem(self.shard, entry))
        return len(new)

    async def _list_new(self, prefix: str) -> tuple[list[Entry], int]:
        """Every new object under one directory (all pages), and the server time of the first page."""
        new: list[Entry] = []
        token: str | None = None
        first_ms: int | None = None
        while True:
            page = await self.store.list_objects(self.shard.bucket, prefix, token=token)
            if first_ms is None:
                first_ms = page.server_time_ms
                self.clock.observe(first_ms)
            new.extend(e for e in page.entries if self.shard.wants(e.key) and self.cursor.is_new(e))
            token = page.next_token
            if token is None:
                return new, first_ms

    async def _place_new_group(self, settle_ms: int) -> None:
        """A group without a checkpoint starts at the oldest directory (earliest), or at the server's
        time minus the settle window (latest, or a shard with no directory yet): never at this host's
        time, which may be off by hours."""
        if self.settings.start_from == "earliest":
            oldest, server_ms = await self._oldest_dir()
        else:
            oldest, server_ms = None, await self._read_clock()
        start = server_ms - settle_ms if oldest is None else oldest
        self.cursor.sealed_ms = start - start % MINUTE_MS
        self._placed = True

    async def _read_clock(self) -> int:
        """The server's time, from the answer to the smallest listing of the shard."""
        page = await self.store.list_objects(self.shard.bucket, self.shard.prefix, delimiter="/", max_keys=1)
        self.clock.observe(page.server_time_ms)
        return page.server_time_ms

    async def _oldest_dir(self) -> tuple[int | None, int]:
        """The start of the shard's oldest minute directory (None without one), and the server's time."""
        token: str | None = None
        oldest: int | None = None
        server_ms: int | None = None
        while True:
            page = await self.store.list_objects(self.shard.bucket, self.shard.prefix, delimiter="/",
                                                 token=token)
            if server_ms is None:
                server_ms = page.server_time_ms
                self.clock.observe(server_ms)
            for p in page.prefixes:
                name = p[len(self.shard.prefix):].rstrip("/")
                if len(name) == 12 and name.isdigit():
                    start = dir_start_ms(name)
                    oldest = start if oldest is None else min(oldest, start)
            token = page.next_token
            if token is None:
                return oldest, server_ms
