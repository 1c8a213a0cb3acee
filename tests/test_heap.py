"""The daemon's garbage-collector setting: pure, no server."""

from __future__ import annotations

import asyncio
import gc

from s3stream.cli.app import freeze_heap_when_started
from s3stream.pipeline.consumer import Consumer
from tests.conftest import make_settings


async def test_the_heap_is_frozen_once_the_consumer_has_started() -> None:
    """Nothing is frozen while the consumer starts; once it has, what it built is left out of the
    collector's full passes (``gc.freeze``), which took about 100 ms each while messages flowed."""
    consumer = Consumer(make_settings("http://127.0.0.1:9", "s3://b/t"))
    gc.unfreeze()
    freezing = asyncio.create_task(freeze_heap_when_started(consumer))
    try:
        await asyncio.sleep(0)  # let it reach its wait
        assert gc.get_freeze_count() == 0
        consumer.started.set()
        await asyncio.wait_for(freezing, 10)
        assert gc.get_freeze_count() > 0
    finally:
        freezing.cancel()
        gc.unfreeze()
