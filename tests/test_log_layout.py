"""The log layout consumed with ListObjectsV2: on moto and through a proxy with S3 Express
directory-bucket semantics (shuffled listings, no StartAfter, no ListObjectVersions)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
import pytest
from aiohttp import web

from s3stream.config import build_settings
from s3stream.layouts.logcursor import HOT_MS, LogCheckpoint, LogCursor
from s3stream.layouts.logpoller import LogPoller
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import CONTROL_PREFIX, MINUTE_MS, create_topic, parse_log_key
from s3stream.pipeline.checkpoint import MemoryCheckpointStore, decode
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.handlers import as_handler
from s3stream.pipeline.shard import Shard
from s3stream.pipeline.workers import WorkerPool
from s3stream.s3.s3xml import ObjectPage
from s3stream.s3.store import Store, open_store
from s3stream.service.deadletter import DeadLetter, iter_dead_letters
from tests.conftest import Recorder, make_settings, running, wait_until
from tests.s3proxy import Delay, Relayed, Rule, S3Error, S3Proxy, Transform, directory_bucket_rules


def _producer(endpoint: str, *, behind: float = 0.0, **producer: object) -> Producer:
    settings = build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"},
                               "producer": producer})
    return Producer(settings, clock=(lambda: time.time() - behind) if behind else None)


@pytest.fixture
def express(moto_endpoint: str) -> Iterator[S3Proxy]:
    """moto behind a proxy that answers like an S3 Express One Zone directory bucket."""
    with S3Proxy(moto_endpoint, directory_bucket_rules(seed=11)) as proxy:
        yield proxy


def _per_key_in_order(rec: Recorder, expected: dict[str, list[bytes]]) -> None:
    got: dict[str, list[bytes]] = {}
    for m in rec.messages:
        got.setdefault(m.partition_key or "", []).append(m.body)
    assert got == expected


async def test_log_topic_on_directory_bucket_semantics(store: Store, bucket: str, moto_endpoint: str,
                                                       express: S3Proxy) -> None:
    """Two producers write 300 keyed messages to a 4-shard log topic through a directory-bucket
    proxy; the consumer (also through it) delivers each exactly once, each key in publish order,
    without ever asking for ListObjectVersions or StartAfter."""
    await create_topic(store, bucket, "ev", shards=4, layout="log")
    consumer = Consumer(make_settings(express.endpoint, f"s3://{bucket}/ev", concurrency=16))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    expected: dict[str, list[bytes]] = {}

    async def produce(tag: str) -> None:
        async with _producer(express.endpoint) as p:
            for i in range(15):
                for k in range(10):
                    key = f"{tag}-{k}"
                    expected.setdefault(key, []).append(f"{key}#{i}".encode())
                    await p.publish(f"s3://{bucket}/ev", f"{key}#{i}", key=key)

    async with running(consumer):
        await asyncio.gather(produce("a"), produce("b"))
        await rec.wait_count(300)
    assert len(rec.messages) == 300
    _per_key_in_order(rec, expected)
    asked = " ".join(path for _, path, _ in express.requests)
    assert "versions" not in asked
    assert "start-after" not in asked


async def test_producer_clock_behind_lands_in_older_directory_and_is_delivered(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """A producer given a clock 40 s behind (its own, instead of the server's) writes into an older
    minute directory; with a 60 s settle window that directory is still open and it is delivered."""
    await create_topic(store, bucket, "skew", layout="log")
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/skew", settle_window=60))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer), _producer(moto_endpoint) as on_time, \
            _producer(moto_endpoint, behind=40) as late:
        await on_time.publish(f"s3://{bucket}/skew", "now-1")
        await rec.wait_count(1)
        behind = await late.publish(f"s3://{bucket}/skew", "behind")
        await on_time.publish(f"s3://{bucket}/skew", "now-2")
        await rec.wait_count(3)
    assert sorted(m.body for m in rec.messages) == [b"behind", b"now-1", b"now-2"]
    assert any(m.key == behind.key for m in rec.messages)


async def test_producer_clock_beyond_settle_window_is_the_documented_bound(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """A producer given a clock 10 minutes behind (its own, instead of the server's) writes into a
    directory already sealed under a 5 s window: it is not delivered, which is the bound docs/s3-express.md
    documents for a producer that cannot read the server's clock."""
    await create_topic(store, bucket, "bound", layout="log")
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/bound", settle_window=5))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer), _producer(moto_endpoint) as on_time, \
            _producer(moto_endpoint, behind=600) as late:
        await wait_until(lambda: consumer.shards[0].cursor.horizon_ms > 0, what="first pass")
        await late.publish(f"s3://{bucket}/bound", "too-late")
        await on_time.publish(f"s3://{bucket}/bound", "after")
        written_ms = time.time() * 1000
        await rec.wait_count(1)
        await wait_until(lambda: consumer.shards[0].cursor.horizon_ms >= written_ms,
                         what="a pass that started after both writes")
    assert [m.body for m in rec.messages] == [b"after"]


async def test_slow_put_is_delivered(store: Store, bucket: str, moto_endpoint: str) -> None:
    """A PUT held back 3 s by the network becomes visible after later messages; it is delivered."""
    await create_topic(store, bucket, "slow", layout="log")
    rule = Rule(Delay(3.0), method="PUT", when=lambda r: "/slow/" in r.path, first=1)
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/slow", settle_window=30))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer), _producer(proxy.endpoint) as p:
            slow = asyncio.create_task(p.publish(f"s3://{bucket}/slow", "slow"))
            await wait_until(lambda: rule.applied == 1, what="slow PUT under way")
            for i in range(5):
                await p.publish(f"s3://{bucket}/slow", f"fast-{i}")
            await rec.wait_count(5)
            await slow
            await rec.wait_count(6)
    assert rec.messages[-1].body == b"slow"


async def test_segments_are_split_into_messages(store: Store, bucket: str, moto_endpoint: str) -> None:
    """zstd segments of up to 50 messages are split back into 120 messages, each with its key and
    its offset inside the segment object, in order."""
    await create_topic(store, bucket, "segs", shards=2, layout="log")
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/segs"))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer), _producer(moto_endpoint, segment_max_messages=50,
                                            compression="zstd") as p:
        await p.publish_many(f"s3://{bucket}/segs", [(f"k{i % 7}", f"m{i}") for i in range(120)])
        await rec.wait_count(120)
    assert sorted(m.body for m in rec.messages) == sorted(f"m{i}".encode() for i in range(120))
    for key in {m.key for m in rec.messages}:
        offsets = [m.offset for m in rec.messages if m.key == key]
        assert offsets == list(range(len(offsets)))
    assert {m.partition_key for m in rec.messages} == {f"k{i}" for i in range(7)}


async def test_restart_resumes_without_redelivery_and_state_stays_small(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """History written 5 minutes ago is delivered to a new group, its directories are sealed and
    dropped from the checkpoint; after a restart only new messages arrive."""
    await create_topic(store, bucket, "hist", layout="log")
    async with _producer(moto_endpoint, behind=300) as old:
        await old.publish_many(f"s3://{bucket}/hist", [(None, f"old-{i}") for i in range(40)])
    settings = make_settings(moto_endpoint, f"s3://{bucket}/hist", settle_window=1)
    first = Consumer(settings)
    rec1 = Recorder()
    first.register_handler("rec", rec1)
    key = ""
    async with running(first):
        await rec1.wait_count(40)
        cursor = first.shards[0].cursor
        await wait_until(lambda: cursor.watermark_ms > time.time() * 1000 - 4 * MINUTE_MS,
                         what="old directories sealed")
        key = first.shards[0].checkpoints.key  # type: ignore[attr-defined]
    saved = decode((await store.get_object(bucket, key)).body, where=key)
    assert isinstance(saved, LogCheckpoint)
    assert saved.sealed_ms > time.time() * 1000 - 4 * MINUTE_MS
    assert all(d >= saved.sealed_ms for d, _, _ in saved.done)

    second = Consumer(settings)
    rec2 = Recorder()
    second.register_handler("rec", rec2)
    async with running(second), _producer(moto_endpoint) as p:
        await p.publish(f"s3://{bucket}/hist", "new")
        written_ms = time.time() * 1000
        await rec2.wait_count(1)
        await wait_until(lambda: second.shards[0].cursor.horizon_ms >= written_ms,
                         what="a pass that started after the write")
    assert [m.body for m in rec2.messages] == [b"new"]
    assert len(rec1.messages) == 40


async def test_one_shot_producers_never_share_an_identity(
    store: Store, bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty one-shot producers (a `Producer` per message, as `s3stream publish` is) whose random
    ids agree in their first 32 bits, which among some 10^5 producers with 32-bit ids is certain,
    publish into the same minute directory in two rounds. Every message is delivered: two different
    objects never share an identity, so none is taken for one already handled."""
    await create_topic(store, bucket, "oneshot", layout="log")
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/oneshot", settle_window=60))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    minute = time.time()  # every name in one directory, kept open by the 60 s window
    drawn = iter(range(1, 1000))

    def same_first_32_bits(n: int) -> bytes:
        tail = next(drawn).to_bytes(8, "big")[-max(0, n - 4):] if n > 4 else b""
        return b"\x5a\x5a\x5a\x5a" + tail

    async def one_shot(body: str) -> None:
        with monkeypatch.context() as patched:
            patched.setattr(secrets, "token_bytes", same_first_32_bits)
            producer = Producer(store=store, clock=lambda: minute)
        async with producer:
            await producer.publish(f"s3://{bucket}/oneshot", body)

    async with running(consumer):
        for i in range(10):
            await one_shot(f"first-{i}")
        await rec.wait_count(10)
        for i in range(10):
            await one_shot(f"second-{i}")
        await rec.wait_count(20, within=15)
    assert sorted(m.body for m in rec.messages) == sorted(
        f"{r}-{i}".encode() for r in ("first", "second") for i in range(10))


def _server_clock_moved(seconds: float) -> Rule:
    """Every answer's ``Date`` moved by ``seconds``: the server's clock is that far from this host's
    (a host whose clock runs an hour fast sees a server an hour behind)."""

    def move(_request: object, response: Relayed) -> Relayed:
        headers = tuple(
            (k, format_datetime(parsedate_to_datetime(v) + timedelta(seconds=seconds), usegmt=True))
            if k.lower() == "date" else (k, v)
            for k, v in response.headers
        )
        return dataclasses.replace(response, headers=headers)

    return Rule(Transform(move))


@pytest.mark.parametrize(("host_ahead", "start_from"), [
    (3600, "latest"), (3600, "earliest"), (-3600, "latest"),
])
async def test_new_group_takes_its_times_from_the_server(
    store: Store, bucket: str, moto_endpoint: str, host_ahead: int, start_from: str
) -> None:
    """On hosts whose clock runs an hour ahead of (or behind) the server, a new group (latest, or
    earliest on an empty topic) starts at the server's time and a producer names its objects with
    the server's time: everything published after the group's first pass is delivered."""
    await create_topic(store, bucket, "skewed", layout="log")
    with S3Proxy(moto_endpoint, [_server_clock_moved(-host_ahead)]) as proxy:
        consumer = Consumer(make_settings(proxy.endpoint, f"s3://{bucket}/skewed", start_from=start_from))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer), _producer(proxy.endpoint) as p:
            await wait_until(lambda: consumer.shards[0].cursor.horizon_ms > 0, what="first pass")
            published = [await p.publish(f"s3://{bucket}/skewed", f"m{i}") for i in range(3)]
            await rec.wait_count(3, within=15)
    assert sorted(_identity(m.key) for m in rec.messages) == sorted(_identity(r.key) for r in published)


def _server_clock_set(seconds_to_minute_end: float) -> tuple[Rule, float]:
    """A Date rule putting the server's clock ``seconds_to_minute_end`` before the end of a minute now,
    and that minute's end (server time, epoch ms)."""
    now = time.time()
    end = (now // 60 + 2) * 60
    shift = end - seconds_to_minute_end - now
    return _server_clock_moved(shift), end * 1000


async def test_publish_retried_past_the_settle_window_is_delivered(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """A publish started seconds before the end of a minute is answered 503 SlowDown until the
    consumer (settle window 2 s) has sealed that minute's directory; the producer keeps retrying and
    the publish succeeds. It is delivered: the object was named again before a later attempt, so it
    landed in a directory still open, not in the sealed one."""
    await create_topic(store, bucket, "late", layout="log")
    clock, minute_end = _server_clock_set(15.0)  # room for a slow first pass on a loaded machine
    busy = Rule(S3Error(503, "SlowDown"), method="PUT", when=lambda r: f"/{bucket}/late/" in r.path)
    with S3Proxy(moto_endpoint, [busy, clock]) as proxy:
        consumer = Consumer(make_settings(proxy.endpoint, f"s3://{bucket}/late", settle_window=2))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        settings = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path",
                                          "max_attempts": 100},
                                   "producer": {"put_deadline": 1.0}})
        async with running(consumer), Producer(settings) as p:
            await wait_until(lambda: consumer.shards[0].cursor.horizon_ms > 0, what="first pass")
            publish = asyncio.create_task(p.publish(f"s3://{bucket}/late", "late"))
            await wait_until(lambda: busy.applied > 0, what="first PUT refused")
            await wait_until(lambda: consumer.shards[0].cursor.watermark_ms >= minute_end,
                             what="the first attempt's directory sealed")
            proxy.rules.remove(busy)
            published = await publish
            await rec.wait_count(1, within=15)
    first_put = next(path for method, path, _ in proxy.requests if method == "PUT" and "/late/" in path)
    first_name = parse_log_key(first_put)
    assert first_name is not None
    assert first_name.dir_ms < minute_end  # named in a directory the consumer has sealed since
    assert [m.body for m in rec.messages] == [b"late"]
    assert [_identity(m.key) for m in rec.messages] == [_identity(published.key)]  # or a copy of it


def _identity(key: str) -> tuple[str, int]:
    name = parse_log_key(key)
    assert name is not None
    return name.producer, name.seq


async def test_put_answered_after_the_deadline_is_written_again_and_delivered_once(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """A PUT that is stored at once but answered only after put_deadline may have landed too late
    for all the producer knows: it is written again under a new time. Both copies are stored; the
    consumer delivers the message once, and nothing more after a later pass."""
    await create_topic(store, bucket, "twice", layout="log")
    slow = Rule(Delay(2.0, after=True), method="PUT", when=lambda r: "/twice/" in r.path, first=1)
    with S3Proxy(moto_endpoint, [slow]) as proxy:
        consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/twice", settle_window=5))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        settings = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"},
                                   "producer": {"put_deadline": 0.5}})
        async with running(consumer), Producer(settings) as p:
            published = await p.publish(f"s3://{bucket}/twice", "once", key="k")
            written_ms = time.time() * 1000
            await rec.wait_count(1)
            await wait_until(lambda: consumer.shards[0].cursor.horizon_ms >= written_ms + 1000,
                             what="a pass that started after both copies were stored")
    copies = [e.key for e in (await store.list_objects(bucket, "twice/")).entries]
    assert len(copies) == 2
    assert published.key in copies
    assert [m.body for m in rec.messages] == [b"once"]


