"""Consume throughput on an embedded moto S3: s3stream's Consumer against a naive boto3 loop.

    .venv/bin/python benchmarks/consume_moto.py                    # 500 messages, 3 runs
    .venv/bin/python benchmarks/consume_moto.py --count 200 --runs 2

It starts moto's S3 server on 127.0.0.1 (a free port) in this process, writes ``--count`` 1 KiB
messages spread over ``--keys`` keys into a versioned bucket, then, ``--runs`` times each,
interleaved:

* **baseline**: one sequential boto3 client that lists every version under the prefix (all pages
  of ListObjectVersions) and then GETs each version in turn;
* **s3stream**: the library's :class:`~s3stream.Consumer` with a fresh consumer group (so a fresh
  cursor) and S3 checkpoints, timed until its handler has received every version.

Both timings include creating the S3 client. It prints median and min-max messages/s for each and
the ratio of the medians, and plots the runs to ``benchmarks/results/consume_moto.png`` when
matplotlib is importable.

moto is the bottleneck here (about 450 requests/s, in Python threads sharing this process's GIL),
so the absolute numbers say little about S3; the ratio is what this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
DEFAULT_PLOT = HERE / "results" / "consume_moto.png"
BUCKET = "s3stream-bench"
PREFIX = "bench/"
BODY_SIZE = 1024
MOTO_NOTE = (
    "moto itself is the bottleneck here (about 450 requests/s at best, served by Python threads in "
    "this process; the req/s lines above are what it managed on this machine), so the ratio "
    "s3stream/baseline, not the absolute msg/s, is what this measures."
)

# Local, fake credentials only; never look anything up elsewhere.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))


@dataclass
class Series:
    """The runs of one consumer: messages/s per run."""

    name: str
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="messages to write (default 500)")
    parser.add_argument("--keys", type=int, default=50, help="keys they are spread over (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each consumer (default 3)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="s3stream consumer.concurrency (default 16, the s3stream default)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="most seconds one run of either consumer may take (default 120)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT,
                        help=f"where to write the chart (default {DEFAULT_PLOT.relative_to(HERE.parent)})")
    args = parser.parse_args(argv)
    for name in ("count", "keys", "runs", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 1 <= args.count <= 100_000:
        parser.error("--count must be between 1 and 100000")
    if args.runs > 50:
        parser.error("--runs must be at most 50")
    return args


def boto3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}),
    )


def body(seq: int) -> bytes:
    """A 1 KiB message: a small JSON document padded to size."""
    head = f'{{"seq": {seq}, "pad": "'.encode()
    return head + b"x" * (BODY_SIZE - len(head) - 2) + b'"}'


def publish(endpoint: str, count: int, keys: int) -> float:
    """Create the versioned bucket and write ``count`` versions round-robin over ``keys`` keys."""
    s3 = boto3_client(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    started = time.perf_counter()
    for seq in range(count):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}key-{seq % keys:05d}.json", Body=body(seq))
    return time.perf_counter() - started


def baseline_run(endpoint: str, count: int, timeout: float) -> tuple[float, int]:
    """List every version (all pages), then GET each one, sequentially; returns (seconds, requests)."""
    started = time.perf_counter()
    deadline = started + timeout
    s3 = boto3_client(endpoint)
    versions: list[tuple[str, str]] = []
    requests = 0
    params: dict[str, Any] = {"Bucket": BUCKET, "Prefix": PREFIX}
    for _ in range(count // 1000 + 10):  # bounded: the listing needs count/1000 + 1 pages
        page = s3.list_object_versions(**params)
        requests += 1
        versions.extend((v["Key"], v["VersionId"]) for v in page.get("Versions", []))
        if not page.get("IsTruncated"):
            break
        params.update(KeyMarker=page["NextKeyMarker"], VersionIdMarker=page["NextVersionIdMarker"])
    else:
        raise RuntimeError("baseline: listing did not end")
    for key, version_id in versions:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"baseline run took more than {timeout}s")
        data = s3.get_object(Bucket=BUCKET, Key=key, VersionId=version_id)["Body"].read()
        requests += 1
        if len(data) != BODY_SIZE:
            raise RuntimeError(f"baseline: {key} {version_id} has {len(data)} bytes")
    if len(versions) != count:
        raise RuntimeError(f"baseline: listed {len(versions)} versions, expected {count}")
    return time.perf_counter() - started, requests


async def s3stream_run(endpoint: str, count: int, group: str, concurrency: int,
                       time_limit: float) -> tuple[float, float]:
    """Consume the prefix with a fresh group until all ``count`` versions were handled.

    Every other setting is s3stream's default (S3 checkpoints, 1 s poll interval, 30 s settle window).
    Returns (seconds until the last message, seconds until the first).
    """
    from s3stream import Consumer, Message, build_settings

    settings = build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path",
               "access_key_id": "testing", "secret_access_key": "testing"},
        "consumer": {"group": group, "concurrency": concurrency},
        "sources": [{"url": f"s3://{BUCKET}/{PREFIX}", "handler": "bench"}],
    })
    seen: set[tuple[str, str]] = set()
    done = asyncio.Event()
    first_at = finished_at = 0.0

    async def handler(message: Message) -> None:
        nonlocal first_at, finished_at
        first_at = first_at or time.perf_counter()
        if len(message.body) != BODY_SIZE:
            raise RuntimeError(f"{message.key} {message.version_id} has {len(message.body)} bytes")
        seen.add((message.key, message.version_id))
        if len(seen) >= count and not done.is_set():
            finished_at = time.perf_counter()
            done.set()

    started = time.perf_counter()
    consumer = Consumer(settings)
    consumer.register_handler("bench", handler)
    task = asyncio.create_task(consumer.run())
    waiter = asyncio.create_task(done.wait())
    try:
        finished, _ = await asyncio.wait({task, waiter}, timeout=time_limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        if task in finished:
            task.result()  # raises the consumer's error, if any
            raise RuntimeError("the consumer stopped before delivering every message")
        if waiter not in finished:
            raise TimeoutError(f"s3stream delivered {len(seen)}/{count} within {time_limit}s")
    finally:
        waiter.cancel()
        consumer.stop()
        async with asyncio.timeout(60):
            await task
    return finished_at - started, first_at - started


def event_loop_runner() -> tuple[Callable[[Coroutine[Any, Any, Any]], Any], str]:
    """uvloop when installed, as the ``s3stream`` command uses; else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio"
    return uvloop.run, "uvloop"


