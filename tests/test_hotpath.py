"""The fast paths keep the guarantees: batched segment publishing, segment consumption, and the
pool's one-watchdog handler timeout. Run against the emulator (directory-bucket semantics, every
signature checked), so these also exercise the lean request path end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator

import pytest

from benchmarks.emulator import EmulatorProcess, run_emulator
from s3stream.config import build_settings
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic, parse_log_key
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import open_store
from tests.conftest import Recorder, new_bucket_name, running, wait_until

pytestmark = pytest.mark.e2e  # an emulator subprocess serves every test


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    """An express-profile emulator without added latency, checking signatures."""
    with run_emulator("express", verify_signatures=True, latency_ms=0) as emu:
        yield emu


def s3(emu: EmulatorProcess) -> dict[str, str]:
    return {"endpoint_url": emu.url, "addressing_style": "path"}


async def new_log_topic(emu: EmulatorProcess, shards: int) -> str:
    bucket = f"hot{new_bucket_name('h')[-5:].replace('-', '')}--use1-az4--x-s3"
    async with open_store(build_settings({"s3": s3(emu)}).s3) as store:
        await store.create_directory_bucket(bucket, "use1-az4")
        await create_topic(store, bucket, "events", shards=shards, layout="log")
    return f"s3://{bucket}/events"


async def test_publish_many_segments_round_trip_in_key_order(emulator: EmulatorProcess) -> None:
    """``publish_many`` with segments answers each message with its segment and line, in input order;
    segments hold at most ``segment_max_messages``; a consumer gets every message once, each key's
    messages in publish order."""
    url = await new_log_topic(emulator, shards=4)
    messages = [(f"user-{i % 17}", f"{i % 17}:{i}") for i in range(2_500)]
    producer = {"segment_max_messages": 100, "linger": 5.0}
    async with Producer(build_settings({"s3": s3(emulator), "producer": producer})) as p:
        published = await p.publish_many(url, messages)
    assert len(published) == len(messages)
    per_segment: dict[str, list[int]] = defaultdict(list)
    for item in published:
        assert item.offset is not None
        per_segment[item.key].append(item.offset)
    assert all(offsets == list(range(len(offsets))) for offsets in per_segment.values())
    assert max(len(o) for o in per_segment.values()) == 100
    assert all(parse_log_key(key) is not None for key in per_segment)

    recorder = Recorder()
    settings = build_settings({"s3": s3(emulator), "consumer": {"poll_interval": 0.05, "settle_window": 1.0},
                               "sources": [{"url": url, "handler": "rec"}]})
    consumer = Consumer(settings)
    consumer.register_handler("rec", recorder)
    async with running(consumer):
        await recorder.wait_count(len(messages), within=60)
    seen: dict[str | None, list[int]] = defaultdict(list)
    for m in recorder.messages:
        seen[m.partition_key].append(int(m.text.split(":")[1]))
    assert sum(len(v) for v in seen.values()) == len(messages)
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), key
        assert len(numbers) == len(set(numbers))


async def test_watchdog_times_out_a_handler_that_swallows_the_cancel(emulator: EmulatorProcess) -> None:
    """``handler_timeout`` is enforced by the pool's watchdog: a call that overruns is cut off and
    retried. A handler that catches the cancellation and returns has handled its message (as under
    ``asyncio.timeout``), and does not leave its worker cancelled: later messages on that worker,
    including a retry that runs under its own timeout, are delivered normally."""
    url = await new_log_topic(emulator, shards=1)
    async with Producer(build_settings({"s3": s3(emulator)})) as p:
        await p.publish_many(url, [(None, f"m{i}") for i in range(6)])
    calls: dict[str, int] = defaultdict(int)
    delivered: list[str] = []

    async def handler(message: Message) -> None:
        calls[message.text] += 1
        if message.text == "m2" and calls["m2"] == 1:
            with contextlib.suppress(asyncio.CancelledError):  # swallowed: the call returns normally
                await asyncio.sleep(30)
        if message.text == "m4" and calls["m4"] == 1:
            await asyncio.sleep(30)  # cut off, then retried
        delivered.append(message.text)

    settings = build_settings({
        "s3": s3(emulator), "sources": [{"url": url, "handler": "h"}],
        "consumer": {"poll_interval": 0.05, "settle_window": 1.0, "handler_timeout": 0.3,
                     "concurrency": 1},
    })
    consumer = Consumer(settings)
    consumer.register_handler("h", handler)
    async with running(consumer):
        await wait_until(lambda: len(set(delivered)) == 6, within=30, what="all six delivered")
    assert sorted(set(delivered)) == [f"m{i}" for i in range(6)]
    assert calls["m2"] == 1
    assert calls["m4"] == 2


async def test_keyless_messages_spread_over_the_shards(emulator: EmulatorProcess) -> None:
    """Messages without a key go round a log topic's shards (one at a time and batched), and land
    on hashed random names across a versions topic's shards, instead of all in shard 0."""
    url = await new_log_topic(emulator, shards=4)
    async with Producer(build_settings({"s3": s3(emulator)})) as p:
        singles = [await p.publish(url, f"m{i}") for i in range(8)]
        batched = await p.publish_many(url, [(None, f"b{i}") for i in range(40)])
    shards = [item.key.split("/")[1] for item in singles + batched]
    assert sorted(set(shards)) == ["00", "01", "02", "03"]
    assert all(shards.count(s) == 12 for s in set(shards))

    bucket = new_bucket_name("hv")
    async with open_store(build_settings({"s3": s3(emulator)}).s3) as store:
        await store.create_bucket(bucket, versioning=True)
        await create_topic(store, bucket, "events", shards=4)
    async with Producer(build_settings({"s3": s3(emulator)})) as p:
        published = await p.publish_many(f"s3://{bucket}/events", [(None, f"v{i}") for i in range(40)])
    assert len({item.key.split("/")[1] for item in published}) == 4
