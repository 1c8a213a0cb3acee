"""A consumer-group member on a sharded topic, run with traffic, faults and a dead letter, and scraped.

Shared by the metrics tests (which check the series and their labels) and the dashboard and alert
tests (which check that every metric they query is one s3stream really exports).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from s3stream.config import build_settings
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import wait_until
from tests.s3proxy import Rule, S3Error, S3Proxy

TOPIC = "orders"
SHARDS = 2
GROUP = "billing"
MEMBER = "member-1"
MESSAGES = 24
SLOWDOWNS = 3

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def named(found: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [dict(labels) for (n, labels) in found if n == name]


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        url, timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def is_object_get(request: web.Request) -> bool:
    """A GetObject (a GET of ``/bucket/key`` that is no listing or bucket query) of a message."""
    parts = request.path.lstrip("/").split("/", 1)
    return (request.method == "GET" and len(parts) == 2 and f"/{TOPIC}/" in request.path
            and not {"versions", "list-type", "versioning"} & set(request.query))


@dataclass
class Scraped:
    """What a run exposed: the text of ``/metrics`` while it ran, and the injected SlowDowns."""

    text: str
    bucket: str
    slowdowns: Rule
    handled: set[str] = field(default_factory=set)

    @property
    def samples(self) -> Samples:
        return samples(self.text)


def member_settings(endpoint: str, bucket: str) -> Any:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"group": GROUP, "concurrency": 8, "poll_interval": 0.05, "max_poll_interval": 0.2,
                     "settle_window": 1.0, "shutdown_grace": 5.0, "handler_attempts": 1,
                     "checkpoint": {"interval": 0.2},
                     "leases": {"enabled": True, "duration": 3.0, "renew_interval": 1.0,
                                "member_id": MEMBER}},
        "metrics": {"port": 0},
        "sources": [{"url": f"s3://{bucket}/{TOPIC}", "handler": "rec"}],
    })


@contextlib.asynccontextmanager
async def member(endpoint: str, bucket: str, handler: Callable[[Message], Any]) -> AsyncIterator[Consumer]:
    consumer = Consumer(member_settings(endpoint, bucket))
    consumer.register_handler("rec", handler)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: task.done() or (consumer.health is not None and consumer.health.port != 0),
                         what="metrics endpoint listening")
        assert not task.done(), task.exception()
        yield consumer
    finally:
        consumer.stop()
        async with asyncio.timeout(60):
            await task


async def run_and_scrape(store: Store, moto_endpoint: str, bucket: str) -> Scraped:
    """Create a two-shard topic, publish through a proxy answering the first GetObjects of messages
    with ``503 SlowDown``, consume as a group member whose handler refuses one message (dead-lettered),
    and scrape ``/metrics`` once every shard is held, checkpointed and every message accounted for."""
    await create_topic(store, bucket, TOPIC, shards=SHARDS)
    slowdowns = Rule(S3Error(503, "SlowDown", "Please reduce your request rate."), when=is_object_get,
                     first=SLOWDOWNS)
    handled: set[str] = set()

    async def handler(message: Message) -> None:
        if message.key.endswith("/poison"):
            raise ValueError("refused")
        handled.add(message.key)

    with S3Proxy(moto_endpoint, [slowdowns]) as proxy:
        settings = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"}})
        async with Producer(settings) as producer:
            batch = [(f"k{i:02d}", f"body {i}") for i in range(MESSAGES)]
            await producer.publish_many(f"s3://{bucket}/{TOPIC}", [*batch, ("poison", "x")])
        async with member(proxy.endpoint, bucket, handler) as consumer:
            assert consumer.health is not None
            url = f"http://127.0.0.1:{consumer.health.port}/metrics"
            text = ""

            async def settled() -> bool:
                nonlocal text
                text = await scrape(url)
                found = samples(text)
                shards = [str(i) for i in range(SHARDS)]
                labels = [{"topic": TOPIC, "bucket": bucket, "shard": s, "group": GROUP} for s in shards]
                return (len(handled) == MESSAGES
                        and sum(value(found, "s3stream_dead_letters_total", **lb) or 0 for lb in labels) == 1
                        and all(value(found, "s3stream_lease_owned", **lb) == 1 for lb in labels)
                        and all(value(found, "s3stream_checkpoint_last_success_timestamp_seconds", **lb)
                                for lb in labels)
                        and all(value(found, "s3stream_lag_messages", **lb) == 0 for lb in labels))

            await wait_until(settled, within=60, what="every message handled, shards held and checkpointed")
    return Scraped(text, bucket, slowdowns, handled)
