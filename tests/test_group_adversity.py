"""Consumer groups under adversity: each way two members could own one shard at once, or a member
could hand out a shard it lost, pinned by a test of its own (DESIGN.md promise 8).

In-process members and real servers over HTTP; a fault proxy holds one member's lease writes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from s3stream.config import build_settings
from s3stream.errors import CheckpointConflict
from s3stream.groups.lease import LeaseView
from s3stream.groups.membership import Candidate, Membership, default_member_id, lease_key, member_key
from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.layouts.topics import create_topic
from s3stream.message import Entry, Message
from s3stream.pipeline.checkpoint import S3CheckpointStore
from s3stream.pipeline.checkpointer import Checkpointer
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.handlers import as_handler
from s3stream.pipeline.shard import Shard
from s3stream.s3.store import Store, open_store
from tests.conftest import wait_until
from tests.s3proxy import Delay, Rule, S3Proxy
from tests.test_groups import publish

DURATION = 3.0
RENEW = 1.0


class Gate:
    """A handler that records (member, key, start, end) and holds messages whose key ends with
    ``held`` until :meth:`open` is called; every other message takes ``pace`` seconds."""

    def __init__(self, member: str, calls: list[tuple[str, str, float, float]], held: str = "",
                 pace: float = 0.0) -> None:
        self.member, self.calls, self.held, self.pace = member, calls, held, pace
        self.started: list[str] = []
        self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    async def __call__(self, message: Message) -> None:
        began = time.time()
        self.started.append(message.key)
        if self.held and message.key.endswith(self.held):
            await self._open.wait()
        elif self.pace:
            await asyncio.sleep(self.pace)
        self.calls.append((self.member, message.key, began, time.time()))


def settings_for(endpoint: str, url: str, member: str, **consumer: Any) -> Any:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"group": "g", "concurrency": 4, "poll_interval": 0.1, "max_poll_interval": 0.5,
                     "settle_window": 1.0, "shutdown_grace": 20.0, "checkpoint": {"interval": 0.2},
                     "leases": {"enabled": True, "duration": DURATION, "renew_interval": RENEW,
                                "member_id": member}, **consumer},
        "sources": [{"url": url, "handler": "gate"}],
    })


@contextlib.asynccontextmanager
async def member(settings: Any, gate: Gate) -> AsyncIterator[tuple[Consumer, asyncio.Task[None]]]:
    consumer = Consumer(settings)
    consumer.register_handler("gate", gate)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer, task
    finally:
        gate.open()
        consumer.stop()
        async with asyncio.timeout(60):
            await task


async def lease_of(store: Store, bucket: str, prefix: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((await store.get_object(bucket, lease_key("g", prefix))).body)
    return doc


async def test_a_stopping_member_keeps_its_lease_until_its_final_commit(
        store: Store, bucket: str, moto_endpoint: str) -> None:
    """A member stopped (SIGTERM's path) while a handler call is still running keeps renewing its
    lease through the drain: the other member does not take the shard mid-drain, so the running
    message is not delivered again; the final commit lands, the lease is released, and the other
    member carries on after it."""
    await create_topic(store, bucket, "orders", shards=1)
    url = f"s3://{bucket}/orders"
    calls: list[tuple[str, str, float, float]] = []
    a, b = Gate("a", calls, held="slow"), Gate("b", calls)
    async with member(settings_for(moto_endpoint, url, "a"), a) as (one, _):
        await wait_until(lambda: len(one.shards) == 1, what="a holds the shard")
        async with member(settings_for(moto_endpoint, url, "b"), b):
            prefix = one.shards[0].prefix
            await store.put_object(bucket, f"{prefix}slow", b"slow")
            await wait_until(lambda: any(k.endswith("slow") for k in a.started), what="a runs the slow one")
            one.stop()
            stopped = (await lease_of(store, bucket, prefix)).get("renewal", 0)
            past = stopped + int((DURATION + 1) / RENEW) + 1  # renewals that outlive the lease past the stop

            async def renewing() -> bool:
                lease = await lease_of(store, bucket, prefix)
                return bool(lease["owner"] == "a" and lease.get("renewal", 0) >= past)

            await wait_until(renewing, within=DURATION * 5, what="a renewing a whole lease after its stop")
            a.open()
            await wait_until(lambda: one.membership is not None and not one.membership.held,
                             within=30, what="a released its lease")
            await store.put_object(bucket, f"{prefix}after", b"after")
            await wait_until(lambda: any(k.endswith("after") for _, k, _, _ in calls), what="b took over")
    slow = [m for m, k, _, _ in calls if k.endswith("slow")]
    assert slow == ["a"], f"the message running at the stop was delivered by {slow}"


async def test_a_member_whose_lease_lapsed_hands_out_nothing_more(
        store: Store, bucket: str, moto_endpoint: str) -> None:
    """A member whose lease renewals are held back past the lease (a slow or partitioned store)
    hands nothing more to its handler once its lease may have expired, though its queue is full
    and its listing pass half done; the member that takes the shard over delivers the rest. No
    call of the first member starts after its tenure ended."""
    await create_topic(store, bucket, "orders", shards=1)
    url = f"s3://{bucket}/orders"
    calls: list[tuple[str, str, float, float]] = []
    with S3Proxy(moto_endpoint) as proxy:
        a = Gate("a", calls, pace=0.05)
        busy = settings_for(proxy.endpoint, url, "a", concurrency=1, queue_size=200)
        async with member(busy, a) as (one, _):
            await wait_until(lambda: len(one.shards) == 1, what="a holds the shard")
            await publish(moto_endpoint, url, range(300))
            await wait_until(lambda: len(calls) >= 10, what="a delivering")
            held_back = proxy.add(Rule(Delay(DURATION + 5), method="PUT",
                                       when=lambda r: "/_s3stream/groups/" in r.path))
            cut = time.time()  # a's last lease write was sent before this
            b = Gate("b", calls)
            async with member(settings_for(moto_endpoint, url, "b"), b):
                await wait_until(lambda: any(m == "b" for m, *_ in calls), within=30, what="b took over")
                await wait_until(lambda: len({k for _, k, _, _ in calls}) >= 300, within=60,
                                 what="all 300 delivered")
            proxy.rules.remove(held_back)
    late = [(k, began - cut) for m, k, began, _ in calls if m == "a" and began > cut + DURATION]
    assert not late, f"a started {len(late)} calls after its lease lapsed, e.g. {late[:3]}"


@pytest.mark.usefixtures("s3_endpoint")
async def test_a_renewal_after_a_takers_listing_defeats_the_take(store: Store, bucket: str) -> None:
    """A taker lists a lease that looks expired; its owner renews it before the taker writes. The
    renewal changes the lease's ETag, so the taker's If-Match fails: one owner, not two."""
    async def take(_: Candidate, __: Any) -> bool:
        return True

    async def give_up(_: Candidate) -> None:
        return None

    shard = Candidate(bucket, "t/00/")

    def new(name: str, duration: float) -> Membership:
        return Membership(store, group="g", member=name, duration=duration, renew_interval=1.0,
                          candidates=[shard], take=take, give_up=give_up, lost=lambda _: None)

    owner, taker = new("a", 1.0), new("b", 1.0)
    await owner.renew()
    async with asyncio.TaskGroup() as tg:
        await owner.rebalance(tg)
    assert owner.held

    async def expired() -> bool:
        _, now_ms = await taker._members(bucket)
        views = await taker._views(bucket, [shard], now_ms)
        return not views[shard.prefix].live

    await wait_until(expired, within=10, what="the lease to look expired to the taker")
    _, now_ms = await taker._members(bucket)
    stale = (await taker._views(bucket, [shard], now_ms))[shard.prefix]
    await owner.renew()  # the owner was only slow: it renews after the taker's listing
    async with asyncio.TaskGroup() as tg:
        await taker._acquire(shard, stale, tg)
    assert owner.held
    assert not taker.held, "two members hold the lease"


async def test_a_shard_being_released_is_not_taken_back(store: Store, bucket: str) -> None:
    """A member giving a shard up (its last work still finishing) whose share grows back meanwhile
    (the member it made room for left) does not take that shard again until the release is
    written: the shard is never open twice in one process."""
    shards = [Candidate(bucket, f"t/{i:02x}/") for i in range(2)]
    opened: Counter[str] = Counter()
    gate = asyncio.Event()

    async def take(cand: Candidate, _: Any) -> bool:
        opened[cand.prefix] += 1
        return True

    async def give_up(_: Candidate) -> None:
        await gate.wait()

    a = Membership(store, group="g", member="a", duration=30.0, renew_interval=1.0, candidates=shards,
                   take=take, give_up=give_up, lost=lambda _: None)
    b = Membership(store, group="g", member="b", duration=30.0, renew_interval=1.0, candidates=shards,
                   take=take, give_up=give_up, lost=lambda _: None)
    async with asyncio.TaskGroup() as tg:
        await a.renew()
        await a.rebalance(tg)
        await wait_until(lambda: sum(opened.values()) == 2, what="a opened both")
        await b.renew()  # b joins: a's share drops to one
        await a.rebalance(tg)
        releasing = [p for (_, p), h in a.held.items() if h.releasing]
        assert len(releasing) == 1
        await store.delete_object(bucket, member_key("g", "b"))  # b leaves before a's release is done
        await a.rebalance(tg)
        for _ in range(5):  # let a shard opened again run its take()
            await asyncio.sleep(0)
        assert opened[releasing[0]] == 1, "the shard being released was opened a second time"
        gate.set()
    assert opened[releasing[0]] == 1


@pytest.mark.usefixtures("s3_endpoint")
async def test_a_late_fence_does_not_displace_a_later_generation(store: Store, bucket: str) -> None:
    """A member that took a lease at generation 1 but fences the checkpoint only after the member
    holding generation 2 did is refused: the later generation keeps the shard and its commits."""
    def checkpoints() -> S3CheckpointStore:
        return S3CheckpointStore(store, bucket=bucket, prefix="t/00/", control_prefix="_s3stream/checkpoints",
                                 group="g")

    later, late = checkpoints(), checkpoints()
    await later.fence("b", 2)
    with pytest.raises(CheckpointConflict):
        await late.fence("a", 1)
    await later.save(Checkpoint(watermark_ms=5000))  # still the owner's
    stored = orjson.loads((await store.get_object(bucket, later.key)).body)
    assert (stored["watermark_ms"], stored["lease"]) == (5000, {"owner": "b", "generation": 2})


async def test_giving_up_a_busy_shard_waits_for_running_work_only(
        store: Store, bucket: str, moto_endpoint: str) -> None:
    """A member hands a shard over while its pool is full of that shard's work: it waits for the
    calls already running, not for the whole shutdown grace, and the items it never started are
    delivered by the new owner, each once."""
    await create_topic(store, bucket, "orders", shards=2)
    url = f"s3://{bucket}/orders"
    calls: list[tuple[str, str, float, float]] = []
    a, b = Gate("a", calls, pace=0.1), Gate("b", calls, pace=0.1)
    slow = {"concurrency": 1, "queue_size": 2, "shutdown_grace": 60.0}
    async with member(settings_for(moto_endpoint, url, "a", **slow), a) as (one, _):
        await wait_until(lambda: len(one.shards) == 2, what="a holds both shards")
        sent = await publish(moto_endpoint, url, range(100))
        await wait_until(lambda: len(calls) >= 5, what="a delivering")
        joined = time.monotonic()
        async with member(settings_for(moto_endpoint, url, "b", **slow), b) as (two, _):
            await wait_until(lambda: len(two.shards) == 1, within=45, what="b took a shard")
            took = time.monotonic() - joined
            await wait_until(lambda: {k.rsplit("/", 1)[1] for _, k, _, _ in calls} >= {k for k, _ in sent},
                             within=60, what="all 100 delivered")
    assert took < 20, f"the handover took {took:.1f}s: it waited for the shutdown grace"
    counts = Counter(k for _, k, _, _ in calls)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]


async def test_concurrent_commits_of_one_shard_take_turns(bucket: str, moto_endpoint: str) -> None:
    """Two commits of one shard at once (the periodic one and a handover's), the second one's
    request slower than the first's whole commit: both land, one after the other, instead of the
    second reading the first as another consumer's write (a false CheckpointConflict)."""
    async def nothing(_: Message) -> None:
        return None

    puts = 0

    def second_put(request: Any) -> bool:
        nonlocal puts
        if request.method == "PUT" and "/_s3stream/checkpoints/" in request.path:
            puts += 1
            return puts == 2
        return False

    with S3Proxy(moto_endpoint, [Rule(Delay(0.5), when=second_put)]) as proxy:
        settings = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"}})
        async with open_store(settings.s3) as store:
            checkpoints = S3CheckpointStore(store, bucket=bucket, prefix="t/",
                                            control_prefix="_s3stream/checkpoints", group="g")
            cursor = VersionCursor()
            shard = Shard(bucket=bucket, prefix="t/", handler=as_handler(nothing, "h"),
                          checkpoints=checkpoints, cursor=cursor)
            committer = Checkpointer([shard], interval=60)
            first, second = Entry("t/a", "v1", 1000), Entry("t/b", "v2", 2000)
            cursor.start(first)
            cursor.complete(first.ident)

            async def later() -> None:
                cursor.start(second)
                cursor.complete(second.ident)
                await committer.commit(shard)

            await asyncio.gather(committer.commit(shard), later())
            stored = orjson.loads((await store.get_object(bucket, checkpoints.key)).body)
    assert stored["done"] == {"t/a": [["v1", 1000]], "t/b": [["v2", 2000]]}


def test_default_member_ids_differ_between_processes_on_one_host() -> None:
    """Two members started with the same host name and pid (two containers on the host network,
    both pid 1) still get different ids."""
    assert default_member_id() != default_member_id()


@pytest.mark.usefixtures("s3_endpoint")
async def test_a_take_lost_to_another_member_is_followed_by_the_free_lease_in_the_same_pass(
        store: Store, bucket: str) -> None:
    """Two members, two shards. ``b`` takes one; ``a``'s listing of the leases is stale (made before
    ``b``'s take), so ``a`` tries that shard first and loses the race (412). In the same rebalancing
    pass ``a`` looks again and takes the shard still free, instead of leaving it unread until its
    next pass; ``b`` keeps its own."""
    async def take(_: Candidate, __: Any) -> bool:
        return True

    async def give_up(_: Candidate) -> None:
        return None

    shards = [Candidate(bucket, "t/00/"), Candidate(bucket, "t/01/")]

    def new(name: str) -> Membership:
        return Membership(store, group="g", member=name, duration=30.0, renew_interval=10.0,
                          candidates=shards, take=take, give_up=give_up, lost=lambda _: None)

    a, b = new("a"), new("b")
    await a.renew()
    await b.renew()
    async with asyncio.TaskGroup() as tg:
        await b.rebalance(tg)
    (taken_by_b,) = [prefix for _, prefix in b.held]
    other = next(c.prefix for c in shards if c.prefix != taken_by_b)
    real_views, looks = a._views, []

    async def stale_first(bkt: str, cands: list[Candidate], now_ms: int) -> dict[str, LeaseView]:
        looks.append(now_ms)
        if len(looks) == 1:  # as listed before b's take, with the other shard shown held by someone
            return {taken_by_b: LeaseView(taken_by_b, None, 0, None, False),
                    other: LeaseView(other, "z", 1, '"e"', True)}
        return await real_views(bkt, cands, now_ms)

    a._views = stale_first  # type: ignore[method-assign]
    async with asyncio.TaskGroup() as tg:
        await a.rebalance(tg)
    assert len(looks) == 2
    assert [prefix for _, prefix in a.held] == [other]
    assert [prefix for _, prefix in b.held] == [taken_by_b]
