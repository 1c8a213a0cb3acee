"""Faults between the consumer and S3, and handlers that fail: nothing is lost, the stream recovers.

Every consumer here talks to moto through :class:`tests.s3proxy.S3Proxy`, which injects what moto
never does by itself (503 SlowDown, 500, connection resets, slow answers, 409 conflicts, writes that
land although the client is told they failed). Messages are written straight to moto with the ``store``
fixture. DESIGN.md promises 2 (no loss), 3 (bounded duplicates), 5 (checkpoints commit only completed
work) and 7 (retriable errors are retried; a message that keeps failing is dead-lettered and the stream
moves on).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from s3stream.config import Settings, build_settings
from s3stream.errors import NotFound
from s3stream.layouts.topics import create_topic, log_key
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests import conftest
from tests.conftest import Recorder, cli_command, running, wait_until
from tests.s3proxy import Delay, Drop, Relayed, Rule, S3Error, S3Proxy, Transform, error_body

pytestmark = pytest.mark.chaos

CHECKPOINTS = "_s3stream/checkpoints/"
DEAD_LETTERS = "_s3stream/dead-letters/"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    """A proxy in front of moto with no rules yet."""
    with S3Proxy(moto_endpoint) as p:
        yield p


def settings(endpoint: str, url: str, *, s3: dict[str, Any] | None = None, handler: str = "rec",
             checkpoint_interval: float = 0.1, **consumer: Any) -> Settings:
    """One source at ``endpoint`` (the proxy), fast polling, frequent checkpoints, and a failing
    handler's attempts spread over 0.3 s (the default minute would only make tests wait)."""
    consumer = {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0,
                "handler_retry_time": 0.3, "checkpoint": {"interval": checkpoint_interval}, **consumer}
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path", **(s3 or {})},
        "consumer": consumer,
        "sources": [{"url": url, "handler": handler}],
    })


def sample(name: str, **labels: str) -> float:
    """A Prometheus sample of the default registry (0 when it was never touched)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _object_path(request: web.Request) -> bool:
    """A request addressed to an object (``/bucket/key``), not to the bucket itself."""
    return len(request.path.lstrip("/").split("/", 1)) == 2 and not request.path.endswith("/")


def is_list_versions(request: web.Request) -> bool:
    return request.method == "GET" and "versions" in request.query


def is_get_object(request: web.Request) -> bool:
    return (request.method == "GET" and _object_path(request)
            and not {"versions", "list-type", "versioning"} & set(request.query))


def is_put_object(request: web.Request) -> bool:
    return request.method == "PUT" and _object_path(request)


def is_checkpoint_put(request: web.Request) -> bool:
    return request.method == "PUT" and CHECKPOINTS in request.path


async def put_versions(store: Store, bucket: str, prefix: str, keys: int, per_key: int,
                       tag: str = "") -> dict[str, list[str]]:
    """Write ``per_key`` versions of ``keys`` keys straight to moto; version ids per key, in order."""
    return await conftest.put_versions(store, bucket, [f"{prefix}k{tag}{k:03d}" for k in range(keys)],
                                       per_key)


def first_deliveries(rec: Recorder) -> dict[str, list[str]]:
    """Each key's versions in the order they were first delivered (redeliveries dropped)."""
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[str]] = {}
    for ident in rec.idents():
        if ident not in seen:
            seen.add(ident)
            out.setdefault(ident[0], []).append(ident[1])
    return out


def all_idents(written: dict[str, list[str]]) -> set[tuple[str, str]]:
    return {(k, v) for k, vids in written.items() for v in vids}


