"""How fast and how cheaply an idle consumer learns of a new message: the head object against listing.

* **Sporadic latency**: one message after 10-14 s of silence (long enough for a listing consumer to
  have backed off to its ``max_poll_interval``, as after a minute), again and again, consumed at the
  same time by two consumers of the same topic: one with ``wakeup = "head"`` (the default), one with
  ``wakeup = "listing"`` (every release before it). Receive time minus the send time in the body.
* **Idle cost**: a consumer of empty topics (4 shards each) after a warm-up; its requests per shard
  and day, and their price at S3 Standard and S3 Express One Zone request prices. With the head, the
  reconciling listings (one request per ``reconcile_interval`` per shard, however long its history)
  are rarer than the measuring window, so they are added from the settings and said so.
* **A quiet shard with a long history**: a versions shard keeping 100,000 versions (20,000 with
  ``--quick``): listing requests per idle hour with and without the head.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson

from benchmarks import bucket as bench
from benchmarks import scenarios as sc
from benchmarks.figures import num, table
from benchmarks.notifywake import run_notify_wakeup
from benchmarks.report import dollars
from benchmarks.suite import EmuMeter, Suite, arun, emulator, make_bucket, target_of, usage_extra
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import Layout, create_topic
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import open_store

MODES = ("head", "listing")
DIRECTORY = "wake--use1-az4--x-s3"
RECONCILE = 60.0  # the default reconcile_interval
LISTINGS = ("ListObjectVersions", "ListObjectsV2")


async def sporadic(target: sc.Target, topic: str, *, layout: Layout,
                   gaps: list[float]) -> dict[str, list[float]]:
    """Seconds from publish to handler of one message after each gap, for each wake-up mode."""
    async with open_store(target.s3, max_connections=4) as store:
        await create_topic(store, target.bucket, topic, layout=layout)
    seen: dict[str, list[float]] = {mode: [] for mode in MODES}
    warm = {mode: asyncio.Event() for mode in MODES}
    arrived = asyncio.Event()
    consumers = []
    for mode in MODES:
        consumer = Consumer(target.settings(topic, consumer={"group": sc.new_group(), "wakeup": mode}))
        consumer.register_handler(sc.HANDLER, _recorder(mode, seen, warm[mode], len(gaps), arrived))
        consumers.append(consumer)
    done = asyncio.Event()
    async with Producer(target.settings(producer={"heads": True})) as producer:
        url = target.url(topic)

        async def publish() -> None:
            await producer.publish(url, sc.body(-1))  # writes the head; not timed
            await asyncio.wait_for(asyncio.gather(*(w.wait() for w in warm.values())), 120)
            for gap in gaps:
                await asyncio.sleep(gap)
                await producer.publish(url, sc.body(0, sent=time.time()))
            await asyncio.wait_for(arrived.wait(), 120)
            done.set()

        sender = asyncio.create_task(publish())
        limit = sum(gaps) + 300
        await asyncio.gather(*(sc.run_until(c, done, limit, f"sporadic {m}")
                               for c, m in zip(consumers, MODES, strict=True)))
        sender.result()
    return seen


def _recorder(mode: str, seen: dict[str, list[float]], warm: asyncio.Event, expected: int,
              arrived: asyncio.Event) -> Any:
    async def handle(message: Message) -> None:
        sent = orjson.loads(message.body).get("sent")
        if sent is None:
            warm.set()
            return
        seen[mode].append(time.time() - sent)
        if all(len(v) >= expected for v in seen.values()):
            arrived.set()
    return handle


async def idle(target: sc.Target, topic: str, *, layout: Layout, mode: str, shards: int, warmup: float,
               seconds: float, meter: sc.Meter) -> dict[str, Any]:
    """Requests of an idle consumer of one ``shards``-shard topic (its head written once, before)."""
    async with open_store(target.s3, max_connections=4) as store:
        await create_topic(store, target.bucket, topic, shards=shards, layout=layout)
    async with Producer(target.settings(producer={"heads": True})) as producer:
        await producer.publish(target.url(topic), sc.body(-1))
    consumer = Consumer(target.settings(topic, consumer={"group": sc.new_group(), "wakeup": mode}))
    consumer.register_handler(sc.HANDLER, _ignore)
    usage = await sc.measure_window(consumer, meter, warmup=warmup, seconds=seconds, what=f"idle {mode}")
    return per_shard_day(usage.requests, seconds, shards, reconcile=mode == "head")


def per_shard_day(requests: dict[str, int], seconds: float, shards: int, *,
                  reconcile: bool) -> dict[str, Any]:
    """Requests per shard and day, and their price; with ``reconcile``, one listing request per shard
    per reconcile interval added (the window is shorter than the interval)."""
    day = {op: count * 86_400 / seconds / shards for op, count in requests.items()
           if op in (*LISTINGS, "GetObject")}
    if reconcile:
        day["reconciling listings"] = 86_400 / RECONCILE
    priced = {("ListObjectsV2" if op == "reconciling listings" else op): n for op, n in day.items()}
    return {"requests_per_day": day,
            "standard_usd": bench.request_cost({k: round(v) for k, v in priced.items()}, "standard"),
            "express_usd": bench.request_cost({k: round(v) for k, v in priced.items()}, "express")}


async def _ignore(message: Message) -> None:
    return None


def run_wakeup(suite: Suite) -> None:
    """The three measurements, at the express profile (log layout in a directory bucket) and the
    standard profile (versions layout); request counts at the express profile."""
    size = suite.args.sizes
    rng = random.Random(7)
    gaps = [1.0] if size == "tiny" else [rng.uniform(10, 14) for _ in range(4 if size == "quick" else 12)]
    print("wake-up: sporadic latency, idle cost", flush=True)
    runs: tuple[tuple[str, str, Layout], ...] = (
        ("express", DIRECTORY, "log"), ("standard", "wake-std", "versions"))
    for profile, bucket, layout in runs:
        with emulator(profile) as emu:
            target = target_of(emu, bucket)
            arun(make_bucket(target, versioned=layout == "versions"))

            def measure(target: sc.Target = target, layout: Layout = layout) -> tuple[float, dict[str, Any]]:
                seen = arun(sporadic(target, f"sp{sc.new_group()[6:]}", layout=layout, gaps=gaps))
                stats = {m: _percentiles(v) for m, v in seen.items()}
                return stats["head"]["p99_ms"], {"modes": stats, "gaps_s": gaps}

            suite.record(f"wakeup.sporadic.{profile}", f"{profile}: one message after 10-14 s of silence",
                         "ms p99", measure)
    _idle_costs(suite, size)
    seconds, warmup = {"tiny": (1.0, 1.0), "quick": (20.0, 4.0)}.get(size, (120.0, 8.0))
    run_notify_wakeup(suite, gaps, warmup=warmup, seconds=seconds)


def _idle_costs(suite: Suite, size: str) -> None:
    seconds, warmup = {"tiny": (1.0, 1.0), "quick": (10.0, 4.0)}.get(size, (30.0, 8.0))
    with emulator("express") as emu:
        idles: tuple[tuple[str, Layout], ...] = (("wake-idle", "versions"), (DIRECTORY, "log"))
        for bucket, layout in idles:
            target = target_of(emu, bucket)
            arun(make_bucket(target, versioned=layout == "versions"))
            for mode, shards in (("head", 1), ("head", 4), ("listing", 4)):
                def measure(target: sc.Target = target, layout: Layout = layout, mode: str = mode,
                            shards: int = shards) -> tuple[float, dict[str, Any]]:
                    res = arun(idle(target, f"id{sc.new_group()[6:]}", layout=layout, mode=mode,
                                    shards=shards,
                                    warmup=warmup, seconds=seconds, meter=EmuMeter(emu)))
                    return res["standard_usd"], {**res, "shards": shards}
                suite.record(f"wakeup.idle.{layout}.{mode}.{shards}", f"idle shard-day, {layout}, {mode}, "
                             f"{shards} shard(s)", "$/day", measure)
        history = {"tiny": 500, "quick": 20_000}.get(size, 100_000)
        target = target_of(emu, "wake-history")
        arun(make_bucket(target, versioned=True))
        backlog = arun(sc.prepare_backlog(target, "hist", layout="versions", messages=history))
        for mode in MODES:
            def quiet(mode: str = mode) -> tuple[float, dict[str, Any]]:
                meter = EmuMeter(emu)
                res = arun(_quiet_history(target, backlog.topic, mode, history, warmup, seconds, meter))
                return res["listings_per_hour"], res
            suite.record(f"wakeup.history.{mode}", f"quiet shard with {history:,} versions, {mode}",
                         "listing requests/h", quiet)


async def _quiet_history(target: sc.Target, topic: str, mode: str, history: int, warmup: float,
                         seconds: float, meter: sc.Meter) -> dict[str, Any]:
    """A consumer that caught up with ``history`` versions, then idles; its listing requests per hour."""
    async with Producer(target.settings(producer={"heads": True})) as producer:
        await producer.publish(target.url(topic), sc.body(-1))  # a head for the head mode
    counter = _Count(history + 1)
    consumer = Consumer(target.settings(topic, consumer={"group": sc.new_group(), "wakeup": mode}))
    consumer.register_handler(sc.HANDLER, counter.handle)
    usage = await sc.measure_window(consumer, meter, warmup=warmup, seconds=seconds, what=f"history {mode}",
                                    ready=counter.done, ready_within=600)
    listed = sum(usage.requests.get(op, 0) for op in LISTINGS)
    return {"listings_per_hour": listed * 3600 / seconds, "seconds": seconds, **usage_extra(usage, seconds)}


class _Count:
    """Counts messages; ``done`` once ``expected`` arrived."""

    def __init__(self, expected: int) -> None:
        self.expected, self.count, self.done = expected, 0, asyncio.Event()

    async def handle(self, message: Message) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


def _percentiles(values: list[float]) -> dict[str, Any]:
    """The percentiles of one consumer's wake-ups, and each one in the order they came (ms)."""
    ordered = sorted(values)
    return {"p50_ms": sc.percentile(ordered, 50) * 1000, "p99_ms": sc.percentile(ordered, 99) * 1000,
            "max_ms": ordered[-1] * 1000, "messages": len(ordered),
            "each_ms": [round(v * 1000, 1) for v in values]}


