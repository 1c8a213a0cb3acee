"""Bodies held at once are bounded by ``max_inflight_mb``, whatever the concurrency (DESIGN.md promise 6)."""

from __future__ import annotations

import asyncio

import pytest

from s3stream.message import Message
from s3stream.pipeline.budget import ByteBudget
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import make_settings, running, wait_until

MIB = 1 << 20


async def test_a_hold_waits_for_room_and_one_larger_than_the_budget_holds_all_of_it() -> None:
    """Holds add up to the budget; the next waits until one ends; an oversized hold takes the whole
    budget, so it runs alone."""
    budget = ByteBudget(10)
    entered: list[str] = []

    async def hold(name: str, size: int, release: asyncio.Event) -> None:
        async with budget.hold(size):
            entered.append(name)
            await release.wait()

    a_done, b_done, c_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(hold("a", 6, a_done)), asyncio.create_task(hold("b", 4, b_done))]
    await wait_until(lambda: entered == ["a", "b"], within=5)
    big = asyncio.create_task(hold("c", 100, c_done))
    await asyncio.sleep(0)
    assert entered == ["a", "b"]
    assert budget.free == 0
    a_done.set()
    await tasks[0]
    assert entered == ["a", "b"]  # c needs all ten bytes
    b_done.set()
    await wait_until(lambda: entered == ["a", "b", "c"], within=5)
    assert budget.free == 0
    c_done.set()
    await asyncio.gather(tasks[1], big)
    assert budget.free == 10


@pytest.mark.parametrize(("budget_mb", "most_at_once"), [(4, 1), (8, 2)])
async def test_bodies_in_memory_stay_within_max_inflight_mb(
    store: Store, bucket: str, moto_endpoint: str, budget_mb: int, most_at_once: int
) -> None:
    """Six 3 MiB objects with 8 workers: no more of them are being handled at once than fit in the
    budget, and every one is delivered."""
    for i in range(6):
        await store.put_object(bucket, f"big/o{i}", bytes([i]) * (3 * MIB))
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/big/", concurrency=8,
                                      max_inflight_mb=budget_mb))
    now, most, seen = 0, 0, []

    async def handler(message: Message) -> None:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.05)
        seen.append(message.key)
        now -= 1

    consumer.register_handler("rec", handler)
    async with running(consumer):
        await wait_until(lambda: len(seen) == 6, within=60, what="six big objects")
    assert sorted(seen) == [f"big/o{i}" for i in range(6)]
    assert most == most_at_once
