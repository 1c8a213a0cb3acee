"""The bucket, topic, publish, get, history, tail and chat commands, each run as a subprocess against the
real moto server over HTTP, with their outcomes checked in the bucket.

Failures must be one ``s3stream: error:`` line on stderr and exit code 2; the live commands must stop
cleanly (exit 0) on SIGINT/SIGTERM or ``/exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest

from benchmarks.emulator import run_emulator
from s3stream.config import build_settings
from s3stream.errors import BucketNotFound, EndpointUnreachable
from s3stream.groups.membership import lease_key, member_key
from s3stream.layouts.cursor import Checkpoint
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic, load_topic
from s3stream.message import Message
from s3stream.pipeline.checkpoint import S3CheckpointStore
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store
from s3stream.s3.translate import translate
from tests.conftest import cli_command, make_settings, new_bucket_name, running, wait_until
from tests.test_cli import assert_one_line_error, child_env, run_cli

TIMEOUT = 30.0
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"


class Result(NamedTuple):
    """A finished command: exit code, raw stdout, stderr text."""

    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8")


async def cli(endpoint: str, *args: str, stdin: bytes | None = None) -> Result:
    """Run ``s3stream ARGS --endpoint-url ENDPOINT`` to completion."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(*args, "--endpoint-url", endpoint), env=child_env(),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Result(proc.returncode or 0, out, err.decode("utf-8"))


async def ok(endpoint: str, *args: str, stdin: bytes | None = None) -> Result:
    """Run a command that must succeed without a traceback."""
    result = await cli(endpoint, *args, stdin=stdin)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@contextlib.asynccontextmanager
async def background(tmp: Path, name: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a long-lived command with stdout and stderr in ``tmp/NAME.out`` and ``.err``; killed if it
    is still running at the end."""
    with (tmp / f"{name}.out").open("wb") as out, (tmp / f"{name}.err").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*cli_command(*args), env=child_env(),
                                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def complete_lines(path: Path) -> list[str]:
    """The complete lines written so far (a partial last line is left out)."""
    return [line[:-1] for line in text_of(path).splitlines(keepends=True) if line.endswith("\n")]


async def wait_output(proc: asyncio.subprocess.Process, check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds, failing at once if the process exits first."""
    await wait_until(lambda: check() or proc.returncode is not None, TIMEOUT, what)
    assert proc.returncode is None, f"exited with {proc.returncode} while waiting for {what}"


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    async with asyncio.timeout(TIMEOUT):
        return await proc.wait()


async def versioned(store: Store, tag: str) -> str:
    name = new_bucket_name(tag)
    await store.create_bucket(name, versioning=True)
    return name


# --- buckets ---------------------------------------------------------------------------------------


async def test_bucket_create_versioning_and_decommission_past_one_page(store: Store,
                                                                       moto_endpoint: str) -> None:
    """``bucket create --versioning`` makes a versioned bucket; ``decommission`` refuses without --yes
    (exit 2, bucket intact) and with it deletes more than one page (1,000) of versions and delete
    markers, then the bucket: HeadBucket then says BucketNotFound."""
    name = new_bucket_name("decom")
    await ok(moto_endpoint, "bucket", "create", name, "--versioning")
    assert await store.versioning_status(name) == "Enabled"
    keys = [f"t/k{i:04d}" for i in range(520)]
    await asyncio.gather(*(store.put_object(name, key, b"x") for key in keys))
    for start in range(0, len(keys), 500):
        resp = await store.client.delete_objects(
            Bucket=name, Delete={"Objects": [{"Key": k} for k in keys[start:start + 500]]})
        assert not resp.get("Errors")
    refused = await cli(moto_endpoint, "bucket", "decommission", name)
    assert_one_line_error(refused, "--yes", name)
    await store.check_bucket(name)
    result = await ok(moto_endpoint, "bucket", "decommission", name, "--yes")
    assert result.text == f"deleted 1040 versions and delete markers and bucket {name}\n"
    with pytest.raises(BucketNotFound):
        await store.check_bucket(name)


async def test_directory_and_unversioned_buckets(store: Store, moto_endpoint: str) -> None:
    """A directory bucket (NAME--AZID--x-s3) is created as one (through CreateSession auth, checked by
    the emulator), refuses --versioning and versions topics with one line each, takes a log topic, and
    is decommissioned through ListObjectsV2, as is a plain unversioned bucket (on moto)."""
    directory = f"{new_bucket_name('dir')}--use1-az4--x-s3"
    with run_emulator("express", verify_signatures=True, latency_ms=0) as emu:
        endpoint = emu.url
        assert_one_line_error(await cli(endpoint, "bucket", "create", directory, "--versioning"),
                              "directory bucket", "no versioning")
        created = await ok(endpoint, "bucket", "create", directory)
        assert "directory bucket" in created.text
        assert "use1-az4" in created.text
        assert_one_line_error(await cli(endpoint, "topic", "create", f"s3://{directory}/events"),
                              "directory bucket", "--layout log")
        await ok(endpoint, "topic", "create", f"s3://{directory}/events", "--layout", "log")
        settings = build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}}).s3
        async with open_store(settings) as express:
            await asyncio.gather(*(express.put_object(directory, f"d/{i}", b"x") for i in range(5)))
            result = await ok(endpoint, "bucket", "decommission", directory, "--yes")
            assert result.text == f"deleted 6 objects and bucket {directory}\n"  # 5 + the topic's metadata
            with pytest.raises(BucketNotFound):
                await express.check_bucket(directory)
        signatures = emu.stats()["signatures"]
        assert signatures["s3express-session"] > 0
        assert signatures.get("rejected", 0) == 0
    plain = new_bucket_name("plain")
    assert "versioning off" in (await ok(moto_endpoint, "bucket", "create", plain)).text
    await asyncio.gather(*(store.put_object(plain, f"d/{i}", b"x") for i in range(5)))
    result = await ok(moto_endpoint, "bucket", "decommission", plain, "--yes")
    assert result.text == f"deleted 5 objects and bucket {plain}\n"
    with pytest.raises(BucketNotFound):
        await store.check_bucket(plain)


