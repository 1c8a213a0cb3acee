"""The head object: producers rewrite a topic's head after publishing; idle consumers read it with a
conditional GET and list only when it changed (or every ``reconcile_interval``).

Run against both servers, through a counting proxy: the tests count the listings, the head reads and
the head writes each side sends, and time deliveries against settings under which a consumer that
only listed would be seconds late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from s3stream.layouts.heads import head_key
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, make_settings, new_bucket_name, running, wait_until
from tests.s3proxy import Delay, Rule, S3Proxy

TOPIC = "chat"
IDLE = {"max_poll_interval": 30.0, "reconcile_interval": 30.0, "head_interval": 0.1,
        "settle_window": 2.0}


def _counting(method: str, test: str) -> Rule:
    """A rule that never acts, only counts the requests it matches."""
    def when(request: web.Request) -> bool:
        if test == "listing":
            return bool({"versions", "list-type"} & set(request.query))
        return "/_s3stream/heads/" in request.path
    return Rule(Delay(0), method=method, when=when, fraction=0.0)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[S3Proxy]:
    with S3Proxy(s3_endpoint) as running_proxy:
        yield running_proxy


async def _topic(store: Store, layout: str = "versions") -> str:
    bucket = new_bucket_name("head")
    await store.create_bucket(bucket, versioning=layout == "versions")
    await create_topic(store, bucket, TOPIC, shards=1, layout=layout)  # type: ignore[arg-type]
    return bucket


def _counters(proxy: S3Proxy) -> tuple[Rule, Rule]:
    """Count the listings and the head reads sent through ``proxy``."""
    return proxy.add(_counting("GET", "listing")), proxy.add(_counting("GET", "head"))


async def more(rule: Rule, count: int, *, within: float, what: str) -> None:
    """Wait until ``rule`` has matched ``count`` more requests."""
    start = rule.matched
    await wait_until(lambda: rule.matched >= start + count, within=within, what=what)


def _consumer(proxy: S3Proxy, bucket: str, recorder: Recorder, **settings: Any) -> Consumer:
    consumer = Consumer(make_settings(proxy.endpoint, f"s3://{bucket}/{TOPIC}", **settings))
    consumer.register_handler("rec", recorder)
    return consumer


async def _publish(endpoint: str, bucket: str, body: bytes, **producer: object) -> None:
    settings = make_settings(endpoint, f"s3://{bucket}/{TOPIC}")
    settings = settings.model_copy(update={"producer": settings.producer.model_copy(update=producer)})
    async with Producer(settings) as p:
        await p.publish(f"s3://{bucket}/{TOPIC}", body)


@pytest.mark.parametrize("layout", ["versions", "log"])
async def test_an_idle_consumer_is_woken_by_the_head_not_by_its_next_listing(
        store: Store, proxy: S3Proxy, layout: str) -> None:
    """With the default wakeup and producer, idle, with its next listing of its own 30 s away, a
    consumer still gets a new message within seconds (under one on a quiet machine): the producer's
    head write changes the ETag its conditional GETs see, and it lists at once."""
    bucket = await _topic(store, layout)
    reads = proxy.add(_counting("GET", "head"))
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **IDLE)
    async with running(consumer):
        await _publish(proxy.endpoint, bucket, b"first")
        await recorder.wait_count(1)
        # a few head reads on, the pass after the delivery is over: idle
        await more(reads, 3, within=20, what="three head reads")
        sent = time.monotonic()
        await _publish(proxy.endpoint, bucket, b"second")
        await recorder.wait_count(2, within=10)
        assert time.monotonic() - sent < 5.0  # its own listing was 30 s away (a second or less when quiet)
    assert [m.body for m in recorder.messages] == [b"first", b"second"]


async def test_an_idle_shard_reads_the_head_and_lists_only_to_reconcile(store: Store, proxy: S3Proxy) -> None:
    """Idle, a consumer sends a head GET every head_interval and a listing only every
    reconcile_interval, which still finds a message written by a writer that does not touch the
    head (a plain PUT, as ``aws s3 cp`` makes)."""
    bucket = await _topic(store)
    listings, reads = _counters(proxy)
    settings = {**IDLE, "reconcile_interval": 1.0}
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **settings)
    async with running(consumer):
        await _publish(proxy.endpoint, bucket, b"first")
        await recorder.wait_count(1)
        await more(listings, 2, within=20, what="reconciling listings")
        listed, began = listings.matched, time.monotonic()
        await more(reads, 20, within=20, what="twenty head reads")
        elapsed = time.monotonic() - began
        assert listings.matched - listed <= elapsed / settings["reconcile_interval"] + 1
        await store.put_object(bucket, f"{TOPIC}/00/foreign", b"foreign")
        await recorder.wait_count(2, within=10)
    assert recorder.messages[-1].body == b"foreign"


async def test_without_a_head_the_consumer_lists_as_before(store: Store, proxy: S3Proxy) -> None:
    """A prefix no s3stream producer writes to has no head: the consumer backs its listings off only
    up to max_poll_interval, however long reconcile_interval is, so plain PUTs arrive promptly."""
    bucket = await _topic(store)
    listings = proxy.add(_counting("GET", "listing"))
    settings = {**IDLE, "max_poll_interval": 0.2}
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **settings)
    async with running(consumer):
        for i in range(3):
            seen = listings.matched
            await wait_until(lambda seen=seen: listings.matched >= seen + 6, within=20, what="idle listings")
            await store.put_object(bucket, f"{TOPIC}/00/k{i}", b"x")
            await recorder.wait_count(i + 1, within=5)


async def test_a_burst_costs_a_head_write_per_gap_and_its_last_message_is_signalled(
        store: Store, proxy: S3Proxy) -> None:
    """Thirty messages published together cost far fewer head writes than messages, and the last
    head write reaches the server after the last message's PUT: the end of a burst is signalled."""
    bucket = await _topic(store)
    order: list[str] = []

    def record(request: web.Request) -> bool:
        if request.method == "PUT" and f"/{TOPIC}/" in request.path:
            order.append("message")
        elif request.method == "PUT" and "/_s3stream/heads/" in request.path:
            order.append("head")
        return False

    proxy.add(Rule(Delay(0), when=record))
    settings = make_settings(proxy.endpoint, f"s3://{bucket}/{TOPIC}")
    producer = settings.producer.model_copy(update={"heads": True, "head_gap": 0.2})
    settings = settings.model_copy(update={"producer": producer})
    async with Producer(settings) as p:
        await asyncio.gather(*(p.publish(f"s3://{bucket}/{TOPIC}", f"m{i}".encode()) for i in range(30)))
    assert order.count("message") == 30
    assert 1 <= order.count("head") <= 5
    assert order[-1] == "head"


