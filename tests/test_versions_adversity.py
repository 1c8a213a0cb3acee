"""The versions layout under adversity: a huge backlog caught up with a small checkpoint, a key with a
long history (both written in the past by moving moto's clock), a multipart upload that completes after
a later PUT (moto and SeaweedFS), and versioning suspended on a running topic (DESIGN.md promises 2, 4,
5 and 6)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, make_settings, put_key, put_versions, running, wait_until
from tests.s3proxy import Relayed, Rule, S3Proxy, Transform


@pytest.fixture
def in_the_past(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto stamps writes one hour ago while the fixture is active (a backlog, not fresh writes)."""
    import moto.s3.models

    real = moto.s3.models.utcnow
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: real() - timedelta(hours=1))


async def checkpoint_sizes(store: Store, bucket: str) -> list[int]:
    """Versions listed (done and pending) in each checkpoint object of the bucket."""
    sizes = []
    objects, _ = await store.list_all_objects(bucket, "_s3stream/checkpoints/")
    for obj in objects:
        doc = orjson.loads((await store.get_object(bucket, obj.key)).body)
        listed = [*doc["done"].values(), *doc.get("pending", {}).values()]
        sizes.append(sum(len(v) for v in listed))
    return sizes


@pytest.mark.slow
async def test_catching_up_a_backlog_keeps_the_checkpoint_small(
    store: Store, bucket: str, moto_endpoint: str, in_the_past: None
) -> None:
    """A new consumer over 1,500 old versions in 150 keys, handled slowly: every checkpoint written
    while it catches up lists at most about the worker queue, not the backlog it has handled."""
    written = await put_versions(store, bucket, [f"t/k{i:03d}" for i in range(150)], 10)
    settings = make_settings(moto_endpoint, f"s3://{bucket}/t/", page_size=100, queue_size=20,
                             concurrency=8, checkpoint={"interval": 0.1})
    consumer = Consumer(settings)
    rec = Recorder()

    async def slow(message: object) -> None:
        await rec(message)  # type: ignore[arg-type]

    consumer.register_handler("rec", slow)
    largest = 0
    async with running(consumer):
        async def caught_up() -> bool:
            nonlocal largest
            largest = max([largest, *await checkpoint_sizes(store, bucket)])
            return len(rec.messages) >= 1500
        await wait_until(caught_up, within=120, what="the backlog consumed")
    assert rec.by_key() == written
    assert largest > 0
    assert largest <= 60, f"a checkpoint listed {largest} versions while catching up"


async def test_a_key_with_a_long_history_is_delivered_in_order_a_chunk_at_a_time(
    store: Store, bucket: str, moto_endpoint: str, in_the_past: None
) -> None:
    """One key with 450 new versions and pages of 50: the key is listed again a chunk at a time, and
    every version arrives once, oldest first, along with the keys around it."""
    written = {"h/hot": await put_key(store, bucket, "h/hot", 450)}
    written |= await put_versions(store, bucket, ["h/a", "h/z"], 3)
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/h/", page_size=50, queue_size=16))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(456, within=90)
    assert rec.by_key() == written
    assert len(rec.messages) == 456


def _older_multipart_stamp(_request: web.Request, response: Relayed) -> Relayed:
    """S3 stamps a multipart upload with the time it started: make the listing say so (moto and
    SeaweedFS stamp completion), one hour before the plain PUT that the upload completed after."""
    def rewrite(match: re.Match[bytes]) -> bytes:
        block = match.group(0)
        if not re.search(rb"<ETag>(&#34;|&quot;|\")?[0-9a-f]+-\d+", block):
            return block
        return re.sub(rb"<LastModified>\d{4}", b"<LastModified>2000", block)
    body = re.sub(rb"<Version>.*?</Version>", rewrite, response.body, flags=re.S)
    return Relayed(response.status, response.headers, body)


def _lists_versions(request: web.Request) -> bool:
    return "versions" in request.query


async def test_a_multipart_upload_completed_after_a_plain_put_is_delivered_last(
    store: Store, bucket: str, s3_endpoint: str
) -> None:
    """A multipart upload started before a plain PUT and completed after it is the key's current
    version, though its LastModified is older: it is delivered after the plain PUT, in S3's order."""
    client = store.client
    upload = await client.create_multipart_upload(Bucket=bucket, Key="m/k")
    _, plain = await store.put_object(bucket, "m/k", b"plain")
    part = await client.upload_part(Bucket=bucket, Key="m/k", UploadId=upload["UploadId"], PartNumber=1,
                                    Body=b"multipart")
    done = await client.complete_multipart_upload(
        Bucket=bucket, Key="m/k", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    older = Rule(Transform(_older_multipart_stamp), method="GET", when=_lists_versions)
    with S3Proxy(s3_endpoint, [older]) as proxy:
        consumer = Consumer(make_settings(proxy.endpoint, f"s3://{bucket}/m/"))
        rec = Recorder()
        consumer.register_handler("rec", rec)
        async with running(consumer):
            await rec.wait_count(2)
        assert rec.messages[1].last_modified.year == 2000  # the listing did carry the older stamp
    assert [m.version_id for m in rec.messages] == [plain, done["VersionId"]]
    assert [m.body for m in rec.messages] == [b"plain", b"multipart"]


async def suspend_and_overwrite(store: Store, bucket: str, rec: Recorder) -> str | None:
    """Write ``s/k`` once, suspend versioning, overwrite it twice, each write once delivered; the
    version id of the first write."""
    _, kept = await store.put_object(bucket, "s/k", b"versioned")
    await rec.wait_count(1)
    await store.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    await store.put_object(bucket, "s/k", b"first null")
    await rec.wait_count(2)
    await store.put_object(bucket, "s/k", b"second null")
    await wait_until(lambda: b"second null" in [m.body for m in rec.messages], what="the overwrite")
    return kept


async def test_overwrites_after_versioning_is_suspended_are_each_delivered(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """Versioning suspended on a running topic: each later write replaces the version ``null``, and
    each one is still a new message, with its own body."""
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/s/"))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await suspend_and_overwrite(store, bucket, rec)
    assert [m.body for m in rec.messages] == [b"versioned", b"first null", b"second null"]
    assert [m.version_id for m in rec.messages][1:] == ["null", "null"]


@pytest.mark.parametrize("s3_endpoint", ["seaweedfs"], indirect=True)
async def test_overwrites_after_suspension_beside_the_versions_kept_are_each_delivered(
    store: Store, bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """Versioning suspended on a running topic, on a server that keeps the versions written before
    (as S3 does; moto drops them): the listing holds the version ``null`` beside them, and each
    overwrite is still delivered once, with its own body.

    The checkpoint is a local file here: SeaweedFS answers 412 to an ``If-Match`` naming the current
    version when that version was written before versioning was suspended (S3 and moto accept it),
    so an S3 checkpoint written before the suspension could never be updated after it."""
    checkpoint = {"store": "file", "directory": str(tmp_path)}
    consumer = Consumer(make_settings(s3_endpoint, f"s3://{bucket}/s/", checkpoint=checkpoint))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        kept = await suspend_and_overwrite(store, bucket, rec)
    listed = {(e.version_id, e.latest) for e in (await store.list_versions(bucket, "s/")).entries}
    assert listed == {("null", True), (kept, False)}  # S3 lists "null" first; SeaweedFS lists it last
    assert [m.body for m in rec.messages] == [b"versioned", b"first null", b"second null"]
    assert [m.version_id for m in rec.messages] == [kept, "null", "null"]
