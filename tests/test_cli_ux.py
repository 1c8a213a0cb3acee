"""The command line for scripts and for people, end to end as subprocesses against real servers.

``--json`` output is parsed and checked (SeaweedFS for the topic commands, moto for the rest); long
commands show click's progress bar when stderr is a terminal (a pseudo-terminal from :mod:`pty`) and
periodic ``progress:`` lines otherwise (every update with ``S3STREAM_PROGRESS_INTERVAL=0``);
``consume`` shows a status line on a terminal only; missing resources and foreign buckets are one
line and exit 2; the handler retry flags override the config file.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3stream.cli.progress import Progress
from s3stream.config import S3Settings
from s3stream.layouts.topics import create_topic
from s3stream.s3.sqs import open_sqs
from s3stream.s3.store import Store
from tests.conftest import cli_command, new_bucket_name, wait_until
from tests.s3proxy import Rule, S3Error, S3Proxy
from tests.test_cli import assert_one_line_error, child_env
from tests.test_commands import Result, background, cli, ok

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TIMEOUT = 60.0


def jsonout(result: Result) -> Any:
    """The one JSON document a command printed on stdout."""
    return json.loads(result.stdout)


def run_in_pty(args: list[str], *, env: dict[str, str], until: Callable[[str], bool] | None = None,
               within: float = TIMEOUT) -> tuple[int, str]:
    """Run ``s3stream ARGS`` with stdin, stdout and stderr on a pseudo-terminal; collect what it writes
    until it exits (or, with ``until``, until the output satisfies it: then SIGTERM). Returns the exit
    status and the output."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(sys.executable, cli_command(*args), env)
    chunks: list[bytes] = []
    deadline = time.monotonic() + within
    stopped = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the child closed the terminal: it exited
                    break
                if not data:
                    break
                chunks.append(data)
            if until is not None and not stopped and until(b"".join(chunks).decode(errors="replace")):
                os.kill(pid, signal.SIGTERM)
                stopped = True
        else:
            pytest.fail(f"{args} did not finish within {within}s: {b''.join(chunks)!r}")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def env_with(endpoint: str, **extra: str) -> dict[str, str]:
    """The CLI child's environment pointed at ``endpoint``."""
    return {**child_env(), "AWS_ENDPOINT_URL": endpoint, **extra}


# --- --json ----------------------------------------------------------------------------------------


async def test_topic_commands_json_on_seaweedfs(seaweedfs_url: str) -> None:
    """On SeaweedFS: ``bucket create``, ``bucket versioning --json``, ``topic create``, ``publish --json``,
    ``topic list --json``, ``topic describe --json`` and ``history --json`` print documents with stable
    keys and ISO 8601 UTC times that agree with each other."""
    bucket = new_bucket_name("json")
    await ok(seaweedfs_url, "bucket", "create", bucket, "--versioning")
    assert jsonout(await ok(seaweedfs_url, "bucket", "versioning", bucket, "--json")) == {
        "bucket": bucket, "versioning": "Enabled"}
    await ok(seaweedfs_url, "topic", "create", f"s3://{bucket}/orders", "--shards", "2")
    url = f"s3://{bucket}/orders"
    first = jsonout(await ok(seaweedfs_url, "publish", url, "--key", "k1", "--body", "one", "--json"))
    second = jsonout(await ok(seaweedfs_url, "publish", url, "--key", "k1", "--body", "two", "--json"))
    assert set(first) == {"key", "version_id", "offset"}
    assert first["key"] == second["key"]
    assert re.fullmatch(r"orders/0[01]/k1", first["key"]), first
    summary = jsonout(await ok(seaweedfs_url, "publish", url, "--lines", "--json", stdin=b"a\nb\nc\n"))
    assert (summary["topic"], summary["published"]) == (url, 3), summary
    assert set(summary) == {"topic", "published", "seconds", "rate_per_s"}

    listed = jsonout(await ok(seaweedfs_url, "topic", "list", f"s3://{bucket}", "--json"))
    assert [(t["topic"], t["name"], t["layout"], t["shards"]) for t in listed] == [
        (url, "orders", "versions", 2)]
    assert ISO.match(listed[0]["created"]), listed

    doc = jsonout(await ok(seaweedfs_url, "topic", "describe", url, "--json"))
    assert (doc["topic"], doc["layout"], doc["shards"], doc["plain"]) == (url, "versions", 2, False)
    assert [s["index"] for s in doc["shard_stats"]] == [0, 1]
    assert sum(s["versions"] for s in doc["shard_stats"]) == 5
    assert sum(s["objects"] for s in doc["shard_stats"]) == 4
    assert ISO.match(doc["newest_message"]), doc
    assert ISO.match(doc["created"]), doc
    assert doc["groups"] == []

    history = await ok(seaweedfs_url, "history", url, "--key", "k1", "--json")
    lines = [json.loads(line) for line in history.text.splitlines()]
    assert [(r["version_id"], r["body"]) for r in lines] == [(first["version_id"], "one"),
                                                            (second["version_id"], "two")]
    assert all(ISO.match(r["last_modified"]) for r in lines)


