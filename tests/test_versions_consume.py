"""The versions-mode consumer against real S3 servers (moto and SeaweedFS): DESIGN.md promises 1-6.

The two late-write tests stamp a version in the past by moving moto's clock, so they run on moto only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, make_settings, put_key, running, wait_until


async def test_burst_of_same_second_writes_all_delivered_in_order(store: Store, bucket: str,
                                                                    s3_endpoint: str) -> None:
    """200 writes to 20 keys in about a second, while consuming: every version arrives, per key in
    write order, exactly once. The seed's `LastModified >` cursor loses most of these."""
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/topic/"))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        written = await asyncio.gather(*(put_key(store, bucket, f"topic/k{i:02d}", 10) for i in range(20)))
        await rec.wait_count(200)
    expected = {f"topic/k{i:02d}": vids for i, vids in enumerate(written)}
    assert rec.by_key() == expected
    assert len(rec.messages) == 200
    bodies = [m.body for m in rec.messages if m.key == "topic/k03"]
    assert bodies == [f"topic/k03#{i}".encode() for i in range(10)]


async def test_late_visible_version_within_settle_window_is_delivered(
    store: Store, bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version that shows up after newer ones were delivered, stamped 5 s older than them, is
    still delivered when the settle window (30 s) covers it."""
    import moto.s3.models

    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/t/", settle_window=30))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await put_key(store, bucket, "t/a", 3)
        await rec.wait_count(3)
        newest = max(m.last_modified for m in rec.messages)
        real = moto.s3.models.utcnow
        monkeypatch.setattr(moto.s3.models, "utcnow", lambda: real() - timedelta(seconds=5))
        _, late = await store.put_object(bucket, "t/b", b"late")
        monkeypatch.setattr(moto.s3.models, "utcnow", real)
        await rec.wait_for(lambda: ("t/b", late) in rec.idents())
    msg = next(m for m in rec.messages if m.version_id == late)
    assert msg.last_modified < newest
    assert msg.body == b"late"


async def test_version_later_than_settle_window_is_the_documented_bound(
    store: Store, bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a settle window of 0, a version made visible 5 s after its LastModified is not
    delivered: the window is what protects late writes, as docs/concepts.md documents."""
    import moto.s3.models

    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/t/", settle_window=0))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await put_key(store, bucket, "t/a", 1)
        await rec.wait_count(1)
        cutoff = int((datetime.now(UTC) - timedelta(seconds=3)).timestamp() * 1000)
        cursor = consumer.shards[0].cursor
        await wait_until(lambda: cursor.watermark_ms >= cutoff, what="watermark past the late stamp")
        real = moto.s3.models.utcnow
        monkeypatch.setattr(moto.s3.models, "utcnow", lambda: real() - timedelta(seconds=5))
        _, late = await store.put_object(bucket, "t/late", b"late")
        monkeypatch.setattr(moto.s3.models, "utcnow", real)
        _, after = await store.put_object(bucket, "t/after", b"after")
        await rec.wait_for(lambda: ("t/after", after) in rec.idents())
    assert ("t/late", late) not in rec.idents()


@pytest.mark.slow
async def test_many_pages_with_breaks_inside_a_key(store: Store, bucket: str, s3_endpoint: str) -> None:
    """2,500 versions over 300 keys span three ListObjectVersions pages whose breaks fall inside
    one key's versions; all are delivered once, each key in write order."""
    counts = [5 + i % 7 for i in range(300)]
    for i in range(2500 - sum(counts)):
        counts[i] += 1
    assert sum(counts) == 2500
    sem = asyncio.Semaphore(32)

    async def write(i: int) -> tuple[str, list[str]]:
        async with sem:
            key = f"p/key-{i:03d}"
            return key, await put_key(store, bucket, key, counts[i])

    expected = dict(await asyncio.gather(*(write(i) for i in range(300))))
    first = await store.list_versions(bucket, "p/", max_keys=1000)
    second = await store.list_versions(bucket, "p/", key_marker=first.next_key_marker,
                                       version_id_marker=first.next_version_id_marker, max_keys=1000)
    assert first.truncated
    assert second.truncated
    assert first.entries[-1].key == second.entries[0].key, "premise: a page break inside one key"

    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/p/", concurrency=32))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(2500, within=120)
    assert rec.by_key() == expected
    assert len(rec.messages) == 2500


async def test_delete_marker_is_a_deletion_event(store: Store, bucket: str, s3_endpoint: str) -> None:
    """A delete marker reaches the handler as deleted=True with its own version id and no body,
    after the versions it follows, even when written in the same second."""
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/d/"))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        _, v1 = await store.put_object(bucket, "d/x", b"one")
        await rec.wait_count(1)
        marker = await store.delete_object(bucket, "d/x")
        await rec.wait_count(2)
        _, v2 = await store.put_object(bucket, "d/y", b"two")
        marker_y = await store.delete_object(bucket, "d/y")
        await rec.wait_count(4)
    assert marker
    assert marker_y
    assert rec.by_key() == {"d/x": [v1, marker], "d/y": [v2, marker_y]}
    deletions = [m for m in rec.messages if m.deleted]
    expected = [("d/x", marker, b""), ("d/y", marker_y, b"")]
    assert [(m.key, m.version_id, m.body) for m in deletions] == expected
    assert not any(m.deleted for m in rec.messages if m.version_id in (v1, v2))
