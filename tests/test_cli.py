"""The ``s3stream`` command line, end to end, as a subprocess against the real moto server over HTTP.

Failures must be one ``s3stream: error:`` line on stderr and exit code 2 (3 when the endpoint cannot be
reached), never a traceback; the long-running commands must stop cleanly (exit 0) on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from s3stream.layouts.topics import create_topic
from s3stream.s3.store import Store
from tests.conftest import cli_command, new_bucket_name, wait_until
from tests.s3proxy import Rule, S3Error, S3Proxy

TIMEOUT = 30.0


def child_env() -> dict[str, str]:
    """The environment of a CLI child: test credentials, no inherited AWS or s3stream settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3STREAM_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    root = str(Path(__file__).resolve().parents[1])  # the tests' handler modules import as tests.*
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


async def sigterm_and_wait(proc: asyncio.subprocess.Process) -> int:
    """Stop a CLI child with SIGTERM and return its exit code (a child that already exited: its code,
    so the test's assertion on it shows the child's own failure)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(TIMEOUT):
        return await proc.wait()


def run_cli(*args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``s3stream ARGS`` to completion, capturing its output as text."""
    return subprocess.run(cli_command(*args), env=child_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    """Exit ``code`` (2), no traceback, and stderr is exactly one ``s3stream: error:`` line naming
    ``needles``."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("s3stream: error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert result.returncode == code, f"exit code {result.returncode}, expected {code}: {line}"
    return line


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- one-line errors -------------------------------------------------------------------------------


def test_missing_bucket_is_one_line_error(moto_endpoint: str, tmp_path: Path) -> None:
    """Consuming a bucket that does not exist fails at start with one line naming the bucket, exit 2."""
    name = new_bucket_name("missing")
    result = run_cli("consume", f"s3://{name}/topic/", "--endpoint-url", moto_endpoint, cwd=tmp_path)
    assert_one_line_error(result, name, "does not exist")


async def test_unversioned_bucket_is_one_line_error(store: Store, moto_endpoint: str, tmp_path: Path) -> None:
    """A versions-layout topic in a bucket without versioning is refused at start with one line saying
    how to enable it, exit 2 (a plain prefix there is consumed by listing objects instead)."""
    name = new_bucket_name("plain")
    await store.create_bucket(name, versioning=False)
    await create_topic(store, name, "topic", shards=2)
    result = await asyncio.to_thread(
        run_cli, "consume", f"s3://{name}/topic/", "--endpoint-url", moto_endpoint, cwd=tmp_path)
    assert_one_line_error(result, "versioning is not enabled", name, "put-bucket-versioning")


def test_bad_credentials_are_one_line_error(moto_endpoint: str, tmp_path: Path) -> None:
    """An endpoint that rejects the access key (403 InvalidAccessKeyId) gives one 'denied' line and exit
    2 after a single request: a permanent error is not retried."""
    rule = Rule(S3Error(403, "InvalidAccessKeyId",
                        "The AWS Access Key Id you provided does not exist in our records."))
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        result = run_cli("consume", f"s3://{new_bucket_name('creds')}/topic/",
                         "--endpoint-url", proxy.endpoint, cwd=tmp_path)
    assert_one_line_error(result, "denied", "credentials")
    assert rule.applied == 1, proxy.requests
    assert [outcome for _, _, outcome in proxy.requests] == ["S3Error"]


def test_unreachable_endpoint_is_one_line_error(tmp_path: Path) -> None:
    """With nothing listening on the endpoint and a short retry budget from --config, the CLI gives up
    promptly with one 'cannot reach' line and exit 3 (the endpoint cannot be reached)."""
    config = write_config(tmp_path / "s3.toml", "[s3]\nmax_attempts = 2\nmax_retry_time = 2\n")
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli("consume", "s3://unreachable-bucket/topic/", "--endpoint-url", endpoint,
                     "--config", config, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert_one_line_error(result, "cannot reach the S3 endpoint", endpoint, code=3)
    assert elapsed < 20, f"took {elapsed:.1f}s despite a 2 s retry budget"


async def test_unknown_handler_is_one_line_error(bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    """``--handler nosuch`` names the handler and the known ones in one line, exit 2."""
    result = await asyncio.to_thread(
        run_cli, "consume", f"s3://{bucket}/topic/", "--endpoint-url", moto_endpoint,
        "--handler", "nosuch", cwd=tmp_path)
    assert_one_line_error(result, "unknown handler 'nosuch'", "stdout", "jsonl")


async def test_bad_config_value_names_the_field(bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    """``[consumer] concurrency = -1`` is refused with one line naming ``consumer.concurrency`` and the
    value, exit 2."""
    config = write_config(tmp_path / "bad.toml", "[consumer]\nconcurrency = -1\n")
    result = await asyncio.to_thread(
        run_cli, "consume", f"s3://{bucket}/topic/", "--endpoint-url", moto_endpoint,
        "--config", config, cwd=tmp_path)
    assert_one_line_error(result, "consumer.concurrency", "-1")


async def test_unknown_config_key_is_one_line_error(bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    """A misspelt setting is not silently ignored: one line names it as unknown, exit 2."""
    config = write_config(tmp_path / "typo.toml", "[consumer]\npoll_intervall = 0.5\n")
    result = await asyncio.to_thread(
        run_cli, "consume", f"s3://{bucket}/topic/", "--endpoint-url", moto_endpoint,
        "--config", config, cwd=tmp_path)
    assert_one_line_error(result, "consumer.poll_intervall", "unknown setting")


# --- running commands ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, object]]:
    """The complete JSON lines of a file written by the ``jsonl`` handler (a partial last line is skipped)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


async def test_consume_jsonl_handler_delivers_and_stops_on_sigterm(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path,
) -> None:
    """``consume --handler out`` with ``[handlers.out] use = "jsonl"`` appends every version under the
    prefix to the file (backlog and live writes, per key in write order, nothing outside the prefix),
    and SIGTERM stops it with exit 0."""
    out = tmp_path / "out" / "messages.jsonl"
    config = write_config(tmp_path / "consume.toml", (
        "[s3]\naddressing_style = \"path\"\n"
        "[consumer]\npoll_interval = 0.1\nmax_poll_interval = 0.3\nsettle_window = 2\n"
        f"[handlers.out]\nuse = \"jsonl\"\npath = {json.dumps(str(out))}\n"
    ))
    written: dict[str, list[tuple[str, str]]] = {}

    async def put(key: str, body: str) -> None:
        _, vid = await store.put_object(bucket, key, body.encode())
        assert vid is not None
        written.setdefault(key, []).append((vid, body))

    for key, body in [("topic/a", "a1"), ("topic/b", "b1"), ("topic/a", "a2"), ("topic/a", "a3")]:
        await put(key, body)
    await store.put_object(bucket, "elsewhere/x", b"not for us")

    log = (tmp_path / "stderr.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *cli_command("consume", f"s3://{bucket}/topic/", "--handler", "out", "--config", config,
                     "--endpoint-url", moto_endpoint),
        env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        await wait_until(lambda: len(read_jsonl(out)) >= 4 or proc.returncode is not None, TIMEOUT, "backlog")
        assert proc.returncode is None, (tmp_path / "stderr.log").read_text()
        await put("topic/b", "b2")
        await put("topic/c", "c1")
        await wait_until(lambda: len(read_jsonl(out)) >= 6, TIMEOUT, "live writes")
        code = await sigterm_and_wait(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    stderr = (tmp_path / "stderr.log").read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    records = read_jsonl(out)
    assert len(records) == 6, records
    delivered: dict[str, list[tuple[str, str]]] = {}
    for rec in records:
        assert rec["bucket"] == bucket
        assert rec["deleted"] is False
        delivered.setdefault(str(rec["key"]), []).append((str(rec["version_id"]), str(rec["body"])))
    assert delivered == written


@pytest.mark.e2e
def test_demo_prints_seven_versions_in_order_per_key(tmp_path: Path) -> None:
    """``s3stream demo`` exits 0 and prints the 7 versions as JSON lines, each key's bodies in write order
    (id 1: 001-004; id 2: 001, 003, 004)."""
    result = run_cli("demo", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7, result.stdout
    values: dict[str, list[str]] = {}
    for line in lines:
        record = json.loads(line)
        body = json.loads(record["body"])
        assert record["key"] == f"topic/id-{body['id']}.json"
        values.setdefault(body["id"], []).append(body["value"])
    assert values == {"1": ["001", "002", "003", "004"], "2": ["001", "003", "004"]}


@pytest.mark.e2e
def test_dev_server_serves_s3_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``s3stream dev-server --port P`` serves a working S3 API on P (create a versioned bucket, write
    and read back a version) and exits 0 on SIGTERM."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cli_command("dev-server", "--port", str(port)), env=child_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, f"dev-server exited early: {proc.communicate()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nothing listening on port {port}"
                time.sleep(0.05)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="dev-server-bucket")
        s3.put_bucket_versioning(Bucket="dev-server-bucket", VersioningConfiguration={"Status": "Enabled"})
        version = s3.put_object(Bucket="dev-server-bucket", Key="k", Body=b"hello")["VersionId"]
        got = s3.get_object(Bucket="dev-server-bucket", Key="k", VersionId=version)["Body"].read()
        assert got == b"hello"
        assert s3.get_bucket_versioning(Bucket="dev-server-bucket")["Status"] == "Enabled"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"S3 endpoint: {endpoint}" in stdout
