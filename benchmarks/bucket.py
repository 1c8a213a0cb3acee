"""``s3stream bench``: the benchmark scenarios against a real bucket, request prices, and the RSS probe.

``python -m benchmarks.bucket --bucket NAME`` creates its own topics under a unique prefix
(``bench-<timestamp>/``),
publishes and consumes through s3stream's public API, prints a table and deletes everything it wrote
(messages, topic metadata, its groups' checkpoints). A directory bucket (``NAME--AZID--x-s3``), or a
bucket without versioning, gets log-layout topics; a versioned bucket gets a versions-layout topic for
one message per object. Segments are always log layout.

``python -m benchmarks.bucket rss --endpoint URL --bucket B --topic T --messages N`` consumes an existing
backlog and prints ``{"messages", "seconds", "peak_rss_mb"}`` as one JSON line: the suite runs it as a
child process to measure the consumer's peak memory on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import click

from benchmarks import scenarios as sc
from s3stream.cli.app import run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.config import Settings
from s3stream.layouts.topics import Layout, create_topic, is_directory_bucket
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store
from s3stream.service import logs

# Request prices in USD per 1,000 requests, us-east-1, from https://aws.amazon.com/s3/pricing/ and the
# S3 Express One Zone worked examples in https://aws.amazon.com/s3/faqs/ as of 2026-11-23.
# S3 Standard: PUT, COPY, POST, LIST $0.005; GET and all other requests $0.0004.
# S3 Express One Zone: PUT (and LIST) $0.00113; GET and all other requests $0.00003 (plus per-GB
# upload and retrieval charges that are not request charges and are left out here). DELETE is free.
Tier = Literal["standard", "express"]
PRICES: dict[Tier, dict[str, float]] = {
    "standard": {"write": 0.005, "read": 0.0004, "free": 0.0},
    "express": {"write": 0.00113, "read": 0.00003, "free": 0.0},
}
SCENARIOS = ("produce", "consume", "segments", "latency", "idle")
DEFAULT_SCENARIOS = ("produce", "consume", "segments", "latency")
SEGMENT = 1000  # messages per segment object


def price_class(operation: str) -> str:
    """``write`` (PUT, COPY, POST, LIST), ``free`` (DELETE, abort) or ``read`` (GET and all others)."""
    op = operation.lower()
    if op.startswith(("delete", "abort")):
        return "free"
    writes = ("put", "copy", "post", "list", "create", "upload", "complete")
    if op.startswith(writes) and op != "createsession":
        return "write"
    return "read"


def request_cost(requests: dict[str, int], tier: Tier) -> float:
    """The dollar cost of ``requests`` (counts by S3 operation) at ``tier``'s request prices."""
    prices = PRICES[tier]
    return sum(count * prices[price_class(op)] / 1000 for op, count in requests.items())


def per_million(requests: dict[str, int], messages: int) -> dict[str, float]:
    """Request counts scaled to one million messages."""
    return {op: count * 1_000_000 / messages for op, count in requests.items()}


def merge(*counts: dict[str, int]) -> dict[str, int]:
    """The sum of several per-operation counts."""
    out: dict[str, int] = {}
    for c in counts:
        for op, n in c.items():
            out[op] = out.get(op, 0) + n
    return out


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as aligned text: the first row is the header, text left, numbers right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i == 0 or not _numeric(c) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "$-")


@dataclass(frozen=True, slots=True)
class IdleResult:
    """Requests of a consumer on empty topics, per shard per hour and layout."""

    seconds: float
    shards: int
    usage: sc.Usage

    def per_shard_hour(self, layout: Layout) -> float:
        return self.usage.requests.get(IDLE_OPERATIONS[layout], 0) / self.seconds * 3600 / self.shards


IDLE_OPERATIONS: dict[Layout, str] = {"versions": "ListObjectVersions", "log": "ListObjectsV2"}


async def idle(target: sc.Target, topics: dict[Layout, str], *, shards: int = 4, warmup: float = 8.0,
               seconds: float = 30.0, group: str | None = None, meter: sc.Meter | None = None) -> IdleResult:
    """The idle cost: a default-settings consumer of empty topics (one per layout, ``shards`` shards
    each) and the requests it sends in ``seconds`` after ``warmup`` (idle polls back off to
    ``max_poll_interval``). Each layout lists with its own operation, so one consumer measures both."""
    async with open_store(target.s3, max_connections=4) as store:
        for layout, name in topics.items():
            await create_topic(store, target.bucket, name, shards=shards, layout=layout)
    consumer = Consumer(target.settings(*topics.values(), consumer={"group": group or sc.new_group()}))
    consumer.register_handler(sc.HANDLER, _ignore)
    usage = await sc.measure_window(consumer, meter or sc.MetricMeter(), warmup=warmup, seconds=seconds,
                                    what="idle")
    return IdleResult(seconds=seconds, shards=shards, usage=usage)