async def test_handler_flags_dead_letter_and_dlq_and_group_json(store: Store, moto_endpoint: str,
                                                                tmp_path: Path) -> None:
    """``run --endpoint-url`` with ``--handler-attempts 2 --handler-retry-time 0 --dead-letters``
    overrides a config file that says 9 attempts over an hour and no dead letters: a failing message is
    dead-lettered after exactly 2 attempts, and promptly. ``dlq list --json`` then shows it (stable
    keys, ISO time), and ``group describe --json`` shows the group's checkpoint past it."""
    bucket = new_bucket_name("flags")
    await store.create_bucket(bucket, versioning=True)
    await store.put_object(bucket, "in/a", b"payload")
    config = tmp_path / "run.toml"
    config.write_text(
        '[s3]\naddressing_style = "path"\n'
        "[consumer]\npoll_interval = 0.05\nmax_poll_interval = 0.2\nsettle_window = 1\n"
        "handler_attempts = 9\nhandler_retry_time = 3600\ndead_letters = false\n"
        '[handlers.bad]\nuse = "tests.handler_plugins:always_fails"\n'
        f'[[sources]]\nurl = "s3://{bucket}/in/"\nhandler = "bad"\n', encoding="utf-8")
    url = f"s3://{bucket}/in/"
    async with background(tmp_path, "run", "run", "--config", str(config), "--endpoint-url", moto_endpoint,
                          "--handler-attempts", "2", "--handler-retry-time", "0", "--dead-letters") as proc:

        async def dead_lettered() -> bool:
            found = await cli(moto_endpoint, "dlq", "list", url, "--json")
            return found.returncode == 0 and len(json.loads(found.stdout)) == 1

        await wait_until(dead_lettered, TIMEOUT, "a dead letter")
        assert proc.returncode is None, (tmp_path / "run.err").read_text()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0, (tmp_path / "run.err").read_text()
    [letter] = jsonout(await ok(moto_endpoint, "dlq", "list", url, "--json"))
    assert set(letter) == {"time", "bucket", "key", "version_id", "offset", "deleted", "attempts", "error",
                           "traceback", "dead_letter"}
    assert (letter["bucket"], letter["key"], letter["attempts"], letter["deleted"]) == (
        bucket, "in/a", 2, False)
    assert "cannot handle in/a" in letter["error"], letter
    assert ISO.match(letter["time"]), letter
    group = jsonout(await ok(moto_endpoint, "group", "describe", url, "--json"))
    assert (group["group"], group["unconsumed"]) == ("default", 0), group
    assert group["shards"][0]["watermark"] is not None


async def test_no_dead_letters_flag_stops_the_consumer(store: Store, moto_endpoint: str) -> None:
    """``consume --no-dead-letters --handler-attempts 1`` stops at the first failing message with one
    error line (no traceback) and a failure exit code, and writes no dead letter."""
    bucket = new_bucket_name("nodl")
    await store.create_bucket(bucket, versioning=True)
    await store.put_object(bucket, "in/a", b"payload")
    url = f"s3://{bucket}/in/"
    result = await cli(moto_endpoint, "consume", url, "--handler", "tests.handler_plugins:always_fails",
                       "--no-dead-letters", "--handler-attempts", "1", "--poll-interval", "0.05")
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("s3stream: error:")]
    assert len(errors) == 1, result.stderr
    assert "in/a" in errors[0], result.stderr
    assert jsonout(await ok(moto_endpoint, "dlq", "list", url, "--json")) == []


