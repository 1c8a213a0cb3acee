"""``s3stream group seek`` and ``group export`` against real servers: a group consumes a topic, the CLI
moves its position, and the group's next run delivers exactly what the move promised.

Times come from the server: the gap between two batches is waited for on the server's clock (the
``Date`` of its answers), never the host's. Consumers run in this process with a recording handler;
a run ends once every shard's cursor has completed a listing pass that began after the newest message,
so "nothing more" is a fact of the cursor, not a timeout.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from s3stream.config import build_settings
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic, parse_log_key
from s3stream.message import Message, iso
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, make_settings, new_bucket_name, running, wait_until
from tests.test_cli import assert_one_line_error
from tests.test_commands import cli, ok

Ident = tuple[str, str]


def producer_settings(endpoint: str) -> Any:
    return build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}})


async def publish(producer: Producer, url: str, tag: str, count: int) -> set[Ident]:
    """Publish ``count`` messages keyed ``TAG-i``; their (object key, version id) identities."""
    sent = await producer.publish_many(url, [(f"{tag}-{i}", f"{tag}#{i}".encode()) for i in range(count)])
    return {(p.key, p.version_id or "null") for p in sent}


async def server_ms(store: Store, bucket: str) -> int:
    return (await store.list_objects(bucket, "t/", max_keys=1)).server_time_ms


async def newest_ms(store: Store, bucket: str, log: bool, prefix: str = "t/") -> int:
    """The newest message time under ``prefix``: LastModified, or the time in a log object's name."""
    if log:
        page = await store.list_objects(bucket, prefix)
        return max(name.ms for e in page.entries if (name := parse_log_key(e.key)) is not None)
    return max(e.last_modified_ms for e in (await store.list_versions(bucket, prefix)).entries)


async def after_server_time(store: Store, bucket: str, moment_ms: int) -> None:
    """Wait until the server's clock is past ``moment_ms``."""
    async def past() -> bool:
        return await server_ms(store, bucket) > moment_ms
    await wait_until(past, within=15, what="server clock past the first batch")


def ident(message: Message) -> Ident:
    return (message.key, message.version_id)


async def consume(endpoint: str, url: str, *, expect: int, cover_ms: int, **consumer: Any) -> list[Ident]:
    """Run group g until it has handled ``expect`` messages and every shard's cursor completed a pass
    begun after ``cover_ms``; stop it cleanly (which commits) and return what it handled."""
    run = Consumer(make_settings(endpoint, url, group="g", settle_window=1.0, **consumer))
    recorder = Recorder()
    run.register_handler("rec", recorder)
    async with running(run):
        await recorder.wait_count(expect)
        await wait_until(lambda: all(s.cursor.horizon_ms > cover_ms for s in run.shards),
                         what="a complete pass after the newest message")
    return [ident(m) for m in recorder.messages]


async def checkpoint_bodies(store: Store, bucket: str) -> dict[str, bytes]:
    listed, _ = await store.list_all_objects(bucket, "_s3stream/checkpoints/g/")
    return {e.key: (await store.get_object(bucket, e.key)).body for e in listed}


async def two_batches(endpoint: str, store: Store, bucket: str, *,
                      log: bool) -> tuple[set[Ident], set[Ident], int]:
    """A 2-shard topic with two batches of 6 messages, the second written at least a second (server
    time) after the first; the batches and the seek time between them."""
    await create_topic(store, bucket, "t", shards=2, layout="log" if log else "versions")
    url = f"s3://{bucket}/t"
    async with Producer(producer_settings(endpoint)) as producer:
        first = await publish(producer, url, "a", 6)
        first_newest = await newest_ms(store, bucket, log)
        at_ms = first_newest + 1 if log else first_newest + 1000
        await after_server_time(store, bucket, first_newest + 2000)
        second = await publish(producer, url, "b", 6)
    return first, second, at_ms


