"""The suite's bookkeeping and its measurements: how much each scenario does (``Sizes``), the
figures recorded over the runs (``Suite``, ``Series``), the emulator meter, and one run of each
scenario recorded as a measurement. ``benchmarks/profiles.py`` runs them per emulator profile;
``benchmarks/run.py`` is the command.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from benchmarks import baselines
from benchmarks import scenarios as sc
from s3stream.layouts.topics import is_directory_bucket
from s3stream.pipeline.pacing import flow_interval
from s3stream.s3.store import open_store


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does per run."""

    consume: int = 10_000  # one message per object, zero and express profiles
    consume_standard: int = 4000
    boto3_limit: tuple[int, int, int] = (2000, 600, 150)  # zero, express, standard (then extrapolated)
    awscli_limit: int = 20
    segments: int = 300  # objects of 1,000 messages
    produce: int = 10_000
    produce_segments: int = 200_000  # messages
    shards_one: int = 600  # objects, at put_rate=200 per prefix
    shards_eight: int = 4000
    latency: int = 1000  # messages at latency_rate per second
    latency_minute: int = 12_000  # the same over a whole minute: a log directory filling up
    latency_rate: float = 200.0
    latency_moderate: int = 300  # messages of a slower stream, at latency_moderate_rate per second
    latency_moderate_rate: float = 20.0
    idle_warmup: float = 8.0
    idle_seconds: float = 30.0
    idle_shards: int = 4
    rss_segments: int = 1000  # objects of 1,000 messages: 1,000,000 messages
    rss_single: int = 100_000
    rss_time_limit: float = 300.0
    profile_messages: int = 3000
    group_backlog: int = 20_000  # one message per object, 8 shards: one member against two
    group_shards: int = 8
    consume_seaweedfs: int = 4000  # one message per object on a local SeaweedFS
    boto3_limit_seaweedfs: int = 300


SIZES = {
    "full": Sizes(),
    "quick": Sizes(
        consume=1000,
        consume_standard=600,
        boto3_limit=(500, 200, 60),
        awscli_limit=5,
        segments=40,
        produce=800,
        produce_segments=40_000,
        shards_one=300,
        shards_eight=1500,
        latency=200,
        latency_minute=2000,
        latency_moderate=100,
        idle_warmup=3,
        idle_seconds=10,
        rss_segments=100,
        rss_single=5000,
        rss_time_limit=120,
        profile_messages=1000,
        group_backlog=6000,
        consume_seaweedfs=800,
        boto3_limit_seaweedfs=100,
    ),
    "tiny": Sizes(
        consume=60,
        consume_standard=40,
        boto3_limit=(30, 20, 10),
        awscli_limit=2,
        segments=3,
        produce=60,
        produce_segments=3000,
        shards_one=20,
        shards_eight=80,
        latency=20,
        latency_minute=40,
        latency_moderate=10,
        idle_warmup=1,
        idle_seconds=3,
        idle_shards=2,
        rss_segments=3,
        rss_single=100,
        rss_time_limit=60,
        profile_messages=60,
        group_backlog=200,
        group_shards=4,
        consume_seaweedfs=40,
        boto3_limit_seaweedfs=10,
    ),
}


