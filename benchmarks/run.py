"""The benchmark suite, one command: s3stream against the baselines on the S3 emulator.

    .venv/bin/python benchmarks/run.py                 # 3 runs, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick         # smaller counts, about 3 minutes
    .venv/bin/python benchmarks/run.py --runs 5 --out /tmp/results --profile /tmp/bench_profile.txt

For each emulator profile (zero, express, standard; see ``s3stream/emulator/``) it seeds backlogs and
runs every scenario ``--runs`` times, alternating s3stream with the baselines on the same data, and
records the emulator's CPU seconds during each measurement. It writes ``<out>/<YYYY-MM-DD>.md`` (tables
of medians and min-max; comparisons as ratios of runs made side by side), ``<date>.png`` and
``<date>.json`` (the raw figures; ``benchmarks/report.py`` renders them again). Only 127.0.0.1 is
contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))

from benchmarks import baselines, report  # noqa: E402
from s3stream import bench  # noqa: E402
from s3stream import benchscenarios as sc  # noqa: E402
from s3stream.store import open_store  # noqa: E402
from s3stream.topics import Layout, is_directory_bucket  # noqa: E402

DIRECTORY_BUCKET = "bench--use1-az4--x-s3"
SEGMENT = 1000


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
    latency_rate: float = 200.0
    idle_warmup: float = 8.0
    idle_seconds: float = 30.0
    idle_shards: int = 4
    rss_segments: int = 1000  # objects of 1,000 messages: 1,000,000 messages
    rss_single: int = 100_000
    rss_time_limit: float = 300.0
    profile_messages: int = 3000


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
        idle_warmup=3,
        idle_seconds=10,
        rss_segments=100,
        rss_single=5000,
        rss_time_limit=120,
        profile_messages=1000,
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
        idle_warmup=1,
        idle_seconds=3,
        idle_shards=2,
        rss_segments=3,
        rss_single=100,
        rss_time_limit=60,
        profile_messages=60,
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
    from s3stream.emulator import run_emulator

    return run_emulator(profile, **options)  # type: ignore[no-any-return]


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
                "AWS CLI loop (seed 000)",
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


def latency_once(suite: Suite, profile: str, emu: Any, target: sc.Target, layout: str) -> None:
    def measure() -> tuple[float, dict[str, Any]]:
        topic = f"l{sc.new_group()[6:]}"
        res: sc.LatencyResult = arun(
            sc.latency(
                target,
                topic,
                layout=layout,  # type: ignore[arg-type]
                messages=suite.sizes.latency,
                rate=suite.sizes.latency_rate,
                meter=EmuMeter(emu),
                time_limit=300,
            )
        )
        seconds = res.messages / res.rate
        return res.p50_ms, {
            "p99_ms": res.p99_ms,
            "max_ms": res.max_ms,
            "layout": layout,
            **usage_extra(res.usage, seconds),
        }

    suite.record(f"latency.{profile}", f"{profile}: latency p50 ({layout})", "ms", measure)


# --- profiles -------------------------------------------------------------------------------------


def run_zero(suite: Suite) -> None:
    s = suite.sizes
    print("profile zero", flush=True)
    with emulator("zero") as emu:
        target = target_of(emu, "bench-zero")
        arun(make_bucket(target, versioned=True))
        backlog = arun(sc.prepare_backlog(target, "c1", layout="versions", messages=s.consume))
        segs = arun(
            sc.prepare_backlog(target, "s1", layout="log", messages=s.segments * SEGMENT, per_object=SEGMENT)
        )
        for run in range(suite.runs):
            print(f" run {run + 1}/{suite.runs}", flush=True)
            consume_once(suite, "consume.zero.s3stream", "zero: s3stream (versions)", emu, target, backlog)
            baselines_once(suite, "zero", emu, target.bucket, "c1/00/", s.boto3_limit[0])
            consume_once(suite, "segments.zero", "zero: s3stream segments (log)", emu, target, segs)
            produce_once(
                suite,
                "produce.zero.single",
                "zero: produce 1 msg/object (versions)",
                emu,
                target,
                messages=s.produce,
                layout="versions",
            )
            produce_once(
                suite,
                "produce.zero.segments",
                "zero: produce segments (log)",
                emu,
                target,
                messages=s.produce_segments,
                per_object=SEGMENT,
                layout="log",
            )
        idle_once(suite, emu, target)
        if suite.args.profile:
            profile_consume(suite, emu, target)
        rss_runs(suite, emu, target)


def run_express(suite: Suite) -> None:
    s = suite.sizes
    print("profile express", flush=True)
    with emulator("express") as emu:
        target = target_of(emu, DIRECTORY_BUCKET)
        general = target_of(emu, "bench-express-gp")
        arun(make_bucket(target, versioned=False))
        arun(make_bucket(general, versioned=True))
        backlog = arun(sc.prepare_backlog(target, "c1", layout="log", messages=s.consume))
        arun(sc.prepare_backlog(general, "c1", layout="versions", messages=s.consume))
        segs = arun(
            sc.prepare_backlog(target, "s1", layout="log", messages=s.segments * SEGMENT, per_object=SEGMENT)
        )
        for run in range(suite.runs):
            print(f" run {run + 1}/{suite.runs}", flush=True)
            consume_once(
                suite,
                "consume.express.s3stream",
                "express: s3stream (log, directory bucket)",
                emu,
                target,
                backlog,
            )
            baselines_once(suite, "express", emu, general.bucket, "c1/00/", s.boto3_limit[1])
            consume_once(suite, "segments.express", "express: s3stream segments (log)", emu, target, segs)
            produce_once(
                suite,
                "produce.express.single",
                "express: produce 1 msg/object (log)",
                emu,
                target,
                messages=s.produce,
                layout="log",
            )
            produce_once(
                suite,
                "produce.express.segments",
                "express: produce segments (log)",
                emu,
                target,
                messages=s.produce_segments,
                per_object=SEGMENT,
                layout="log",
            )
            latency_once(suite, "express", emu, target, "log")


def run_standard(suite: Suite) -> None:
    s = suite.sizes
    print("profile standard", flush=True)
    with emulator("standard") as emu:
        target = target_of(emu, "bench-standard")
        arun(make_bucket(target, versioned=True))
        backlog = arun(sc.prepare_backlog(target, "c1", layout="versions", messages=s.consume_standard))
        for run in range(suite.runs):
            print(f" run {run + 1}/{suite.runs}", flush=True)
            consume_once(
                suite, "consume.standard.s3stream", "standard: s3stream (versions)", emu, target, backlog
            )
            baselines_once(suite, "standard", emu, target.bucket, "c1/00/", s.boto3_limit[2])
            latency_once(suite, "standard", emu, target, "versions")


def run_shards(suite: Suite) -> None:
    """1 shard against 8 under a per-prefix limit scaled down to 200 PUT/s (see the report's note)."""
    s = suite.sizes
    print("profile standard, put_rate=200 per prefix: 1 shard vs 8 shards", flush=True)
    with emulator("standard", put_rate=200) as emu:
        target = target_of(emu, "bench-shards")
        arun(make_bucket(target, versioned=True))
        for run in range(suite.runs):
            print(f" run {run + 1}/{suite.runs}", flush=True)
            for shards, count in ((1, s.shards_one), (8, s.shards_eight)):
                produce_once(
                    suite,
                    f"shards.{shards}",
                    f"standard@200: produce, {shards} shard(s)",
                    emu,
                    target,
                    messages=count,
                    layout="versions",
                    shards=shards,
                    concurrency=64,
                )


def idle_once(suite: Suite, emu: Any, target: sc.Target) -> None:
    s = suite.sizes

    def measure() -> tuple[float, dict[str, Any]]:
        names: dict[Layout, str] = {"versions": f"iv{sc.new_group()[6:]}", "log": f"il{sc.new_group()[6:]}"}
        res: bench.IdleResult = arun(
            bench.idle(
                target,
                names,
                shards=s.idle_shards,
                warmup=s.idle_warmup,
                seconds=s.idle_seconds,
                meter=EmuMeter(emu),
            )
        )
        return res.per_shard_hour("versions"), {
            "log": res.per_shard_hour("log"),
            "seconds": res.seconds,
            "shards": res.shards,
            **usage_extra(res.usage, res.seconds),
        }

    suite.record("idle", "zero: idle requests per shard per hour (versions)", "requests/shard/h", measure)


def rss_child(emu: Any, backlog: sc.Backlog, time_limit: float) -> tuple[float, dict[str, Any]]:
    """Consume ``backlog`` in a child process of its own; its peak RSS as it reports it (``VmHWM``)."""
    argv = [sys.executable, "-m", "s3stream.bench", "rss", "--endpoint", emu.url, "--bucket", backlog.bucket,
            "--topic", backlog.topic, "--layout", backlog.layout, "--messages", str(backlog.messages),
            "--objects", str(backlog.objects), "--time-limit", str(time_limit)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=time_limit + 120, cwd=ROOT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-500:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["peak_rss_mb"], {**figures, "messages": backlog.messages, "objects": backlog.objects}


def rss_runs(suite: Suite, emu: Any, target: sc.Target) -> None:
    s = suite.sizes
    segs = arun(
        sc.prepare_backlog(
            target, "rss-seg", layout="log", messages=s.rss_segments * SEGMENT, per_object=SEGMENT
        )
    )
    suite.record(
        "rss.segments",
        f"zero: peak RSS, {segs.messages:,} messages in segments",
        "MiB",
        lambda: rss_child(emu, segs, s.rss_time_limit),
    )
    single = arun(sc.prepare_backlog(target, "rss-one", layout="versions", messages=s.rss_single))
    suite.record(
        "rss.single",
        f"zero: peak RSS, {single.messages:,} one-message objects",
        "MiB",
        lambda: rss_child(emu, single, s.rss_time_limit),
    )


def profile_consume(suite: Suite, emu: Any, target: sc.Target) -> None:
    """cProfile of one consume (one message per object, versions) at the zero profile: the top 20."""
    backlog = arun(
        sc.prepare_backlog(target, "prof", layout="versions", messages=suite.sizes.profile_messages)
    )
    profiler = cProfile.Profile()
    profiler.enable()
    res: sc.ConsumeResult = arun(sc.consume(target, backlog, time_limit=600))
    profiler.disable()
    text = io.StringIO()
    text.write(
        f"consume, one message per object, versions layout, zero profile: {res.messages} messages "
        f"in {res.seconds:.2f}s under cProfile ({res.rate:,.0f} msg/s)\n\n"
    )
    for order in ("tottime", "cumulative"):
        text.write(f"--- top 20 by {order} ---\n")
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(20)
    suite.args.profile.parent.mkdir(parents=True, exist_ok=True)
    suite.args.profile.write_text(text.getvalue())
    suite.notes["profile"] = text.getvalue()
    print(f"  profile written to {suite.args.profile}", flush=True)


# --- machine, main ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import aiobotocore

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiobotocore": aiobotocore.__version__,
        "platform": platform.platform(),
        "commit": commit,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario (default 3)")
    parser.add_argument(
        "--quick", action="store_const", const="quick", dest="sizes", default="full",
        help="smaller counts (about 3 minutes)",
    )
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--profile", type=Path, help="also write a cProfile top-20 of consume at zero here")
    parser.add_argument("--skip-awscli", action="store_true", help="leave the AWS CLI baseline out")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s3stream import logs

    logs.configure("warning")
    suite = Suite(args, SIZES[args.sizes])
    print(f"s3stream benchmark suite: {args.sizes} sizes, {args.runs} run(s)", flush=True)
    if args.skip_awscli:
        suite.notes["awscli"] = "AWS CLI baseline left out (--skip-awscli)"
    else:
        check_awscli(suite)
    for stage in (run_zero, run_express, run_standard, run_shards):
        stage(suite)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "started": suite.started,
        "seconds": time.time() - suite.started,
        "sizes_name": args.sizes,
        "sizes": asdict(suite.sizes),
        "runs": args.runs,
        "machine": machine(),
        "command": " ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "series": {k: asdict(v) for k, v in suite.series.items()},
        "notes": suite.notes,
    }
    paths = report.write(results, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)} in {results['seconds'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