@pytest.mark.parametrize("layout", ["versions", "log"])
async def test_seek_to_a_time_between_two_batches_redelivers_exactly_the_second(
        s3_endpoint: str, store: Store, bucket: str, layout: str) -> None:
    """After group g handled both batches, ``--dry-run`` reports 6 replays and writes nothing; the seek
    to the time between the batches then makes g's next run deliver exactly the second batch, whose
    times (LastModified, or the time in log names) are all at or after the seek's."""
    log = layout == "log"
    first, second, at_ms = await two_batches(s3_endpoint, store, bucket, log=log)
    url = f"s3://{bucket}/t"
    cover = await newest_ms(store, bucket, log) + 1000
    def of(idents: Iterable[Ident]) -> list[Ident]:  # log messages are delivered as version "null"
        return sorted((k, "null" if log else v) for k, v in idents)

    assert of(await consume(s3_endpoint, url, expect=12, cover_ms=cover)) == of(first | second)

    before = await checkpoint_bodies(store, bucket)
    dry = await ok(s3_endpoint, "group", "seek", url, "--group", "g", "--to", iso(at_ms), "--dry-run",
                   "--json")
    plan = json.loads(dry.stdout)
    assert (plan["replay"], plan["skip"], plan["deliver"], plan["dry_run"]) == (6, 0, 6, True), plan
    assert not any(s["written"] for s in plan["shards"])
    assert await checkpoint_bodies(store, bucket) == before

    done = await ok(s3_endpoint, "group", "seek", url, "--group", "g", "--to", iso(at_ms))
    assert done.text.splitlines()[-1] == "total: replay 6, skip 0, deliver 6", done.text
    assert of(await consume(s3_endpoint, url, expect=6, cover_ms=cover)) == of(second)


async def test_earliest_replays_everything_and_latest_nothing_while_new_messages_arrive(
        moto_endpoint: str, store: Store, bucket: str) -> None:
    """``--to earliest`` makes g deliver every stored message again; ``--to latest`` then replays
    nothing stored, and messages published after it are delivered (exactly those)."""
    await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    async with Producer(producer_settings(moto_endpoint)) as producer:
        stored = await publish(producer, url, "a", 5)
        cover = await newest_ms(store, bucket, False) + 1000
        assert set(await consume(moto_endpoint, url, expect=5, cover_ms=cover)) == stored

        earliest = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest")
        assert earliest.text.splitlines()[-1] == "total: replay 5, skip 0, deliver 5", earliest.text
        assert sorted(await consume(moto_endpoint, url, expect=5, cover_ms=cover)) == sorted(stored)

        latest = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "latest", "--json")
        assert json.loads(latest.stdout)["deliver"] == 0
        run = Consumer(make_settings(moto_endpoint, url, group="g", settle_window=1.0))
        recorder = Recorder()
        run.register_handler("rec", recorder)
        async with running(run):
            fresh = await publish(producer, url, "n", 3)
            await recorder.wait_count(3)
            newest = await newest_ms(store, bucket, False)
            await wait_until(lambda: all(s.cursor.horizon_ms > newest + 1000 for s in run.shards),
                             what="a complete pass after the new messages")
    assert sorted(ident(m) for m in recorder.messages) == sorted(fresh)


async def test_position_file_round_trip(moto_endpoint: str, store: Store, bucket: str,
                                        tmp_path: Path) -> None:
    """``group export`` saves g's positions; after g handled more, ``seek --to FILE --save BEFORE``
    brings it back (the later messages are delivered again) and saves where it was; seeking to BEFORE
    moves it forward again with nothing to replay."""
    await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    async with Producer(producer_settings(moto_endpoint)) as producer:
        first = await publish(producer, url, "a", 4)
        cover = await newest_ms(store, bucket, False) + 1000
        assert set(await consume(moto_endpoint, url, expect=4, cover_ms=cover)) == first
        saved = tmp_path / "positions.json"
        await ok(moto_endpoint, "group", "export", url, "--group", "g", "-o", str(saved))
        doc = json.loads(saved.read_text())
        assert (doc["kind"], doc["layout"], doc["shards"], len(doc["positions"])) == (
            "s3stream-group-positions", "versions", 2, 2)
        await after_server_time(store, bucket, cover + 1000)
        later = await publish(producer, url, "b", 3)
    cover = await newest_ms(store, bucket, False) + 1000
    assert set(await consume(moto_endpoint, url, expect=3, cover_ms=cover)) == later

    before = tmp_path / "before.json"
    back = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", str(saved),
                    "--save", str(before))
    assert back.text.splitlines()[-1] == "total: replay 3, skip 0, deliver 3", back.text
    assert sorted(await consume(moto_endpoint, url, expect=3, cover_ms=cover)) == sorted(later)
    forward = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", str(before), "--dry-run")
    assert forward.text.splitlines()[-1] == "total: replay 0, skip 0, deliver 0", forward.text