async def test_listing_wakeup_reads_no_head(store: Store, proxy: S3Proxy) -> None:
    """``wakeup = "listing"`` is the old behaviour: no head is ever read, idle listings back off up
    to max_poll_interval."""
    bucket = await _topic(store)
    reads = proxy.add(_counting("GET", "head"))
    settings = {**IDLE, "wakeup": "listing", "max_poll_interval": 0.2}
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **settings)
    async with running(consumer):
        await _publish(proxy.endpoint, bucket, b"first")
        await recorder.wait_count(1)
        await store.put_object(bucket, f"{TOPIC}/00/foreign", b"foreign")
        await recorder.wait_count(2, within=5)
    assert reads.matched == 0


async def test_a_quiet_shard_with_a_long_history_is_not_listed_on_every_poll(
        store: Store, proxy: S3Proxy) -> None:
    """A quiet versions shard whose listing is many pages long (here 200 retained versions in pages
    of 10, as 100,000 are in pages of 1,000) is reconciled a page per reconcile_interval on average:
    each pass of P pages waits P intervals. Between passes the consumer only reads the head."""
    bucket = await _topic(store)
    for i in range(200):
        await store.put_object(bucket, f"{TOPIC}/00/k{i:03d}", b"old")
    listings, reads = _counters(proxy)
    settings = {**IDLE, "reconcile_interval": 0.2, "page_size": 10}
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **settings)
    async with running(consumer):
        await _publish(proxy.endpoint, bucket, b"new")
        await recorder.wait_count(201, within=30)
        await more(reads, 10, within=20, what="ten head reads")
        listed, began = listings.matched, time.monotonic()
        await more(reads, 40, within=30, what="forty head reads")
        elapsed = time.monotonic() - began
    pages_per_pass = 21
    assert listings.matched - listed <= elapsed / settings["reconcile_interval"] + 2 * pages_per_pass


