"""Pipeline behaviour on both servers (moto and SeaweedFS): order and parallelism, bounded queue, start
position, checkpoints and their fencing by conditional writes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from s3stream.errors import CheckpointConflict
from s3stream.layouts.cursor import Checkpoint
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.message import Message
from s3stream.pipeline.checkpoint import S3CheckpointStore, decode
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, make_settings, put_versions, running, wait_until
from tests.s3proxy import S3Proxy


async def test_one_key_never_runs_concurrently_while_keys_run_in_parallel(
    store: Store, bucket: str, s3_endpoint: str
) -> None:
    """Versions of one key reach the handler one at a time, oldest first, while different keys are
    handled in parallel."""
    active: Counter[str] = Counter()
    max_per_key = 0
    max_total = 0
    seen: dict[str, list[str]] = {}

    async def handler(message: Message) -> None:
        nonlocal max_per_key, max_total
        active[message.key] += 1
        max_per_key = max(max_per_key, active[message.key])
        max_total = max(max_total, sum(active.values()))
        await asyncio.sleep(0.01)  # simulated work, so overlaps can happen
        seen.setdefault(message.key, []).append(message.version_id)
        active[message.key] -= 1

    written = await put_versions(store, bucket, [f"o/k{i}" for i in range(12)], 8)
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/o/", concurrency=8))
    consumer.register_handler("rec", handler)
    async with running(consumer):
        await wait_until(lambda: sum(map(len, seen.values())) == 96)
    assert max_per_key == 1
    assert max_total > 1
    assert seen == written


async def test_queue_is_bounded_and_pollers_wait(store: Store, bucket: str, s3_endpoint: str) -> None:
    """With queue_size 5 and a stuck handler, no more than 5 items are handed out; once the handler
    is released everything is delivered."""
    release = asyncio.Event()
    rec = Recorder()

    async def handler(message: Message) -> None:
        await release.wait()
        await rec(message)

    await put_versions(store, bucket, [f"q/k{i}" for i in range(30)], 1)
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/q/", concurrency=2, queue_size=5))
    consumer.register_handler("rec", handler)
    async with running(consumer):
        pool = consumer.pool
        assert pool is not None
        await wait_until(lambda: pool.pending == 5, what="pool full")
        await wait_until(lambda: consumer.shards[0].cursor.in_flight == 6, what="poller blocked on put")
        assert pool.pending == 5
        assert pool.queue.qsize() <= 5
        release.set()
        await rec.wait_count(30)
    assert len(rec.messages) == 30


async def test_new_group_from_latest_skips_history(store: Store, bucket: str, s3_endpoint: str) -> None:
    """A group without a checkpoint started with start_from=latest delivers only what is written
    after it started."""
    await put_versions(store, bucket, ["l/a", "l/b"], 3)
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/l/", start_from="latest"))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await wait_until(lambda: consumer.shards[0].cursor.horizon_ms > 0, what="first pass")
        new = await put_versions(store, bucket, ["l/a", "l/c"], 2)
        await rec.wait_count(4)
    assert rec.by_key() == new


async def test_restart_resumes_from_s3_checkpoint_without_redelivery(
    store: Store, bucket: str, s3_endpoint: str
) -> None:
    """A clean stop commits; a new consumer in the same group delivers only newer versions."""
    first = await put_versions(store, bucket, ["r/a", "r/b"], 5)
    rec1 = Recorder()
    c1 = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/r/"))
    c1.register_handler("rec", rec1)
    async with running(c1):
        await rec1.wait_count(10)
    assert rec1.by_key() == first

    rec2 = Recorder()
    c2 = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/r/"))
    c2.register_handler("rec", rec2)
    async with running(c2):
        second = await put_versions(store, bucket, ["r/a", "r/c"], 2)
        await rec2.wait_count(4)
        await wait_until(lambda: c2.shards[0].cursor.horizon_ms > 0)
    assert rec2.by_key() == second


async def test_file_checkpoint_store_resumes(store: Store, bucket: str, s3_endpoint: str,
                                             tmp_path: Path) -> None:
    """The local-file checkpoint store is an alternative to S3: a restart resumes from it, and no
    checkpoint object is written to the bucket."""
    checkpoint = {"store": "file", "directory": str(tmp_path / "ckpt")}
    await put_versions(store, bucket, ["f/a"], 4)
    rec1 = Recorder()
    c1 = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/f/", checkpoint=checkpoint))
    c1.register_handler("rec", rec1)
    async with running(c1):
        await rec1.wait_count(4)
    assert list((tmp_path / "ckpt").rglob("*.json"))

    rec2 = Recorder()
    c2 = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/f/", checkpoint=checkpoint))
    c2.register_handler("rec", rec2)
    async with running(c2):
        new = await put_versions(store, bucket, ["f/a"], 1)
        await rec2.wait_count(1)
    assert rec2.by_key() == new
    listing = await store.list_versions(bucket, "_s3stream/")
    assert listing.entries == []


async def test_whole_bucket_source_ignores_its_own_control_prefix(
    store: Store, bucket: str, s3_endpoint: str
) -> None:
    """Consuming s3://bucket/ (which contains the checkpoint objects) never delivers checkpoints."""
    rec = Recorder()
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/"))
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await put_versions(store, bucket, ["x1"], 2)
        await rec.wait_count(2)
        await wait_until(lambda: consumer.shards[0].cursor.horizon_ms > 0)
        await put_versions(store, bucket, ["x2"], 1)
        await rec.wait_count(3)
    listing = await store.list_versions(bucket, "_s3stream/")
    assert listing.entries, "a checkpoint was written into the consumed prefix"
    assert all(not m.key.startswith("_s3stream/") for m in rec.messages)