@dataclass
class Series:
    """One measured figure over the runs; ``None`` marks a run that failed (see ``errors``)."""

    label: str
    unit: str
    values: list[float | None] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Suite:
    """The measurements of one invocation, and how to record one."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args, self.sizes, self.runs = args, sizes, args.runs
        self.series: dict[str, Series] = {}
        self.notes: dict[str, str] = {}
        self.started = time.time()

    def record(self, key: str, label: str, unit: str, fn: Callable[[], tuple[float, dict[str, Any]]]) -> None:
        series = self.series.setdefault(key, Series(label, unit))
        began = time.perf_counter()
        try:
            value, extra = fn()
        except Exception as exc:  # one failed measurement is reported, the suite goes on
            series.values.append(None)
            series.extra.append({})
            series.errors.append(f"{type(exc).__name__}: {exc}"[:500])
            print(f"  {label}: FAILED ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
            return
        series.values.append(value)
        series.extra.append(extra)
        print(f"  {label}: {value:,.1f} {unit}  [{time.perf_counter() - began:.1f}s]", flush=True)


def arun(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on a fresh uvloop (asyncio when uvloop is missing), as the CLI does."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


class EmuMeter:
    """Requests and CPU seconds the emulator spent between ``begin()`` and ``end()``."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.start: dict[str, Any] = {}

    def begin(self) -> None:
        self.start = self.emu.stats()

    def end(self) -> sc.Usage:
        now = self.emu.stats()
        before = self.start.get("requests", {})
        counts = {op: int(n) - int(before.get(op, 0)) for op, n in now["requests"].items()}
        return sc.Usage(
            requests={op: n for op, n in sorted(counts.items()) if n > 0},
            server_cpu_seconds=now["cpu_seconds"] - self.start.get("cpu_seconds", 0.0),
            throttled=int(now.get("throttled", 0)) - int(self.start.get("throttled", 0)),
        )


def usage_extra(usage: sc.Usage, seconds: float) -> dict[str, Any]:
    cpu = usage.server_cpu_seconds or 0.0
    return {
        "requests": usage.requests,
        "server_cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / max(seconds, 1e-9),
        "throttled": usage.throttled,
    }


def emulator(profile: str, **options: Any) -> AbstractContextManager[Any]:
    from benchmarks.emulator import run_emulator

    return run_emulator(profile, **options)


def target_of(emu: Any, bucket: str) -> sc.Target:
    def seed(name: str, objects: list[dict[str, Any]], versioned: bool) -> None:
        emu.seed(name, objects, versioned=versioned)

    return sc.Target.at(emu.url, bucket, seed=seed)


async def make_bucket(target: sc.Target, *, versioned: bool) -> None:
    async with open_store(target.s3, max_connections=2) as store:
        if is_directory_bucket(target.bucket):
            await store.create_directory_bucket(target.bucket, target.bucket.rsplit("--", 2)[1])
        else:
            await store.create_bucket(target.bucket, versioning=versioned)


# --- scenarios as measurements ------------------------------------------------------------------


def consume_once(
    suite: Suite, key: str, label: str, emu: Any, target: sc.Target, backlog: sc.Backlog
) -> None:
    def measure() -> tuple[float, dict[str, Any]]:
        res: sc.ConsumeResult = arun(sc.consume(target, backlog, meter=EmuMeter(emu), time_limit=600))
        return res.rate, {
            "cpu_us": res.cpu_us_per_message,
            "seconds": res.seconds,
            "messages": res.messages,
            "objects": res.objects,
            "first_s": res.first_seconds,
            **usage_extra(res.usage, res.seconds),
        }

    suite.record(key, label, "msg/s", measure)


def baselines_once(suite: Suite, profile: str, emu: Any, bucket: str, prefix: str, boto3_limit: int) -> None:
    """The three baselines, one run each, on the versioned bucket ``bucket``."""
    runs: list[tuple[str, str, Callable[[], baselines.BaselineResult]]] = [
        (
            "boto3",
            "boto3 sequential",
            lambda: baselines.boto3_sequential(emu.url, bucket, prefix, limit=boto3_limit, timeout=300),
        ),
        (
            "aiobotocore",
            "aiobotocore queue (64)",
            lambda: baselines.run_aiobotocore_queue(emu.url, bucket, prefix, concurrency=64, timeout=300),
        ),
    ]
    if "awscli" not in suite.notes:
        runs.append(
            (
                "awscli",
                "AWS CLI walkthrough loop",
                lambda: baselines.awscli_loop(
                    emu.url, bucket, prefix, limit=suite.sizes.awscli_limit, timeout=300
                ),
            )
        )
    for name, label, call in runs:

        def measure(call: Callable[[], baselines.BaselineResult] = call) -> tuple[float, dict[str, Any]]:
            meter = EmuMeter(emu)
            meter.begin()
            res = call()
            usage = meter.end()
            return res.rate, {
                "cpu_us": res.cpu_seconds / max(res.messages, 1) * 1e6,
                "seconds": res.seconds,
                "messages": res.messages,
                "extrapolated": res.extrapolated,
                "note": res.note,
                **usage_extra(usage, res.seconds),
            }

        suite.record(f"consume.{profile}.{name}", f"{profile}: {label}", "msg/s", measure)