# --- progress --------------------------------------------------------------------------------------


async def put_many(store: Store, bucket: str, prefix: str, count: int) -> None:
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await store.put_object(bucket, f"{prefix}{i:05d}", b"x")

    await asyncio.gather(*(one(i) for i in range(count)))


async def test_decommission_shows_a_progress_bar_on_a_terminal(store: Store, moto_endpoint: str) -> None:
    """``bucket decommission --yes`` on a terminal draws click's progress bar on stderr, redrawn as the
    pages of 1,000 are deleted, with the count and the rate, then its summary."""
    bucket = new_bucket_name("bar")
    await store.create_bucket(bucket, versioning=False)
    await put_many(store, bucket, "d/", 2100)
    code, out = await asyncio.to_thread(run_in_pty, ["bucket", "decommission", bucket, "--yes"],
                                        env=env_with(moto_endpoint))
    assert code == 0, out
    frames = re.findall(rf"decommissioning {bucket}\s+\[[-#]+\]\s+(\d+)\s+\d+ deleted/s", out)
    assert [int(n) for n in frames][-3:] == [1000, 2000, 2100], out
    assert f"deleted 2100 objects and bucket {bucket}" in out
    assert "progress:" not in out
    assert "Traceback" not in out


async def test_progress_lines_without_a_terminal(store: Store, moto_endpoint: str) -> None:
    """Without a terminal, ``publish --lines``, ``topic delete --data`` and ``dlq purge`` write
    ``progress:`` lines on stderr (here at every update: ``S3STREAM_PROGRESS_INTERVAL=0``) with the count,
    the rate and, when the total is known, the percentage and the ETA; no bar, no escape codes."""
    bucket = new_bucket_name("lines")
    await store.create_bucket(bucket, versioning=True)
    await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    env = {"S3STREAM_PROGRESS_INTERVAL": "0"}
    data = b"".join(b"%d\n" % i for i in range(1500))
    published = await cli_env(moto_endpoint, env, "publish", url, "--lines", stdin=data)
    assert published.returncode == 0, published.stderr
    assert re.findall(rf"^progress: publishing to {url}: (\d+) messages, \d+/s$", published.stderr, re.M) == [
        "1000", "1500"], published.stderr
    assert "\x1b" not in published.stderr
    assert "published 1500 messages" in published.stderr

    deleted = await cli_env(moto_endpoint, env, "topic", "delete", url, "--data", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    counts = re.findall(rf"^progress: deleting {url}: (\d+) versions, \d+/s$", deleted.stderr, re.M)
    assert counts, deleted.stderr
    assert int(counts[-1]) == 1500, deleted.stderr
    assert "and 1500 objects or versions" in deleted.text


async def cli_env(endpoint: str, env: dict[str, str], *args: str, stdin: bytes | None = None) -> Result:
    """Run ``s3stream ARGS --endpoint-url ENDPOINT`` with extra environment variables."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(*args, "--endpoint-url", endpoint), env={**child_env(), **env},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate(stdin)
    return Result(proc.returncode or 0, out, err.decode())


async def test_dlq_purge_and_replay_progress_with_a_known_total(store: Store, moto_endpoint: str,
                                                                tmp_path: Path) -> None:
    """``dlq replay`` and ``dlq purge`` know how many dead letters there are: their progress lines
    show ``DONE/TOTAL`` with a percentage; replay's ends at 3/3 (100%)."""
    bucket = new_bucket_name("dlqp")
    await store.create_bucket(bucket, versioning=True)
    for key in ("in/a", "in/b", "in/c"):
        await store.put_object(bucket, key, b"x")
    url = f"s3://{bucket}/in/"
    config = tmp_path / "c.toml"
    config.write_text("[consumer]\npoll_interval = 0.05\nsettle_window = 1\n", encoding="utf-8")
    async with background(tmp_path, "consume", "consume", url, "--handler",
                          "tests.handler_plugins:always_fails",
                          "--handler-attempts", "1", "--config", str(config), "--endpoint-url",
                          moto_endpoint) as proc:

        async def three() -> bool:
            found = await cli(moto_endpoint, "dlq", "list", url, "--json")
            return found.returncode == 0 and len(json.loads(found.stdout)) == 3

        await wait_until(three, TIMEOUT, "three dead letters")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            await proc.wait()
    env = {"S3STREAM_PROGRESS_INTERVAL": "0"}
    replay = await cli_env(moto_endpoint, env, "dlq", "replay", url, "--handler",
                           "tests.handler_plugins:always_fails")
    assert replay.returncode == 0, replay.stderr
    lines = re.findall(r"^progress: replaying dead letters of .*: (\d+)/3 dead letters \((\d+)%\)",
                       replay.stderr, re.M)
    assert lines[-1] == ("3", "100"), replay.stderr
    assert "replayed 0, still failing 3" in replay.stderr
    purge = await cli_env(moto_endpoint, env, "dlq", "purge", url, "--yes")
    assert purge.returncode == 0, purge.stderr
    done = r"^progress: purging dead letters of .*: (\d+)/\1 versions \(100%\)"
    assert re.search(done, purge.stderr, re.M), purge.stderr
    assert jsonout(await ok(moto_endpoint, "dlq", "list", url, "--json")) == []


async def test_bridge_once_progress_lines(store: Store, moto_endpoint: str) -> None:
    """``bridge sqs --once`` without a terminal writes ``progress:`` lines of the messages sent so far,
    the last one at the full count, then its summary."""
    bucket = new_bucket_name("brp")
    await store.create_bucket(bucket, versioning=True)
    await put_many(store, bucket, "b/", 25)
    async with open_sqs(S3Settings(endpoint_url=moto_endpoint)) as sqs:
        queue_url = await sqs.create_queue(new_bucket_name("q"))
    sent = await cli_env(moto_endpoint, {"S3STREAM_PROGRESS_INTERVAL": "0"}, "bridge", "sqs", f"s3://{bucket}/b/",
                         "--queue-url", queue_url, "--once")
    assert sent.returncode == 0, sent.stderr
    counts = re.findall(rf"^progress: sending s3://{bucket}/b/: (\d+) messages, \d+/s$", sent.stderr, re.M)
    assert counts, sent.stderr
    assert counts[-1] == "25", sent.stderr
    assert f"sent 25 message(s) to {queue_url}" in sent.stderr


# --- status line -----------------------------------------------------------------------------------


async def test_consume_status_line_only_on_a_terminal(store: Store, moto_endpoint: str,
                                                      tmp_path: Path) -> None:
    """On a terminal ``consume`` writes ``status:`` lines (rate, handled, backlog, lag, dead letters)
    every ``S3STREAM_STATUS_INTERVAL`` seconds and stops on SIGTERM with exit 0; with stderr not a
    terminal it writes none."""
    bucket = new_bucket_name("status")
    await store.create_bucket(bucket, versioning=True)
    for i in range(5):
        await store.put_object(bucket, f"in/{i}", b"x")
    url = f"s3://{bucket}/in/"
    env = env_with(moto_endpoint, S3STREAM_STATUS_INTERVAL="0.2", S3STREAM_LOG_LEVEL="warning")
    pattern = re.compile(r"status: [\d.]+ msg/s, 5 handled, backlog 0, lag [\d.]+s, dead letters 0")
    code, out = await asyncio.to_thread(run_in_pty, ["consume", url, "--poll-interval", "0.05"], env=env,
                                        until=lambda text: bool(pattern.search(text)))
    assert code == 0, out
    assert pattern.search(out)
    assert "Traceback" not in out
    out_path, err_path = tmp_path / "piped.out", tmp_path / "piped.err"
    with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            *cli_command("consume", url, "--group", "g2", "--poll-interval", "0.05"),
            env={**env, "S3STREAM_STATUS_INTERVAL": "0.05"}, stdin=asyncio.subprocess.DEVNULL,
            stdout=out_file, stderr=err_file)
    try:
        await wait_until(lambda: out_path.read_text().count("\n") >= 5, TIMEOUT, "the backlog")
        await store.put_object(bucket, "in/late", b"x")  # seen after the idle back-off: many intervals
        await wait_until(lambda: out_path.read_text().count("\n") >= 6, TIMEOUT, "the late message")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0, err_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "status:" not in err_path.read_text()


