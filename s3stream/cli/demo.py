"""``s3stream demo``: the AWS CLI walkthrough on an embedded S3, consumed live by s3stream."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import click

from s3stream.cli.devserver import start_moto
from s3stream.config import build_settings
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.handlers import LineWriter
from s3stream.s3.store import open_store

BUCKET = "s3-ootb-broker"
TOPIC = "topic/"


def _say(text: str) -> None:
    click.secho(f"# {text}", fg="cyan", err=True)


def _body(ident: int, value: int) -> bytes:
    return f'{{"id": "{ident}", "value": "{value:03d}"}}\n'.encode()


class _Counting:
    """The stdout handler, counting what it has printed so the demo knows when to go on."""

    def __init__(self) -> None:
        self.writer = LineWriter(sys.stdout.buffer, owned=False)
        self.seen = 0
        self.changed = asyncio.Event()

    async def handle(self, message: Message) -> None:
        await self.writer.handle(message)
        self.seen += 1
        self.changed.set()

    async def close(self) -> None:
        await self.writer.close()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(30.0):
            while self.seen < count:
                self.changed.clear()
                await self.changed.wait()


async def run_demo() -> None:
    """Start S3, publish, consume with the stdout handler, publish more while it runs, stop."""
    server, endpoint = start_moto(0)
    try:
        await _walkthrough(endpoint)
    finally:
        server.stop()


async def _walkthrough(endpoint: str) -> None:
    settings = build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path",
               "access_key_id": "testing", "secret_access_key": "testing"},
        "consumer": {"poll_interval": 0.2, "max_poll_interval": 0.5, "settle_window": 2},
        "sources": [{"url": f"s3://{BUCKET}/{TOPIC}", "handler": "demo"}],
    })
    _say(f"embedded S3 at {endpoint}; creating versioned bucket {BUCKET}")
    async with open_store(settings.s3) as store:
        await store.create_bucket(BUCKET, versioning=True)
        _say("publishing topic/id-1.json twice and topic/id-2.json once")
        for ident, value in [(1, 1), (1, 2), (2, 1)]:
            await store.put_object(BUCKET, f"{TOPIC}id-{ident}.json", _body(ident, value))

        handler = _Counting()
        consumer = Consumer(settings)
        consumer.register_handler("demo", handler)
        _say("consuming s3://s3-ootb-broker/topic/ from the earliest version (stdout handler):")
        task = asyncio.create_task(consumer.run())
        await _unless_stopped(handler.wait_for(3), task)
        _say("writing 2 keys, 2 times each, interleaved, while the consumer runs:")
        for value in (3, 4):
            for ident in (1, 2):
                await store.put_object(BUCKET, f"{TOPIC}id-{ident}.json", _body(ident, value))
        await _unless_stopped(handler.wait_for(7), task)
        _say("all 7 versions delivered in write order per key; stopping cleanly")
        consumer.stop()
        await task


async def _unless_stopped(waiter: Coroutine[Any, Any, None], task: asyncio.Task[None]) -> None:
    """Await ``waiter``, but surface the consumer's error at once if it stops first."""
    wait = asyncio.ensure_future(waiter)
    done, _ = await asyncio.wait({wait, task}, return_when=asyncio.FIRST_COMPLETED)
    if wait not in done:
        wait.cancel()
        task.result()
        raise RuntimeError("the consumer stopped before the demo finished")
    wait.result()