async def redelivered_on_restart(store: Store, endpoint: str, bucket: str, prefix: str,
                                 **consumer: Any) -> list[tuple[str, str]]:
    """Start a fresh consumer in the same group, write a sentinel that sorts after every key, and
    return what it delivered besides the sentinel once the sentinel is through and the pool is idle.

    The poller hands out keys in listing order, so by the time the sentinel (``~`` sorts last) is
    delivered every older version the cursor thought new has been handed out too."""
    rec = Recorder()
    c = Consumer(settings(endpoint, f"s3://{bucket}/{prefix}", **consumer))
    c.register_handler("rec", rec)
    async with running(c):
        key = f"{prefix}~sentinel"
        _, vid = await store.put_object(bucket, key, b"sentinel")
        await rec.wait_for(lambda: (key, str(vid)) in rec.idents(), within=30)
        pool = c.pool
        assert pool is not None
        await wait_until(lambda: pool.pending == 0, what="restarted consumer idle")
    return [ident for ident in rec.idents() if ident != (key, str(vid))]


async def dead_letters(store: Store, bucket: str, group: str) -> list[dict[str, Any]]:
    """Every dead letter of ``group`` as stored (the JSON documents)."""
    page = await store.list_objects(bucket, f"{DEAD_LETTERS}{group}/")
    return [orjson.loads((await store.get_object(bucket, e.key)).body) for e in page.entries]


async def test_5xx_slowdown_and_resets_lose_nothing(store: Store, bucket: str, proxy: S3Proxy) -> None:
    """About 20 % of ListObjectVersions, GetObject and PutObject (checkpoint) requests answer 503
    SlowDown, 500 InternalError or have their connection reset (seeded). Every version is still
    delivered, each key's versions in write order; every rule fired, and the retry and request
    counters grew."""
    rules = {}
    for op, match, seeds in (("ListObjectVersions", is_list_versions, (1, 2, 3)),
                             ("GetObject", is_get_object, (4, 5, 6)),
                             ("PutObject", is_put_object, (15, 42, 2))):
        for (name, action), seed in zip((("503", S3Error(503, "SlowDown")),
                                         ("500", S3Error(500, "InternalError")),
                                         ("reset", Drop(reset=True))), seeds, strict=True):
            rules[f"{op} {name}"] = proxy.add(Rule(action, when=match, fraction=0.07, seed=seed))
    ops = ("ListObjectVersions", "GetObject", "PutObject")
    retries0 = {op: sample("s3stream_retries_total", what=op) for op in ops}
    requests0 = {op: sample("s3stream_s3_requests_total", operation=op) for op in ops}

    written = await put_versions(store, bucket, "f/", 30, 5)
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/f/", concurrency=8))
    consumer.register_handler("rec", rec)
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()), within=60)
        await wait_until(lambda: all(r.applied for r in rules.values()), within=30,
                         what=f"every rule fired: { {n: r.applied for n, r in rules.items()} }")
        assert not task.done()

    assert set(rec.idents()) == all_idents(written)
    assert first_deliveries(rec) == written
    for op in ops:
        assert sample("s3stream_retries_total", what=op) > retries0[op], op
    # Every version fetched once, plus one attempt per error answer (aiohttp itself re-sends a GET whose
    # reused connection was reset, so resets need not show up as attempts).
    answered = sum(r.applied for n, r in rules.items() if n.startswith("GetObject") and "reset" not in n)
    assert sample("s3stream_s3_requests_total", operation="GetObject") - requests0["GetObject"] >= (
        150 + answered)
    assert sample("s3stream_s3_requests_total", operation="PutObject") > requests0["PutObject"]
    assert sample("s3stream_s3_requests_total", operation="ListObjectVersions") > requests0[
        "ListObjectVersions"]


async def test_slow_responses_deliver_everything(store: Store, bucket: str, proxy: S3Proxy) -> None:
    """A fifth of the GETs (listings and fetches) are held 0.3 to 0.5 s before being answered; every
    version is still delivered once, in order per key."""
    slow = [proxy.add(Rule(Delay(0.3), method="GET", fraction=0.1, seed=7)),
            proxy.add(Rule(Delay(0.5), method="GET", fraction=0.1, seed=8))]
    written = await put_versions(store, bucket, "s/", 25, 4)
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/s/", concurrency=16))
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()), within=60)
    assert all(rule.applied > 0 for rule in slow)
    assert Counter(rec.idents()) == Counter(all_idents(written))
    assert rec.by_key() == written


