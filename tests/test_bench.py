"""The benchmark suite (benchmarks/run.py), ``python -m benchmarks.bucket`` and the arithmetic they report.

The suite test runs the real ``benchmarks/run.py`` with tiny counts against the S3 emulator in a temporary
folder; the ``python -m benchmarks.bucket`` test runs the real command against the session's moto server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from benchmarks import bucket as bench
from benchmarks import scenarios as sc
from benchmarks.emulator import run_emulator
from s3stream.layouts import segments
from s3stream.layouts.topics import Topic, parse_log_key
from s3stream.s3.store import open_store
from tests.conftest import new_bucket_name

ROOT = Path(__file__).resolve().parents[1]


def test_request_cost_matches_a_hand_computed_example() -> None:
    """1,000 PUTs + 1,000 LISTs + 10,000 GETs + 5 DeleteObjects cost $0.014 at S3 Standard prices
    (2,000 x $0.005/1,000 + 10,000 x $0.0004/1,000; deletes are free) and $0.00256 at S3 Express One Zone
    prices (2,000 x $0.00113/1,000 + 10,000 x $0.00003/1,000); per million messages scales linearly."""
    requests = {"PutObject": 1000, "ListObjectsV2": 1000, "GetObject": 10_000, "DeleteObjects": 5}
    assert bench.request_cost(requests, "standard") == pytest.approx(0.014)
    assert bench.request_cost(requests, "express") == pytest.approx(0.00256)
    assert bench.per_million({"GetObject": 30}, 10) == {"GetObject": 3_000_000}
    assert bench.merge({"GetObject": 2}, {"GetObject": 1, "PutObject": 4}) == {"GetObject": 3, "PutObject": 4}


def test_operations_fall_in_their_price_class() -> None:
    """LIST and every kind of write are billed like PUT, deletes are free, GET/HEAD/CreateSession like GET."""
    writes = ["PutObject", "ListObjectVersions", "ListObjectsV2", "CompleteMultipartUpload", "UploadPart"]
    assert {bench.price_class(op) for op in writes} == {"write"}
    free = ["DeleteObjects", "DeleteObject", "AbortMultipartUpload"]
    assert {bench.price_class(op) for op in free} == {"free"}
    reads = ["GetObject", "HeadBucket", "HeadObject", "GetBucketVersioning", "CreateSession"]
    assert {bench.price_class(op) for op in reads} == {"read"}


def test_seeded_objects_are_named_as_the_producer_names_them() -> None:
    """The emulator backlog uses the producer's key formats: versions keys in the shard their key hashes
    to; log objects with parseable names, segments of 1 KiB JSON-lines messages, numbered 1, 2, 3..."""
    versions = Topic(bucket="b", name="t", layout="versions", shards=8)
    for obj in sc.seed_objects(versions, 50, 1):
        shard_dir, key = obj["key"].split("/")[1:]
        assert int(shard_dir, 16) == versions.shard_of(key)
        assert len(obj["body"].encode()) == sc.BODY_SIZE
    log = Topic(bucket="b", name="t", layout="log")
    objects = list(sc.seed_objects(log, 2500, 1000))
    names = [parse_log_key(o["key"]) for o in objects]
    assert [n.seq for n in names if n] == [1, 2, 3]
    assert all(n and n.is_segment for n in names)
    counts = [len(segments.decode(o["body"].encode(), ".seg.jsonl")) for o in objects]
    assert counts == [1000, 1000, 500]
    assert {len(b) for _, b in segments.decode(objects[0]["body"].encode(), ".seg.jsonl")} == {sc.BODY_SIZE}


def test_percentile_and_table() -> None:
    """Nearest-rank percentiles; tables align numbers right under a dashed header."""
    values = [float(i) for i in range(1, 101)]
    assert (sc.percentile(values, 50), sc.percentile(values, 99), sc.percentile([7.0], 99)) == (50, 99, 7)
    text = bench.format_table([["name", "rate"], ["a", "1,000"], ["bb", "5"]])
    assert text.splitlines() == ["name  rate", "----  -----", "a     1,000", "bb        5"]


def test_cli_choices_are_the_bench_scenarios() -> None:
    """``python -m benchmarks.bucket --scenario`` offers exactly the scenarios benchmarks.bucket runs."""
    command = bench.bench_command
    option = next(p for p in command.params if p.name == "scenarios")
    assert tuple(option.type.choices) == bench.SCENARIOS  # type: ignore[attr-defined]


def _boto3(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def _everything(s3: object, bucket: str) -> list[tuple[str, str]]:
    page = s3.list_object_versions(Bucket=bucket)  # type: ignore[attr-defined]
    entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
    return sorted((e["Key"], e["VersionId"]) for e in entries)


def test_bench_command_prints_the_table_and_cleans_up(moto_endpoint: str) -> None:
    """``python -m benchmarks.bucket --bucket B --endpoint-url URL --messages 5`` runs produce, consume,
    segments and
    latency on a versioned bucket, prints one table row each, and afterwards the bucket holds exactly
    what it held before: every version, marker, topic and checkpoint it wrote is gone."""
    s3 = _boto3(moto_endpoint)
    bucket = new_bucket_name("bench")
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    s3.put_bucket_versioning(  # type: ignore[attr-defined]
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="mine/keep.txt", Body=b"not the benchmark's")  # type: ignore[attr-defined]
    before = _everything(s3, bucket)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bucket", "--bucket", bucket, "--endpoint-url", moto_endpoint,
         "--messages", "5"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, "AWS_ENDPOINT_URL": ""},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[:3] == ["scenario", "layout", "messages"]
    rows = {line.split("  ")[0] for line in lines[3:] if line and not line.startswith("removed")}
    assert rows == {"produce, 1 msg/object", "consume, 1 msg/object", "produce, segments of 1,000",
                    "consume, segments of 1,000", "latency publish→handler"}
    assert "removed" in lines[-1]
    assert _everything(s3, bucket) == before


async def _directory_bucket_with(endpoint: str, bucket: str, key: str) -> None:
    async with open_store(sc.Target.at(endpoint, bucket).s3) as store:
        await store.create_directory_bucket(bucket, "use1-az4")
        await store.put_object(bucket, key, b"not the benchmark's")


async def _keys(endpoint: str, bucket: str) -> list[str]:
    async with open_store(sc.Target.at(endpoint, bucket).s3) as store:
        return sorted(e.key for e in (await store.list_objects(bucket, "")).entries)


@pytest.mark.e2e
def test_bench_command_on_a_directory_bucket_uses_the_log_layout() -> None:
    """On an S3 Express directory bucket (the emulator's express profile: no versioning, shuffled
    listings, CreateSession) every scenario runs on log-layout topics, costs are at S3 Express prices,
    and afterwards only the object that was there before is left."""
    bucket = "bench--use1-az4--x-s3"
    with run_emulator("express") as emu:
        asyncio.run(_directory_bucket_with(emu.url, bucket, "mine/keep.txt"))
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bucket", "--bucket", bucket, "--endpoint-url", emu.url,
             "--messages", "5", "--scenario", "produce", "--scenario", "consume", "--scenario", "segments"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "AWS_ENDPOINT_URL": ""},
        )
        assert done.returncode == 0, done.stderr
        assert "S3 Express One Zone prices" in done.stdout.splitlines()[0]
        rows = [[cell.strip() for cell in line.split("  ") if cell.strip()]
                for line in done.stdout.splitlines() if line.startswith(("produce", "consume"))]
        assert [row[1] for row in rows] == ["log"] * 4
        assert asyncio.run(_keys(emu.url, bucket)) == ["mine/keep.txt"]


def test_bench_command_on_a_missing_bucket_is_one_line(moto_endpoint: str) -> None:
    """A bucket that does not exist is a setup error: one ``s3stream: error:`` line, exit code 2."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bucket", "--bucket", new_bucket_name("none"),
         "--endpoint-url", moto_endpoint, "--messages", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("s3stream: error:")
    assert done.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_suite_writes_markdown_and_png(tmp_path: Path) -> None:
    """``benchmarks/run.py`` with tiny counts runs every scenario against the emulator and SeaweedFS (one
    group member against two included), each once, with no failed measurement, and writes <date>.md with
    every section, a PNG and the raw figures as JSON."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--sizes", "tiny", "--runs", "1",
         "--out", str(tmp_path), "--skip-awscli"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    md = next(tmp_path.glob("*.md")).read_text()
    for section in ("## Against the targets", "## Consume, one message per object",
                    "## Segments and producing", "## One shard against eight", "## End-to-end latency",
                    "## S3 requests per million", "**Idle.**", "## Waking up", "## Peak memory", "## Notes",
                    "## Consumer groups: one member against two", "SeaweedFS (local server)"):
        assert section in md
    assert next(tmp_path.glob("*.png")).read_bytes().startswith(b"\x89PNG")
    results = json.loads(next(tmp_path.glob("*.json")).read_text())
    failures = {k: s["errors"] for k, s in results["series"].items() if s["errors"]}
    assert not failures
    for key in ("consume.zero.s3stream", "consume.express.s3stream", "consume.standard.boto3",
                "segments.express", "produce.express.segments", "shards.8", "latency.express",
                "latency.express.tuned", "latency.express.poll50", "latency.express.moderate", "idle",
                "rss.segments", "wakeup.sporadic.express", "wakeup.idle.versions.head.4", "groups.1",
                "wakeup.sporadic.notifications", "wakeup.idle.notifications.1", "groups.2", "groups.2p",
                "consume.seaweedfs.s3stream", "consume.seaweedfs.aiobotocore", "consume.seaweedfs.boto3",
                "latency.seaweedfs"):
        assert results["series"][key]["values"][0] > 0, key
    assert sum(results["series"]["groups.2p"]["extra"][0]["per_member"]) == results["sizes"]["group_backlog"]


def test_profiles_option_runs_only_the_parts_named() -> None:
    """``--profiles seaweedfs`` or ``zero,express`` selects those parts in that order; by default every
    part runs; an unknown name is refused, naming the choices."""
    from benchmarks import run

    assert run.parse_args(["--profiles", "seaweedfs"]).profiles == ["seaweedfs"]
    assert run.parse_args(["--profiles", "express, zero"]).profiles == ["express", "zero"]
    assert run.parse_args([]).profiles == list(run.STAGES)
    with pytest.raises(SystemExit):
        run.parse_args(["--profiles", "zero,nope"])
