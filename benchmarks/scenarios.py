"""The benchmark scenarios: consume, produce and end-to-end latency, through s3stream's public API only.

Each scenario is an async function taking a :class:`Target` (an endpoint, or AWS when it is None, and a
bucket) and sizes, and returning a small dataclass of figures. ``benchmarks/run.py`` runs them against
the S3 emulator (whose ``seed`` writes a backlog without HTTP PUTs) side by side with the baselines;
``s3stream bench --bucket NAME`` runs them against a real bucket, writing backlogs with the Producer.

Requests are counted by a :class:`Meter`: :class:`MetricMeter` reads s3stream's own
``s3stream_s3_requests_total`` (every attempt, by operation); the emulator's meter reads its server-side
counts and CPU time. Consumers use default settings except a fresh group per run, S3 checkpoints.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from s3stream.cli.app import freeze_heap_when_started
from s3stream.config import S3Settings, Settings
from s3stream.layouts import segments
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import Layout, Topic, create_topic, log_key
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import open_store
from s3stream.service import metrics

BODY_SIZE = 1024
HANDLER = "bench"
SEED_CHUNK_BYTES = 16 << 20  # a seed call carries at most this much body text

Seeder = Callable[[str, list[dict[str, Any]], bool], None]
"""``seed(bucket, objects, versioned)``: bulk-load objects (``{"key", "body", "metadata"?}``)."""


class BenchError(RuntimeError):
    """A scenario did not complete (timeout, or the consumer stopped early)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where scenarios run: the store's settings, the bucket, and an optional bulk loader."""

    s3: S3Settings
    bucket: str
    seed: Seeder | None = None

    @classmethod
    def at(cls, endpoint: str | None, bucket: str, *, region: str = "us-east-1",
           seed: Seeder | None = None) -> Target:
        """A target at ``endpoint`` (path-style addressing) or at AWS when it is None."""
        s3 = S3Settings(endpoint_url=endpoint, region=region,
                        addressing_style="path" if endpoint else "auto")
        return cls(s3=s3, bucket=bucket, seed=seed)

    def url(self, topic: str) -> str:
        return f"s3://{self.bucket}/{topic}"

    def settings(self, *topics: str, consumer: dict[str, Any] | None = None,
                 producer: dict[str, Any] | None = None) -> Settings:
        """Settings on this target; consuming ``topics`` into the ``bench`` handler, if any."""
        data: dict[str, Any] = {"s3": self.s3, "consumer": consumer or {}, "producer": producer or {},
                                "sources": [{"url": self.url(t), "handler": HANDLER} for t in topics]}
        return Settings.model_validate(data)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a measured stretch cost: requests by operation, and the server's CPU when it is known."""

    requests: dict[str, int] = field(default_factory=dict)
    server_cpu_seconds: float | None = None
    throttled: int = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())


class Meter(Protocol):
    """Brackets a measurement: ``begin()`` before it, ``end()`` after it returns what it used."""

    def begin(self) -> None: ...

    def end(self) -> Usage: ...


class MetricMeter:
    """Counts the requests s3stream itself sent (``s3stream_s3_requests_total``) in this process."""

    def __init__(self) -> None:
        self._start: dict[str, float] = {}

    @staticmethod
    def snapshot() -> dict[str, float]:
        out: dict[str, float] = {}
        for family in metrics.S3_REQUESTS.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["operation"]] = sample.value
        return out

    def begin(self) -> None:
        self._start = self.snapshot()

    def end(self) -> Usage:
        now = self.snapshot()
        counts = {op: int(n - self._start.get(op, 0.0)) for op, n in now.items()}
        return Usage(requests={op: n for op, n in sorted(counts.items()) if n > 0})


@dataclass(frozen=True, slots=True)
class Backlog:
    """A topic holding ``messages`` messages in ``objects`` objects, ready to be consumed."""

    bucket: str
    topic: str
    layout: Layout
    messages: int
    objects: int
    shards: int = 1


@dataclass(frozen=True, slots=True)
class ProduceResult:
    """One producer run: ``messages`` published in ``objects`` PUTs."""

    messages: int
    objects: int
    seconds: float
    cpu_seconds: float  # this process's CPU (``time.process_time()``) over ``seconds``
    usage: Usage

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def object_rate(self) -> float:
        return self.objects / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6


