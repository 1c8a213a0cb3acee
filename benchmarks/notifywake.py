"""Waking up by S3 Event Notifications: what an idle shard costs when the bucket tells an SQS queue.

A topic of one shard on S3 Standard cannot be both cheap and quick to wake by polling: the head's
conditional GET every few hundred milliseconds is about $0.12 a day on its own, and reading it less
often than every 0.7 s (the $0.05 budget at $0.0004 per 1,000 GETs) leaves a message after silence
waiting longer than 500 ms. A general-purpose bucket can instead *send* an event to SQS for every
PUT, and a consumer long-polls the queue: one ``ReceiveMessage`` per ``wait_seconds`` (20 s) while
nothing happens, answered at once when an event arrives.

Both measurements run against moto's S3 and SQS in a child process (the emulator has no
notifications), with a ``notifications`` source on a versioned bucket's prefix, set up as
``s3stream notifications setup`` does:

* **Sporadic latency**: one object after 10-14 s of silence; publish to handler. moto queues the
  event while it answers the PUT, so this is s3stream's part only (the long poll returning, one
  key's listing, the GET) on a local server; AWS's own delivery of the event comes on top and AWS
  states no bound for it.
* **Idle cost**: requests of the idle consumer, by operation, counted by s3stream's own metrics
  (S3 and SQS), per day, priced at S3 Standard and SQS standard-queue prices, on a prefix and queue
  of its own (so no event of the latency run is received again). In a window shorter than the
  ``reconcile_interval`` (60 s), the reconciling listing is added from the settings, as for the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson

from benchmarks import bucket as bench
from benchmarks import scenarios as sc
from benchmarks.suite import Suite, arun
from s3stream.cli.notify import setup
from s3stream.config import Settings, build_settings
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.sqs import SQS_REQUESTS
from s3stream.s3.store import open_store

BUCKET = "wake-notify"
PREFIX = "events/"
IDLE_PREFIX = "quiet/"
RECONCILE = 60.0  # the notifications source's default reconcile_interval
SQS_USD_PER_MILLION = 0.40  # SQS standard queue, us-east-1, per million requests


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 and SQS in a child process on a free port; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise sc.BenchError(f"moto's server did not start on port {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def settings(endpoint: str, queue_url: str | None = None, prefix: str = PREFIX) -> Settings:
    """A consumer of ``prefix`` by notifications (default source settings), or the S3 part alone."""
    data: dict[str, Any] = {"s3": {"endpoint_url": endpoint, "addressing_style": "path"},
                            "consumer": {"group": sc.new_group()}}
    if queue_url is not None:
        data["sources"] = [{"url": f"s3://{BUCKET}/{prefix}", "handler": sc.HANDLER,
                            "notifications": {"queue_url": queue_url}}]
    return build_settings(data)


async def prepare(endpoint: str) -> tuple[str, str]:
    """A versioned bucket notifying a queue of its PUTs under each prefix; the two queues' URLs."""
    s3 = settings(endpoint)
    async with open_store(s3.s3) as store:
        await store.create_bucket(BUCKET, versioning=True)
    urls = [(await setup(s3, BUCKET, f"wake-{sc.new_group()[6:]}", prefix=prefix)).queue_url
            for prefix in (PREFIX, IDLE_PREFIX)]
    return urls[0], urls[1]


async def sporadic(endpoint: str, queue_url: str, gaps: list[float]) -> list[float]:
    """Seconds from PUT to handler of one object after each gap (a first one warms the consumer up)."""
    seen: list[float] = []
    warm, arrived = asyncio.Event(), asyncio.Event()

    async def handle(message: Message) -> None:
        sent = orjson.loads(message.body).get("sent")
        if sent is None:
            warm.set()
            return
        seen.append(time.time() - sent)
        if len(seen) >= len(gaps):
            arrived.set()

    consumer = Consumer(settings(endpoint, queue_url))
    consumer.register_handler(sc.HANDLER, handle)
    async with open_store(settings(endpoint).s3) as store:

        async def publish() -> None:
            await store.put_object(BUCKET, f"{PREFIX}warm", sc.body(-1))
            await asyncio.wait_for(warm.wait(), 120)
            for i, gap in enumerate(gaps):
                await asyncio.sleep(gap)
                await store.put_object(BUCKET, f"{PREFIX}m{i}", sc.body(i, sent=time.time()))
            await asyncio.wait_for(arrived.wait(), 120)

        sender = asyncio.create_task(publish())
        await sc.run_until(consumer, arrived, sum(gaps) + 300, "sporadic notifications")
        await sender
    return seen


async def idle(endpoint: str, queue_url: str, *, warmup: float, seconds: float) -> dict[str, Any]:
    """Requests of an idle consumer of the prefix, per day, and their price."""
    consumer = Consumer(settings(endpoint, queue_url, IDLE_PREFIX))
    consumer.register_handler(sc.HANDLER, _ignore)
    meter = _S3AndSqsMeter()
    usage = await sc.measure_window(consumer, meter, warmup=warmup, seconds=seconds,
                                    what="idle notifications")
    day = {op: n * 86_400 / seconds for op, n in usage.requests.items()}
    if seconds < RECONCILE:
        day["reconciling listings"] = 86_400 / RECONCILE
    sqs_ops = set(_sqs_counts())
    s3 = {("ListObjectVersions" if op == "reconciling listings" else op): round(n) for op, n in day.items()
          if op not in sqs_ops}
    sqs = sum(n for op, n in day.items() if op in sqs_ops)
    return {"requests_per_day": day, "seconds": seconds,
            "standard_usd": bench.request_cost(s3, "standard") + sqs * SQS_USD_PER_MILLION / 1e6}


def _sqs_counts() -> dict[str, float]:
    """SQS requests s3stream sent in this process, by operation (``s3stream_sqs_requests_total``)."""
    out: dict[str, float] = {}
    for family in SQS_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                op = sample.labels["operation"]
                out[op] = out.get(op, 0.0) + sample.value
    return out


class _S3AndSqsMeter(sc.MetricMeter):
    """s3stream's own request counts, S3 and SQS, by operation."""

    @staticmethod
    def snapshot() -> dict[str, float]:
        return {**sc.MetricMeter.snapshot(), **_sqs_counts()}


async def _ignore(message: Message) -> None:
    return None


def run_notify_wakeup(suite: Suite, gaps: list[float], *, warmup: float, seconds: float) -> None:
    """The sporadic latency and the idle cost of a consumer woken by S3 Event Notifications."""
    with moto_server() as endpoint:
        queue_url, idle_queue_url = arun(prepare(endpoint))

        def latency() -> tuple[float, dict[str, Any]]:
            ordered = sorted(arun(sporadic(endpoint, queue_url, gaps)))
            stats = {"p50_ms": sc.percentile(ordered, 50) * 1000, "p99_ms": sc.percentile(ordered, 99) * 1000,
                     "max_ms": ordered[-1] * 1000, "messages": len(ordered)}
            return stats["p99_ms"], stats

        suite.record("wakeup.sporadic.notifications", "notifications (moto): one object after silence",
                     "ms p99", latency)

        def cost() -> tuple[float, dict[str, Any]]:
            res = arun(idle(endpoint, idle_queue_url, warmup=warmup, seconds=seconds))
            return res["standard_usd"], res

        suite.record("wakeup.idle.notifications.1", "idle shard-day, notifications, 1 shard", "$/day", cost)