def wakeup_targets(r: dict[str, Any]) -> list[tuple[str, list[Any], str, float, bool, str]]:
    """The summary's rows for waking up: sporadic p99 with the head, the idle shard-day, the quiet history."""
    series = r["series"]

    def first(key: str, *path: str) -> list[Any]:
        s = series.get(key)
        if not s or not s["extra"] or not s["extra"][0]:
            return [None]
        value: Any = s["extra"][0]
        for step in path:
            value = value[step]
        return [value]

    return [
        ("sporadic p99, express (head)", first("wakeup.sporadic.express", "modes", "head", "p99_ms"), " ms",
         250, True, "≤ 250 ms"),
        ("sporadic p99, standard (head)", first("wakeup.sporadic.standard", "modes", "head", "p99_ms"), " ms",
         500, True, "≤ 500 ms"),
        ("idle shard-day, Standard prices, 4 shards", first("wakeup.idle.versions.head.4", "standard_usd"),
         " $", 0.05, True, "≤ $0.05"),
        ("idle shard-day, Standard prices, 1 shard", first("wakeup.idle.versions.head.1", "standard_usd"),
         " $", 0.05, True, "≤ $0.05"),
        ("idle shard-day, Standard prices, 1 shard (S3 event notifications)",
         first("wakeup.idle.notifications.1", "standard_usd"), " $", 0.05, True, "≤ $0.05"),
        ("quiet 100,000-version shard, listing requests/h (head)",
         series.get("wakeup.history.head", {}).get("values", [None])[:1], "", 120, True, "not every poll"),
    ]