@pytest.mark.usefixtures("s3_endpoint")
async def test_checkpoint_is_fenced_by_etag(store: Store, bucket: str) -> None:
    """Two writers of one checkpoint cannot silently clobber each other: the stale one gets
    CheckpointConflict (If-Match / If-None-Match), and the checkpoint keeps the winner's value."""
    opts = {"bucket": bucket, "prefix": "t/", "control_prefix": "_s3stream/checkpoints", "group": "g"}
    a = S3CheckpointStore(store, **opts)
    b = S3CheckpointStore(store, **opts)
    assert await a.load() is None
    assert await b.load() is None
    await a.save(Checkpoint(watermark_ms=1000))
    with pytest.raises(CheckpointConflict, match="another consumer"):
        await b.save(Checkpoint(watermark_ms=5))
    await a.save(Checkpoint(watermark_ms=2000))
    with pytest.raises(CheckpointConflict):
        await b.save(Checkpoint(watermark_ms=5))
    stored = await store.get_object(bucket, a.key)
    assert decode(stored.body, where="test").watermark_ms == 2000
    assert (await b.load()) == Checkpoint(watermark_ms=2000)
    await b.save(Checkpoint(watermark_ms=3000))  # after re-reading, b may write


@pytest.mark.slow
@pytest.mark.timeout(900)  # moto lists slowly beside other workers' tests
async def test_checkpoint_size_does_not_grow_with_history(store: Store, bucket: str,
                                                          s3_endpoint: str) -> None:
    """Once the settle window has passed, the committed checkpoint is as small after 1,000 versions
    as after 250: it holds a watermark (and at most a pass's position), not the history."""
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/h/", settle_window=2,
                                      concurrency=32, poll_interval=0.5, max_poll_interval=1))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    key = f"_s3stream/checkpoints/default/{_shard_file('h/')}"

    async def settled_checkpoint() -> bytes:
        body = b""

        async def empty() -> bool:
            nonlocal body
            body = (await store.get_object(bucket, key)).body
            cp = decode(body, where=key)
            # settled: nothing held per version (a pass's position may be there: one key, two numbers)
            return cp.done == () and cp.pending == () and len(cp.progress) <= 1

        await wait_until(empty, within=120, what="checkpoint settled")
        return body

    async with running(consumer):
        await put_versions(store, bucket, [f"h/k{i:02d}" for i in range(50)], 5)
        await rec.wait_count(250, within=300)
        size_250 = len(await settled_checkpoint())
        await put_versions(store, bucket, [f"h/k{i:02d}" for i in range(50)], 15)
        await rec.wait_count(1000, within=300)
        size_1k = len(await settled_checkpoint())
    assert len(rec.messages) == 1000
    assert size_250 < 200
    assert size_1k < 200


@pytest.mark.usefixtures("s3_endpoint")
async def test_a_checkpoint_deleted_under_its_writer_is_a_conflict(store: Store, bucket: str) -> None:
    """A checkpoint removed while its consumer runs (a topic deleted with its data) fails the next
    commit's If-Match on every server: S3 answers 404 NoSuchKey there, SeaweedFS 412, and both are a
    CheckpointConflict, not a store error."""
    opts = {"bucket": bucket, "prefix": "gone/", "control_prefix": "_s3stream/checkpoints", "group": "g"}
    ckpt = S3CheckpointStore(store, **opts)
    await ckpt.load()
    await ckpt.save(Checkpoint(watermark_ms=1000))
    await store.client.delete_object(Bucket=bucket, Key=ckpt.key)
    with pytest.raises(CheckpointConflict):
        await ckpt.save(Checkpoint(watermark_ms=2000))


