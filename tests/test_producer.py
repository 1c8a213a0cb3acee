"""The producer against moto (and a fault proxy): layouts, sharding, idempotent retries, segments,
multipart."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from s3stream.config import Settings, build_settings
from s3stream.errors import ConfigError
from s3stream.layouts import segments
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import TopicExists, create_topic, parse_log_key
from s3stream.s3.store import Store, open_store
from tests.s3proxy import Relayed, Rule, S3Error, S3Proxy, Transform


def _settings(endpoint: str, **producer: object) -> Settings:
    return build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"},
                           "producer": producer})


async def _all_keys(store: Store, bucket: str, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        page = await store.list_objects(bucket, prefix, token=token)
        keys += [e.key for e in page.entries]
        token = page.next_token
        if token is None:
            return keys


async def test_topic_create_twice_is_an_error(store: Store, bucket: str) -> None:
    """Topic metadata is written with If-None-Match: *, so a second create fails clearly."""
    await create_topic(store, bucket, "orders", shards=4, layout="versions")
    with pytest.raises(TopicExists, match="already exists"):
        await create_topic(store, bucket, "orders", shards=8, layout="log")
    with pytest.raises(ConfigError, match="shards"):
        await create_topic(store, bucket, "other", shards=0)


async def test_versions_layout_shards_by_stable_key_hash(store: Store, bucket: str,
                                                         moto_endpoint: str) -> None:
    """A versions-layout message is a PUT to TOPIC/<shard>/<key>: the same key always lands in the
    same shard as a new version, and 8 shards all receive keys."""
    topic = await create_topic(store, bucket, "orders", shards=8, layout="versions")
    async with Producer(_settings(moto_endpoint)) as producer:
        first = await producer.publish(f"s3://{bucket}/orders", b"v1", key="customer-42")
        second = await producer.publish(f"s3://{bucket}/orders", b"v2", key="customer-42")
        spread = await producer.publish_many(f"s3://{bucket}/orders",
                                             [(f"k{i}", b"x") for i in range(64)])
    assert first.key == second.key == topic.shard_prefix(topic.shard_of("customer-42")) + "customer-42"
    assert first.version_id != second.version_id
    assert (await store.get_object(bucket, first.key)).body == b"v2"
    shards = Counter(p.key.split("/")[1] for p in spread)
    assert set(shards) == {f"{i:02x}" for i in range(8)}


async def test_log_layout_names_are_unique_and_time_ordered(store: Store, bucket: str,
                                                            moto_endpoint: str) -> None:
    """Log-layout messages get unique names in minute directories, carrying the producer id and a
    per-shard sequence; the message key travels in metadata."""
    topic = await create_topic(store, bucket, "events", shards=2, layout="log")
    async with Producer(_settings(moto_endpoint)) as producer:
        results = [await producer.publish(f"s3://{bucket}/events", f"m{i}", key="user/é 1") for i in range(5)]
    names = [parse_log_key(r.key) for r in results]
    assert all(n is not None for n in names)
    seqs = [n.seq for n in names if n is not None]
    assert seqs == [1, 2, 3, 4, 5]
    assert len({r.key for r in results}) == 5
    assert all(r.key.startswith(topic.shard_prefix(topic.shard_of("user/é 1"))) for r in results)
    obj = await store.get_object(bucket, results[0].key)
    assert obj.body == b"m0"
    assert obj.metadata["s3stream-key"] == "user%2F%C3%A9%201"


async def test_retried_put_after_lost_response_stores_one_object(store: Store, bucket: str,
                                                                 moto_endpoint: str) -> None:
    """The first PUT is stored but answered 503 (a lost response); the retry gets 412 from
    If-None-Match and counts as success: the message exists exactly once."""
    await create_topic(store, bucket, "idem", layout="log")

    def lose(request: object, response: Relayed) -> Relayed:
        return dataclasses.replace(response, status=503, body=b"<Error><Code>SlowDown</Code></Error>")

    rule = Rule(Transform(lose), method="PUT", when=lambda r: "/idem/" in r.path, first=1)
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        async with Producer(_settings(proxy.endpoint)) as producer:
            published = await producer.publish(f"s3://{bucket}/idem", b"once")
    assert rule.applied == 1
    assert await _all_keys(store, bucket, "idem/") == [published.key]


async def test_throttling_and_server_errors_are_retried(store: Store, bucket: str,
                                                        moto_endpoint: str) -> None:
    """With 30 % of PUTs answered 503 SlowDown or 500, every message is still stored exactly once."""
    await create_topic(store, bucket, "busy", shards=2, layout="log")
    rules = [
        Rule(S3Error(503, "SlowDown"), method="PUT", fraction=0.15, seed=1),
        Rule(S3Error(500, "InternalError"), method="PUT", fraction=0.15, seed=2),
    ]
    with S3Proxy(moto_endpoint, rules) as proxy:
        async with Producer(_settings(proxy.endpoint)) as producer:
            results = await producer.publish_many(f"s3://{bucket}/busy", [(None, f"m{i}") for i in range(60)])
    assert sum(r.applied for r in rules) > 0
    keys = await _all_keys(store, bucket, "busy/")
    assert sorted(keys) == sorted(r.key for r in results)
    assert len(keys) == 60


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_segments_flush_by_count_and_linger(store: Store, bucket: str, moto_endpoint: str,
                                                  compression: str) -> None:
    """With segments of 10, 25 messages become segments of 10, 10 and 5 (the last by linger), and
    each message knows its object and offset; the segment decodes back to the messages."""
    await create_topic(store, bucket, "seg", layout="log")
    settings = _settings(moto_endpoint, segment_max_messages=10, linger=0.05, compression=compression)
    async with Producer(settings) as producer:
        results = await producer.publish_many(f"s3://{bucket}/seg", [(f"k{i}", f"m{i}") for i in range(25)])
    by_object = Counter(r.key for r in results)
    assert sorted(by_object.values()) == [5, 10, 10]
    first = results[0]
    name = parse_log_key(first.key)
    assert name is not None
    assert name.suffix == segments.SUFFIXES[compression]
    decoded = segments.decode((await store.get_object(bucket, first.key)).body, name.suffix)
    assert decoded[first.offset or 0] == ("k0", b"m0")


async def test_large_body_uses_multipart(store: Store, bucket: str, moto_endpoint: str) -> None:
    """A body above multipart_threshold is uploaded in parts (multipart ETag) and reads back whole."""
    await create_topic(store, bucket, "big", layout="log")
    body = bytes(range(256)) * (6 * 4096 + 7)  # about 6 MiB
    settings = _settings(moto_endpoint, multipart_threshold=5 << 20, multipart_part_size=5 << 20)
    async with Producer(settings) as producer:
        published = await producer.publish(f"s3://{bucket}/big", body)
    assert "-" in published.etag  # S3 multipart ETags are md5-of-md5s plus "-<parts>"
    assert (await store.get_object(bucket, published.key)).body == body


async def test_plain_prefix_without_metadata_is_the_seed_layout(moto_endpoint: str, bucket: str) -> None:
    """Publishing to a prefix with no topic metadata writes PREFIX/KEY, as `aws s3 cp` does."""
    settings = build_settings({"s3": {"endpoint_url": moto_endpoint, "addressing_style": "path"}})
    async with open_store(settings.s3) as st, Producer(settings, store=st) as producer:
        published = await producer.publish(f"s3://{bucket}/topic/", b'{"id": "1"}', key="id-1.json")
        assert published.key == "topic/id-1.json"
        assert (await st.get_object(bucket, "topic/id-1.json")).body == b'{"id": "1"}'


async def test_consuming_a_sharded_versions_topic_runs_a_poller_per_shard(
    store: Store, bucket: str, moto_endpoint: str
) -> None:
    """`consume` on a 4-shard versions topic reads its metadata, opens one shard per prefix, and
    delivers every version published through the producer, each key in order."""
    from s3stream.pipeline.consumer import Consumer
    from tests.conftest import Recorder, make_settings, running

    topic = await create_topic(store, bucket, "sharded", shards=4, layout="versions")
    consumer = Consumer(make_settings(moto_endpoint, f"s3://{bucket}/sharded"))
    rec = Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer), Producer(_settings(moto_endpoint)) as producer:
        assert [s.prefix for s in consumer.shards] == topic.prefixes
        for i in range(3):
            await producer.publish_many(f"s3://{bucket}/sharded", [(f"k{k}", f"{k}:{i}") for k in range(12)])
        await rec.wait_count(36)
    for k in range(12):
        bodies = [m.body for m in rec.messages if m.key.endswith(f"/k{k}")]
        assert bodies == [f"{k}:{i}".encode() for i in range(3)]


async def test_producer_counts_messages_and_bytes(store: Store, bucket: str, moto_endpoint: str) -> None:
    """s3stream_messages_produced_total and s3stream_produced_bytes_total grow by what was published
    (labelled by topic and bucket), segments included."""
    from prometheus_client import REGISTRY

    await create_topic(store, bucket, "counted", layout="log")
    labels = {"topic": "counted", "bucket": bucket}

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    async with Producer(_settings(moto_endpoint, segment_max_messages=4)) as producer:
        await producer.publish_many(f"s3://{bucket}/counted", [(None, "abcd") for _ in range(8)])
    assert value("s3stream_messages_produced_total") == 8
    assert value("s3stream_produced_bytes_total") == 32