async def _ignore(message: Message) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the ``s3stream bench`` table."""

    scenario: str
    layout: str
    messages: int
    seconds: float
    result: str
    cpu_us: float | None
    requests: dict[str, int]

    def cells(self, tier: Tier) -> list[str]:
        """The row's cells; an idle row (no messages) has no per-message cost."""
        cells = [self.scenario, self.layout, f"{self.messages:,}", f"{self.seconds:.2f}", self.result,
                 "" if self.cpu_us is None else f"{self.cpu_us:,.0f}", f"{sum(self.requests.values()):,}"]
        if self.messages == 0:
            return [*cells, "", ""]
        scaled = sum(per_million(self.requests, self.messages).values())
        dollars = request_cost(self.requests, tier) * 1e6 / self.messages
        return [*cells, f"{scaled:,.0f}", f"${dollars:,.2f}" if dollars >= 1 else f"${dollars:.4f}"]


HEADER = ["scenario", "layout", "messages", "seconds", "result", "CPU µs/msg", "requests",
          "requests/1M msgs", "$/1M msgs"]


@dataclass
class Plan:
    """What ``s3stream bench`` runs on one bucket, and the names it creates."""

    target: sc.Target
    prefix: str
    messages: int
    scenarios: Sequence[str]
    single: Layout = "versions"
    tier: Tier = "standard"
    groups: set[str] = field(default_factory=set)

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def group(self, name: str) -> str:
        """A consumer group of this run (its checkpoints are removed at the end)."""
        self.groups.add(f"{self.prefix}-{name}")
        return f"{self.prefix}-{name}"


async def run_bench(settings: Settings, bucket: str, *, messages: int, scenarios: Sequence[str],
                    echo: Callable[[str], None] = print) -> list[Row]:
    """Run ``scenarios`` on a real bucket under a fresh prefix, print the table, and clean up."""
    plan = Plan(sc.Target(s3=settings.s3, bucket=bucket), f"bench-{time.strftime('%Y%m%dT%H%M%S')}",
                messages, scenarios)
    async with open_store(settings.s3, max_connections=8) as store:
        await store.check_bucket(bucket)
        if is_directory_bucket(bucket):
            plan.single, plan.tier = "log", "express"
        elif await store.versioning_status(bucket) != "Enabled":
            plan.single = "log"
        echo(f"s3stream bench on s3://{bucket}/{plan.prefix}/ ({plan.single} layout for one message per "
             f"object, S3 {'Express One Zone' if plan.tier == 'express' else 'Standard'} prices)")
        rows: list[Row] = []
        try:
            for name in SCENARIOS:
                if name in scenarios:
                    rows += await _RUNNERS[name](plan)
        finally:
            removed = await cleanup(store, plan, settings.consumer.checkpoint.prefix)
    echo(format_table([HEADER, *(row.cells(plan.tier) for row in rows)]))
    echo(f"removed {removed} objects or versions under {plan.prefix}/ and its control data")
    return rows


async def command(settings: Settings, bucket: str, *, messages: int, scenarios: Sequence[str],
                  echo: Callable[[str], None] = print) -> None:
    """``s3stream bench``: :func:`run_bench`, for the command line."""
    await run_bench(settings, bucket, messages=messages, scenarios=scenarios, echo=echo)


async def cleanup(store: Store, plan: Plan, checkpoint_prefix: str) -> int:
    """Delete everything the run wrote: messages, topic metadata and heads, its groups' checkpoints and dead
    letters. Every prefix ends in ``/``, as directory buckets require."""
    from s3stream.ops.admin import is_versioned, purge

    versions = await is_versioned(store, plan.target.bucket)
    prefixes = [f"{plan.prefix}/", f"_s3stream/topics/{plan.prefix}/", f"_s3stream/heads/{plan.prefix}/"]
    for group in sorted(plan.groups):
        prefixes += [f"{checkpoint_prefix.strip('/')}/{group}/", f"_s3stream/dead-letters/{group}/"]
    return sum([await purge(store, plan.target.bucket, p, versions=versions) for p in prefixes])


def _cpu(result: sc.ProduceResult | sc.ConsumeResult) -> float:
    return result.cpu_seconds / result.messages * 1e6


async def _produce(plan: Plan) -> list[Row]:
    res = await sc.produce(plan.target, plan.topic("one"), messages=plan.messages, layout=plan.single)
    return [Row("produce, 1 msg/object", plan.single, res.messages, res.seconds,
                f"{res.object_rate:,.0f} objects/s", _cpu(res), res.usage.requests)]


async def _consume(plan: Plan) -> list[Row]:
    if "produce" in plan.scenarios:  # consume what `produce` wrote
        backlog = sc.Backlog(plan.target.bucket, plan.topic("one"), plan.single, plan.messages, plan.messages)
    else:
        backlog = await sc.prepare_backlog(plan.target, plan.topic("one"), layout=plan.single,
                                           messages=plan.messages)
    res = await sc.consume(plan.target, backlog, group=plan.group("one"))
    return [Row("consume, 1 msg/object", plan.single, res.messages, res.seconds, f"{res.rate:,.0f} msg/s",
                res.cpu_us_per_message, res.usage.requests)]


