"""Log-layout pollers: list the open directories of one shard with ListObjectsV2.

Nothing here depends on key order or ``StartAfter`` (S3 Express directory buckets offer neither).
Each pass lists in full the open directories the cursor says are due (``LogCursor.due_dirs``: those
where writes land on every pass; those it may seal, those ended up to 3 s ago and those beginning
within 3 s every 250 ms; the older rest every few seconds), oldest first; new
objects of a directory are handed out sorted by the time, producer and sequence in their names. After
the pass, the cursor seals the directories that were listed after their end plus the settle window
and have nothing in flight.

A pass holds at most ``held_limit`` listed objects (plus a page): a directory with more new objects
than that is handed out in parts. A general purpose bucket lists in key order, which is the order of
s3stream's names, so the listing pauses when the limit is reached and goes on from its continuation
token once the held objects are handed out. A directory bucket lists in no order: the pass keeps the
``held_limit / 2`` first objects (in delivery order) of a whole listing, hands them out, and lists the
directory again for the next ones, so order holds and memory stays bounded whatever a directory holds.
A directory bucket's pass costs as many pages as the open directories hold, which is why new topics'
directories span ten seconds, not a minute. The objects of an open directory already known not to be
new (:class:`~s3stream.layouts.knownkeys.KnownKeys`) are left out of its listings after reading their
key alone, so listing a busy directory again costs little more than the request.
Every time comes from the server (:class:`~s3stream.s3.serverclock.ServerClock`): a new group's starting
point, the directories to list and the sealing, whatever this host's clock says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from s3stream.config import ConsumerSettings
from s3stream.layouts.knownkeys import KnownKeys
from s3stream.layouts.logcursor import LogCursor
from s3stream.layouts.topics import (
    dir_name,
    dir_start_ms,
    is_dir_name,
    is_directory_bucket,
    parse_log_key,
)
from s3stream.message import Entry
from s3stream.pipeline.headwatch import Bell
from s3stream.pipeline.poller import ShardPoller
from s3stream.pipeline.shard import Shard, WorkItem
from s3stream.pipeline.workers import WorkerPool
from s3stream.s3.s3xml import ObjectPage
from s3stream.s3.serverclock import ServerClock, listed_after_ms
from s3stream.s3.store import Store

MAX_DIRS_PER_PASS = 60
DIRS_AT_ONCE = 8  # first pages listed concurrently: a pass over a default topic's open directories (up to
# seven: ten-second directories, a 30 s settle window), as after a silence, takes one LIST's latency
HELD_LIMIT = 100_000  # listed objects a pass holds at most (plus a page) before handing them out


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
                 settings: ConsumerSettings, on_pass: Callable[[], None], bell: Bell | None = None) -> None:
        super().__init__(shard, cursor, store, pool, settings, on_pass, bell)
        self.clock = ServerClock()  # read from every pass's first answer
        self._placed = not shard.fresh
        self.held_limit = HELD_LIMIT
        self.ordered_listing = not is_directory_bucket(shard.bucket)  # keys listed in ascending order
        self.peak_held = 0  # the most listed objects held at once (for tests and diagnostics)
        self.known = KnownKeys()  # keys not new, which the open directories' listings leave out

    async def poll_once(self, *, skip: bool = False) -> int:
        """One pass over the open directories; returns how many objects were handed out (or skipped)."""
        settle_ms = int(self.settings.settle_window * 1000)
        if not self._placed:
            await self._place_new_group(settle_ms)
        elif not self.clock.known:
            await self._read_clock()
        dirs = self.cursor.due_dirs(self.clock.now_ms(), settle_ms, MAX_DIRS_PER_PASS)
        sealed_before = self.cursor.sealed_ms
        pass_start: int | None = None
        found = 0
        span = self.cursor.span_ms
        prefixes = [f"{self.shard.prefix}{dir_name(dir_ms, span)}/" for dir_ms in dirs]
        for first in range(0, len(prefixes), DIRS_AT_ONCE):
            group = prefixes[first:first + DIRS_AT_ONCE]
            timed = await asyncio.gather(*(self._first_page(prefix) for prefix in group))
            started = min(listed_ms for _, listed_ms in timed)
            pass_start = started if pass_start is None else min(pass_start, started)
            for prefix, (page, _) in zip(group, timed, strict=True):
                found += await self._drain(prefix, page, skip)
        self.cursor.pass_complete(dirs, pass_start or self.clock.now_ms() - 1000, settle_ms)
        self.known.forget_before(self.cursor.sealed_ms)
        # more open directories than a pass lists, and this one sealed some: catching up, go on at once
        self.behind = len(dirs) >= MAX_DIRS_PER_PASS and self.cursor.sealed_ms > sealed_before
        self.shard.last_poll = time.monotonic()
        self.on_pass()
        return found

    async def _hand_out(self, prefix: str, new: list[Entry], skip: bool) -> int:
        """Hand one directory's new objects to the pool in delivery order (or skip them). Each is asked
        again just before: an earlier one may have been a copy of the same message."""
        handed = 0
        dir_ms = self.cursor.dir_of(prefix)
        for entry in sorted(new, key=delivery_order):
            self.known.add(dir_ms, entry.key)  # handed out, skipped or a copy: not new from now on
            if not self.cursor.is_new(entry):
                continue
            handed += 1
            if skip:
                self.cursor.skip(entry)
                continue
            entry = with_lane(entry)
            self.cursor.start(entry)
            await self.pool.put(WorkItem(self.shard, entry))
        return handed

    async def _first_page(self, prefix: str) -> tuple[ObjectPage, int]:
        """A directory's first page, and a time (server clock) before the server read it."""
        sent = time.monotonic()
        page = await self._list(prefix)
        return page, listed_after_ms(page.server_time_ms, time.monotonic() - sent)

    async def _list(self, prefix: str, token: str | None = None) -> ObjectPage:
        sent = time.monotonic()
        page = await self.store.list_objects(self.shard.bucket, prefix, token=token,
                                             max_keys=self.settings.page_size,
                                             known=self.known.of(self.cursor.dir_of(prefix)))
        self.pages += 1
        if token is None:
            self.clock.observe(page.server_time_ms, received=time.monotonic(), sent=sent)
        return page

    async def _drain(self, prefix: str, page: ObjectPage, skip: bool) -> int:
        """Hand out every new object of one directory (its listing begun with ``page``), in parts of at
        most ``held_limit``; returns how many."""
        found = 0
        while True:
            held, token, again = await self._collect(prefix, page)
            found += await self._hand_out(prefix, held, skip)
            if not again:
                return found
            page = await self._list(prefix, token)  # on from the pause, or (no order) from the start

    async def _collect(self, prefix: str, page: ObjectPage) -> tuple[list[Entry], str | None, bool]:
        """New objects of a directory from ``page`` on: ``(held, token, again)``. A key-ordered listing
        pauses once ``held_limit`` are held (``again``, going on at ``token``); an unordered one is
        listed to its end keeping the ``held_limit / 2`` first in delivery order (``again`` if there
        were more: list the directory again)."""
        held: list[Entry] = []
        keep = max(1, self.held_limit // 2)
        dir_ms = self.cursor.dir_of(prefix)
        more = False
        while True:
            for e in page.entries:
                if self.shard.wants(e.key) and self.cursor.is_new(e):
                    held.append(e)
                else:
                    self.known.add(dir_ms, e.key)
            self.peak_held = max(self.peak_held, len(held))
            token = page.next_token
            if self.ordered_listing:
                if token is None or len(held) >= self.held_limit:
                    return held, token, token is not None
            elif len(held) > 2 * keep or (token is None and len(held) > keep):
                held, more = sorted(held, key=delivery_order)[:keep], True
            if token is None:
                return held, None, more
            page = await self._list(prefix, token)

    async def _place_new_group(self, settle_ms: int) -> None:
        """A group without a checkpoint starts at the oldest directory (earliest), or at the server's
        time minus the settle window (latest, or a shard with no directory yet): never at this host's
        time, which may be off by hours."""
        if self.settings.start_from == "earliest":
            oldest, server_ms = await self._oldest_dir()
        else:
            oldest, server_ms = None, await self._read_clock()
        start = server_ms - settle_ms if oldest is None else oldest
        self.cursor.sealed_ms = start - start % self.cursor.span_ms
        self._placed = True

    async def _read_clock(self) -> int:
        """The server's time, from the answer to the smallest listing of the shard."""
        sent = time.monotonic()
        page = await self.store.list_objects(self.shard.bucket, self.shard.prefix, delimiter="/", max_keys=1)
        self.clock.observe(page.server_time_ms, received=time.monotonic(), sent=sent)
        return page.server_time_ms

    async def _oldest_dir(self) -> tuple[int | None, int]:
        """The start of the shard's oldest directory (None without one), and the server's time."""
        token: str | None = None
        oldest: int | None = None
        server_ms: int | None = None
        while True:
            sent = time.monotonic()
            page = await self.store.list_objects(self.shard.bucket, self.shard.prefix, delimiter="/",
                                                 token=token)
            if server_ms is None:
                server_ms = page.server_time_ms
                self.clock.observe(server_ms, received=time.monotonic(), sent=sent)
            for p in page.prefixes:
                name = p[len(self.shard.prefix):].rstrip("/")
                if is_dir_name(name):
                    start = dir_start_ms(name)
                    oldest = start if oldest is None else min(oldest, start)
            token = page.next_token
            if token is None:
                return oldest, server_ms