# --- topics ----------------------------------------------------------------------------------------


async def test_topic_create_twice_unversioned_and_list(store: Store, moto_endpoint: str) -> None:
    """Creating a topic twice is one line and exit 2; a versions topic in an unversioned bucket is
    refused with one line saying versioning is off (a log topic is fine there); ``topic list`` shows
    each topic with its layout and shards."""
    bucket = await versioned(store, "topics")
    plain = new_bucket_name("unv")
    await store.create_bucket(plain, versioning=False)
    created = await ok(moto_endpoint, "topic", "create", f"s3://{bucket}/orders", "--shards", "4")
    assert "orders/00/ … orders/03/" in created.text
    again = await cli(moto_endpoint, "topic", "create", f"s3://{bucket}/orders", "--shards", "4")
    assert_one_line_error(again, "'orders' already exists", bucket)
    refused = await cli(moto_endpoint, "topic", "create", f"s3://{plain}/orders")
    assert_one_line_error(refused, "versioning is not enabled", plain, "log-layout")
    await ok(moto_endpoint, "topic", "create", f"s3://{plain}/events", "--layout", "log")
    await ok(moto_endpoint, "topic", "create", f"s3://{bucket}/audit", "--layout", "log", "--shards", "2")
    listed = await ok(moto_endpoint, "topic", "list", f"s3://{bucket}")
    rows = [line.split("\t")[:3] for line in listed.text.splitlines()]
    assert rows == [["audit", "log", "2 shard(s)"], ["orders", "versions", "4 shard(s)"]]
    assert (await ok(moto_endpoint, "topic", "list", f"s3://{plain}")).text.startswith("events\tlog\t")
    assert_one_line_error(await cli(moto_endpoint, "topic", "list", f"s3://{new_bucket_name('none')}"),
                          "does not exist")