async def test_listings_answered_late_lose_no_write_made_meanwhile(store: Store, bucket: str,
                                                                  proxy: S3Proxy) -> None:
    """Every listing is answered 4 s after moto took it, with the ``Date`` of when the answer left (a
    server slow to send what it read, as moto is on a loaded machine), while writes land every
    quarter second, many of them between a listing and its answer. With a settle window of 1 s, every
    version is delivered: a pass's horizon is bounded by when its listing was asked for, not by the
    answer's ``Date``."""
    slow = proxy.add(Rule(Delay(4.0, after=True, restamp=True), when=is_list_versions))
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/late/", settle_window=1.0))
    consumer.register_handler("rec", rec)
    written: dict[str, list[str]] = {}
    async with running(consumer):
        for i in range(32):  # the writes are spread over 8 s: a workload, not a wait
            key = f"late/k{i:02d}"
            _, vid = await store.put_object(bucket, key, b"x")
            written[key] = [str(vid)]
            await asyncio.sleep(0.25)
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()), within=40)
    assert slow.applied >= 3
    assert Counter(rec.idents()) == Counter(all_idents(written))


async def test_checkpoint_409_conflicts_are_retried(store: Store, bucket: str, proxy: S3Proxy) -> None:
    """The first three checkpoint PUTs answer 409 ConditionalRequestConflict; they are retried, the
    checkpoint object is committed covering the delivered versions, and a consumer restarted in the
    same group redelivers nothing."""
    conflicts = proxy.add(Rule(S3Error(409, "ConditionalRequestConflict"), when=is_checkpoint_put, first=3))
    written = await put_versions(store, bucket, "c/", 20, 3)
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/c/"))
    consumer.register_handler("rec", rec)
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
        shard = consumer.shards[0]
        key = shard.checkpoints.key  # type: ignore[attr-defined]

        async def committed() -> bool:
            try:
                await store.get_object(bucket, key)
            except NotFound:
                return False
            return shard.saved_generation == shard.cursor.generation

        await wait_until(committed, what="checkpoint committed")
        assert not task.done()
    assert conflicts.applied == 3
    assert proxy.requests.count(("PUT", f"/{bucket}/{key}", "S3Error")) == 3
    assert any(r[0] == "PUT" and r[1].startswith(f"/{bucket}/{key}") and r[2] == "forwarded"
               for r in proxy.requests)
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "c/") == []


async def test_failing_checkpoint_writes_do_not_stop_delivery(store: Store, bucket: str,
                                                              proxy: S3Proxy) -> None:
    """Every checkpoint PUT answers 500 for a while: messages keep being delivered, the consumer keeps
    running and no checkpoint exists; once the fault clears the checkpoint is written, and after a
    clean stop a restarted consumer redelivers nothing."""
    failing = proxy.add(Rule(S3Error(500, "InternalError"), when=is_checkpoint_put))
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/w/",
                                 s3={"max_attempts": 3, "max_retry_time": 1.0}))
    consumer.register_handler("rec", rec)
    async with running(consumer) as task:
        first = await put_versions(store, bucket, "w/", 10, 3, tag="a")
        await rec.wait_for(lambda: all_idents(first) <= set(rec.idents()))
        await wait_until(lambda: failing.applied >= 6, what="several failed checkpoint writes")
        second = await put_versions(store, bucket, "w/", 10, 3, tag="b")
        await rec.wait_for(lambda: all_idents(second) <= set(rec.idents()))
        assert not task.done()
        key = consumer.shards[0].checkpoints.key  # type: ignore[attr-defined]
        with pytest.raises(NotFound):
            await store.get_object(bucket, key)

        proxy.clear()

        async def written() -> bool:
            try:
                await store.get_object(bucket, key)
            except NotFound:
                return False
            return True

        await wait_until(written, what="checkpoint written once the fault cleared")
        assert not task.done()
    assert set(rec.idents()) == all_idents(first) | all_idents(second)
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "w/") == []