def _shard_file(prefix: str) -> str:
    from s3stream.pipeline.checkpoint import shard_name

    return f"{shard_name(prefix)}.json"


async def test_checkpoint_write_cancelled_in_flight_does_not_block_the_next(
    store: Store, bucket: str, s3_endpoint: str
) -> None:
    """A checkpoint PUT cancelled at shutdown can land without the consumer learning its ETag; the
    next save (the final commit) recognises its own write and succeeds instead of reporting a
    conflict. A write by someone else is still a conflict."""
    from s3stream.config import build_settings
    from s3stream.s3.store import open_store
    from tests.s3proxy import Delay, Rule, S3Proxy

    opts = {"bucket": bucket, "prefix": "c/", "control_prefix": "_s3stream/checkpoints", "group": "g"}
    held = Rule(Delay(5.0, after=True), method="PUT", when=lambda r: "checkpoints" in r.path, first=1)
    with S3Proxy(s3_endpoint) as proxy:
        s3 = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"}}).s3
        async with open_store(s3) as slow_store:
            ckpt = S3CheckpointStore(slow_store, **opts)
            await ckpt.save(Checkpoint(watermark_ms=1000))
            proxy.add(held)
            interrupted = asyncio.create_task(ckpt.save(Checkpoint(watermark_ms=2000)))
            await wait_until(lambda: held.applied == 1, what="PUT held by the proxy")
            await wait_until(lambda: _stored_watermark(store, bucket, ckpt.key), what="PUT landed")
            interrupted.cancel()
            with pytest.raises(asyncio.CancelledError):
                await interrupted
            await ckpt.save(Checkpoint(watermark_ms=3000))
            assert await _stored_watermark(store, bucket, ckpt.key) == 3000
            other = S3CheckpointStore(store, **opts)
            await other.load()
            await other.save(Checkpoint(watermark_ms=4000))
            with pytest.raises(CheckpointConflict):
                await ckpt.save(Checkpoint(watermark_ms=5000))


async def _stored_watermark(store: Store, bucket: str, key: str) -> int | None:
    """The stored checkpoint's watermark once it is past the first save (None before)."""
    stored = decode((await store.get_object(bucket, key)).body, where=key)
    assert isinstance(stored, Checkpoint)
    return stored.watermark_ms if stored.watermark_ms > 1000 else None


async def test_a_steady_stream_commits_about_once_per_checkpoint_interval(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """A consumer keeping up with a steady stream (40 messages a second for 3 s, listing every 10 ms)
    finishes its work between most messages, yet writes its checkpoint about once per
    ``checkpoint.interval`` (1 s), not once per pass: at most one per whole second the stream and the
    shutdown took (3 s or more: a loaded machine publishes more slowly) plus the first and the final
    commit, counted as PUTs of checkpoint objects through a proxy. A restart then delivers nothing
    again."""
    await create_topic(store, bucket, "steady", layout="log")
    url = f"s3://{bucket}/steady"
    with S3Proxy(moto_endpoint) as proxy:
        consumer = Consumer(make_settings(proxy.endpoint, url, poll_interval=0.01))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer), Producer(store=store) as producer:
            await producer.publish(url, "first")
            await rec.wait_count(1)
            started, began = len(_checkpoint_puts(proxy)), time.monotonic()
            for i in range(120):
                await producer.publish(url, f"m{i}")
                await asyncio.sleep(0.025)  # the stream's pace, not a wait for a result
            await rec.wait_count(121)
        commits, took = len(_checkpoint_puts(proxy)) - started, time.monotonic() - began
    assert 1 <= commits <= int(took) + 2, f"{commits} checkpoint writes for {took:.1f} s of messages"
    again = Recorder()
    consumer = Consumer(make_settings(moto_endpoint, url))
    consumer.register_handler("rec", again)
    async with running(consumer):
        await wait_until(lambda: consumer.shards and consumer.shards[0].last_poll, what="a first pass")
        await _publish_one(store, url, "after")
        await again.wait_count(1)
    assert [m.body for m in again.messages] == [b"after"]


def _checkpoint_puts(proxy: S3Proxy) -> list[str]:
    return [path for method, path, _ in proxy.requests if method == "PUT" and "/checkpoints/" in path]


async def _publish_one(store: Store, url: str, body: str) -> None:
    async with Producer(store=store) as producer:
        await producer.publish(url, body)