@dataclass(frozen=True, slots=True)
class ConsumeResult(ProduceResult):
    """One consumer run over a backlog: timed from ``run()`` to the last message."""

    first_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Publish → handler latency of ``messages`` messages sent at ``rate`` per second."""

    messages: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    usage: Usage


def body(seq: int, size: int = BODY_SIZE, **fields: float) -> bytes:
    """A ``size``-byte JSON message: ``{"seq": N, ...fields, "pad": "xxx"}``."""
    head = orjson.dumps({"seq": seq, **fields})[:-1] + b', "pad": "'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def new_group() -> str:
    """A consumer group no run has used: it starts from the earliest message."""
    return f"bench-{uuid.uuid4().hex[:12]}"


def _message_key(seq: int) -> str:
    return f"m{seq:09d}-{secrets.token_hex(3)}"


def seed_objects(topic: Topic, messages: int, per_object: int) -> Iterator[dict[str, Any]]:
    """The objects s3stream's producer would write for ``messages`` keyless 1 KiB messages.

    versions layout: ``T/<shard>/<key>`` per message, keys hashed over the shards; log layout: one
    object (or a segment of ``per_object`` messages) per name ``log_key(...)``, in shard 0.
    """
    if topic.layout == "versions":
        for seq in range(messages):
            key = _message_key(seq)
            yield {"key": topic.shard_prefix(topic.shard_of(key)) + key, "body": body(seq).decode()}
        return
    producer, ms = secrets.token_hex(4), int(time.time() * 1000)
    suffix = segments.SUFFIXES["none"] if per_object > 1 else ""
    segment_text = segments.encode([(None, body(i)) for i in range(per_object)]).decode()
    for number, start in enumerate(range(0, messages, per_object), start=1):
        name = log_key(topic.shard_prefix(0), ms, producer, number, "_", suffix, span_ms=topic.span_ms)
        text = segment_text if per_object > 1 else body(start).decode()
        if per_object > 1 and messages - start < per_object:
            text = segments.encode([(None, body(i)) for i in range(messages - start)]).decode()
        yield {"key": name, "body": text}


async def prepare_backlog(target: Target, topic: str, *, layout: Layout, messages: int,
                          per_object: int = 1, shards: int = 1) -> Backlog:
    """Create ``topic`` and fill it: with the target's seeder when it has one, else with the Producer."""
    async with open_store(target.s3, max_connections=8) as store:
        meta = await create_topic(store, target.bucket, topic, shards=shards, layout=layout)
    objects = -(-messages // per_object) if layout == "log" else messages
    if target.seed is not None:
        await asyncio.to_thread(_seed_all, target, meta, messages, per_object)
    else:
        await produce(target, topic, messages=messages, per_object=per_object, create=False)
    return Backlog(target.bucket, topic, layout, messages, objects, shards)


def _seed_all(target: Target, topic: Topic, messages: int, per_object: int) -> None:
    assert target.seed is not None
    batch: list[dict[str, Any]] = []
    size = 0
    for obj in seed_objects(topic, messages, per_object):
        batch.append(obj)
        size += len(obj["body"])
        if size >= SEED_CHUNK_BYTES or len(batch) >= 1000:
            target.seed(target.bucket, batch, topic.layout == "versions")
            batch, size = [], 0
    if batch:
        target.seed(target.bucket, batch, topic.layout == "versions")


class _Counter:
    """The consume handler: counts messages and notes the time and CPU of the last one expected."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = self.last = self.cpu = 0.0
        self.done = asyncio.Event()

    async def handle(self, message: Message) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.perf_counter()
        if self.count == self.expected:
            self.last, self.cpu = time.perf_counter(), time.process_time()
            self.done.set()


async def measure_window(consumer: Consumer, meter: Meter, *, warmup: float, seconds: float, what: str,
                         ready: asyncio.Event | None = None, ready_within: float = 0.0) -> Usage:
    """Run ``consumer`` (once ``ready`` is set, if given) ``warmup`` seconds, then measure ``seconds``
    of its requests with ``meter``; stop it and return what the window cost."""
    measured = asyncio.Event()

    async def measure() -> None:
        if ready is not None:
            await asyncio.wait_for(ready.wait(), ready_within)
        await asyncio.sleep(warmup)
        meter.begin()
        await asyncio.sleep(seconds)

    clock = asyncio.create_task(measure())
    clock.add_done_callback(lambda _: measured.set())
    await run_until(consumer, measured, ready_within + warmup + seconds + 60, what)
    clock.result()
    return meter.end()


async def run_until(consumer: Consumer, done: asyncio.Event, time_limit: float, what: str) -> None:
    """Run ``consumer`` until ``done`` is set (or ``time_limit`` s pass: BenchError), then stop it."""
    task = asyncio.create_task(consumer.run())
    waiter = asyncio.create_task(done.wait())
    try:
        finished, _ = await asyncio.wait({task, waiter}, timeout=time_limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        if task in finished:
            task.result()
            raise BenchError(f"{what}: the consumer stopped before the end")
        if waiter not in finished:
            raise BenchError(f"{what}: not done within {time_limit:.0f}s")
    finally:
        waiter.cancel()
        consumer.stop()
        async with asyncio.timeout(60):
            await asyncio.gather(task, return_exceptions=True)


async def consume(target: Target, backlog: Backlog, *, group: str | None = None,
                  meter: Meter | None = None, time_limit: float = 600.0,
                  checkpoint: str = "s3") -> ConsumeResult:
    """Consume the whole backlog with a fresh group and otherwise default settings (S3 checkpoints)."""
    group = group or new_group()
    settings = target.settings(backlog.topic, consumer={"group": group, "checkpoint": {"store": checkpoint}})
    counter = _Counter(backlog.messages)
    consumer = Consumer(settings)
    consumer.register_handler(HANDLER, counter.handle)
    meter = meter or MetricMeter()
    meter.begin()
    cpu0, start = time.process_time(), time.perf_counter()
    await run_until(consumer, counter.done, time_limit, f"consuming {backlog.messages} messages")
    usage = meter.end()
    return ConsumeResult(messages=backlog.messages, objects=backlog.objects, seconds=counter.last - start,
                         first_seconds=counter.first - start, cpu_seconds=counter.cpu - cpu0, usage=usage)


async def produce(target: Target, topic: str, *, messages: int, per_object: int = 1,
                  layout: Layout = "log", shards: int = 1, concurrency: int = 32,
                  meter: Meter | None = None, time_limit: float = 600.0,
                  create: bool = True) -> ProduceResult:
    """Publish ``messages`` 1 KiB messages (keyed in the versions layout, so they spread over the
    shards; keyless in the log layout), one PUT each or in segments of ``per_object``."""
    producer_settings: dict[str, Any] = {"concurrency": concurrency}
    if per_object > 1:
        producer_settings.update(segment_max_messages=per_object, segment_max_bytes=per_object * 4096,
                                 linger=1.0)
    if create:
        async with open_store(target.s3, max_connections=4) as store:
            await create_topic(store, target.bucket, topic, shards=shards, layout=layout)
    async with Producer(target.settings(producer=producer_settings)) as producer:
        meta = await producer.topic(target.url(topic))
        meter = meter or MetricMeter()
        meter.begin()
        cpu0, start = time.process_time(), time.perf_counter()
        async with asyncio.timeout(time_limit):
            await _publish_all(producer, target.url(topic), meta, messages, concurrency * 2 + per_object * 8)
            await producer.flush()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        usage = meter.end()
    objects = -(-messages // per_object) if meta.layout == "log" else messages
    return ProduceResult(messages=messages, objects=objects, seconds=seconds, cpu_seconds=cpu, usage=usage)


PUBLISH_BATCH = 50_000  # messages per publish_many call: bounds the results list, not the speed


async def _publish_all(producer: Producer, url: str, topic: Topic, messages: int, workers: int) -> None:
    """Messages 0..messages-1: in batches through ``publish_many`` when segments are on (the bulk
    API, which cuts segments itself), else from ``workers`` tasks each calling ``publish``."""
    keyed = topic.layout == "versions"
    if producer.settings.producer.segment_max_messages > 1:
        for first in range(0, messages, PUBLISH_BATCH):
            batch = range(first, min(messages, first + PUBLISH_BATCH))
            await producer.publish_many(url, ((_message_key(n) if keyed else None, body(n)) for n in batch))
        return
    numbers = iter(range(messages))

    async def work() -> None:
        for seq in numbers:
            await producer.publish(url, body(seq), key=_message_key(seq) if keyed else None)

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(workers, messages)):
            tg.create_task(work())


class _Latencies:
    """The latency handler: receive time minus the send time carried in the body."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seconds: list[float] = []
        self.warm = asyncio.Event()
        self.done = asyncio.Event()

    async def handle(self, message: Message) -> None:
        now = time.time()
        sent = orjson.loads(message.body).get("sent")
        if sent is None:
            self.warm.set()
            return
        self.seconds.append(now - sent)
        if len(self.seconds) >= self.expected:
            self.done.set()


async def latency(target: Target, topic: str, *, layout: Layout, messages: int, rate: float = 200.0,
                  group: str | None = None, meter: Meter | None = None,
                  time_limit: float = 300.0,
                  consumer_settings: dict[str, Any] | None = None, dir_seconds: int = 10,
                  lead_in: float = 1.0) -> LatencyResult:
    """Publish ``messages`` at ``rate``/s (send time in the body) while a default-settings consumer
    (or one with ``consumer_settings``) runs; returns the percentiles of receive time minus send time.
    A log topic's directories span ``dir_seconds`` (the default of ``s3stream topic create``).
    A first message, not counted, makes sure the consumer is up before the clock starts; then the
    stream runs ``lead_in`` seconds before its messages count (and ``meter`` starts), so that a steady
    stream is measured, not the consumer waking up to it (the sporadic scenarios measure that)."""
    async with open_store(target.s3, max_connections=4) as store:
        await create_topic(store, target.bucket, topic, layout=layout,
                           dir_seconds=dir_seconds if layout == "log" else 10)
    group = group or new_group()
    recorder = _Latencies(messages)
    consumer = Consumer(target.settings(topic, consumer={**(consumer_settings or {}), "group": group}))
    consumer.register_handler(HANDLER, recorder.handle)
    meter = meter or MetricMeter()
    async with Producer(target.settings()) as producer:
        url = target.url(topic)
        await producer.publish(url, body(-1))

        async def publish_steadily() -> None:
            await asyncio.wait_for(recorder.warm.wait(), time_limit)
            await freeze_heap_when_started(consumer)  # as `s3stream consume` does
            await _publish_at_rate(producer, url, messages, rate, lead=round(lead_in * rate),
                                   counting=meter.begin)
            await asyncio.wait_for(recorder.done.wait(), time_limit)

        finished = asyncio.Event()
        sender = asyncio.create_task(publish_steadily())
        sender.add_done_callback(lambda _: finished.set())
        try:
            await run_until(consumer, finished, time_limit + messages / rate + 60, "latency")
        finally:
            gc.unfreeze()  # the next scenario starts as a fresh process would
        sender.result()
    usage = meter.end()
    ordered = sorted(recorder.seconds)
    return LatencyResult(messages=messages, rate=rate, p50_ms=percentile(ordered, 50) * 1000,
                         p99_ms=percentile(ordered, 99) * 1000, max_ms=ordered[-1] * 1000, usage=usage)


async def _publish_at_rate(producer: Producer, url: str, messages: int, rate: float, *, lead: int = 0,
                           counting: Callable[[], None] = lambda: None) -> None:
    """``lead`` messages that do not count (no send time), then ``messages`` that do, all at ``rate``;
    ``counting`` is called as the first counted one is sent."""
    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for seq in range(lead + messages):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if seq == lead:
                counting()
            counted = seq >= lead
            tg.create_task(producer.publish(url, body(seq - lead, sent=time.time()) if counted else body(-2)))


def percentile(ordered: list[float], pct: float) -> float:
    """The ``pct``-th percentile of sorted values (nearest rank)."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]