def table(series: list[Series], count: int) -> str:
    rows = [("consumer", "median msg/s", "min-max msg/s", "runs")]
    for s in series:
        rows.append((s.name, f"{s.median:,.0f}", f"{min(s.rates):,.0f} - {max(s.rates):,.0f}",
                     str(len(s.rates))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    base, ours = series
    lines.append("")
    lines.append(f"ratio s3stream/baseline (medians): {ours.median / base.median:.2f}x   "
                 f"({count} messages of {BODY_SIZE} B each run)")
    return "\n".join(lines)


def plot(series: list[Series], path: Path, title: str) -> str:
    """A bar per run and a line at each median; returns what happened, for the report."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not importable (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    runs = len(series[0].rates)
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        xs = [r + (i - (len(series) - 1) / 2) * width for r in range(runs)]
        bars = ax.bar(xs, s.rates, width=width, label=f"{s.name} (median {s.median:,.0f})")
        ax.axhline(s.median, linestyle="--", linewidth=1, color=bars.patches[0].get_facecolor())
    ax.set_xticks(range(runs), [f"run {r + 1}" for r in range(runs)])
    ax.set_ylabel("messages / s")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max(max(s.rates) for s in series) * 1.35)  # room for the legend above the bars
    ax.legend(fontsize=8, loc="upper right")
    fig.text(0.01, 0.01, "moto is the bottleneck: compare the ratio, not absolute numbers",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"plot written to {path}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s3stream.cli.devserver import start_moto
    from s3stream.service import logs

    logs.configure("warning")  # s3stream's own logs: warnings and errors only, on stderr
    runner, loop_name = event_loop_runner()
    server, endpoint = start_moto(0)
    try:
        if urlparse(endpoint).hostname != "127.0.0.1":
            raise RuntimeError(f"moto is not on 127.0.0.1: {endpoint}")
        print(f"moto S3 at {endpoint}; writing {args.count} x {BODY_SIZE} B over {args.keys} keys ...",
              flush=True)
        wrote = publish(endpoint, args.count, args.keys)
        print(f"  {args.count} PUTs in {wrote:.2f}s ({args.count / wrote:,.0f} requests/s to moto)")

        baseline = Series("baseline (boto3, sequential)")
        ours = Series(f"s3stream Consumer (concurrency {args.concurrency}, {loop_name})")
        run_id = f"{os.getpid()}-{int(time.time())}"
        for run in range(args.runs):
            seconds, requests = baseline_run(endpoint, args.count, args.timeout)
            baseline.rates.append(args.count / seconds)
            group = f"bench-{run_id}-{run}"
            took, first = runner(s3stream_run(endpoint, args.count, group, args.concurrency, args.timeout))
            ours.rates.append(args.count / took)
            print(f"  run {run + 1}/{args.runs}: baseline {seconds:.2f}s ({requests / seconds:,.0f} req/s "
                  f"to moto), s3stream {took:.2f}s (first message after {first:.2f}s)", flush=True)
    finally:
        server.stop()

    print()
    print(table([baseline, ours], args.count))
    print()
    print(f"Note: {MOTO_NOTE}")
    print(plot([baseline, ours], args.plot,
               f"Consuming {args.count} x 1 KiB versions from moto ({args.runs} runs)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