async def test_checkpoint_write_that_landed_but_was_reported_failed(store: Store, bucket: str,
                                                                    proxy: S3Proxy) -> None:
    """The first checkpoint PUT reaches S3 and is stored, but the client is told 500 InternalError
    (a lost response: S3 may apply a write whose answer never arrives). Retrying it must not be taken
    for another consumer's write: the consumer keeps running, commits, and a restart redelivers
    nothing.

    FAILS today: the retry carries the same ``If-None-Match: *`` (or the stale ``If-Match``), gets 412,
    and S3CheckpointStore.save turns that into CheckpointConflict, which kills the consumer."""

    def lost(_: web.Request, response: Relayed) -> Relayed:
        return replace(response, status=500,
                       body=error_body(S3Error(500, "InternalError"), "/checkpoint"), headers=())

    lost_answer = proxy.add(Rule(Transform(lost), when=is_checkpoint_put, first=1))
    written = await put_versions(store, bucket, "l/", 5, 2)
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/l/"))
    consumer.register_handler("rec", rec)
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
        await wait_until(lambda: lost_answer.applied == 1, what="the lost answer")
        shard = consumer.shards[0]
        await wait_until(lambda: task.done() or shard.saved_generation == shard.cursor.generation,
                         what="a checkpoint committed after the lost answer")
        assert not task.done(), f"consumer died: {task.exception()!r}"
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "l/") == []


async def test_poison_message_is_dead_lettered_and_the_stream_moves_on(
    store: Store, bucket: str, proxy: S3Proxy, moto_endpoint: str, tmp_path: Path
) -> None:
    """A handler that always raises on one key is called exactly ``handler_attempts`` (3) times for it;
    the message then goes to ``_s3stream/dead-letters/<group>/`` with its key, version, error and
    attempts, every other message is delivered, and the checkpoint passes it (a restart in the same
    group redelivers nothing). ``dlq list`` prints it, ``dlq replay`` through a handler that accepts it
    removes it, and ``dlq purge`` without ``--yes`` refuses with exit 2."""
    group = "poison-g"
    poison = "p/k-poison"
    calls: Counter[tuple[str, str]] = Counter()
    rec = Recorder()

    async def handler(message: Message) -> None:
        calls[(message.key, message.version_id)] += 1
        if message.key == poison:
            raise RuntimeError("cannot digest this one")
        await rec(message)

    written = await put_versions(store, bucket, "p/", 30, 2)
    _, poison_vid = await store.put_object(bucket, poison, b"poison body")
    written_after = await put_versions(store, bucket, "p/", 10, 1, tag="z")  # after the poison
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/p/", group=group, handler_attempts=3,
                                 concurrency=4))
    consumer.register_handler("rec", handler)
    expected = all_idents(written) | all_idents(written_after)
    async with running(consumer) as task:
        await rec.wait_for(lambda: expected <= set(rec.idents()))
        await wait_until(lambda: calls[(poison, str(poison_vid))] >= 3, what="poison tried")
        letters: list[dict[str, Any]] = []

        async def lettered() -> bool:
            letters[:] = await dead_letters(store, bucket, group)
            return bool(letters)

        await wait_until(lettered, what="dead letter stored")
        assert not task.done()
    assert calls[(poison, str(poison_vid))] == 3
    assert all(n == 1 for ident, n in calls.items() if ident[0] != poison)
    assert set(rec.idents()) == expected
    [letter] = letters
    assert letter["key"] == poison
    assert letter["version_id"] == str(poison_vid)
    assert letter["attempts"] == 3
    assert "cannot digest this one" in letter["error"]
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "p/", group=group) == []

    url = f"s3://{bucket}/p/"
    listed = await cli("dlq", "list", url, "--group", group, "--endpoint-url", moto_endpoint)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1, listed.stdout
    assert poison in lines[0]
    assert str(poison_vid) in lines[0]

    out = tmp_path / "replayed.jsonl"
    cfg = tmp_path / "replay.toml"
    cfg.write_text(f'[handlers.out]\nuse = "jsonl"\npath = "{out}"\n')
    replayed = await cli("dlq", "replay", url, "--group", group, "--handler", "out", "--config", str(cfg),
                         "--endpoint-url", moto_endpoint)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1, still failing 0" in replayed.stderr
    [line] = out.read_bytes().splitlines()
    assert orjson.loads(line)["key"] == poison
    assert orjson.loads(line)["body"] == "poison body"
    assert await dead_letters(store, bucket, group) == []
    relisted = await cli("dlq", "list", url, "--group", group, "--endpoint-url", moto_endpoint)
    assert relisted.returncode == 0
    assert relisted.stdout.strip() == ""

    refused = await cli("dlq", "purge", url, "--group", group, "--endpoint-url", moto_endpoint)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr


async def test_dlq_purge_deletes_dead_letters_for_good(store: Store, bucket: str, proxy: S3Proxy,
                                                       moto_endpoint: str) -> None:
    """``dlq purge --yes`` promises the dead letters are "deleted for good". Dead letters live in the
    consumed bucket, which for the versions layout is always versioned; after a purge no version of
    them may remain (they hold message bodies).

    FAILS today: opscli.dlq_purge calls store.delete_versions with version id None, which in a
    versioned bucket only adds delete markers; every dead letter's body stays as a noncurrent
    version."""
    group = "purge-g"

    async def handler(message: Message) -> None:
        raise RuntimeError("never")

    await put_versions(store, bucket, "u/", 2, 1)
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/u/", group=group, handler_attempts=1))
    consumer.register_handler("rec", handler)
    async with running(consumer):
        await wait_until(lambda: sample("s3stream_dead_letters_total", topic="u", bucket=bucket, shard="0",
                                                 group=group) >= 2,
                         what="two dead letters")
    purged = await cli("dlq", "purge", f"s3://{bucket}/u/", "--group", group, "--yes",
                       "--endpoint-url", moto_endpoint)
    assert purged.returncode == 0, purged.stderr
    assert "purged 2 dead letter(s)" in purged.stderr
    assert await dead_letters(store, bucket, group) == []
    left = await store.list_versions(bucket, f"{DEAD_LETTERS}{group}/")
    assert [e.key for e in left.entries if not e.deleted] == []


async def test_dead_letter_write_that_landed_but_was_reported_failed(store: Store, bucket: str,
                                                                     proxy: S3Proxy) -> None:
    """The dead letter's PUT reaches S3 and is stored, but the client is told 500 InternalError. The
    retry must not kill the consumer: the poison message ends up dead-lettered (once) and the other
    messages are delivered.

    FAILS today: DeadLetters.add writes with ``If-None-Match: *``; the retry of a write that landed gets
    412, i.e. PreconditionFailed, a PermanentError that WorkerPool._dead_letter does not catch (it only
    retries RetriableError), so the worker and with it the whole consumer die."""
    group = "lost-dl-g"
    poison = "d/k-poison"

    def lost(_: web.Request, response: Relayed) -> Relayed:
        return replace(response, status=500,
                       body=error_body(S3Error(500, "InternalError"), "/dead-letter"), headers=())

    lost_answer = proxy.add(Rule(Transform(lost), method="PUT",
                                 when=lambda r: DEAD_LETTERS in r.path, first=1))
    rec = Recorder()

    async def handler(message: Message) -> None:
        if message.key == poison:
            raise RuntimeError("poison")
        await rec(message)

    written = await put_versions(store, bucket, "d/", 10, 1)
    await store.put_object(bucket, poison, b"p")
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/d/", group=group, handler_attempts=1))
    consumer.register_handler("rec", handler)
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
        await wait_until(lambda: lost_answer.applied == 1, what="the lost answer")
        await wait_until(lambda: task.done() or (consumer.pool is not None and consumer.pool.pending == 0),
                         what="the poison message settled")
        assert not task.done(), f"consumer died: {task.exception()!r}"
    assert [dl["key"] for dl in await dead_letters(store, bucket, group)] == [poison]