async def test_plain_writes_beside_a_head_turn_the_shard_back_to_listing(
        store: Store, proxy: S3Proxy) -> None:
    """On a topic whose head exists, a plain PUT (``aws s3 cp``) waits for the reconciling listing
    once; that listing's find shows a writer the head does not announce, so the shard backs off as
    without a head (up to max_poll_interval) for ten reconcile intervals: the next plain PUTs arrive
    within the back-off."""
    bucket = await _topic(store)
    listings, reads = _counters(proxy)
    settings = {**IDLE, "reconcile_interval": 3.0, "max_poll_interval": 0.2}
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **settings)
    async with running(consumer):
        await _publish(proxy.endpoint, bucket, b"first")
        await recorder.wait_count(1)
        await more(reads, 3, within=20, what="three head reads")
        listed = listings.matched
        await more(reads, 8, within=20, what="eight head reads")
        assert listings.matched - listed <= 1  # waiting for the head, not listing every 0.2 s
        await store.put_object(bucket, f"{TOPIC}/00/plain-0", b"plain")
        await recorder.wait_count(2, within=15)  # the reconciling listing (3 s) found it
        await more(listings, 6, within=10, what="listing every 0.2 s")
        for i in (1, 2):
            await store.put_object(bucket, f"{TOPIC}/00/plain-{i}", b"plain")
            await recorder.wait_count(2 + i, within=5)
    assert [m.body for m in recorder.messages] == [b"first"] + [b"plain"] * 3


async def test_a_deleted_head_sends_the_consumer_back_to_listing(store: Store, proxy: S3Proxy) -> None:
    """When the head disappears (``topic delete --data``, producers with heads turned off and the head
    removed), the consumer notices at its next head read and lists on its own again, backing off only
    up to max_poll_interval: a plain PUT arrives within seconds, though reconcile_interval is 30 s."""
    bucket = await _topic(store)
    reads = proxy.add(_counting("GET", "head"))
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **{**IDLE, "max_poll_interval": 0.2})
    async with running(consumer):
        await _publish(proxy.endpoint, bucket, b"first")
        await recorder.wait_count(1)
        await more(reads, 3, within=20, what="three head reads")
        await store.delete_object(bucket, head_key(TOPIC))
        await store.put_object(bucket, f"{TOPIC}/00/plain", b"plain")
        await recorder.wait_count(2, within=5)
    assert [m.body for m in recorder.messages] == [b"first", b"plain"]


async def test_a_log_shard_catching_up_on_hours_of_directories_does_not_wait_for_the_head(
        store: Store, proxy: S3Proxy) -> None:
    """A log-layout pass lists at most an hour of minute directories. A new group starting three hours
    back, whose second hour is empty, goes on listing at once after that empty pass (it stopped short
    of the present) instead of waiting for a head change or the reconciling listing (30 s here, and a
    pass of 60 listings waits 60 of them)."""
    bucket = await _topic(store, "log")
    url = f"s3://{bucket}/{TOPIC}"
    settings = make_settings(proxy.endpoint, url)
    for hours_back, body in ((3, b"three hours ago"), (0.2, b"twelve minutes ago")):
        async with Producer(settings, clock=lambda h=hours_back: time.time() - h * 3600) as old:
            await old.publish(url, body)
    recorder = Recorder()
    consumer = _consumer(proxy, bucket, recorder, **IDLE)
    async with running(consumer):
        await recorder.wait_count(2, within=20)
    assert [m.body for m in recorder.messages] == [b"three hours ago", b"twelve minutes ago"]
