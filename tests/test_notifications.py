"""The ``notifications`` source against moto's S3 and SQS over HTTP: ``notifications setup``, the three
event formats, de-duplication, URL-decoded keys, visibility heartbeats, deletion only after handling,
reconciliation of lost notifications and deletes, routing, and shutdown.

moto's records carry no ``versionId`` or ``sequencer``, report a multipart upload twice and send
nothing for a delete in a versioned bucket: the tests rely on exactly that behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from s3stream.cli.notify import setup
from s3stream.config import Settings, build_settings
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.sqs import OutMessage, Queue, open_sqs
from s3stream.s3.store import Store
from tests.conftest import Recorder, new_bucket_name, running, wait_until
from tests.test_cli import assert_one_line_error, run_cli

PREFIX = "in/"


def s3_only(endpoint: str) -> Settings:
    return build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}})


def notify_settings(endpoint: str, url: str, queue_url: str, *, routes: list[dict[str, str]] | None = None,
                    **notify: Any) -> Settings:
    """One notification source (reconciling every 300 s unless told) with fast polling elsewhere."""
    notify = {"queue_url": queue_url, "reconcile_interval": 300, "wait_seconds": 1, **notify}
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"settle_window": 1.0, "shutdown_grace": 1.0, "checkpoint": {"store": "memory"}},
        "sources": [{"url": url, "handler": "rec", "notifications": notify, "routes": routes or []}],
    })


def source(bucket: str) -> str:
    return f"s3://{bucket}/{PREFIX}"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lists() -> float:
    return sample("s3stream_s3_requests_total", operation="ListObjectVersions")


def listed(bucket: str) -> float:
    return sample("s3stream_notifications_listed_total", **shard_of(bucket))


def notified(bucket: str) -> float:
    return sample("s3stream_notifications_delivered_total", **shard_of(bucket))


def shard_of(bucket: str) -> dict[str, str]:
    return {"topic": PREFIX.strip("/"), "bucket": bucket, "shard": "0", "group": "default"}


@pytest.fixture
async def sqs(moto_endpoint: str) -> AsyncIterator[Queue]:
    async with open_sqs(s3_only(moto_endpoint).s3) as queue:
        yield queue


async def queue_counts(queue: Queue, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    resp = await queue.client.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    attrs = resp["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


async def drained(queue: Queue, url: str) -> bool:
    return await queue_counts(queue, url) == (0, 0)


async def send(queue: Queue, url: str, *bodies: Any) -> None:
    await queue.send_batch(url, [OutMessage(id=str(i), body=orjson.dumps(b).decode())
                                 for i, b in enumerate(bodies)])


def direct(bucket: str, key: str, **obj: str) -> dict[str, Any]:
    """A direct S3 → SQS event body for ``key`` (already encoded as S3 encodes it)."""
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "eventTime": "2026-11-23T00:00:00.000Z",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key, **obj}}}]}


@contextlib.asynccontextmanager
async def consuming(settings: Settings, recorder: Any, store: Store, bucket: str, *, sentinel: bool = True,
                    **handlers: Any) -> AsyncIterator[Consumer]:
    """Run a consumer and wait until the first listing pass delivered ``in/sentinel`` (written here
    unless the test wrote it). Written before the bucket notifies anything, only that pass can
    deliver it; from then on, an object the handler sees without a new pass came by notification."""
    if sentinel:
        await store.put_object(bucket, f"{PREFIX}sentinel", b"s")
    consumer = Consumer(settings)
    consumer.register_handler("rec", recorder)
    for name, handler in handlers.items():
        consumer.register_handler(name, handler)
    async with running(consumer):
        await recorder.wait_for(lambda: any(m.key.endswith("sentinel") for m in recorder.messages))
        yield consumer


async def test_setup_then_puts_arrive_through_notifications(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """After `notifications setup`, real PUTs (two versions of a key, a key needing URL-decoding, a
    multipart upload that moto reports twice) reach the handler through notifications, once each,
    oldest version first, and every SQS message (the TestEvent included) is deleted."""
    recorder = Recorder()
    await store.put_object(bucket, f"{PREFIX}sentinel", b"s")
    url = (await setup(s3_only(moto_endpoint), bucket, f"q-{bucket}", prefix=PREFIX)).queue_url
    settings = notify_settings(moto_endpoint, source(bucket), url)
    before = notified(bucket)
    async with consuming(settings, recorder, store, bucket, sentinel=False):
        v1 = (await store.put_object(bucket, f"{PREFIX}a", b"1"))[1]
        v2 = (await store.put_object(bucket, f"{PREFIX}a", b"2"))[1]
        await store.put_object(bucket, f"{PREFIX}x+y z%", b"odd")
        await store.put_multipart(bucket, f"{PREFIX}big", b"m" * 1000, part_size=5 << 20)
        await recorder.wait_count(5)
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    assert recorder.by_key()[f"{PREFIX}a"] == [v1, v2]
    assert sorted(recorder.by_key()) == [f"{PREFIX}{k}" for k in ("a", "big", "sentinel", "x+y z%")]
    assert len(recorder.messages) == 5
    assert notified(bucket) - before == 4


async def test_sns_and_eventbridge_messages_are_parsed(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """An SNS-wrapped direct record and an EventBridge "Object Created" event, sent straight into the
    queue, each deliver their object (the EventBridge key is not URL-encoded); both are deleted."""
    url = await sqs.create_queue(f"q-{bucket}")
    recorder = Recorder()
    async with consuming(notify_settings(moto_endpoint, source(bucket), url), recorder, store, bucket):
        await store.put_object(bucket, f"{PREFIX}via sns", b"sns")
        await store.put_object(bucket, f"{PREFIX}via eb+1", b"eb")
        sns = {"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
               "Message": orjson.dumps(direct(bucket, "in/via+sns")).decode()}
        bridge = {"version": "0", "detail-type": "Object Created", "source": "aws.s3",
                  "time": "2026-11-23T00:00:00Z",
                  "detail": {"bucket": {"name": bucket}, "object": {"key": f"{PREFIX}via eb+1", "size": 2}}}
        await send(sqs, url, sns, bridge)
        await recorder.wait_count(3)
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    assert sorted(m.body for m in recorder.messages) == [b"eb", b"s", b"sns"]


async def test_test_event_is_ignored_and_deleted(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """`s3:TestEvent` (moto sends one when setup writes the configuration; the test sends another)
    delivers nothing and is deleted from the queue."""
    url = (await setup(s3_only(moto_endpoint), bucket, f"q-{bucket}", prefix=PREFIX)).queue_url
    await send(sqs, url, {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket})
    recorder = Recorder()
    async with consuming(notify_settings(moto_endpoint, source(bucket), url), recorder, store, bucket):
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    assert [m.key for m in recorder.messages] == [f"{PREFIX}sentinel"]


async def test_duplicated_event_is_delivered_once(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """The same event sent three times (with its version id) and again without one delivers the
    object once; every copy is deleted."""
    url = await sqs.create_queue(f"q-{bucket}")
    recorder = Recorder()
    async with consuming(notify_settings(moto_endpoint, source(bucket), url), recorder, store, bucket):
        _, vid = await store.put_object(bucket, f"{PREFIX}dup", b"d")
        event = direct(bucket, "in%2Fdup", versionId=str(vid))
        await send(sqs, url, event, event)
        await send(sqs, url, event, direct(bucket, "in/dup"))
        await wait_until(lambda: drained(sqs, url), what="queue drained")
        await recorder.wait_count(2)
    sentinel = recorder.messages[0].version_id
    assert recorder.idents() == [(f"{PREFIX}sentinel", sentinel), (f"{PREFIX}dup", vid)]


async def test_url_encoded_key_is_decoded(store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """An event naming ``in/a+b%20c`` delivers the object ``in/a b c`` (unquote_plus), through the
    notification (no listing pass runs meanwhile)."""
    url = await sqs.create_queue(f"q-{bucket}")
    recorder = Recorder()
    async with consuming(notify_settings(moto_endpoint, source(bucket), url), recorder, store, bucket):
        before = listed(bucket)
        await store.put_object(bucket, f"{PREFIX}a b c", b"decoded")
        await send(sqs, url, direct(bucket, "in/a+b%20c"))
        await recorder.wait_count(2)
        assert listed(bucket) == before
    assert recorder.messages[-1].key == f"{PREFIX}a b c"


class Slow:
    """Records messages; a key ending in ``slow`` blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = False

    async def __call__(self, message: Message) -> None:
        if message.key.endswith("slow"):
            self.entered.set()
            await self.release.wait()
            self.finished = True
        await self.recorder(message)