async def test_one_keys_segments_are_handled_in_order(store: Store, bucket: str, moto_endpoint: str) -> None:
    """One key's messages in three segments: the consumer's first fetch of a segment is held back a
    second, yet the key's messages reach the handler in publish order, one segment after another."""
    await create_topic(store, bucket, "segorder", layout="log")
    held = Rule(Delay(1.0), method="GET", when=lambda r: ".seg.jsonl" in r.path, first=1)
    with S3Proxy(moto_endpoint, [held]) as proxy:
        consumer = Consumer(make_settings(proxy.endpoint, f"s3://{bucket}/segorder", concurrency=8))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with _producer(moto_endpoint, segment_max_messages=4) as p:
            await p.publish_many(f"s3://{bucket}/segorder", [("k", f"m{i}") for i in range(12)])
        async with running(consumer):
            await rec.wait_count(12)
    assert held.applied == 1
    assert [m.body for m in rec.messages] == [f"m{i}".encode() for i in range(12)]


async def test_publish_many_keeps_each_keys_order_when_a_write_is_slow(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """publish_many of one key's ten messages (one object each) while the first PUT is held back a
    second by the network: the consumer, running meanwhile, still delivers them in input order."""
    await create_topic(store, bucket, "manyorder", layout="log")
    held = Rule(Delay(1.0), method="PUT", when=lambda r: "/manyorder/" in r.path, first=1)
    with S3Proxy(moto_endpoint, [held]) as proxy:
        consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/manyorder"))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer), _producer(proxy.endpoint) as p:
            await p.publish_many(f"s3://{bucket}/manyorder", [("k", f"m{i}") for i in range(10)])
            await rec.wait_count(10)
    assert held.applied == 1
    assert [m.body for m in rec.messages] == [f"m{i}".encode() for i in range(10)]


async def test_directories_span_what_the_topic_says(store: Store, bucket: str, s3_endpoint: str) -> None:
    """A new log topic's messages, named 25, 15 and 5 s ago, land in three ten-second directories
    (``yyyymmddHHMMSS``); a topic whose metadata predates shorter directories (no ``dir_seconds``)
    keeps minute directories (``yyyymmddHHMM``). A consumer of each delivers all three."""
    await create_topic(store, bucket, "short", layout="log")
    before = {"format": 1, "name": "minutes", "layout": "log", "shards": 1, "created_ms": 1}
    await store.put_object(bucket, f"{CONTROL_PREFIX}/topics/minutes.json", orjson.dumps(before))
    stamp = [0.0]  # the time the producer names its next object with
    for name, digits in (("short", 14), ("minutes", 12)):
        async with Producer(store=store, clock=lambda: stamp[0]) as p:
            published = []
            for ago in (25, 15, 5):
                stamp[0] = time.time() - ago
                published.append((await p.publish(f"s3://{bucket}/{name}", f"{name}-{ago}")).key)
        dirs = {key.split("/")[2] for key in published}
        assert {len(d) for d in dirs} == {digits}
        if digits == 14:
            assert len(dirs) == 3
            assert all(d.endswith("0") for d in dirs)  # each starts on a ten-second boundary
        consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/{name}"))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer):
            await rec.wait_count(3)
        assert sorted(m.key for m in rec.messages) == sorted(published)


@pytest.mark.chaos
async def test_writes_landing_seconds_late_in_older_directories_are_delivered(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """Half the PUTs of a 20 s stream reach the server 6 or 7 s after the producer named them (a
    seeded choice; the seed is printed). Many land in a ten-second directory that ended more than
    3 s before, which a pass no longer lists every time, only every 5 s. Every message is delivered,
    once, within 10 s of the last publish: by those listings, not by the one that seals a directory
    after the settle window (30 s)."""
    seed = int(os.environ.get("S3STREAM_CHAOS_SEED") or random.randrange(1_000_000))
    print(f"S3STREAM_CHAOS_SEED={seed}")
    topic = await create_topic(store, bucket, "strag", layout="log")
    slow = [Rule(Delay(seconds), method="PUT", when=lambda r: "/strag/" in r.path, fraction=0.25,
                 seed=seed + i) for i, seconds in enumerate((6.0, 7.0))]
    with S3Proxy(moto_endpoint, slow) as proxy:
        consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/strag", settle_window=30))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer), _producer(proxy.endpoint) as p:
            async with asyncio.TaskGroup() as tg:
                sends = []
                for i in range(80):  # a workload spread over 20 s, not a wait
                    sends.append(tg.create_task(p.publish(f"s3://{bucket}/strag", f"m{i}")))
                    await asyncio.sleep(0.25)
            published = [s.result() for s in sends]  # every write has landed
            await rec.wait_count(80, within=10)
    stored = {e.key: e.last_modified_ms for e in (await store.list_all_objects(bucket, "strag/"))[0]}
    late = [k for k in stored if (n := parse_log_key(k)) is not None
            and stored[k] - (n.dir_ms + topic.span_ms) > HOT_MS]
    assert late, f"seed {seed}: no write landed in a directory that had ended {HOT_MS} ms before"
    assert sorted(_identity(m.key) for m in rec.messages) == sorted(_identity(r.key) for r in published)


async def test_a_pass_after_silence_lists_every_open_directory_at_once(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """After a silence every open directory is due at once: six or seven with ten-second directories
    and the default 30 s settle window. A pass lists all their first pages together, so a message in
    the newest waits for one listing, not two in turn: each directory's LIST is answered a second
    late, and every one of them reaches the server before the first is answered."""
    topic = await create_topic(store, bucket, "quiet", layout="log")
    arrived: list[float] = []

    def first_page(request: web.Request) -> bool:  # a directory's listing (their names begin 20...)
        if "list-type" in request.query and request.query.get("prefix", "").startswith("quiet/00/2"):
            arrived.append(time.monotonic())
            return True
        return False

    with S3Proxy(moto_endpoint, [Rule(Delay(1.0), method="GET", when=first_page)]) as proxy:
        settings = make_settings(proxy.endpoint, f"s3://{bucket}/quiet", settle_window=30)
        async with open_store(settings.s3) as proxied:
            cursor = LogCursor("quiet/00/", span_ms=topic.span_ms)
            now_ms = int(time.time() * 1000)
            cursor.sealed_ms = now_ms - now_ms % topic.span_ms - 5 * topic.span_ms  # 50 s of open directories
            shard = Shard(bucket=bucket, prefix="quiet/00/", handler=as_handler(Recorder(), "rec"),
                          checkpoints=MemoryCheckpointStore(), cursor=cursor, layout="log", fresh=False)
            poller = LogPoller(shard, cursor, proxied, WorkerPool(proxied, queue_size=10, handler_attempts=1),
                               settings.consumer, lambda: None)
            assert await poller.poll_once() == 0
    assert len(arrived) >= 6
    assert max(arrived) - min(arrived) < 0.5, f"listed in turn: {[round(t - arrived[0], 2) for t in arrived]}"


@pytest.mark.parametrize("ordered", [True, False], ids=["key-ordered", "unordered"])
async def test_a_crowded_directory_is_handed_out_in_bounded_parts(
    store: Store, bucket: str, moto_endpoint: str, express: S3Proxy, ordered: bool
) -> None:
    """500 objects of five keys in one directory, listed 50 to a page and shuffled within
    pages as a directory bucket would: one pass holding at most 100 listed objects (plus a page)
    hands each out once, each key's in publish order, by pausing a key-ordered listing, or by
    listing an unordered one again for the next part."""
    topic = await create_topic(store, bucket, "crowd", layout="log")
    minute = time.time()
    async with Producer(store=store, clock=lambda: minute) as p:
        await p.publish_many(f"s3://{bucket}/crowd", [(f"k{i % 5}", str(i)) for i in range(500)])
    settings = make_settings(express.endpoint, f"s3://{bucket}/crowd", page_size=50, settle_window=60)
    async with open_store(settings.s3) as proxied:
        pool = WorkerPool(proxied, queue_size=1000, handler_attempts=1)
        cursor = LogCursor("crowd/00/", span_ms=topic.span_ms)
        shard = Shard(bucket=bucket, prefix="crowd/00/", handler=as_handler(Recorder(), "rec"),
                      checkpoints=MemoryCheckpointStore(), cursor=cursor, layout="log")
        poller = LogPoller(shard, cursor, proxied, pool, settings.consumer, lambda: None)
        poller.held_limit, poller.ordered_listing = 100, ordered
        assert await poller.poll_once() == 500
    handed = [pool.queue.get_nowait().entry for _ in range(pool.queue.qsize())]
    assert len({e.key for e in handed}) == 500
    assert poller.peak_held <= 100 + 50
    bodies = {e.key: int((await store.get_object(bucket, e.key)).body) for e in handed}
    for k in range(5):
        lane = [bodies[e.key] for e in handed if bodies[e.key] % 5 == k]
        assert lane == sorted(lane)


async def test_a_directory_listed_again_reads_only_what_is_new(
    store: Store, bucket: str, moto_endpoint: str, express: S3Proxy
) -> None:
    """After a pass handed out a directory's 300 objects, the next passes list it whole (a directory
    bucket has no StartAfter) but the listings leave those 300 out unread: the passes after 3 more
    writes to the same directory list and hand out exactly those 3 (a directory that ended 250 ms
    ago is listed every 250 ms, so that may take more than one pass), and the poller remembers all
    303 keys of the open directory."""
    await create_topic(store, bucket, "again", layout="log")
    minute = time.time()
    async with Producer(store=store, clock=lambda: minute) as p:
        await p.publish_many(f"s3://{bucket}/again", [(None, str(i)) for i in range(300)])
    settings = make_settings(express.endpoint, f"s3://{bucket}/again", page_size=100, settle_window=60)
    async with open_store(settings.s3) as proxied:
        pool = WorkerPool(proxied, queue_size=1000, handler_attempts=1)
        cursor = LogCursor("again/00/", span_ms=10_000)
        shard = Shard(bucket=bucket, prefix="again/00/", handler=as_handler(Recorder(), "rec"),
                      checkpoints=MemoryCheckpointStore(), cursor=cursor, layout="log")
        poller = LogPoller(shard, cursor, proxied, pool, settings.consumer, lambda: None)
        assert await poller.poll_once() == 300
        seen: list[int] = []
        listed = proxied.list_objects

        async def counting(*args: Any, **kwargs: Any) -> ObjectPage:
            page = await listed(*args, **kwargs)
            seen.append(len(page.entries))
            return page

        proxied.list_objects = counting  # type: ignore[method-assign]
        async with Producer(store=store, clock=lambda: minute) as p:
            await p.publish_many(f"s3://{bucket}/again", [(None, f"late {i}") for i in range(3)])
        found = 0
        async with asyncio.timeout(10):
            while found < 3:
                found += await poller.poll_once()
                await asyncio.sleep(0.01)  # a pass every 10 ms, as a poller tuned for latency makes them
        assert found == 3
    assert sum(seen) == 3, f"listed entries per page: {seen}"
    assert poller.known.size == 303


async def test_a_segment_past_the_sources_max_decompressed_mb_is_dead_lettered(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """A zstd segment that decompresses to 2 MiB, consumed by a source with ``max_decompressed_mb = 1``:
    it is dead-lettered with the reason instead of being decompressed whole; a small one flows."""
    await create_topic(store, bucket, "bomb", shards=1, layout="log")
    settings = make_settings(moto_endpoint, f"s3://{bucket}/bomb")
    settings.sources[0] = settings.sources[0].model_copy(update={"max_decompressed_mb": 1})
    consumer = Consumer(settings)
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer), _producer(moto_endpoint, segment_max_messages=50,
                                            compression="zstd") as p:
        await p.publish_many(f"s3://{bucket}/bomb", [(None, "x" * (64 << 10)) for _ in range(32)])
        await p.publish(f"s3://{bucket}/bomb", "small")
        await rec.wait_count(1)
        letters: list[DeadLetter] = []

        async def dead_lettered() -> bool:
            letters[:] = [dl async for dl in iter_dead_letters(store, bucket, CONTROL_PREFIX, "default")]
            return bool(letters)
        await wait_until(dead_lettered, what="the segment dead-lettered")
    assert [m.body for m in rec.messages] == [b"small"]
    assert "max_decompressed_mb" in letters[0].error
