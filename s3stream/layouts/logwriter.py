"""Writing log-layout objects so that a publish that returns is delivered.

A consumer seals a directory once a listing that started *settle window* after the directory's
end (server time) saw all of it; an object landing there later is never listed again. So what matters
is the time between the moment in an object's name and the moment it is stored, and
:class:`LogWriter` bounds it:

* the name is stamped with the server's time (:class:`~s3stream.s3.serverclock.ServerClock`) only once
  the write holds one of the producer's concurrency slots, so waiting for a slot costs nothing;
* the store's own retries (throttling, 5xx, lost answers) keep the name: ``If-None-Match: *`` makes a
  retry after a lost answer harmless (412: the object is there);
* a write answered more than ``put_deadline`` after its name's time may have landed after its
  directory was sealed, for all the producer knows. It is made again under a new name, with a new time
  but the same producer id and sequence number: the message's identity. Consumers deliver one copy per
  identity among the directories still open, so the rewrite is normally not seen twice (a copy landing
  after its twin's directory was sealed may be: at least once). Nothing is cancelled: a request in
  flight may land at any time, so cutting it short would only make its outcome unknown.

A publish therefore returns only once its object was stored within ``put_deadline`` of the time in
its name, which consumers whose settle window is longer than that always list. Bodies above the
multipart threshold are the exception: an upload's name is fixed when it starts, so the upload itself
must finish within the settle window, the bound the S3 Express page of the docs gives for large bodies.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import defaultdict
from collections.abc import Callable

from s3stream.config import ProducerSettings
from s3stream.errors import AccessDenied, EndpointUnreachable, PreconditionFailed
from s3stream.layouts.topics import Topic, log_key
from s3stream.s3.serverclock import ServerClock
from s3stream.s3.store import Store
from s3stream.service.logs import get_logger

log = get_logger("s3stream.layouts.producer")
CLOCK_REFRESH = 600.0  # seconds between readings of the server's clock


def new_producer_id() -> str:
    """A producer's id in log-layout names: 120 random bits as 24 characters of lower-case base32.

    A log object's identity is its shard, producer id and sequence number, and one-shot producers
    (``s3stream publish``, a ``Producer`` per request) all number from 1; their ids alone keep
    identities apart, so they are drawn wide enough never to repeat (32-bit ids collide among some
    10^5 producers)."""
    return base64.b32encode(secrets.token_bytes(15)).decode("ascii").lower()


async def put(store: Store, settings: ProducerSettings, bucket: str, name: str, data: bytes, *,
              create_only: bool, metadata: dict[str, str] | None,
              content_encoding: str | None = None) -> tuple[str, str | None]:
    """One object written (in parts above the multipart threshold), with the store's retries; a 412
    on a create-only write means an earlier attempt of this write got there: success. The object is
    encrypted as ``[producer] sse`` says."""
    encryption = settings.encryption_headers() or None
    try:
        if len(data) > settings.multipart_threshold:
            return await store.put_multipart(
                bucket, name, data, part_size=settings.multipart_part_size, if_none_match=create_only,
                metadata=metadata, content_encoding=content_encoding, encryption=encryption,
            )
        return await store.put_object(bucket, name, data, if_none_match=create_only, metadata=metadata,
                                      content_encoding=content_encoding, encryption=encryption)
    except PreconditionFailed:
        if not create_only:
            raise
        return "", None  # a retry of a PUT that had already succeeded: the name is ours alone


class LogWriter:
    """Names and writes one producer's log-layout objects (see the module docstring)."""

    def __init__(self, settings: ProducerSettings, slots: asyncio.Semaphore,
                 clock: Callable[[], float] | None = None) -> None:
        self.id = new_producer_id()
        self.clock = clock  # seconds since the epoch for names; None: the server's time
        self._settings = settings
        self._slots = slots
        self._seq: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self._clock_lock = asyncio.Lock()
        self._last_ms = 0

    async def write(self, store: Store, topic: Topic, shard: int, lane: str, suffix: str, data: bytes, *,
                    metadata: dict[str, str] | None = None,
                    content_encoding: str | None = None) -> tuple[str, str, str | None]:
        """Write one message (or segment) as a new object of ``topic``'s ``shard``; returns its name,
        ETag and version id once it was stored within ``put_deadline`` of its name's time."""
        await self._sync_clock(store, topic)
        deadline = self._settings.put_deadline
        prefix = topic.shard_prefix(shard)

        async def attempt(seq: int) -> tuple[str, str, str | None]:
            name = log_key(prefix, self._stamp(store.server_clock(topic.bucket)), self.id, seq, lane, suffix,
                           span_ms=topic.span_ms)
            etag, version = await put(store, self._settings, topic.bucket, name, data, create_only=True,
                                      metadata=metadata, content_encoding=content_encoding)
            return name, etag, version

        async with self._slots:
            counter = (topic.bucket, topic.name, shard)
            self._seq[counter] += 1
            seq = self._seq[counter]
            if len(data) > self._settings.multipart_threshold:  # an upload is named when it starts
                return await attempt(seq)
            started = time.monotonic()
            for writes in range(1, store.retry.attempts + 1):
                stamped = time.monotonic()
                written = await attempt(seq)
                took = time.monotonic() - stamped
                if took <= deadline:
                    return written
                if writes == store.retry.attempts or time.monotonic() - started >= store.retry.max_elapsed:
                    break
                log.info("write answered after put_deadline; writing it again under a new time",
                         key=written[0], seconds=round(took, 3), put_deadline=deadline)
            raise EndpointUnreachable(
                f"PutObject {written[0]}: stored, but each of {writes} writes took longer than put_deadline "
                f"({deadline:g} s) from the time in its name; consumers may not see it",
                operation="PutObject",
            )

    def _stamp(self, server: ServerClock) -> int:
        """The time for a new name: the server's (or the given clock's), never before the last one, so
        one producer's names follow the order it wrote in."""
        now = int(self.clock() * 1000) if self.clock is not None else server.now_ms()
        self._last_ms = max(self._last_ms, now)
        return self._last_ms

    async def _sync_clock(self, store: Store, topic: Topic) -> None:
        """Make sure the server's clock for ``topic``'s bucket was read in the last ``CLOCK_REFRESH``
        seconds: by the answers to this process's requests (on the lean path each one's ``Date``
        narrows it), else a listing of one key, whose answer's ``Date`` is the time. A producer
        allowed to write but not to list falls back to this host's clock (and says so once) until the
        answers to its writes correct it."""
        if self.clock is not None:
            return
        server = store.server_clock(topic.bucket)
        if server.age() < CLOCK_REFRESH:
            return
        async with self._clock_lock:
            if server.age() < CLOCK_REFRESH:
                return
            try:
                sent = time.monotonic()
                page = await store.list_objects(topic.bucket, topic.shard_prefix(0), delimiter="/",
                                                max_keys=1)
            except AccessDenied as exc:
                if not server.known:
                    log.warning("cannot read the server's clock; names carry this host's time",
                                bucket=topic.bucket, error=str(exc))
                server.assume_local()
                return
            server.observe(page.server_time_ms, received=time.monotonic(), sent=sent)