# --- buckets and missing resources ---------------------------------------------------------------


async def test_bucket_create_on_an_existing_bucket(moto_endpoint: str) -> None:
    """``bucket create`` of a bucket that is already yours says so in one line and exits 0 (with
    ``--versioning`` it turns versioning on); one another account owns (HeadBucket answered 403, or
    CreateBucket answered BucketAlreadyExists) is one error line and exit 2."""
    bucket = new_bucket_name("exists")
    await ok(moto_endpoint, "bucket", "create", bucket)
    again = await ok(moto_endpoint, "bucket", "create", bucket)
    assert again.text == f"bucket {bucket} already exists (owned by you)\n"
    versioned = await ok(moto_endpoint, "bucket", "create", bucket, "--versioning")
    assert versioned.text == f"bucket {bucket} already exists (owned by you); versioning enabled\n"
    shown = await ok(moto_endpoint, "bucket", "versioning", bucket)
    assert shown.text == f"bucket {bucket}: versioning Enabled\n"
    with S3Proxy(moto_endpoint, [Rule(S3Error(403, "AccessDenied"), method="HEAD")]) as proxy:
        foreign = await cli(proxy.endpoint, "bucket", "create", bucket)
    assert_one_line_error(foreign, bucket, "already exists and is not yours")
    taken = new_bucket_name("taken")
    with S3Proxy(moto_endpoint, [Rule(S3Error(409, "BucketAlreadyExists"), method="PUT")]) as proxy:
        result = await cli(proxy.endpoint, "bucket", "create", taken)
    assert_one_line_error(result, taken, "owned by another account")


