"""A plain prefix in a bucket without versioning (as the S3-to-SQS bridge's bucket is), consumed by listing
objects.

``ListObjectVersions`` is no use there (an overwrite replaces the ``null`` version in place), so the
shard lists current objects with ``ListObjectsV2`` and identifies each by its ETag and LastModified:
every object arrives once with version id ``null``, an overwrite arrives again, and the checkpoint
resumes without redelivering anything.
"""

from __future__ import annotations

import time

from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, make_settings, new_bucket_name, running, wait_until


async def plain_bucket(store: Store) -> str:
    name = new_bucket_name("plain")
    await store.create_bucket(name, versioning=False)
    return name


async def passes_after(consumer: Consumer, count: int = 3) -> None:
    """Wait until the shard has completed ``count`` more listing passes."""
    for _ in range(count):
        mark = time.monotonic()
        await wait_until(lambda m=mark: consumer.shards[0].last_poll > m, what="a listing pass")


async def test_objects_arrive_once_and_overwrites_again(store: Store, s3_endpoint: str) -> None:
    """Three objects arrive once each with version id ``null`` and their ETags; later passes deliver
    nothing more; overwriting one delivers its new body; a restarted consumer (S3 checkpoint) delivers
    only an object written while it was down."""
    bucket = await plain_bucket(store)
    etags = {k: (await store.put_object(bucket, f"in/{k}", k.encode()))[0] for k in "abc"}
    settings = make_settings(s3_endpoint, f"s3://{bucket}/in/")
    recorder = Recorder()
    consumer = Consumer(settings)
    consumer.register_handler("rec", recorder)
    async with running(consumer):
        await recorder.wait_count(3)
        await passes_after(consumer)
        assert consumer.shards[0].layout == "objects"
        assert sorted((m.key, m.version_id, m.etag) for m in recorder.messages) == [
            (f"in/{k}", "null", etags[k]) for k in "abc"]
        await store.put_object(bucket, "in/b", b"b, again")
        await recorder.wait_count(4)
        await passes_after(consumer)
    assert [(m.key, m.body) for m in recorder.messages[3:]] == [("in/b", b"b, again")]
    await store.put_object(bucket, "in/d", b"d")
    again = Recorder()
    consumer = Consumer(settings)
    consumer.register_handler("rec", again)
    async with running(consumer):
        await again.wait_count(1)
        await passes_after(consumer)
    assert [(m.key, m.body) for m in again.messages] == [("in/d", b"d")]