def member_settings(endpoint: str, url: str) -> Any:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"group": "g", "poll_interval": 0.1, "max_poll_interval": 0.5, "settle_window": 1.0,
                     "shutdown_grace": 5.0, "checkpoint": {"interval": 0.2},
                     "leases": {"enabled": True, "duration": 3.0, "renew_interval": 1.0, "member_id": "m1"}},
        "sources": [{"url": url, "handler": "rec"}],
    })


async def test_refused_while_a_member_holds_shards_and_forced_seek_is_not_overwritten(
        moto_endpoint: str, store: Store, bucket: str) -> None:
    """While member m1 holds the shards, the seek exits 2 with one line naming m1 (a dry run shows the
    holder of each shard and that the seek would be refused). With ``--force`` it
    is written and a warning says what happens to m1: m1's next commit of each shard meets the seek's
    fence, m1 gives the shard up, and once it takes the shard again it resumes from the seek: every
    message is delivered again, so the running member did not overwrite the seek."""
    topic = await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    member = Consumer(member_settings(moto_endpoint, url))
    recorder = Recorder()
    member.register_handler("rec", recorder)
    async with running(member), Producer(producer_settings(moto_endpoint)) as producer:
        stored = await publish(producer, url, "a", 6)
        await recorder.wait_count(6)
        await wait_until(lambda: len(member.shards) == 2, what="m1 holding both shards")
        refused = await cli(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest")
        assert_one_line_error(refused, "m1", "--force")
        preview = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest",
                           "--dry-run")
        assert preview.text.count("held by m1") == 2, preview.text
        assert "refused" in preview.stderr, preview.stderr

        forced = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest", "--force")
        assert "warning" in forced.stderr, forced.stderr
        assert "m1" in forced.stderr, forced.stderr
        assert forced.text.splitlines()[-1] == "total: replay 6, skip 0, deliver 6", forced.text
        # one new message per shard: m1 handles it, commits, and meets the seek's fence
        keys = [next(f"n-{i}" for i in range(100) if topic.shard_of(f"n-{i}") == s) for s in range(2)]
        sent = await producer.publish_many(url, [(k, b"n") for k in keys])
        nudges = {(p.key, p.version_id or "null") for p in sent}

        def replayed() -> bool:
            counts = Counter(ident(m) for m in recorder.messages)
            return all(counts[i] >= 2 for i in stored)

        await wait_until(replayed, within=45, what="every message delivered again after the forced seek")
        assert nudges <= {ident(m) for m in recorder.messages}


async def test_file_checkpoints_with_checkpoint_dir(moto_endpoint: str, store: Store, bucket: str,
                                                    tmp_path: Path) -> None:
    """A group that keeps its checkpoints in a local folder (``consume --checkpoint-dir``) is moved
    with ``--checkpoint-dir``: after ``--to earliest`` its next run delivers everything again."""
    await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    files = {"store": "file", "directory": str(tmp_path / "ckpt")}
    async with Producer(producer_settings(moto_endpoint)) as producer:
        stored = await publish(producer, url, "a", 4)
    cover = await newest_ms(store, bucket, False) + 1000
    assert set(await consume(moto_endpoint, url, expect=4, cover_ms=cover, checkpoint=files)) == stored
    moved = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest",
                     "--checkpoint-dir", files["directory"])
    assert moved.text.splitlines()[-1] == "total: replay 4, skip 0, deliver 4", moved.text
    again = await consume(moto_endpoint, url, expect=4, cover_ms=cover, checkpoint=files)
    assert sorted(again) == sorted(stored)
    assert not await checkpoint_bodies(store, bucket)