async def test_handler_timeout_dead_letters_and_the_stream_goes_on(store: Store, bucket: str,
                                                                   proxy: S3Proxy) -> None:
    """A handler that hangs on one key for longer than ``handler_timeout`` (0.2 s) is cut off on each
    of its 2 attempts; the message is dead-lettered with the error "timed out" while every other
    message is delivered."""
    group = "timeout-g"
    stuck = "t/k-stuck"
    calls: Counter[str] = Counter()
    rec = Recorder()

    async def handler(message: Message) -> None:
        calls[message.key] += 1
        if message.key == stuck:
            await asyncio.sleep(30)
        await rec(message)

    written = await put_versions(store, bucket, "t/", 20, 2)
    _, stuck_vid = await store.put_object(bucket, stuck, b"x")
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/t/", group=group, handler_timeout=0.2,
                                 handler_attempts=2))
    consumer.register_handler("rec", handler)
    letters: list[dict[str, Any]] = []

    async def lettered() -> bool:
        letters[:] = await dead_letters(store, bucket, group)
        return bool(letters)

    started = time.monotonic()
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
        await wait_until(lettered, what="dead letter stored")
        assert not task.done()
    assert time.monotonic() - started < 20  # the 30 s hang was cut off, not waited out
    assert calls[stuck] == 2
    assert set(rec.idents()) == all_idents(written)
    [letter] = letters
    assert (letter["key"], letter["version_id"]) == (stuck, str(stuck_vid))
    assert letter["error"] == "timed out"
    assert letter["attempts"] == 2


async def test_undecodable_segment_is_dead_lettered(store: Store, bucket: str, proxy: S3Proxy) -> None:
    """In a log-layout topic, an object named like a zstd segment whose body is garbage is
    dead-lettered with a reason containing "undecodable", and every other message is delivered."""
    group = "segment-g"
    topic = await create_topic(store, bucket, "lg", layout="log")
    prefix = topic.shard_prefix(0)
    now = int(time.time() * 1000)
    good = [log_key(prefix, now + i, "good", i, "_", span_ms=topic.span_ms) for i in range(20)]
    for i, key in enumerate(good):
        await store.put_object(bucket, key, f"good {i}".encode())
    bad = log_key(prefix, now + 5, "bad", 1, "_", ".seg.jsonl.zst", span_ms=topic.span_ms)
    await store.put_object(bucket, bad, b"\x28\xb5\x2f\xfd this is not zstd at all")
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/lg", group=group))
    consumer.register_handler("rec", rec)
    letters: list[dict[str, Any]] = []

    async def lettered() -> bool:
        letters[:] = await dead_letters(store, bucket, group)
        return bool(letters)

    async with running(consumer) as task:
        await rec.wait_for(lambda: {m.key for m in rec.messages} >= set(good))
        await wait_until(lettered, what="dead letter stored")
        assert not task.done()
    assert sorted(m.body for m in rec.messages) == sorted(f"good {i}".encode() for i in range(20))
    assert bad not in {m.key for m in rec.messages}
    [letter] = letters
    assert letter["key"] == bad
    assert "undecodable" in letter["error"]


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``s3stream`` CLI in a subprocess (off the event loop) and capture its output."""
    return await asyncio.to_thread(subprocess.run, cli_command(*args), capture_output=True, text=True,
                                   timeout=60)