async def test_bucket_versioning_show_enable_suspend(moto_endpoint: str) -> None:
    """``bucket versioning NAME`` shows Off, ``--enable`` turns it on, ``--suspend`` suspends it, each
    time printing the new status; a missing bucket is one line and exit 2."""
    bucket = new_bucket_name("ver")
    await ok(moto_endpoint, "bucket", "create", bucket)
    steps = [((), "Off"), (("--enable",), "Enabled"), (("--suspend",), "Suspended"), ((), "Suspended")]
    for flags, status in steps:
        shown = await ok(moto_endpoint, "bucket", "versioning", bucket, *flags)
        assert shown.text == f"bucket {bucket}: versioning {status}\n", (flags, shown.text)
    missing = new_bucket_name("nover")
    missing_result = await cli(moto_endpoint, "bucket", "versioning", missing)
    assert_one_line_error(missing_result, missing, "does not exist")


@pytest.mark.parametrize("command", [("topic", "describe"), ("group", "describe"), ("dlq", "list")])
async def test_missing_topic_is_one_line_and_exit_2(store: Store, moto_endpoint: str,
                                                    command: tuple[str, str]) -> None:
    """``topic describe``, ``group describe`` and ``dlq list`` (with or without ``--json``) of a topic that
    does not exist (no metadata, no objects) say so in one line, exit 2; nothing goes to stdout."""
    bucket = new_bucket_name("none")
    await store.create_bucket(bucket, versioning=True)
    await store.put_object(bucket, "other/x", b"x")
    for extra in ((), ("--json",)):
        result = await cli(moto_endpoint, *command, f"s3://{bucket}/nope", *extra)
        assert_one_line_error(result, f"topic s3://{bucket}/nope does not exist")
        assert result.stdout == b""


# --- the reporter itself (no server) -----------------------------------------------------------------


def test_progress_lines_follow_the_interval_and_show_eta_with_a_total() -> None:
    """Without a terminal the reporter writes a line per update at interval 0 (count, percentage, rate,
    ETA once there is a rate), none within a long interval, and nothing at the end: the command prints
    its own summary."""
    out = io.StringIO()
    with Progress("copying", unit="objects", file=out, interactive=False, interval=0) as progress:
        progress(0, 4)
        progress(2, None)  # the total, once known, is kept
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("progress: copying: 0/4 objects (0%), 0/s"), lines
    assert re.fullmatch(r"progress: copying: 2/4 objects \(50%\), \d+/s, ETA \d+s", lines[1]), lines
    assert len(lines) == 2
    quiet = io.StringIO()
    with Progress("copying", file=quiet, interactive=False, interval=3600) as progress:
        for done in range(100):
            progress(done, None)
    assert quiet.getvalue() == ""
