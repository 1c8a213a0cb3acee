"""The producer: publish messages to a topic, one PUT each or batched into segments.

``async with Producer(settings) as p: await p.publish("s3://bucket/topic", body, key="k")``

* versions layout: a PUT to ``topic/<shard>/<key>``; each PUT is a new version of that key.
* log layout: a PUT of a new, unique, time-ordered name with ``If-None-Match: *``, so a PUT retried
  after a lost response can never store the message twice (a 412 on the retry means it is there).
  With ``segment_max_messages`` > 1, messages are gathered per shard into segment objects, flushed by
  count, size or ``linger``; ``publish`` returns once its segment is stored. Names, their times and
  slow writes: :mod:`s3stream.layouts.logwriter`.

One key's messages keep their order: ``publish_many`` stores a key's objects one after another, and a
shard's segments that hold keys are stored one at a time (the consumer handles them one at a time).

Bodies above ``multipart_threshold`` are uploaded in parts. PUTs in flight are bounded by
``concurrency``; throttling and 5xx answers are retried by the store's retry policy.

``codec``, ``framing`` and ``compression`` (:class:`~s3stream.integrations.codecs.Encoder`) shape what is
written:
a value that is not bytes goes through the codec (``json`` serialises it); framing ``lines`` writes
many messages per object, one a line (versions layout: ``publish_many`` writes one object per key;
log layout: where segments would be cut, an object of bare lines ``….jsonl`` replaces the segment's
envelope, so keys are not kept); compression marks plain objects with ``Content-Encoding`` and, on
log-layout names, ``.gz``/``.zst`` (a versions-layout key is yours and stays as given). Segments keep
their own format: their compression is in their name.

With ``[tracing] enabled``, the current span's trace context travels with each message (see
:mod:`s3stream.service.tracing` for where it is stored in each layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

from s3stream.config import Settings, parse_s3_url
from s3stream.integrations import codecs
from s3stream.layouts import segments
from s3stream.layouts.heads import HeadWriter
from s3stream.layouts.logwriter import LogWriter, put
from s3stream.layouts.topics import KEY_METADATA, SEGMENTS_LANE, Topic, lane_of, resolve_topic
from s3stream.s3.store import Store, open_store
from s3stream.service import metrics, tracing


@dataclass(slots=True)
class Published:
    """Where a message was stored: its object, and its line in a segment if it went into one."""

    key: str
    etag: str
    version_id: str | None = None
    offset: int | None = None


@dataclass
class _Batch:
    """A segment being filled by :meth:`Producer.publish_many`: its messages and their input positions."""

    shard: int
    items: list[tuple[str | None, bytes]] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    size: int = 0


@dataclass
class _Segment:
    topic: Topic
    shard: int
    items: list[tuple[str | None, bytes, asyncio.Future[Published]]] = field(default_factory=list)
    contexts: list[str | None] = field(default_factory=list)  # each message's traceparent (tracing on)
    size: int = 0
    timer: asyncio.Task[None] | None = None


class Producer:
    """Publishes to topics (``s3://bucket/topic``) or plain prefixes."""

    def __init__(self, settings: Settings | None = None, *, store: Store | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings or Settings()
        self._store = store
        self._stack = contextlib.AsyncExitStack()
        self._topics: dict[str, Topic] = {}
        self._slots = asyncio.Semaphore(self.settings.producer.concurrency)
        self._log = LogWriter(self.settings.producer, self._slots, clock)
        self._segments: dict[tuple[str, str, int], _Segment] = {}
        self._segment_locks: dict[tuple[str, str, int], asyncio.Lock] = {}
        self._round = -1
        p = self.settings.producer
        self.encoder = codecs.Encoder(p.codec, p.framing, p.compression)
        self._prepare = None if self.encoder.identity else self.encoder.prepare
        self._shaped = p.framing == "lines" or p.compression != "none"  # plain objects framed or compressed
        self._traced = self.settings.tracing.enabled
        self._heads = HeadWriter(self._write_head, producer=self.id, gap=p.head_gap) if p.heads else None

    async def __aenter__(self) -> Producer:
        if self._store is None:
            self._store = await self._stack.enter_async_context(
                open_store(self.settings.s3, max_connections=self.settings.producer.concurrency + 4)
            )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self.flush()
            if self._heads is not None:
                await self._heads.flush()
        finally:
            await self._stack.aclose()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("use the producer as `async with Producer(...) as p`")
        return self._store

    @property
    def id(self) -> str:
        """This producer's id in log-layout names (random, 120 bits)."""
        return self._log.id

    @property
    def clock(self) -> Callable[[], float] | None:
        """The clock naming log-layout objects (epoch seconds); None, the default: the server's."""
        return self._log.clock

    async def topic(self, url: str) -> Topic:
        """The topic at ``s3://bucket/name`` (metadata read once and cached)."""
        if url not in self._topics:
            bucket, prefix = parse_s3_url(url)
            self._topics[url] = await resolve_topic(self.store, bucket, prefix)
        return self._topics[url]

    async def publish(self, url: str, body: Any, *, key: str | None = None,
                      metadata: dict[str, str] | None = None) -> Published:
        """Publish one message and return once it is durably stored. ``body`` is bytes, or a value for
        the codec (raw and text: a str; json: any JSON value; csv: a record's fields)."""
        if self._prepare is None:
            data = body.encode("utf-8") if isinstance(body, str) else body
        else:
            data = self._prepare(body)
        topic = await self.topic(url)
        parent = tracing.traceparent() if self._traced else None
        if topic.layout == "versions":
            return await self._publish_version(topic, data, key, tracing.traced_metadata(metadata, parent))
        if self.settings.producer.segment_max_messages > 1 and not metadata:
            return await self._add_to_segment(topic, data, key, parent)
        return await self._publish_object(topic, data, key, tracing.traced_metadata(metadata, parent))

    async def publish_many(self, url: str, messages: Iterable[tuple[str | None, Any]]) -> list[Published]:
        """Publish ``(key, body)`` pairs concurrently (bounded); results in input order. One key's
        messages are stored one after another in input order, so they are delivered in that order.

        With segments on, the batch is cut into segments here, per shard, by count and size, and
        each segment is written as soon as it is full (at most ``concurrency`` being written, so
        memory stays bounded whatever the batch; segments holding keys one at a time per shard): no
        task or future per message."""
        topic = await self.topic(url)
        parent = tracing.traceparent() if self._traced else None
        if self._prepare is not None:  # bodies through the codec; a refused one is named by position
            messages = _prepared(self._prepare, messages)
        if topic.layout == "versions" and self.encoder.framing == "lines":
            return await self._publish_version_lines(topic, messages, parent)
        if topic.layout == "versions" or self.settings.producer.segment_max_messages <= 1:
            return await self._publish_each(url, list(messages))
        try:
            return await self._publish_segments(topic, messages, parent)
        except ExceptionGroup as group:  # a value the codec refused, raised inside the writers' TaskGroup
            first = group.exceptions[0]
            if isinstance(first, codecs.EncodeError):
                raise first from None
            raise

    async def _publish_each(self, url: str, pairs: list[tuple[str | None, Any]]) -> list[Published]:
        """One object per message: keys concurrently, each key's messages one after another (the
        next is written once the previous is stored, so no listing sees them out of order)."""
        results: list[Published] = [Published("", "")] * len(pairs)
        chains: dict[str, list[int]] = {}
        keyless: list[list[int]] = []
        for index, (key, _) in enumerate(pairs):
            if key is None:
                keyless.append([index])
            else:
                chains.setdefault(key, []).append(index)

        async def chain(indexes: list[int]) -> None:
            for index in indexes:
                key, body = pairs[index]
                results[index] = await self.publish(url, body, key=key)

        await asyncio.gather(*(chain(indexes) for indexes in [*chains.values(), *keyless]))
        return results

    async def flush(self) -> None:
        """Write every pending segment now."""
        pending = list(self._segments.values())
        self._segments.clear()
        await asyncio.gather(*(self._write_segment(seg) for seg in pending))

    async def _publish_version(self, topic: Topic, data: bytes, key: str | None,
                               metadata: dict[str, str] | None) -> Published:
        leaf = key if key is not None else uuid.uuid4().hex  # a keyless message lands on a random shard
        name = topic.shard_prefix(topic.shard_of(leaf)) + leaf
        stored, encoding = self._stored(data)
        etag, version = await self._put(topic.bucket, name, stored, create_only=False, metadata=metadata,
                                        content_encoding=encoding)
        self._published(topic, 1, len(data))
        return Published(key=name, etag=etag, version_id=version)

    async def _publish_version_lines(self, topic: Topic, messages: Iterable[tuple[str | None, bytes]],
                                     parent: str | None) -> list[Published]:
        """Framing ``lines``, versions layout: each key's (prepared) messages, in order, as one new
        version of the key (keyless ones share one randomly named object); a PUT per key, concurrently."""
        bodies: list[bytes] = []
        groups: dict[str | None, list[int]] = {}
        for index, (key, body) in enumerate(messages):
            groups.setdefault(key, []).append(index)
            bodies.append(body)
        results: list[Published] = [Published("", "")] * len(bodies)

        async def write(key: str | None, indexes: list[int]) -> None:
            leaf = key if key is not None else uuid.uuid4().hex
            name = topic.shard_prefix(topic.shard_of(leaf)) + leaf
            etag, version = await self._put(
                topic.bucket, name, self.encoder.body([bodies[i] for i in indexes]), create_only=False,
                metadata=tracing.traced_metadata(None, parent),
                content_encoding=self.encoder.content_encoding,
            )
            for offset, index in enumerate(indexes):
                results[index] = Published(name, etag, version, offset)

        await asyncio.gather(*(write(key, indexes) for key, indexes in groups.items()))
        self._published(topic, len(bodies), sum(map(len, bodies)))
        return results

    async def _publish_object(self, topic: Topic, data: bytes, key: str | None,
                              metadata: dict[str, str] | None) -> Published:
        shard = self._shard(topic, key)
        meta = dict(metadata or {})
        if key is not None:
            meta[KEY_METADATA] = quote(key, safe="")
        stored, encoding = self._stored(data)
        name, etag, version = await self._log.write(self.store, topic, shard, lane_of(key),
                                                    self.encoder.suffix, stored, metadata=meta,
                                                    content_encoding=encoding)
        self._published(topic, 1, len(data))
        return Published(key=name, etag=etag, version_id=version)

    async def _add_to_segment(self, topic: Topic, data: bytes, key: str | None,
                              parent: str | None = None) -> Published:
        shard = self._shard(topic, key)
        ident = (topic.bucket, topic.name, shard)
        seg = self._segments.get(ident)
        if seg is None:
            seg = self._segments[ident] = _Segment(topic, shard)
            seg.timer = asyncio.create_task(self._linger(ident, seg))
        future: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        seg.items.append((key, data, future))
        seg.contexts.append(parent)
        seg.size += len(data) + 32
        settings = self.settings.producer
        if len(seg.items) >= settings.segment_max_messages or seg.size >= settings.segment_max_bytes:
            del self._segments[ident]
            await self._write_segment(seg)
        return await future

    async def _publish_segments(self, topic: Topic, messages: Iterable[tuple[str | None, bytes | str]],
                                parent: str | None = None) -> list[Published]:
        settings = self.settings.producer
        results: list[Published | None] = []
        open_: dict[int, _Batch] = {}
        window = asyncio.Semaphore(settings.concurrency)
        async with asyncio.TaskGroup() as tg:

            async def write(batch: _Batch) -> None:
                try:
                    contexts: list[str | None] | None = None if parent is None else [parent] * len(
                        batch.items)
                    name, etag = await self._store_segment(topic, batch.shard, batch.items, contexts)
                finally:
                    window.release()
                for offset, index in enumerate(batch.indexes):
                    results[index] = Published(name, etag, None, offset)

            for key, body in messages:
                data = body.encode("utf-8") if isinstance(body, str) else body
                shard = self._shard(topic, key)
                batch = open_.get(shard)
                if batch is None:
                    batch = open_[shard] = _Batch(shard)
                batch.items.append((key, data))
                batch.indexes.append(len(results))
                results.append(None)
                batch.size += len(data) + 32
                full = len(batch.items) >= settings.segment_max_messages
                if full or batch.size >= settings.segment_max_bytes:
                    del open_[shard]
                    await window.acquire()
                    tg.create_task(write(batch))
            for batch in open_.values():
                await window.acquire()
                tg.create_task(write(batch))
        return [r for r in results if r is not None]

    async def _store_segment(self, topic: Topic, shard: int, items: list[tuple[str | None, bytes]],
                             contexts: list[str | None] | None = None) -> tuple[str, str]:
        """Encode and write one segment (framing ``lines``: an object of bare lines instead); returns its
        object name and ETag. A segment holding keys takes the shard's segment lane, and the shard's
        such segments are written one at a time, in the order they were cut: the consumer handles them
        one after another, so each key's messages keep their order across segments."""
        if all(key is None for key, _ in items):
            return await self._write_segment_object(topic, shard, items, "_", contexts)
        lock = self._segment_locks.setdefault((topic.bucket, topic.name, shard), asyncio.Lock())
        async with lock:
            return await self._write_segment_object(topic, shard, items, SEGMENTS_LANE, contexts)

    async def _write_segment_object(self, topic: Topic, shard: int, items: list[tuple[str | None, bytes]],
                                    lane: str, contexts: list[str | None] | None = None) -> tuple[str, str]:
        compression = self.settings.producer.compression
        meta = None
        if self.encoder.framing == "lines":  # bare lines: a trace context only if all share one
            suffix = self.encoder.suffix
            body, encoding = self.encoder.body([b for _, b in items]), self.encoder.content_encoding
            if contexts and len(set(contexts)) == 1:
                meta = tracing.traced_metadata(None, contexts[0])
        else:
            suffix = segments.SUFFIXES[compression]
            body, encoding = segments.encode(items, compression, contexts), None
        name, etag, _ = await self._log.write(self.store, topic, shard, lane, suffix, body, metadata=meta,
                                              content_encoding=encoding)
        self._published(topic, len(items), sum(len(b) for _, b in items))
        return name, etag

    async def _linger(self, ident: tuple[str, str, int], seg: _Segment) -> None:
        await asyncio.sleep(self.settings.producer.linger)
        if self._segments.get(ident) is seg:
            del self._segments[ident]
            await self._write_segment(seg)

    async def _write_segment(self, seg: _Segment) -> None:
        if seg.timer is not None and seg.timer is not asyncio.current_task():
            seg.timer.cancel()
        try:
            contexts = seg.contexts if any(seg.contexts) else None
            name, etag = await self._store_segment(seg.topic, seg.shard, [(k, b) for k, b, _ in seg.items],
                                                   contexts)
        except BaseException as exc:
            for _, _, future in seg.items:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for offset, (_, _, future) in enumerate(seg.items):
            if not future.done():
                future.set_result(Published(key=name, etag=etag, offset=offset))

    def _published(self, topic: Topic, messages: int, size: int) -> None:
        """Messages of ``topic`` were stored (their PUTs answered): count them and touch the topic's head."""
        _count(topic, messages, size)
        if self._heads is not None:
            self._heads.touch(topic.bucket, topic.name)

    async def _write_head(self, bucket: str, key: str, body: bytes) -> None:
        await self.store.put_object(bucket, key, body, content_type="application/json")

    def _shard(self, topic: Topic, key: str | None) -> int:
        """A key's shard; keyless messages (which promise no order) go round the shards."""
        if key is not None or topic.shards == 1:
            return topic.shard_of(key)
        self._round = (self._round + 1) % topic.shards
        return self._round

    def _stored(self, data: bytes) -> tuple[bytes, str | None]:
        """A one-message plain object's bytes and Content-Encoding: framed and compressed as set."""
        if not self._shaped:
            return data, None
        return self.encoder.body([data]), self.encoder.content_encoding

    async def _put(self, bucket: str, name: str, data: bytes, *, create_only: bool,
                   metadata: dict[str, str] | None,
                   content_encoding: str | None = None) -> tuple[str, str | None]:
        async with self._slots:
            return await put(self.store, self.settings.producer, bucket, name, data, create_only=create_only,
                             metadata=metadata, content_encoding=content_encoding)


def _prepared(prepare: Callable[[Any], bytes],
              messages: Iterable[tuple[str | None, Any]]) -> Iterable[tuple[str | None, bytes]]:
    """``messages`` with each body through the codec; a refused one names its position."""
    for index, (key, body) in enumerate(messages):
        try:
            yield key, prepare(body)
        except codecs.EncodeError as exc:
            raise codecs.EncodeError(f"message {index}: {exc}") from None


def _count(topic: Topic, messages: int, size: int) -> None:
    metrics.MESSAGES_PRODUCED.labels(topic=topic.name, bucket=topic.bucket).inc(messages)
    metrics.BYTES_PRODUCED.labels(topic=topic.name, bucket=topic.bucket).inc(size)