async def test_plain_prefix_without_topic_metadata(moto_endpoint: str, store: Store, bucket: str) -> None:
    """A plain prefix (no topic metadata) consumed as ``s3://B/plain`` is one shard: the seek finds the
    checkpoint the consumer wrote under that name, rewrites only it, and the group replays the prefix."""
    written = set()
    for i in range(3):
        _, version_id = await store.put_object(bucket, f"plain/k{i}", b"x")
        written.add((f"plain/k{i}", str(version_id)))
    url = f"s3://{bucket}/plain"
    cover = await newest_ms(store, bucket, False, "plain/") + 1000
    assert set(await consume(moto_endpoint, url, expect=3, cover_ms=cover)) == written
    before = await checkpoint_bodies(store, bucket)
    moved = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest")
    assert moved.text.splitlines()[-1] == "total: replay 3, skip 0, deliver 3", moved.text
    after = await checkpoint_bodies(store, bucket)
    assert len(after) == 1
    assert after.keys() == before.keys()
    assert sorted(await consume(moto_endpoint, url, expect=3, cover_ms=cover)) == sorted(written)


async def test_latest_in_a_bucket_without_versioning(moto_endpoint: str, store: Store) -> None:
    """In a bucket without versioning (current objects, an overwrite is a new message) ``--to latest``
    counts every stored object as handled, as the consumer names them: the next run delivers only an
    object written after the seek."""
    bucket = new_bucket_name("plainobj")
    await store.create_bucket(bucket, versioning=False)
    for i in range(3):
        await store.put_object(bucket, f"plain/k{i}", b"x")
    url = f"s3://{bucket}/plain"
    cover = await newest_ms(store, bucket, False, "plain/") + 1000
    assert len(await consume(moto_endpoint, url, expect=3, cover_ms=cover)) == 3
    await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "earliest")
    latest = await ok(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "latest")
    assert latest.text.splitlines()[-1] == "total: replay 0, skip 3, deliver 0", latest.text
    await store.put_object(bucket, "plain/k1", b"again")
    cover = await newest_ms(store, bucket, False, "plain/") + 1000
    assert [key for key, _ in await consume(moto_endpoint, url, expect=1, cover_ms=cover)] == ["plain/k1"]


async def test_unknown_topic_group_and_bad_times_are_one_line_errors(
        moto_endpoint: str, store: Store, bucket: str) -> None:
    """An empty prefix without topic metadata, a group with nothing in the bucket, a missing bucket, and
    a time without a timezone each end with one line and exit 2, naming what is wrong."""
    await create_topic(store, bucket, "t", shards=2)
    url = f"s3://{bucket}/t"
    nothing = await cli(moto_endpoint, "group", "seek", f"s3://{bucket}/nope", "--group", "g",
                        "--to", "latest")
    assert_one_line_error(nothing, "nope", "does not exist")
    stranger = await cli(moto_endpoint, "group", "seek", url, "--group", "stranger", "--to", "latest")
    assert_one_line_error(stranger, "stranger", "does not exist")
    missing = await cli(moto_endpoint, "group", "seek", f"s3://{new_bucket_name('gone')}/t", "--to", "latest")
    assert_one_line_error(missing, "does not exist")
    naive = await cli(moto_endpoint, "group", "seek", url, "--group", "g", "--to", "2026-01-31T12:00:00")
    assert_one_line_error(naive, "--to", "timezone")
    export = await cli(moto_endpoint, "group", "export", url, "--group", "stranger")
    assert_one_line_error(export, "stranger", "does not exist")
