"""The suite per emulator profile: seed the backlogs, then run every scenario ``--runs`` times,
alternating s3stream with the baselines (``run_zero``, ``run_express``, ``run_standard``,
``run_shards``), plus the zero profile's idle, peak-RSS and cProfile measurements, one consumer-group
member against two (``run_groups``) and the same consume and latency scenarios on a local SeaweedFS
server (``run_seaweedfs``).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import bucket as bench
from benchmarks import members as grp
from benchmarks import scenarios as sc
from benchmarks.seaweed import SeaweedFS, start_seaweedfs
from benchmarks.suite import (
    EmuMeter,
    LatencyRun,
    Suite,
    arun,
    baselines_once,
    consume_once,
    emulator,
    latency_once,
    make_bucket,
    produce_once,
    target_of,
    usage_extra,
)
from s3stream.layouts.topics import Layout

ROOT = Path(__file__).resolve().parents[1]
DIRECTORY_BUCKET = "bench--use1-az4--x-s3"
SEGMENT = 1000
PREVIOUS_POLL = 0.05  # directory buckets' poll_interval before it became 10 ms; the default elsewhere
EXPRESS_LATENCY = (  # the Express profile's latency runs, side by side in each run
    LatencyRun(),
    LatencyRun("poll50", "poll_interval 50 ms", poll_interval=PREVIOUS_POLL),
    LatencyRun("minute", "a whole minute", minute=True),
    # a topic whose directories hold 1,000 messages at 200/s: one page each
    LatencyRun("tuned", "a whole minute, 5 s directories", dir_seconds=5, minute=True),
    LatencyRun("moderate", "a slower stream", moderate=True),
    LatencyRun("moderate50", "a slower stream, poll_interval 50 ms", poll_interval=PREVIOUS_POLL,
               moderate=True),
)


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
            for latency_run in EXPRESS_LATENCY:
                latency_once(suite, "express", emu, target, "log", latency_run)


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


GROUP_RUNS: tuple[tuple[str, grp.Mode, int, str], ...] = (
    ("groups.1", "one", 1, "1 member"),
    ("groups.2", "separate", 2, "2 members, two s3stream consume processes"),
    ("groups.2p", "processes", 2, "2 members, s3stream consume --processes 2"),
)


def run_groups(suite: Suite) -> None:
    """One consumer-group member against two, each a process of its own, on one backlog (zero)."""
    s = suite.sizes
    print(f"profile zero: consumer group of 1 and 2 members, {s.group_shards} shards", flush=True)
    with emulator("zero") as emu:
        target = target_of(emu, "bench-groups")
        arun(make_bucket(target, versioned=True))
        backlog = arun(sc.prepare_backlog(target, "g1", layout="versions", messages=s.group_backlog,
                                          shards=s.group_shards))
        for run in range(suite.runs):
            print(f" run {run + 1}/{suite.runs}", flush=True)
            for key, mode, members, label in GROUP_RUNS:
                group_once(suite, key, f"zero: {label}", emu, target, backlog, mode, members)


def group_once(suite: Suite, key: str, label: str, emu: Any, target: sc.Target, backlog: sc.Backlog,
               mode: grp.Mode, members: int) -> None:
    def measure() -> tuple[float, dict[str, Any]]:
        meter = EmuMeter(emu)
        meter.begin()
        res = grp.consume_with_members(emu.url, target.url(backlog.topic), backlog.messages, mode=mode,
                                       members=members, group=sc.new_group())
        usage = meter.end()
        return res.rate, {"seconds": res.seconds, "spawn_s": res.spawn_seconds, "messages": res.messages,
                          "shards": backlog.shards, "per_member": res.per_member,
                          "start_spread_s": res.start_spread,
                          "cpu_us": res.busy_cpu_seconds / res.messages * 1e6,
                          "cpu_us_startup": res.cpu_seconds / res.messages * 1e6,
                          **usage_extra(usage, res.spawn_seconds)}

    suite.record(key, label, "msg/s", measure)


class WeedStats:
    """A running SeaweedFS as the measurements see a server: its URL and its CPU seconds (it counts no
    requests; s3stream's own scenarios count theirs)."""

    def __init__(self, server: SeaweedFS) -> None:
        self.server, self.url = server, server.endpoint

    def stats(self) -> dict[str, Any]:
        return {"requests": {}, "cpu_seconds": self.server.cpu_seconds()}


def run_seaweedfs(suite: Suite) -> None:
    """Consume (versions layout, versioned bucket) against the baselines, and the latency scenario, on a
    real S3 server: a ``weed server`` started here and killed at the end."""
    s = suite.sizes
    print("profile seaweedfs (a local weed server)", flush=True)
    with tempfile.TemporaryDirectory(prefix="s3stream-bench-weed-") as tmp:
        server = start_seaweedfs(Path(tmp), access_key="testing", secret_key="testing")
        try:
            weed = WeedStats(server)
            target = sc.Target.at(server.endpoint, "bench-seaweedfs")
            arun(make_bucket(target, versioned=True))
            backlog = arun(sc.prepare_backlog(target, "c1", layout="versions", messages=s.consume_seaweedfs))
            for run in range(suite.runs):
                print(f" run {run + 1}/{suite.runs}", flush=True)
                consume_once(suite, "consume.seaweedfs.s3stream", "seaweedfs: s3stream (versions)", weed,
                             target, backlog)
                baselines_once(suite, "seaweedfs", weed, target.bucket, "c1/00/", s.boto3_limit_seaweedfs)
                latency_once(suite, "seaweedfs", weed, target, "versions")
        finally:
            server.stop()


# --- zero profile: idle requests, peak RSS, cProfile --------------------------------------------


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
    argv = [sys.executable, "-m", "benchmarks.bucket", "rss", "--endpoint", emu.url, "--bucket",
    backlog.bucket,
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