async def test_visibility_is_extended_while_a_slow_handler_runs(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """With a 3 s visibility timeout, a handler running well past it keeps its SQS message invisible
    (heartbeats extend it; a second receiver gets nothing) and undeleted; the message is deleted
    once the handler has finished."""
    url = (await setup(s3_only(moto_endpoint), bucket, f"q-{bucket}", prefix=PREFIX)).queue_url
    slow = Slow()
    settings = notify_settings(moto_endpoint, source(bucket), url, visibility_timeout=3)
    async with consuming(settings, slow.recorder, store, bucket, rec=slow):
        await store.put_object(bucket, f"{PREFIX}slow", b"zzz")
        await asyncio.wait_for(slow.entered.wait(), 30)
        extended = sample("s3stream_notifications_visibility_extended_total")
        await wait_until(lambda: sample("s3stream_notifications_visibility_extended_total") >= extended + 5,
                         what="five heartbeats (a second apart: past the 3 s timeout)")
        assert await sqs.receive(url, max_messages=10, wait_seconds=0) == []
        assert await queue_counts(sqs, url) == (0, 1)
        assert not slow.finished
        slow.release.set()
        await wait_until(lambda: drained(sqs, url), what="message deleted")
        assert slow.finished


async def test_lost_notifications_and_deletes_come_from_the_reconciling_listing(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """An object written while the bucket sent no events, and a delete (moto sends no event for a
    delete marker), are delivered by the listing pass; objects seen by either path are not delivered
    again by the other over later passes."""
    url = (await setup(s3_only(moto_endpoint), bucket, f"q-{bucket}", prefix=PREFIX)).queue_url
    recorder = Recorder()
    settings = notify_settings(moto_endpoint, source(bucket), url, reconcile_interval=0.5)
    async with consuming(settings, recorder, store, bucket):
        config = await store.get_bucket_notification(bucket)
        await store.put_bucket_notification(bucket, {})
        _, lost = await store.put_object(bucket, f"{PREFIX}lost", b"no event")
        await store.put_bucket_notification(bucket, config)
        _, seen = await store.put_object(bucket, f"{PREFIX}seen", b"event")
        marker = await store.delete_object(bucket, f"{PREFIX}seen")
        await recorder.wait_count(4)
        passes = lists()
        await wait_until(lambda: lists() >= passes + 4, what="four more listing passes")
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    assert recorder.by_key() == {f"{PREFIX}sentinel": [recorder.messages[0].version_id],
                                 f"{PREFIX}lost": [lost], f"{PREFIX}seen": [seen, marker]}
    assert [m.deleted for m in recorder.messages if m.key.endswith("seen")] == [False, True]


async def test_routes_send_tenants_to_their_handlers(store: Store, sqs: Queue, moto_endpoint: str) -> None:
    """The tenant router on a whole bucket: ``tenant-1/raw/`` and ``tenant-2/raw/`` objects go
    to their handlers, a glob route takes tenant 2's CSV files first, the rest goes to the default;
    s3stream's own control objects are ignored."""
    bucket = new_bucket_name("route")
    await store.create_bucket(bucket, versioning=True)
    url = (await setup(s3_only(moto_endpoint), bucket, f"q-{bucket}")).queue_url
    routes = [{"pattern": "tenant-2/raw/*.csv", "handler": "csv"},
              {"prefix": "tenant-1/raw/", "handler": "t1"}, {"prefix": "tenant-2/raw/", "handler": "t2"}]
    settings = notify_settings(moto_endpoint, f"s3://{bucket}/", url, routes=routes)
    got: dict[str, list[str]] = {"csv": [], "t1": [], "t2": [], "rec": []}

    def recording(name: str) -> Any:
        async def handle(message: Message) -> None:
            got[name].append(message.key)
        return handle

    consumer = Consumer(settings)
    for name in got:
        consumer.register_handler(name, recording(name))
    keys = ["tenant-1/raw/a.json", "tenant-2/raw/b.json", "tenant-2/raw/c.csv", "tenant-3/raw/d.json",
            "tenant-1/silver/e.json", "_s3stream/control.json"]
    async with running(consumer):
        for key in keys:
            await store.put_object(bucket, key, b"{}")
        await wait_until(lambda: sum(map(len, got.values())) >= 5, what="five routed messages")
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    assert {name: sorted(routed) for name, routed in got.items()} == {
        "csv": ["tenant-2/raw/c.csv"], "t1": ["tenant-1/raw/a.json"], "t2": ["tenant-2/raw/b.json"],
        "rec": ["tenant-1/silver/e.json", "tenant-3/raw/d.json"]}


async def test_shutdown_keeps_unhandled_messages(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """Stopping while a handler is still running past the grace period stops receiving and leaves
    that object's SQS message in the queue (it is received again later)."""
    url = await sqs.create_queue(f"q-{bucket}")
    slow = Slow()
    settings = notify_settings(moto_endpoint, source(bucket), url, visibility_timeout=2)
    async with consuming(settings, slow.recorder, store, bucket, rec=slow):
        await store.put_object(bucket, f"{PREFIX}slow", b"zzz")
        await send(sqs, url, direct(bucket, "in/slow"))
        await asyncio.wait_for(slow.entered.wait(), 30)
    assert not slow.finished
    assert sum(await queue_counts(sqs, url)) == 1


async def test_unversioned_bucket_is_followed_by_listing_objects(
        store: Store, sqs: Queue, moto_endpoint: str) -> None:
    """In a bucket without versioning a notification leads to a ``ListObjectsV2`` of its key: the
    object arrives with version id ``null`` and its ETag, an overwrite arrives again with its new
    body, and a duplicated event delivers nothing more."""
    bucket = new_bucket_name("plain")
    await store.create_bucket(bucket, versioning=False)
    url = await sqs.create_queue(f"q-{bucket}")
    recorder = Recorder()
    async with consuming(notify_settings(moto_endpoint, source(bucket), url), recorder, store, bucket):
        etag, _ = await store.put_object(bucket, f"{PREFIX}a", b"one")
        await send(sqs, url, direct(bucket, f"{PREFIX}a", eTag=etag), direct(bucket, f"{PREFIX}a", eTag=etag))
        await recorder.wait_count(2)
        etag2, _ = await store.put_object(bucket, f"{PREFIX}a", b"two")
        await send(sqs, url, direct(bucket, f"{PREFIX}a", eTag=etag2))
        await recorder.wait_count(3)
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    first, second = [m for m in recorder.messages if m.key == f"{PREFIX}a"]
    assert (first.version_id, first.etag, first.body) == ("null", etag, b"one")
    assert (second.version_id, second.body) == ("null", b"two")
    assert len(recorder.messages) == 3


def test_tenant_router_example_config_loads() -> None:
    """``config/tenant-router.toml`` validates: a notification source whose routes name handlers the
    file defines."""
    from s3stream.config import load_settings

    settings = load_settings(Path(__file__).resolve().parent.parent / "config" / "tenant-router.toml")
    (src,) = settings.sources
    assert src.notifications is not None
    assert [r.prefix for r in src.routes] == ["tenant-1/raw/", "tenant-2/raw/", "tenant-3/raw/"]
    for name in [src.handler, *(r.handler for r in src.routes)]:
        assert name in settings.handlers


async def test_setup_command_merges_and_is_idempotent(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str, tmp_path: Path) -> None:
    """`s3stream notifications setup` prints the queue URL, lets S3 send to the queue for this
    bucket only, and adds its queue configuration next to an existing one; run again it changes
    nothing. A missing bucket is one error line, exit 2."""
    other = await sqs.queue_arn(await sqs.create_queue(f"other-{bucket}"))
    foreign = {"Id": "foreign", "QueueArn": other, "Events": ["s3:ObjectCreated:*"],
               "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "elsewhere/"}]}}}
    await store.put_bucket_notification(bucket, {"QueueConfigurations": [foreign]})
    args = ("notifications", "setup", "--bucket", bucket, "--queue-name", f"q-{bucket}", "--prefix", PREFIX,
            "--endpoint-url", moto_endpoint)
    first = await asyncio.to_thread(run_cli, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    config = await store.get_bucket_notification(bucket)
    second = await asyncio.to_thread(run_cli, *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout == f"{await sqs.queue_url(f'q-{bucket}')}\n"
    assert await store.get_bucket_notification(bucket) == config
    ours = [c for c in config["QueueConfigurations"] if c["Id"] != "foreign"]
    assert [c["Id"] for c in config["QueueConfigurations"]] == ["foreign", ours[0]["Id"]]
    assert ours[0]["Events"] == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    assert ours[0]["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": PREFIX}]
    resp = await sqs.client.get_queue_attributes(QueueUrl=first.stdout.strip(), AttributeNames=["Policy"])
    (statement,) = orjson.loads(resp["Attributes"]["Policy"])["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}
    missing = await asyncio.to_thread(run_cli, "notifications", "setup", "--bucket", new_bucket_name("none"),
                                      "--queue-name", "q", "--endpoint-url", moto_endpoint, cwd=tmp_path)
    assert_one_line_error(missing, "does not exist")


async def test_a_message_that_is_no_s3_event_is_left_in_the_queue(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """A body that is not an S3 event is received, logged and not deleted (the queue's redrive
    policy sets it aside); the consumer keeps running and handles the next event."""
    url = await sqs.create_queue(f"q-{bucket}")
    recorder = Recorder()
    async with consuming(notify_settings(moto_endpoint, source(bucket), url), recorder, store, bucket):
        await send(sqs, url, {"hello": "world"})
        await wait_until(lambda: _counts_are(sqs, url, (0, 1)), what="the message received")
        await store.put_object(bucket, f"{PREFIX}next", b"n")
        await send(sqs, url, direct(bucket, "in/next"))
        await recorder.wait_count(2)
        await wait_until(lambda: _counts_are(sqs, url, (0, 1)), what="the event deleted")
    assert sum(await queue_counts(sqs, url)) == 1


async def _counts_are(queue: Queue, url: str, expected: tuple[int, int]) -> bool:
    return await queue_counts(queue, url) == expected


async def test_a_keys_versions_keep_their_order_across_both_paths_under_backpressure(
        store: Store, bucket: str, sqs: Queue, moto_endpoint: str) -> None:
    """Per-key order holds whichever path found a version, even when the pool is full and both paths
    wait: with room for one item and one worker, the listing pass hands out ``gate`` (its handler
    blocks) and finds ``k`` v1 and v2; v3 written next is found by a notification while the pass still
    waits to queue v1. Once ``gate`` finishes, the handler sees ``k`` as v1, v2, v3."""
    gate = asyncio.Event()
    recorder = Recorder()

    async def handler(message: Message) -> None:
        if message.key.endswith("gate"):
            await gate.wait()
        await recorder(message)

    url = await sqs.create_queue(f"q-{bucket}")
    settings = notify_settings(moto_endpoint, source(bucket), url)
    narrow = {"queue_size": 1, "concurrency": 1}
    settings = settings.model_copy(update={"consumer": settings.consumer.model_copy(update=narrow)})
    await store.put_object(bucket, f"{PREFIX}a-gate", b"g")
    v1 = (await store.put_object(bucket, f"{PREFIX}k", b"1"))[1]
    v2 = (await store.put_object(bucket, f"{PREFIX}k", b"2"))[1]
    consumer = Consumer(settings)
    consumer.register_handler("rec", handler)
    async with running(consumer):
        cursor = consumer.shards[0].cursor
        await wait_until(lambda: cursor.in_flight == 3, what="the pass holding gate, v1 and v2")
        v3 = (await store.put_object(bucket, f"{PREFIX}k", b"3"))[1]
        await send(sqs, url, direct(bucket, f"{PREFIX}k"))
        await wait_until(lambda: cursor.in_flight == 4, what="the notification starting v3")
        gate.set()
        await recorder.wait_count(4)
        await wait_until(lambda: drained(sqs, url), what="queue drained")
    assert recorder.by_key()[f"{PREFIX}k"] == [v1, v2, v3]