async def _segments(plan: Plan) -> list[Row]:
    count = max(plan.messages, 10) * 100 // SEGMENT * SEGMENT or SEGMENT
    made = await sc.produce(plan.target, plan.topic("seg"), messages=count, per_object=SEGMENT, layout="log")
    backlog = sc.Backlog(plan.target.bucket, plan.topic("seg"), "log", count, made.objects)
    res = await sc.consume(plan.target, backlog, group=plan.group("seg"))
    return [Row(f"produce, segments of {SEGMENT:,}", "log", made.messages, made.seconds,
                f"{made.rate:,.0f} msg/s", _cpu(made), made.usage.requests),
            Row(f"consume, segments of {SEGMENT:,}", "log", res.messages, res.seconds,
                f"{res.rate:,.0f} msg/s", res.cpu_us_per_message, res.usage.requests)]


async def _latency(plan: Plan) -> list[Row]:
    count = min(plan.messages, 1000)
    res = await sc.latency(plan.target, plan.topic("lat"), layout=plan.single, messages=count, rate=100.0,
                           group=plan.group("lat"))
    return [Row("latency publish→handler", plan.single, res.messages, res.messages / res.rate,
                f"p50 {res.p50_ms:,.0f} ms, p99 {res.p99_ms:,.0f} ms", None, res.usage.requests)]


async def _idle(plan: Plan) -> list[Row]:
    res = await idle(plan.target, {plan.single: plan.topic("idle")}, shards=1, warmup=8, seconds=30,
                       group=plan.group("idle"))
    per_hour = res.per_shard_hour(plan.single)
    return [Row("idle consumer, 1 shard", plan.single, 0, res.seconds, f"{per_hour:,.0f} requests/shard/h",
                None, res.usage.requests)]


_RUNNERS = {"produce": _produce, "consume": _consume, "segments": _segments, "latency": _latency,
            "idle": _idle}


# --- the RSS probe: `python -m benchmarks.bucket rss ...` --------------------------------------------


def peak_rss_mb() -> float:
    """This program's peak resident set size in MiB: ``VmHWM`` of its own address space.

    Not ``ru_maxrss``: Linux carries that over ``exec``, so a child started by a big parent reports at
    least the parent's size. ``ru_maxrss`` is the fallback where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _rss(args: argparse.Namespace) -> dict[str, float]:
    target = sc.Target.at(args.endpoint, args.bucket)
    backlog = sc.Backlog(args.bucket, args.topic, args.layout, args.messages, args.objects or args.messages)
    res = await sc.consume(target, backlog, time_limit=args.time_limit)
    return {"messages": res.messages, "seconds": res.seconds, "rate": res.rate,
            "peak_rss_mb": peak_rss_mb()}


@click.command("bench")
@click.option("--bucket", required=True, help="The bucket to benchmark (a directory bucket: log layout).")
@click.option("--region", help="The bucket's region. [default: us-east-1, or [s3] region]")
@click.option("--messages", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="Messages per scenario (segments: 100 times as many).")
@click.option("--scenario", "scenarios", multiple=True,
              type=click.Choice(["produce", "consume", "segments", "latency", "idle"]),
              help="Run only these (repeatable). [default: all but idle]")
@s3_options
def bench_command(bucket: str, region: str | None, messages: int, scenarios: tuple[str, ...],
          endpoint_url: str | None, config: str | None) -> None:
    """Benchmark s3stream on a real bucket under a fresh bench-<time>/ prefix, removed afterwards.

    Run from a checkout: ``python -m benchmarks.bucket --bucket NAME``."""
    logs.configure("warning")
    extra = {"s3": {"region": region}} if region else {}
    run_async(lambda: command(command_settings(config, endpoint_url, sections=("s3", "consumer"), **extra),
                              bucket, messages=messages, scenarios=scenarios or DEFAULT_SCENARIOS,
                              echo=click.echo))


def main(argv: list[str] | None = None) -> int:
    """``rss``: consume a backlog, print its figures and this process's peak RSS as JSON; anything else is
    the ``bench`` command (``--bucket NAME``…)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "rss":
        bench_command.main(args=argv, prog_name="python -m benchmarks.bucket")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bucket")
    sub = parser.add_subparsers(dest="command", required=True)
    rss = sub.add_parser("rss", help="consume a backlog and report this process's peak RSS")
    rss.add_argument("--endpoint", required=True)
    rss.add_argument("--bucket", required=True)
    rss.add_argument("--topic", required=True)
    rss.add_argument("--layout", choices=["versions", "log"], default="log")
    rss.add_argument("--messages", type=int, required=True)
    rss.add_argument("--objects", type=int, default=0)
    rss.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args(argv)
    logs.configure("warning")
    runner: Callable[[Coroutine[Any, Any, dict[str, float]]], dict[str, float]] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    print(json.dumps(runner(_rss(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