def check_awscli(suite: Suite) -> None:
    try:
        baselines.ensure_awscli()
    except Exception as exc:  # AwsCliUnavailable, or anything that stops the install
        suite.notes["awscli"] = f"AWS CLI baseline unavailable: {exc}"[:600]
        print(f"  {suite.notes['awscli']}", flush=True)


def produce_once(suite: Suite, key: str, label: str, emu: Any, target: sc.Target, **options: Any) -> None:
    def measure() -> tuple[float, dict[str, Any]]:
        topic = f"p{sc.new_group()[6:]}"
        res: sc.ProduceResult = arun(
            sc.produce(target, topic, meter=EmuMeter(emu), time_limit=600, **options)
        )
        value = res.rate if options.get("per_object", 1) > 1 else res.object_rate
        return value, {
            "cpu_us": res.cpu_seconds / res.messages * 1e6,
            "seconds": res.seconds,
            "messages": res.messages,
            "objects": res.objects,
            **usage_extra(res.usage, res.seconds),
        }

    suite.record(key, label, "msg/s" if options.get("per_object", 1) > 1 else "objects/s", measure)


@dataclass(frozen=True)
class LatencyRun:
    """One kind of latency run: its series key after ``latency.<profile>`` ("" for the defaults), what it
    changes from a default consumer and topic, and which stream it measures."""

    variant: str = ""
    label: str = "defaults"
    poll_interval: float | None = None
    dir_seconds: int = 10
    minute: bool = False
    moderate: bool = False


def latency_once(suite: Suite, profile: str, emu: Any, target: sc.Target, layout: str,
                 run: LatencyRun = LatencyRun()) -> None:
    """Publish → handler latency of a steady stream (``latency.<profile>[.<variant>]``): 5 s at
    ``latency_rate`` by default, a whole minute with ``minute``, a slower stream (``latency_moderate``
    messages at ``latency_moderate_rate``) with ``moderate``; with the listings it cost."""
    sizes = suite.sizes
    messages = (sizes.latency_moderate if run.moderate else sizes.latency_minute if run.minute
                else sizes.latency)
    rate = sizes.latency_moderate_rate if run.moderate else sizes.latency_rate
    tuned = {"poll_interval": run.poll_interval} if run.poll_interval is not None else None
    poll = flow_interval(run.poll_interval, directory_bucket=is_directory_bucket(target.bucket))

    def measure() -> tuple[float, dict[str, Any]]:
        topic = f"l{sc.new_group()[6:]}"
        res: sc.LatencyResult = arun(
            sc.latency(
                target,
                topic,
                layout=layout,  # type: ignore[arg-type]
                messages=messages,
                rate=rate,
                meter=EmuMeter(emu),
                time_limit=300,
                consumer_settings=tuned,
                dir_seconds=run.dir_seconds,
            )
        )
        seconds = res.messages / res.rate
        return res.p50_ms, {
            "p99_ms": res.p99_ms,
            "max_ms": res.max_ms,
            "layout": layout,
            "seconds": seconds,
            "rate": rate,
            "poll_interval": poll,
            "poll_default": run.poll_interval is None,
            "dir_seconds": run.dir_seconds,
            "messages": res.messages,
            **usage_extra(res.usage, seconds),
        }

    key = f"latency.{profile}" + (f".{run.variant}" if run.variant else "")
    suite.record(key, f"{profile}: latency p50 ({layout}, {messages:,} messages at {rate:.0f}/s, "
                 f"{run.label})", "ms", measure)