async def test_describe_shows_shards_and_group_lag_after_consume(
    store: Store, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After ``consume --group g`` handled everything, ``topic describe`` shows both shards with their
    objects and versions, and group g with checkpoints 2/2, 0 unconsumed and no lag; after two more
    writes stamped 10 s apart (moto's clock moved for the second), 2 unconsumed and a 10 s lag."""
    import moto.s3.models

    bucket = await versioned(store, "describe")
    topic = await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    async with Producer(store=store) as producer:
        await producer.publish_many(url, [(f"k{i}", f"v{i}") for i in range(8)] + [("k0", "again")])
    args = ("consume", url, "--group", "g", "--settle-window", "0", "--poll-interval", "0.1",
            "--endpoint-url", moto_endpoint)
    described = ""

    async def caught_up() -> bool:
        nonlocal described
        described = (await ok(moto_endpoint, "topic", "describe", url)).text
        return "unconsumed 0," in described

    async with background(tmp_path, "consume", *args) as proc:
        await wait_output(proc, lambda: len(complete_lines(tmp_path / "consume.out")) >= 9, "9 messages")
        # Stop once the committed checkpoints cover everything, so `describe` sees a settled group.
        await wait_until(caught_up, TIMEOUT, "a checkpoint covering the 9 messages")
        assert await stop(proc) == 0, text_of(tmp_path / "consume.err")
    described = (await ok(moto_endpoint, "topic", "describe", url)).text
    assert "layout: versions\nshards: 2\n" in described
    counts = {p: sum(1 for i in range(8) if topic.shard_prefix(topic.shard_of(f"k{i}")) == p)
              for p in topic.prefixes}
    for index, prefix in enumerate(topic.prefixes):
        extra = 1 if prefix == topic.shard_prefix(topic.shard_of("k0")) else 0
        assert re.search(rf"^shard 0{index} {prefix}: {counts[prefix]} objects, "
                         rf"{counts[prefix] + extra} versions, newest {ISO}$", described, re.M), described
    done = rf"^group g: checkpoints 2/2, watermark {ISO}, unconsumed 0, lag 0\.0s$"
    assert re.search(done, described, re.M), described

    real = moto.s3.models.utcnow
    await store.put_object(bucket, topic.shard_prefix(0) + "later-a", b"a")
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: real() + timedelta(seconds=10))
    await store.put_object(bucket, topic.shard_prefix(0) + "later-b", b"b")
    monkeypatch.setattr(moto.s3.models, "utcnow", real)
    described = (await ok(moto_endpoint, "topic", "describe", url)).text
    match = re.search(r"^group g: checkpoints 2/2, .*, unconsumed 2, lag (\d+\.\d)s$", described, re.M)
    assert match is not None, described
    assert 9.0 <= float(match[1]) <= 11.0


async def test_topic_delete_metadata_then_data(store: Store, moto_endpoint: str) -> None:
    """``topic delete`` removes the metadata only; ``--data`` without ``--yes`` is refused (exit 2);
    ``--data --yes`` also removes every version under the shards and the groups' checkpoints and
    leases, and leaves other topics and the group's member records alone."""
    bucket = await versioned(store, "tdel")
    topic = await create_topic(store, bucket, "gone", shards=2)
    await create_topic(store, bucket, "kept")
    for prefix in topic.prefixes:
        await store.put_object(bucket, prefix + "k", b"1")
        await store.put_object(bucket, prefix + "k", b"2")
    await store.put_object(bucket, "kept/00/k", b"stays")
    await ok(moto_endpoint, "topic", "delete", f"s3://{bucket}/kept")
    assert await load_topic(store, bucket, "kept") is None
    assert len((await store.list_versions(bucket, "kept/")).entries) == 1
    refused = await cli(moto_endpoint, "topic", "delete", f"s3://{bucket}/gone", "--data")
    assert_one_line_error(refused, "--yes")
    ckpt = S3CheckpointStore(store, bucket=bucket, prefix=topic.prefixes[0],
                             control_prefix="_s3stream/checkpoints", group="g")
    await ckpt.save(Checkpoint(watermark_ms=1))
    lease = lease_key("g", topic.prefixes[1])
    await store.put_object(bucket, lease, b'{"owner": null}')
    member = member_key("g", "m1")
    await store.put_object(bucket, member, b"{}")
    result = await ok(moto_endpoint, "topic", "delete", f"s3://{bucket}/gone", "--data", "--yes")
    assert result.text == f"deleted topic s3://{bucket}/gone and 4 objects or versions\n"
    assert await load_topic(store, bucket, "gone") is None
    assert (await store.list_versions(bucket, "gone/")).entries == []
    assert [e.key for e in (await store.list_versions(bucket, ckpt.key)).entries] == []
    assert [e.key for e in (await store.list_versions(bucket, lease)).entries] == []
    assert [e.key for e in (await store.list_versions(bucket, member)).entries] == [member]
    assert [e.key for e in (await store.list_versions(bucket, "kept/")).entries] == ["kept/00/k"]


# --- publish, get, history -------------------------------------------------------------------------


async def test_publish_one_message_prints_key_and_version(store: Store, moto_endpoint: str) -> None:
    """``publish --key K --body B`` stores B at the key's shard path and prints ``KEY VERSION_ID``;
    without --body the body is stdin, byte for byte."""
    bucket = await versioned(store, "pub")
    await create_topic(store, bucket, "t")
    url = f"s3://{bucket}/t"
    printed = await ok(moto_endpoint, "publish", url, "--key", "id-1.json", "--body", "hello")
    key, version = printed.text.split()
    assert key == "t/00/id-1.json"
    assert (await store.get_object(bucket, key, version)).body == b"hello"
    raw = b"line one\n\xff\xfe binary\n"
    key2, version2 = (await ok(moto_endpoint, "publish", url, "--key", "id-1.json", stdin=raw)).text.split()
    assert key2 == key
    assert version2 != version
    assert (await store.get_object(bucket, key, version2)).body == raw


async def test_publish_lines_publishes_each_line(store: Store, moto_endpoint: str) -> None:
    """``publish --lines`` stores one message per non-empty input line (listing finds exactly those
    bodies, spread over the topic's shards) and prints a count/seconds/rate summary on stderr; with
    one ``--key`` in the versions layout the key's versions keep the input order."""
    bucket = await versioned(store, "lines")
    topic = await create_topic(store, bucket, "t", shards=4)
    lines = [f"message {i}" for i in range(40)]
    stdin = ("\n".join(lines[:20]) + "\n\n   \n" + "\n".join(lines[20:]) + "\n").encode()
    result = await ok(moto_endpoint, "publish", f"s3://{bucket}/t", "--lines", stdin=stdin)
    assert re.fullmatch(r"published 40 messages in \d+\.\d\ds \(\d+ msg/s\)\n", result.stderr), result.stderr
    page = await store.list_objects(bucket, "t/")
    assert len(page.entries) == 40
    assert len({e.key[: len(topic.prefixes[0])] for e in page.entries}) > 1
    bodies = await asyncio.gather(*(store.get_object(bucket, e.key) for e in page.entries))
    assert sorted(b.body.decode() for b in bodies) == sorted(lines)

    await ok(moto_endpoint, "publish", f"s3://{bucket}/t", "--lines", "--key", "same",
             stdin=b"".join(f"{i}\n".encode() for i in range(8)))
    history = await ok(moto_endpoint, "history", f"s3://{bucket}/t", "--key", "same")
    assert [line.split("  ")[2] for line in history.text.splitlines()] == [str(i) for i in range(8)]


async def test_get_and_history_of_one_key(store: Store, moto_endpoint: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``history`` prints every version and delete marker of exactly that key (not of keys it prefixes),
    oldest first, as ``TIME  VERSION_ID  BODY`` with each body on one line, or JSON lines with --json;
    ``get`` prints the latest or the given version raw; a missing key is one line, exit 2. (The writes
    are stamped a second apart: moto lists delete markers apart from versions, so within one second
    their order cannot be told; S3 lists them interleaved.)"""
    import moto.s3.models

    bucket = await versioned(store, "hist")
    key = "topic/id-1.json"
    real = moto.s3.models.utcnow
    stamps = iter(range(-4, 0))
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: real() + timedelta(seconds=next(stamps)))
    _, v1 = await store.put_object(bucket, key, b'{"id": "1", "value": "001"}\n')
    _, v2 = await store.put_object(bucket, key, b'{"id": "1", "value": "002"}\n')
    marker = await store.delete_object(bucket, key)
    _, v3 = await store.put_object(bucket, key, b"two\nlines\n")
    monkeypatch.setattr(moto.s3.models, "utcnow", real)
    await store.put_object(bucket, key + ".bak", b"not this key")
    url = f"s3://{bucket}/{key}"
    lines = (await ok(moto_endpoint, "history", url)).text.splitlines()
    assert [line.split("  ")[1:] for line in lines] == [
        [v1, '{"id": "1", "value": "001"}'], [v2, '{"id": "1", "value": "002"}'],
        [marker, "(delete marker)"], [v3, "two\\nlines"],
    ]
    assert all(re.match(ISO + "  ", line) for line in lines)
    as_json = await ok(moto_endpoint, "history", url, "--json")
    records = [json.loads(line) for line in as_json.text.splitlines()]
    assert [(r["version_id"], r["deleted"], r.get("body")) for r in records] == [
        (v1, False, '{"id": "1", "value": "001"}\n'), (v2, False, '{"id": "1", "value": "002"}\n'),
        (marker, True, None), (v3, False, "two\nlines\n"),
    ]
    assert (await ok(moto_endpoint, "get", url)).stdout == b"two\nlines\n"
    older = await ok(moto_endpoint, "get", url, "--version-id", v2)
    assert older.stdout == b'{"id": "1", "value": "002"}\n'
    assert_one_line_error(await cli(moto_endpoint, "get", f"s3://{bucket}/topic/nope"), "does not exist")
    assert_one_line_error(await cli(moto_endpoint, "history", f"s3://{bucket}/topic/nope"), "no versions")


# --- tail and chat ---------------------------------------------------------------------------------


async def test_tail_prints_only_messages_published_after_it_started(
    store: Store, moto_endpoint: str, tmp_path: Path,
) -> None:
    """``tail`` (from latest) prints the bodies of messages published after it said it was tailing, not
    older ones, and stops with exit 0 on SIGINT; ``--from earliest`` prints the older ones too; it
    writes no checkpoint to the bucket."""
    bucket = await versioned(store, "tail")
    await store.put_object(bucket, "topic/old", b"old message\n")
    url = f"s3://{bucket}/topic/"
    common = ("--poll-interval", "0.1", "--endpoint-url", moto_endpoint)
    async with background(tmp_path, "latest", "tail", url, *common) as latest, \
            background(tmp_path, "earliest", "tail", url, "--from", "earliest", *common) as earliest:
        for name, proc in (("latest", latest), ("earliest", earliest)):
            err = tmp_path / f"{name}.err"
            await wait_output(proc, lambda e=err: "tailing" in text_of(e), f"{name} ready")
        await store.put_object(bucket, "topic/a", b"new one")
        await store.put_object(bucket, "topic/b", b"new two\n")
        await wait_output(latest, lambda: len(complete_lines(tmp_path / "latest.out")) >= 2, "2 new lines")
        await wait_output(earliest, lambda: len(complete_lines(tmp_path / "earliest.out")) >= 3, "3 lines")
        assert await stop(latest, signal.SIGINT) == 0
        assert await stop(earliest, signal.SIGTERM) == 0
    assert sorted(complete_lines(tmp_path / "latest.out")) == ["new one", "new two"]
    assert sorted(complete_lines(tmp_path / "earliest.out")) == ["new one", "new two", "old message"]
    assert (await store.list_objects(bucket, "_s3stream/")).entries == []


async def test_tail_json_follows_a_log_topic(store: Store, moto_endpoint: str, tmp_path: Path) -> None:
    """``tail --json`` on a log-layout topic prints each new message as s3stream's JSON line, with its
    partition key, in publish order; SIGTERM stops it with exit 0."""
    bucket = await versioned(store, "tlog")
    await create_topic(store, bucket, "events", layout="log")
    url = f"s3://{bucket}/events"
    args = ("tail", url, "--json", "--poll-interval", "0.1", "--endpoint-url", moto_endpoint)
    async with background(tmp_path, "tail", *args) as proc:
        await wait_output(proc, lambda: "tailing" in text_of(tmp_path / "tail.err"), "tail ready")
        async with Producer(store=store) as producer:
            for i in range(3):
                await producer.publish(url, f"event {i}", key="user-7")
        await wait_output(proc, lambda: len(complete_lines(tmp_path / "tail.out")) >= 3, "3 JSON lines")
        assert await stop(proc) == 0
    records = [json.loads(line) for line in complete_lines(tmp_path / "tail.out")]
    assert [(r["body"], r["partition_key"]) for r in records] == [(f"event {i}", "user-7") for i in range(3)]
    assert all(r["key"].startswith("events/00/") for r in records)


async def test_a_cancellation_that_surfaces_as_a_connection_error_stays_a_cancellation() -> None:
    """A request cancelled while connecting can come back as a connection error (uvloop's sock_connect
    cancelled, then aiohappyeyeballs' close fails with EBADF); the store must raise CancelledError, not
    a retriable EndpointUnreachable, or a stopped poller keeps polling and ``chat``/``tail`` never exit."""

    async def request_hit_by_a_cancellation() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the library loses the cancellation...
            await asyncio.sleep(TIMEOUT)
        with translate("ListObjectsV2"):  # ...and reports a connection error instead
            raise aiohttp.ClientConnectionError("Cannot connect to host: [Bad file descriptor]")

    task = asyncio.create_task(request_hit_by_a_cancellation())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def plain_failure() -> None:
        with translate("ListObjectsV2"):
            raise aiohttp.ClientConnectionError("Connection refused")

    with pytest.raises(EndpointUnreachable):
        await plain_failure()


async def _chat_line(stream: asyncio.StreamReader, pattern: str) -> str:
    """The next line of a chat's output matching ``pattern`` (within the deadline)."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = (await stream.readline()).decode()
                assert line, f"output ended before a line matching {pattern!r}; got {seen}"
                if re.search(pattern, line):
                    return line.rstrip("\n")
                seen.append(line)
    except TimeoutError:
        pytest.fail(f"no line matching {pattern!r} within {TIMEOUT}s; got {seen}")


async def test_two_chats_in_one_room_see_each_other(store: Store, moto_endpoint: str) -> None:
    """Two ``chat`` processes driven through pipes join one room (created on first use: the bucket and a
    one-shard log topic); each sees the other's line as ``[timestamp] user: text``; ``/exit`` and the
    end of stdin each end a chat with exit 0."""
    bucket = new_bucket_name("chat")
    url = f"s3://{bucket}/room"
    procs = {
        user: await asyncio.create_subprocess_exec(
            *cli_command("chat", url, "--user", user, "--endpoint-url", moto_endpoint), env=child_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for user in ("alice", "bob")
    }
    alice, bob = procs["alice"], procs["bob"]
    try:
        for user, proc in procs.items():
            assert proc.stderr is not None
            await _chat_line(proc.stderr, f"joined {re.escape(url)} as {user}")
        assert alice.stdin is not None
        assert bob.stdin is not None
        assert alice.stdout is not None
        assert bob.stdout is not None
        alice.stdin.write(b"hello from alice\n")
        await alice.stdin.drain()
        seen = await _chat_line(bob.stdout, "alice:")
        assert re.fullmatch(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\] alice: hello from alice", seen)
        bob.stdin.write(b"hi alice\n")
        await bob.stdin.drain()
        assert (await _chat_line(alice.stdout, "bob:")).endswith("] bob: hi alice")
        alice.stdin.write(b"/exit\n")
        await alice.stdin.drain()
        bob.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            codes = [await alice.wait(), await bob.wait()]
        assert codes == [0, 0]
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    topic = await load_topic(store, bucket, "room")
    assert topic is not None
    assert (topic.layout, topic.shards) == ("log", 1)


# --- dead letters ------------------------------------------------------------------------------------


async def test_dlq_replay_of_a_deletion_replays_a_deletion(store: Store, moto_endpoint: str,
                                                           tmp_path: Path) -> None:
    """A delete marker the handler failed on is dead-lettered; ``dlq replay`` hands it to the handler
    again as a deletion (``deleted: true``, no body), never as an empty object, and removes the dead
    letter."""
    bucket = await versioned(store, "dlqdel")
    await store.put_object(bucket, "d/doc", b"content")
    marker = await store.delete_object(bucket, "d/doc")

    async def refuse_deletions(message: Message) -> None:
        if message.deleted:
            raise RuntimeError("deletions not wanted yet")

    settings = make_settings(moto_endpoint, f"s3://{bucket}/d/", group="g", handler_attempts=1)
    consumer = Consumer(settings)
    consumer.register_handler("rec", refuse_deletions)
    letters = "_s3stream/dead-letters/g/"
    async with running(consumer):
        await wait_until(lambda: has_objects(store, bucket, letters), what="the deletion dead-lettered")
    out = tmp_path / "replayed.jsonl"
    cfg = tmp_path / "replay.toml"
    cfg.write_text(f'[handlers.out]\nuse = "jsonl"\npath = "{out}"\n')
    replayed = await ok(moto_endpoint, "dlq", "replay", f"s3://{bucket}/d/", "--group", "g",
                        "--handler", "out", "--config", str(cfg))
    assert "replayed 1, still failing 0" in replayed.stderr
    [line] = [json.loads(raw) for raw in out.read_bytes().splitlines()]
    assert (line["key"], line["version_id"], line["deleted"]) == ("d/doc", marker, True)
    assert "body" not in line
    assert not await has_objects(store, bucket, letters)


async def has_objects(store: Store, bucket: str, prefix: str) -> bool:
    return bool((await store.list_objects(bucket, prefix)).entries)


# --- config show --------------------------------------------------------------------------------------


def test_config_show_masks_handler_secrets_and_credentials_in_urls(tmp_path: Path) -> None:
    """``config show`` masks every handler option named like a password, secret, token or key (nested
    tables included) and the user:password part of any URL (the S3 endpoint, a queue, a handler's
    DSN), keeping everything else readable: hosts, paths, other options."""
    secrets = ["s3-pass-4417", "hunter2-db", "tok-9a8b", "k3y-material", "nested-cs-55", "dsn-pw-31",
               "q-pass-66", "plain-token-user"]
    cfg = tmp_path / "secrets.toml"
    cfg.write_text(f"""
[s3]
endpoint_url = "http://minio:{secrets[0]}@storage.internal:9000"
[handlers.db]
use = "stdout"
password = "{secrets[1]}"
session_token = "{secrets[2]}"
api_key = "{secrets[3]}"
dsn = "postgres://writer:{secrets[5]}@db.internal:5432/events"
webhook = "https://{secrets[7]}@hooks.example.com/in"
table = "events"
[handlers.db.login]
client_secret = "{secrets[4]}"
[[sources]]
url = "s3://b/p/"
handler = "db"
notifications = {{ queue_url = "https://user:{secrets[6]}@sqs.example.com/1/q" }}
""")
    result = run_cli("config", "show", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for secret in secrets:
        assert secret not in result.stdout + result.stderr, secret
    doc = json.loads(result.stdout)
    db = doc["handlers"]["db"]
    assert (db["use"], db["table"]) == ("stdout", "events")
    assert db["password"] == db["session_token"] == db["api_key"] == db["login"]["client_secret"]
    assert db["password"].strip("*") == ""
    assert db["dsn"].startswith("postgres://writer:")
    assert db["dsn"].endswith("@db.internal:5432/events")
    assert db["webhook"].endswith("@hooks.example.com/in")
    assert doc["s3"]["endpoint_url"].endswith("@storage.internal:9000")
    assert doc["sources"][0]["notifications"]["queue_url"].endswith("@sqs.example.com/1/q")
    assert doc["sources"][0]["url"] == "s3://b/p/"