def wakeup_section(r: dict[str, Any]) -> str:
    """The markdown of the three measurements, head against listing side by side."""
    series = r["series"]
    rows = []
    for profile in ("express", "standard"):
        s = series.get(f"wakeup.sporadic.{profile}")
        if not s or not s["extra"] or not s["extra"][0]:
            continue
        modes = s["extra"][0]["modes"]
        for mode in MODES:
            m = modes[mode]
            rows.append([profile, mode, num(m["p50_ms"]), num(m["p99_ms"]), num(m["max_ms"]),
                         str(m["messages"])])
    s = series.get("wakeup.sporadic.notifications")
    if s and s["extra"] and s["extra"][0]:
        m = s["extra"][0]
        rows.append(["moto, local", "notifications", num(m["p50_ms"]), num(m["p99_ms"]), num(m["max_ms"]),
                     str(m["messages"])])
    out = ["## Waking up: one message after silence, and what an idle shard costs", "",
           "Sporadic traffic: one message after 10-14 s of silence (a listing consumer has backed off to "
           "its 5 s ceiling by then, as after a minute), both consumers on the same topic at once. The "
           "notifications row is a consumer woken by S3 Event Notifications through SQS, both served by "
           "moto on this machine: it is s3stream's part only (the long poll returning, one key's listing, "
           "the GET); on AWS, the time S3 takes to deliver the event comes on top.", "",
           table(["profile", "wake-up", "p50 ms", "p99 ms", "max ms", "messages"], rows), ""]
    idle_rows = []
    for layout in ("versions", "log"):
        for mode, shards in (("head", 1), ("head", 4), ("listing", 4)):
            s = series.get(f"wakeup.idle.{layout}.{mode}.{shards}")
            if not s or not s["extra"] or not s["extra"][0]:
                continue
            e = s["extra"][0]
            reqs = ", ".join(f"{op} {n:,.0f}" for op, n in e["requests_per_day"].items())
            idle_rows.append([layout, mode, str(shards), reqs, dollars(e["standard_usd"]),
                              dollars(e["express_usd"])])
    s = series.get("wakeup.idle.notifications.1")
    if s and s["extra"] and s["extra"][0]:
        e = s["extra"][0]
        reqs = ", ".join(f"{op} {n:,.0f}" for op, n in e["requests_per_day"].items())
        idle_rows.append(["versions", "notifications (SQS priced at $0.40 per million)", "1", reqs,
                          dollars(e["standard_usd"]), "no notifications"])
    out += ["An idle shard, per day (the head is read once per topic, so its reads are shared by the "
            "topic's shards):", "",
            table(["layout", "wake-up", "shards", "requests per shard-day", "S3 Standard", "S3 Express"],
                  idle_rows), ""]
    hist = [[mode, num(series[f"wakeup.history.{mode}"]["values"][0])] for mode in MODES
            if series.get(f"wakeup.history.{mode}", {}).get("values", [None])[0] is not None]
    out += ["A quiet versions shard keeping a long history, listing requests per idle hour:", "",
            table(["wake-up", "listing requests/h"], hist), ""]
    return "\n".join(out)
