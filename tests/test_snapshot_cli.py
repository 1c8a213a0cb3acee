"""``s3stream snapshot serve|rollback`` and ``s3stream bucket lifecycle`` end to end, as subprocesses
against moto over HTTP: the key-value service of the snapshot follower, its rollback and its lifecycle
rule."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3

from s3stream.config import load_settings
from s3stream.s3.store import Store
from tests.conftest import cli_command, new_bucket_name, wait_until
from tests.test_cli import assert_one_line_error, child_env, run_cli, write_config

TIMEOUT = 30.0
KEY = "kv/store.csv"
ROOT = Path(__file__).resolve().parent.parent


class Served:
    """A running ``snapshot serve`` child: its process, its stderr file and its base URL."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.base = ""

    async def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        async with aiohttp.ClientSession() as session, session.get(
            self.base + path, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def json(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(
            self.base + path, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json()


@contextlib.asynccontextmanager
async def start_serving(tmp_path: Path, *args: str) -> AsyncIterator[Served]:
    """Run ``s3stream snapshot serve ARGS --port 0``; yields once its "serving" line names the port."""
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *cli_command("snapshot", "serve", *args, "--port", "0"), env=child_env(), cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=err)
    served = Served(proc, log)
    try:
        found: list[str] = []

        def listening() -> bool:
            found[:] = re.findall(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
            return bool(found) or proc.returncode is not None

        await wait_until(listening, TIMEOUT, "the serving line")
        assert proc.returncode is None, log.read_text()
        assert found, log.read_text()
        served.base = found[0]
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stop_with(served: Served, sig: signal.Signals) -> None:
    """Send ``sig``; the server must exit 0 without a traceback."""
    served.proc.send_signal(sig)
    async with asyncio.timeout(TIMEOUT):
        code = await served.proc.wait()
    stderr = served.log.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


async def put(store: Store, bucket: str, body: bytes, key: str = KEY) -> str:
    _, version_id = await store.put_object(bucket, key, body)
    assert version_id is not None
    return version_id


async def test_serve_answers_kv_status_health_and_follows_rollback(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path,
) -> None:
    """``snapshot serve`` answers GET /kv/<key> with the value (404 for an absent key), /status with the
    version, ETag, times, error and key count, and /healthz; it follows a new version, then a
    ``snapshot rollback`` (which prints the new version id); SIGTERM stops it with exit code 0."""
    first = await put(store, bucket, b"x,1\npath/key,slash\n")
    async with start_serving(tmp_path, f"s3://{bucket}/{KEY}", "--parser", "csv", "--interval",
                                      "0.1", "--endpoint-url", moto_endpoint) as served:
        status, text, headers = await served.get("/kv/x")
        assert (status, text) == (200, "1")
        assert headers["Content-Type"].startswith("text/plain")
        assert headers["X-S3Stream-Version-Id"] == first
        assert (await served.get("/kv/path/key"))[:2] == (200, "slash")
        assert (await served.get("/kv/x", Accept="application/json"))[1] == '"1"'
        status, text, _ = await served.get("/kv/missing")
        assert status == 404
        assert "no such key" in text
        doc = await served.json("/status")
        assert doc["version_id"] == first
        assert doc["keys"] == 2
        assert doc["last_error"] is None
        assert doc["etag"]
        assert doc["loaded_at"].endswith("Z")
        assert doc["last_checked"].endswith("Z")
        assert (await served.get("/healthz"))[0] == 200
        second = await put(store, bucket, b"x,2\n")
        await wait_until(lambda: _value(served, "x", "2"), TIMEOUT, "the new version served")
        result = await asyncio.to_thread(run_cli, "snapshot", "rollback", f"s3://{bucket}/{KEY}",
                                         "--to", first, "--endpoint-url", moto_endpoint, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        restored = result.stdout.strip()
        assert restored not in {first, second}
        assert f"restored version {first}" in result.stderr
        await wait_until(lambda: _value(served, "x", "1"), TIMEOUT, "the rolled-back version served")
        assert (await served.json("/status"))["version_id"] == restored
        assert (await store.get_object(bucket, KEY)).body == b"x,1\npath/key,slash\n"
        await stop_with(served, signal.SIGTERM)


async def _value(served: Served, key: str, expected: str) -> bool:
    return (await served.get(f"/kv/{key}"))[1] == expected


async def test_serve_reads_its_settings_from_the_config_file(store: Store, bucket: str, moto_endpoint: str,
                                                             tmp_path: Path) -> None:
    """``--config`` supplies the URL, the parser and the endpoint ([snapshot] and [s3]); a JSON value that
    is not a string is served as JSON; SIGINT stops the server with exit code 0."""
    version = await put(store, bucket, b'{"limits": {"max": 3}, "name": "kv"}', key="conf.json")
    config = write_config(tmp_path / "kv.toml", f'[s3]\nendpoint_url = "{moto_endpoint}"\n'
                          f'[snapshot]\nurl = "s3://{bucket}/conf.json"\nparser = "json"\ninterval = 0.2\n')
    async with start_serving(tmp_path, "--config", config) as served:
        status, text, headers = await served.get("/kv/limits")
        assert (status, text, headers["Content-Type"]) == (200, '{"max":3}', "application/json")
        assert (await served.get("/kv/name"))[1] == "kv"
        assert (await served.json("/status"))["version_id"] == version
        await stop_with(served, signal.SIGINT)


async def test_serve_errors_are_one_line(store: Store, bucket: str, moto_endpoint: str,
                                         tmp_path: Path) -> None:
    """An unknown parser, a missing URL, a bad interval, a missing key, and a file with no valid version
    each stop ``snapshot serve`` at start with one readable line and no traceback."""
    url = f"s3://{bucket}/{KEY}"
    cases = [
        (["snapshot", "serve", url, "--parser", "xml"], ["unknown parser 'xml'"], 2),
        (["snapshot", "serve"], ["give s3://BUCKET/KEY"], 2),
        (["snapshot", "serve", url, "--interval", "0"], ["snapshot.interval"], 2),
        (["snapshot", "serve", url], ["has no current version"], 2),
    ]
    await put(store, bucket, b"a,b,c\n", key="bad.csv")
    cases.append((["snapshot", "serve", f"s3://{bucket}/bad.csv"], ["expected 2 fields", "refused"], 1))
    for args, needles, code in cases:
        result = await asyncio.to_thread(run_cli, *args, "--endpoint-url", moto_endpoint, cwd=tmp_path)
        _assert_one_line(result, needles, code)


def _assert_one_line(result: subprocess.CompletedProcess[str], needles: list[str], code: int) -> None:
    if code == 2:
        assert_one_line_error(result, *needles)
        return
    lines = [line for line in result.stderr.splitlines() if line.startswith("s3stream: error:")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert all(n in lines[0] for n in needles), result.stderr
    assert result.returncode == code, result.stderr


async def test_rollback_errors_are_one_line(store: Store, bucket: str, moto_endpoint: str,
                                            tmp_path: Path) -> None:
    """``snapshot rollback`` refuses, in one line each: an unknown version (naming the newest ones), a
    delete marker, a version its ``--parser`` refuses, and an unversioned bucket; restoring the latest
    version writes nothing."""
    url = f"s3://{bucket}/{KEY}"
    bad = await put(store, bucket, b"a,b,c\n")
    good = await put(store, bucket, b"a,b\n")
    marker = await store.delete_object(bucket, KEY)
    latest = await put(store, bucket, b"a,c\n")
    plain = new_bucket_name("plain")
    await store.create_bucket(plain, versioning=False)

    async def rollback(target: str, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_cli, "snapshot", "rollback", target, "--to", version, *extra,
                                       "--endpoint-url", moto_endpoint, cwd=tmp_path)

    assert_one_line_error(await rollback(url, "nosuch"), "'nosuch'", "does not exist", latest)
    assert_one_line_error(await rollback(url, str(marker)), "delete marker")
    assert_one_line_error(await rollback(f"s3://{plain}/{KEY}", "v"), "not versioned")
    refused = await rollback(url, bad, "--parser", "csv")
    _assert_one_line(refused, ["refused by the csv parser", "not restored"], 1)
    same = await rollback(url, latest)
    assert same.returncode == 0
    assert same.stdout.strip() == latest
    assert "already the latest" in same.stderr
    ok = await rollback(url, good, "--parser", "csv")
    assert ok.returncode == 0, ok.stderr
    assert (await store.get_object(bucket, KEY)).version_id == ok.stdout.strip()


async def test_bucket_lifecycle_sets_the_rule_and_keeps_others(store: Store, bucket: str, moto_endpoint: str,
                                                               tmp_path: Path) -> None:
    """``bucket lifecycle NAME --noncurrent-days D`` adds the rule that expires noncurrent versions after
    D days, keeps the bucket's other rules, replaces its own rule when run again, and adds one rule per
    ``--prefix``; a missing bucket is one line, an unversioned bucket gets a note."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    other = {"ID": "keep-me", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 1}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})

    async def lifecycle(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_cli, "bucket", "lifecycle", *args, "--endpoint-url", moto_endpoint,
                                       cwd=tmp_path)

    def rules() -> dict[str, Any]:
        found = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        return {rule["ID"]: rule for rule in found}

    for days in (7, 3):
        result = await lifecycle(bucket, "--noncurrent-days", str(days))
        assert result.returncode == 0, result.stderr
        assert "1 other rule(s) kept" in result.stdout
        assert set(rules()) == {"keep-me", "s3stream-noncurrent-versions"}
        ours = rules()["s3stream-noncurrent-versions"]
        assert ours["NoncurrentVersionExpiration"]["NoncurrentDays"] == days
        assert ours["Status"] == "Enabled"
    assert rules()["keep-me"]["Expiration"] == {"Days": 1}
    assert (await lifecycle(bucket, "--noncurrent-days", "30", "--prefix", "kv/")).returncode == 0
    assert rules()["s3stream-noncurrent-versions:kv/"]["Filter"] == {"Prefix": "kv/"}
    missing = await lifecycle(new_bucket_name("none"), "--noncurrent-days", "7")
    assert_one_line_error(missing, "does not exist")
    plain = new_bucket_name("plain")
    await store.create_bucket(plain, versioning=False)
    noted = await lifecycle(plain, "--noncurrent-days", "7")
    assert noted.returncode == 0
    assert "not versioned" in noted.stderr


def test_kv_service_example_config_loads() -> None:
    """``config/kv-service.toml`` (the snapshot follower's key-value service) is a valid config with a
    [snapshot] section."""
    settings = load_settings(ROOT / "config" / "kv-service.toml")
    assert settings.snapshot.url is not None
    assert settings.snapshot.parser == "csv"

