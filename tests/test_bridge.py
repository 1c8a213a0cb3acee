"""The S3-to-SQS bridge and the SQS boundary, against moto's S3 and SQS over HTTP.

One SQS message per object version, batched by up to 10, FIFO deduplication and group ids, templates,
``bridge sqs --once`` run twice sending each object once, partial batch failures (injected by the
proxy, which moto never produces) retried, and the streaming mode delivering what is written later.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from s3stream.cli.bridge import bridge_settings, default_group, run_bridge
from s3stream.config import S3Settings, Settings, build_settings, load_settings
from s3stream.errors import HandlerError, PermanentError
from s3stream.integrations.bridge import SqsBridge, dedup_id, sqs_handler
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.message import Message, ms_to_datetime
from s3stream.pipeline.handlers import build_handler
from s3stream.s3.sqs import (
    BatchEntriesRefused,
    InMessage,
    OutMessage,
    Queue,
    QueueNotFound,
    open_sqs,
)
from s3stream.s3.store import Store
from tests.conftest import cli_command, new_bucket_name, wait_until
from tests.s3proxy import Relayed, Rule, S3Proxy, Transform

TIMEOUT = 60.0
BATCH_TARGET = "AmazonSQS.SendMessageBatch"


@pytest.fixture
async def queue(moto_endpoint: str) -> AsyncIterator[Queue]:
    """An SQS client talking to moto."""
    async with open_sqs(S3Settings(endpoint_url=moto_endpoint)) as q:
        yield q


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    """A proxy in front of moto with no rules yet (SQS requests go through it unchanged)."""
    with S3Proxy(moto_endpoint) as p:
        yield p


async def drain(queue: Queue, url: str) -> list[InMessage]:
    """Receive (and delete) every message in the queue, until a receive comes back empty."""
    got: list[InMessage] = []
    while batch := await queue.receive(url, wait_seconds=0):
        got += batch
        for m in batch:
            await queue.delete(url, m.receipt_handle)
    return got


def settings_for(endpoint: str, url: str, queue_url: str, **handler: Any) -> tuple[Settings, dict[str, Any]]:
    """A bridge's settings (via the CLI's own builder) with fast polling."""
    settings, options = bridge_settings(url, config=None, endpoint_url=endpoint, queue_url=queue_url,
                                        **handler)
    fast = {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0}
    return settings.model_copy(update={"consumer": settings.consumer.model_copy(update=fast)}), options


async def objects(store: Store, bucket: str, keys: list[str]) -> dict[str, tuple[str, str]]:
    """Write one version of each key; ``{key: (version_id, etag)}``."""
    written = {}
    for key in keys:
        etag, vid = await store.put_object(bucket, key, f"body of {key}".encode())
        written[key] = (str(vid), etag)
    return written


async def test_default_body_is_one_json_object_per_version(store: Store, bucket: str, queue: Queue,
                                                           moto_endpoint: str) -> None:
    """Each object version becomes one message whose body is the JSON object bucket, key, version_id,
    size, etag, last_modified; nothing outside the prefix is sent."""
    written = await objects(store, bucket, ["in/a.ext", "in/b.ext"])
    second_etag, _ = await store.put_object(bucket, "in/a.ext", b"again")
    await store.put_object(bucket, "out/x", b"not for us")
    url = await queue.create_queue(new_bucket_name("q"))
    sent = await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/in/", url), once=True)
    bodies = [orjson.loads(m.body) for m in await drain(queue, url)]
    assert sent == len(bodies) == 3
    fields = ("bucket", "etag", "key", "last_modified", "size", "version_id")
    assert {tuple(sorted(b)) for b in bodies} == {fields}
    by_version = {b["version_id"]: b for b in bodies}
    vid, etag = written["in/b.ext"]
    assert by_version[vid]["key"] == "in/b.ext"
    assert by_version[vid]["bucket"] == bucket
    assert by_version[vid]["etag"] == etag
    assert by_version[vid]["size"] == len(b"body of in/b.ext")
    assert by_version[vid]["last_modified"].endswith("Z")
    a_etags = sorted(b["etag"] for b in bodies if b["key"] == "in/a.ext")
    assert a_etags == sorted([written["in/a.ext"][1], second_etag])


async def test_fifo_queue_gets_dedup_and_group_ids(store: Store, bucket: str, queue: Queue,
                                                   moto_endpoint: str) -> None:
    """On a .fifo queue each message has MessageDeduplicationId = a hash of bucket, key and version
    (at most 128 chars) and MessageGroupId = the shard; with group_by=key, the key."""
    written = await objects(store, bucket, ["f/one", "f/two"])
    url = await queue.create_queue(new_bucket_name("q"), fifo=True)
    await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/f/", url), once=True)
    got = await drain(queue, url)
    assert len(got) == 2
    for m in got:
        body = orjson.loads(m.body)
        assert body["version_id"] == written[body["key"]][0]
        message = Message(bucket=bucket, key=body["key"], version_id=body["version_id"],
                          last_modified=ms_to_datetime(0), size=0, etag="", body=b"")
        assert m.attributes["MessageDeduplicationId"] == dedup_id(message)
        assert len(m.attributes["MessageDeduplicationId"]) <= 128
        assert m.attributes["MessageGroupId"] == f"s3://{bucket}/f/"

    by_key = await queue.create_queue(new_bucket_name("q"), fifo=True)
    await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/f/", by_key, group_by="key",
                                   group="by-key"), once=True)
    assert sorted(m.attributes["MessageGroupId"] for m in await drain(queue, by_key)) == ["f/one", "f/two"]


async def test_once_twice_sends_each_object_exactly_once(store: Store, bucket: str, queue: Queue,
                                                         moto_endpoint: str, tmp_path: Path) -> None:
    """The seed's script: ``bridge sqs --once`` sends every object and exits 0; a second run sends
    nothing (the group's checkpoint), and an object added in between is the only thing the third sends."""
    await objects(store, bucket, [f"{i:064x}.ext" for i in range(23)])
    url = await queue.create_queue(new_bucket_name("q"))
    args = ("bridge", "sqs", f"s3://{bucket}/", "--queue-url", url, "--once", "--endpoint-url", moto_endpoint)
    first = await cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    assert "sent 23 message(s)" in first.stderr
    second = await cli(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert "sent 0 message(s)" in second.stderr
    await objects(store, bucket, ["late.ext"])
    third = await cli(tmp_path, *args)
    assert "sent 1 message(s)" in third.stderr, third.stderr
    keys = [orjson.loads(m.body)["key"] for m in await drain(queue, url)]
    assert len(keys) == len(set(keys)) == 24


async def test_once_on_an_unversioned_bucket(store: Store, queue: Queue, moto_endpoint: str,
                                             tmp_path: Path) -> None:
    """The S3-to-SQS bridge's bucket has no versioning: ``--once`` sends every object (version id ``null``), a
    second run sends nothing, and after an overwrite the third sends that object again, new ETag."""
    bucket = new_bucket_name("plain")
    await store.create_bucket(bucket, versioning=False)
    await objects(store, bucket, [f"{i:064x}.ext" for i in range(12)])
    url = await queue.create_queue(new_bucket_name("q"))
    args = ("bridge", "sqs", f"s3://{bucket}/", "--queue-url", url, "--once", "--endpoint-url", moto_endpoint)
    first = await cli(tmp_path, *args)
    assert "sent 12 message(s)" in first.stderr, first.stderr
    assert "sent 0 message(s)" in (await cli(tmp_path, *args)).stderr
    etag, _ = await store.put_object(bucket, f"{3:064x}.ext", b"rewritten")
    third = await cli(tmp_path, *args)
    assert "sent 1 message(s)" in third.stderr, third.stderr
    bodies = [orjson.loads(m.body) for m in await drain(queue, url)]
    assert len(bodies) == 13
    assert {b["version_id"] for b in bodies} == {"null"}
    rewritten = [b["etag"] for b in bodies if b["key"] == f"{3:064x}.ext"]
    assert len(rewritten) == 2
    assert etag in rewritten


async def test_batches_hold_at_most_ten_entries(store: Store, bucket: str, queue: Queue, proxy: S3Proxy,
                                                moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages from concurrent workers are gathered into SendMessageBatch calls of at most 10 entries,
    far fewer calls than messages. SQS goes through the proxy by AWS_ENDPOINT_URL_SQS, which overrides
    the endpoint S3 uses."""
    sizes: list[int] = []

    def count(_: web.Request, relayed: Relayed) -> Relayed:
        answer = orjson.loads(relayed.body)
        sizes.append(len(answer.get("Successful", [])) + len(answer.get("Failed", [])))
        return relayed

    proxy.add(Rule(Transform(count), method="POST", when=is_batch))
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", proxy.endpoint)
    await objects(store, bucket, [f"k{i:02}" for i in range(45)])
    url = await queue.create_queue(new_bucket_name("q"))
    sent = await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/", url), once=True)
    assert sent == 45 == sum(sizes)
    assert max(sizes) <= 10
    assert 5 <= len(sizes) < 45
    assert len(await drain(queue, url)) == 45


async def test_partial_batch_failure_resends_only_the_failed_entries(
    store: Store, bucket: str, queue: Queue, proxy: S3Proxy, moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When SendMessageBatch reports some entries failed (server side), only those are sent again,
    and the bridge completes; on a FIFO queue the dedup id makes each object arrive once."""
    resent: list[int] = []
    failing = Transform(fail_entries(2, sender_fault=False))
    rule = proxy.add(Rule(failing, method="POST", when=is_batch, first=1))

    def count(_: web.Request, relayed: Relayed) -> Relayed:
        resent.append(len(orjson.loads(relayed.body).get("Successful", [])))
        return relayed

    proxy.add(Rule(Transform(count), method="POST", when=is_batch))
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", proxy.endpoint)
    await objects(store, bucket, [f"p{i}" for i in range(10)])
    url = await queue.create_queue(new_bucket_name("q"), fifo=True)
    settings, options = settings_for(moto_endpoint, f"s3://{bucket}/", url, batch_linger=0.5)
    assert await run_bridge(settings, options, once=True) == 10
    assert rule.applied == 1
    assert 2 in resent  # the two failed entries, alone
    keys = [orjson.loads(m.body)["key"] for m in await drain(queue, url)]
    assert sorted(keys) == [f"p{i}" for i in range(10)]


async def test_refused_entries_raise_one_clear_error(queue: Queue, proxy: S3Proxy,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries SQS refuses as invalid (SenderFault) are not retried: the error names one, and lists
    which entries were not sent; a FIFO message without a group id is refused with a readable line."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", proxy.endpoint)
    proxy.add(Rule(Transform(fail_entries(1, sender_fault=True)), method="POST", when=is_batch, first=1))
    async with open_sqs(S3Settings()) as via_proxy:
        url = await via_proxy.create_queue(new_bucket_name("q"))
        with pytest.raises(BatchEntriesRefused) as refused:
            await via_proxy.send_batch(url, [OutMessage(id=f"e{i}", body="x") for i in range(3)])
        assert refused.value.failed == ("e0",)
        assert "SQS refused 1 message(s), e.g. e0: InvalidMessageContents" in str(refused.value)
        fifo = await via_proxy.create_queue(new_bucket_name("q"), fifo=True)
        with pytest.raises(PermanentError, match="MessageGroupId") as missing:
            await via_proxy.send_batch(fifo, [OutMessage(id="lonely", body="x")])
        assert "\n" not in str(missing.value)


async def test_templates_string_and_json(store: Store, bucket: str, queue: Queue, moto_endpoint: str) -> None:
    """A string template is str.format over the fields; a JSON-object template formats its string
    values, and a value that is exactly one field keeps its type."""
    written = await objects(store, bucket, ["t/x.csv"])
    text_q = await queue.create_queue(new_bucket_name("q"))
    await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/t/", text_q,
                                   template="s3://{bucket}/{key} v={version_id}"), once=True)
    expected = f"s3://{bucket}/t/x.csv v={written['t/x.csv'][0]}"
    assert [m.body for m in await drain(queue, text_q)] == [expected]

    json_q = await queue.create_queue(new_bucket_name("q"))
    template = '{"path": "s3://{bucket}/{key}", "bytes": "{size}", "meta": {"etag": "{etag}"}}'
    await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/t/", json_q, template=template), once=True)
    [message] = await drain(queue, json_q)
    assert orjson.loads(message.body) == {"path": f"s3://{bucket}/t/x.csv", "bytes": len(b"body of t/x.csv"),
                                          "meta": {"etag": written["t/x.csv"][1]}}


async def test_streaming_sends_objects_written_after_start(store: Store, bucket: str, queue: Queue,
                                                           moto_endpoint: str, tmp_path: Path) -> None:
    """Without --once the bridge keeps streaming: an object written while it runs reaches the queue;
    SIGTERM stops it with exit 0."""
    url = await queue.create_queue(new_bucket_name("q"))
    config = tmp_path / "bridge.toml"
    config.write_text("[consumer]\npoll_interval = 0.05\nmax_poll_interval = 0.2\nsettle_window = 2\n")
    await objects(store, bucket, ["s/before"])
    proc = await asyncio.create_subprocess_exec(
        *cli_command("bridge", "sqs", f"s3://{bucket}/s/", "--queue-url", url, "--config", str(config),
                     "--endpoint-url", moto_endpoint),
        env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    got: list[InMessage] = []

    async def received(count: int) -> bool:
        got.extend(await queue.receive(url, wait_seconds=0))
        return len(got) >= count or proc.returncode is not None

    try:
        await wait_until(lambda: received(1), TIMEOUT, "the existing object")
        await objects(store, bucket, ["s/after"])
        await wait_until(lambda: received(2), TIMEOUT, "the object written after start")
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert sorted(orjson.loads(m.body)["key"] for m in got) == ["s/after", "s/before"]


async def test_missing_queue_and_bad_options_are_one_line(bucket: str, moto_endpoint: str,
                                                          tmp_path: Path) -> None:
    """A queue that does not exist, a missing --queue-url and an unknown template field each fail
    with exit 2 and one `s3stream: error:` line, before anything is sent."""
    base = ("bridge", "sqs", f"s3://{bucket}/", "--once", "--endpoint-url", moto_endpoint)
    cases = [
        (("--queue-url", f"{moto_endpoint}/123456789012/no-such-queue"), "does not exist"),
        ((), "--queue-url"),
        (("--queue-url", f"{moto_endpoint}/123456789012/q", "--template", "{colour}"), "{colour} is unknown"),
    ]
    for extra, expected in cases:
        done = await cli(tmp_path, *base, *extra)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("s3stream: error:")
        assert expected in lines[0]


async def test_queue_not_found_is_translated(queue: Queue, moto_endpoint: str) -> None:
    """The SQS boundary turns QueueDoesNotExist into QueueNotFound (a PermanentError), one line."""
    with pytest.raises(QueueNotFound, match="does not exist"):
        await queue.receive(f"{moto_endpoint}/123456789012/missing", wait_seconds=0)


async def test_queue_operations_round_trip(queue: Queue) -> None:
    """create_queue is idempotent; receive long-polls, change_visibility hides or shows a message,
    delete removes it; queue_arn and set_policy work."""
    name = new_bucket_name("q")
    url = await queue.create_queue(name, attributes={"VisibilityTimeout": "30"})
    assert await queue.create_queue(name) == url
    assert (await queue.queue_arn(url)).endswith(f":{name}")
    await queue.set_policy(url, {"Version": "2012-10-17", "Statement": []})
    await queue.send_batch(url, [OutMessage(id="a", body="hello")])
    [first] = await queue.receive(url, wait_seconds=1, visibility_timeout=30)
    assert first.body == "hello"
    assert first.attributes["ApproximateReceiveCount"] == "1"
    assert await queue.receive(url, wait_seconds=0) == []
    await queue.change_visibility(url, first.receipt_handle, 0)
    [again] = await queue.receive(url, wait_seconds=1)
    assert again.message_id == first.message_id
    await queue.delete(url, again.receipt_handle)
    assert await drain(queue, url) == []


def test_endpoint_for_prefers_the_service_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL_<SERVICE> wins, then the configured endpoint, then AWS_ENDPOINT_URL, else AWS."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    plain, configured = S3Settings(), S3Settings(endpoint_url="http://configured")
    assert plain.resolved_endpoint("sqs") is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://everything")
    assert plain.resolved_endpoint("sqs") == "http://everything"
    assert configured.resolved_endpoint("sqs") == "http://configured"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://sqs-only")
    assert configured.resolved_endpoint("sqs") == "http://sqs-only"
    assert configured.resolved_endpoint("s3") == "http://configured"


def test_handler_entry_point_and_option_errors() -> None:
    """`use = "sqs"` resolves through the entry point; bad options are one HandlerError line."""
    handler = build_handler("sqs", {"queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q.fifo"})
    assert handler.name == "sqs"
    bad = [({}, "queue_url"), ({"queue_url": "https://x/q", "colour": 1}, "unknown option"),
           ({"queue_url": "https://x/q", "group_by": "day"}, "group_by"),
           ({"queue_url": "https://x/q", "template": "{0}"}, "unknown")]
    for options, expected in bad:
        with pytest.raises(HandlerError, match=expected):
            sqs_handler(options)
    assert default_group("https://sqs.eu-west-1.amazonaws.com/1/orders.fifo") == "sqs-orders.fifo"


async def test_close_flushes_and_long_ids_are_safe(queue: Queue) -> None:
    """close() sends what is buffered; a key too long or not ASCII still makes a valid FIFO group id."""
    url = await queue.create_queue(new_bucket_name("q"), fifo=True)
    bridge = SqsBridge(url, queue=queue, group_by="key", batch_linger=10)
    key = "é/" + "k" * 300
    message = Message(bucket="b", key=key, version_id="v1", last_modified=ms_to_datetime(0), size=1,
                      etag="e", body=b"x")
    sending = asyncio.create_task(bridge.handle(message))
    await wait_until(lambda: bridge.buffered == 1, TIMEOUT, "the message buffered")
    assert not sending.done()
    await bridge.close()
    await sending
    [got] = await drain(queue, url)
    assert orjson.loads(got.body)["key"] == key
    assert len(got.attributes["MessageGroupId"]) <= 128


def is_batch(request: web.Request) -> bool:
    return request.headers.get("X-Amz-Target") == BATCH_TARGET


def fail_entries(count: int, *, sender_fault: bool) -> Any:
    """A rewrite that reports the first ``count`` successful entries of a batch answer as failed."""

    def rewrite(_: web.Request, relayed: Relayed) -> Relayed:
        answer = orjson.loads(relayed.body)
        moved, answer["Successful"] = answer["Successful"][:count], answer["Successful"][count:]
        code = "InvalidMessageContents" if sender_fault else "InternalError"
        answer["Failed"] = [{"Id": e["Id"], "SenderFault": sender_fault, "Code": code, "Message": "injected"}
                            for e in moved]
        return replace(relayed, body=orjson.dumps(answer))

    return rewrite


def child_env() -> dict[str, str]:
    """A CLI child's environment: test credentials, no inherited AWS or s3stream settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3STREAM_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    return env


async def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion off the event loop."""
    return await asyncio.to_thread(subprocess.run, cli_command(*args), env=child_env(), cwd=cwd,
                                   capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_example_config_serves_run_and_bridge() -> None:
    """``config/bridge-sqs.toml`` loads for ``s3stream run`` (its handler builds through the entry
    point) and for ``bridge sqs``, which takes the queue and options from [handlers.sqs]."""
    path = Path(__file__).resolve().parent.parent / "config" / "bridge-sqs.toml"
    loaded = load_settings(path)
    spec = loaded.handlers[loaded.sources[0].handler]
    assert build_handler(spec.use, spec.options()).name == "sqs"
    settings, options = bridge_settings("s3://other-bucket/in/", config=str(path))
    assert options["queue_url"] == spec.options()["queue_url"]
    assert settings.consumer.group == "sqs-question2-queue.fifo"
    assert settings.consumer.dead_letters is False
    assert [s.url for s in settings.sources] == ["s3://other-bucket/in/"]


async def test_once_on_a_log_topic_covers_old_history_and_segments(store: Store, bucket: str, queue: Queue,
                                                                   moto_endpoint: str) -> None:
    """On a 2-shard log topic whose history spans more minute directories than one pass lists (two
    hours back), --once still sends everything before it exits; each line of a segment is its own
    message (the dedup id includes the offset) and the FIFO group is the message's shard."""
    await create_topic(store, bucket, "logs", shards=2, layout="log")
    topic = f"s3://{bucket}/logs"
    s3 = {"endpoint_url": moto_endpoint, "addressing_style": "path"}
    old = Producer(build_settings({"s3": s3}), clock=lambda: time.time() - 7200)
    segmented = Producer(build_settings({"s3": s3, "producer": {"segment_max_messages": 4}}))
    async with old, segmented:
        await old.publish_many(topic, [(f"old-{i}", f"old {i}") for i in range(6)])
        await segmented.publish_many(topic, [(None, f"new {i}") for i in range(8)])
    url = await queue.create_queue(new_bucket_name("q"), fifo=True)
    sent = await run_bridge(*settings_for(moto_endpoint, topic, url), once=True)
    got = await drain(queue, url)
    assert sent == len(got) == 14
    bodies = [orjson.loads(m.body) for m in got]
    assert sum(1 for b in bodies if "offset" in b) == 8
    assert len({m.attributes["MessageDeduplicationId"] for m in got}) == 14
    assert {m.attributes["MessageGroupId"] for m in got} <= {f"{topic}/00/", f"{topic}/01/"}


async def test_fifo_overwrite_in_an_unversioned_bucket_is_a_new_message(store: Store, queue: Queue,
                                                                        moto_endpoint: str) -> None:
    """In a bucket without versioning every version id is ``null``; an object written twice within
    seconds is two writes, so both reach a FIFO queue (SQS drops a repeated deduplication id for five
    minutes). A resend of the same write keeps its deduplication id and is dropped."""
    bucket = new_bucket_name("plain")
    await store.create_bucket(bucket, versioning=False)
    url = await queue.create_queue(new_bucket_name("q"), fifo=True)
    first_etag, _ = await store.put_object(bucket, "w/doc", b"first")
    assert await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/w/", url), once=True) == 1
    second_etag, _ = await store.put_object(bucket, "w/doc", b"second")
    assert await run_bridge(*settings_for(moto_endpoint, f"s3://{bucket}/w/", url), once=True) == 1
    got = await drain(queue, url)
    assert sorted(orjson.loads(m.body)["etag"] for m in got) == sorted([first_etag, second_etag])
    assert {orjson.loads(m.body)["version_id"] for m in got} == {"null"}

    resent = Message(bucket=bucket, key="w/doc", version_id="null", last_modified=ms_to_datetime(5000),
                     size=6, etag=second_etag, body=b"second")
    assert dedup_id(resent) == dedup_id(replace(resent, body=b""))
    assert dedup_id(resent) != dedup_id(replace(resent, etag=first_etag))
    assert dedup_id(resent) != dedup_id(replace(resent, last_modified=ms_to_datetime(6000)))
