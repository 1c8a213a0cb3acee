"""``/metrics`` as an operator scrapes it: series names, label sets and the S3 request metrics.

Each end-to-end test runs against moto over HTTP; faults come from :class:`tests.s3proxy.S3Proxy`.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import s3stream
from s3stream.config import build_settings
from s3stream.errors import Throttled
from s3stream.integrations.snapshot import Follower
from s3stream.integrations.snapshotmetrics import FollowerCollector
from s3stream.s3.store import Store, open_store
from s3stream.service import metrics
from tests.conftest import wait_until
from tests.observe import (
    GROUP,
    MESSAGES,
    SHARDS,
    SLOWDOWNS,
    TOPIC,
    named,
    run_and_scrape,
    samples,
    scrape,
    value,
)
from tests.s3proxy import Rule, S3Error, S3Proxy
from tests.test_snapshot_cli import start_serving

sample = REGISTRY.get_sample_value


async def test_a_group_members_scrape_has_the_operator_series(store: Store, bucket: str,
                                                               moto_endpoint: str) -> None:
    """A group member on a two-shard topic, after traffic, injected SlowDowns and a dead letter, exposes
    per-shard series labelled topic/bucket/shard/group (the topic without ``s3://``), lease ownership
    and checkpoint times for both shards, build info, S3 request latency by operation (GetObject and
    ListObjectVersions from the lean path, ListObjectsV2 and PutObject too), the SlowDowns counted by
    operation and code, and no ``*_created`` series."""
    run = await run_and_scrape(store, moto_endpoint, bucket)
    found = run.samples
    assert run.slowdowns.applied == SLOWDOWNS

    names = {name for name, _ in found}
    assert not [n for n in names if n.endswith("_created")]
    assert not [labels for (_, labels) in found for _, v in labels if "s3://" in v]

    shards = [{"topic": TOPIC, "bucket": bucket, "shard": str(i), "group": GROUP} for i in range(SHARDS)]
    for name in ("s3stream_messages_consumed_total", "s3stream_consumed_bytes_total",
                 "s3stream_lag_seconds", "s3stream_lag_messages", "s3stream_checkpoint_commits_total",
                 "s3stream_checkpoint_last_success_timestamp_seconds", "s3stream_lease_owned"):
        mine = [lb for lb in named(found, name) if lb.get("bucket") == bucket]
        assert sorted(mine, key=lambda lb: lb["shard"]) == shards, name
    assert sum(value(found, "s3stream_messages_consumed_total", **lb) or 0 for lb in shards) == MESSAGES
    assert sum(value(found, "s3stream_dead_letters_total", **lb) or 0 for lb in shards) == 1
    for lb in shards:
        assert value(found, "s3stream_lease_owned", **lb) == 1
        stamp = value(found, "s3stream_checkpoint_last_success_timestamp_seconds", **lb)
        assert stamp is not None
        assert time.time() - 60 < stamp <= time.time()

    assert value(found, "s3stream_build_info", version=s3stream.__version__,
                 python=platform.python_version()) == 1
    for op in ("GetObject", "ListObjectVersions", "ListObjectsV2", "PutObject"):
        assert (value(found, "s3stream_s3_request_duration_seconds_count", operation=op) or 0) > 0, op
        assert value(found, "s3stream_s3_request_duration_seconds_bucket", operation=op, le="+Inf") == (
            value(found, "s3stream_s3_request_duration_seconds_count", operation=op))
    slowed = value(found, "s3stream_s3_errors_total", operation="GetObject", code="SlowDown")
    assert (slowed or 0) >= SLOWDOWNS
    assert {"s3stream_queue_depth", "s3stream_in_flight", "s3stream_handler_duration_seconds_count"} <= names


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiobotocore"])
async def test_request_latency_and_slowdowns_are_counted_on_both_request_paths(
    store: Store, bucket: str, moto_endpoint: str, lean: bool,
) -> None:
    """On the lean path and on aiobotocore alike, each attempt of GetObject, ListObjectsV2 and
    ListObjectVersions is one latency observation, and a ``503 SlowDown`` answer (retried, then
    successful) counts one error under its operation and code."""
    await store.put_object(bucket, "t/k", b"v")
    rules = [Rule(S3Error(503, "SlowDown"), method="GET", when=lambda r: r.path.endswith("/t/k"), first=1),
             Rule(S3Error(503, "SlowDown"), method="GET", when=lambda r: "list-type" in r.query, first=1)]
    settings = build_settings({"s3": {"lean_path": lean, "addressing_style": "path"}})

    def count(op: str) -> float:
        return REGISTRY.get_sample_value("s3stream_s3_request_duration_seconds_count", {"operation": op}) or 0

    def slowdowns(op: str) -> float:
        return sample("s3stream_s3_errors_total", {"operation": op, "code": "SlowDown"}) or 0

    ops = ("GetObject", "ListObjectsV2", "ListObjectVersions")
    with S3Proxy(moto_endpoint, rules) as proxy:
        s3 = settings.s3.model_copy(update={"endpoint_url": proxy.endpoint})
        async with open_store(s3) as other:
            assert (other.lean is not None) == lean
            before = {op: (count(op), slowdowns(op)) for op in ops}
            assert (await other.get_object(bucket, "t/k")).body == b"v"
            assert [e.key for e in (await other.list_objects(bucket, "t/")).entries] == ["t/k"]
            assert [e.key for e in (await other.list_versions(bucket, "t/")).entries] == ["t/k"]
    assert [r.applied for r in rules] == [1, 1]
    assert {op: (count(op) - before[op][0], slowdowns(op) - before[op][1]) for op in ops} == {
        "GetObject": (2, 1), "ListObjectsV2": (2, 1), "ListObjectVersions": (1, 0)}


def test_error_codes_and_refusals_of_our_own() -> None:
    """An answer's S3 code labels the error; one without a code is labelled by its kind; a body over
    ``max_body_mb`` (refused by s3stream, not by S3) is timed but not an S3 error."""
    from s3stream.errors import BodyTooLarge, EndpointUnreachable

    def errors(code: str) -> float:
        return sample("s3stream_s3_errors_total", {"operation": "Probe", "code": code}) or 0

    def timed() -> float:
        return sample("s3stream_s3_request_duration_seconds_count", {"operation": "Probe"}) or 0

    before = (errors("SlowDown"), errors("EndpointUnreachable"), errors("TooLarge"), timed())
    metrics.observe_request("Probe", 0.01, Throttled("x", code="SlowDown"))
    metrics.observe_request("Probe", 0.01, EndpointUnreachable("x"))
    metrics.observe_request("Probe", 0.01, BodyTooLarge(10, 20))
    metrics.observe_request("Probe", 0.01, None)
    after = (errors("SlowDown"), errors("EndpointUnreachable"), errors("TooLarge"), timed())
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 0, 4]


def test_topic_and_shard_labels_come_from_the_prefix() -> None:
    """A topic's shard ``orders/0a/`` is topic ``orders``, shard 10; a plain prefix is shard 0 of
    itself; labels never hold ``s3://``."""
    assert metrics.topic_and_index("orders", "orders/0a/") == ("orders", 10)
    assert metrics.topic_and_index("orders/", "orders/03/") == ("orders", 3)
    assert metrics.topic_and_index("logs/app/", "logs/app/") == ("logs/app", 0)
    assert metrics.labels_for("b", None, "plain/", "g") == {"topic": "plain", "bucket": "b", "shard": "0",
                                                          "group": "g"}


def test_exposition_leaves_out_created_series_without_touching_the_library_switch() -> None:
    """s3stream's ``/metrics`` text has no ``*_created`` sample, while the default registry (what an
    application exposing it itself sees) still has them: the library changes no global setting."""
    metrics.MESSAGES_CONSUMED.labels(topic="x", bucket="b", shard="0", group="g")
    text = metrics.exposition().decode()
    assert "_created" not in text
    assert "s3stream_messages_consumed_total{" in text
    assert REGISTRY.get_sample_value("s3stream_messages_consumed_created",
                                     {"topic": "x", "bucket": "b", "shard": "0", "group": "g"}) is not None
    assert s3stream.__version__ == metrics.VERSION


async def test_snapshot_serve_exposes_metrics(store: Store, bucket: str, moto_endpoint: str,
                                              tmp_path: Path) -> None:
    """``snapshot serve`` answers ``/metrics`` on its own port: build info, its GetObject requests
    timed, the follower's keys, load and check times and counts, and no ``*_created`` series."""
    await store.put_object(bucket, "kv/store.csv", b"x,1\n")
    async with start_serving(tmp_path, f"s3://{bucket}/kv/store.csv", "--parser", "csv", "--interval", "0.1",
                             "--endpoint-url", moto_endpoint) as served:
        text = ""

        async def checked() -> bool:
            nonlocal text
            text = await scrape(f"{served.base}/metrics")
            checks = value(samples(text), "s3stream_snapshot_checks_total", bucket=bucket, key="kv/store.csv")
            return bool(checks)

        await wait_until(checked, what="a check after the first load")
    found = samples(text)
    assert [lb["version"] for lb in named(found, "s3stream_build_info")] == [s3stream.__version__]
    ops = {lb["operation"] for lb in named(found, "s3stream_s3_request_duration_seconds_count")}
    assert "GetObject" in ops
    assert "_created" not in text
    where = {"bucket": bucket, "key": "kv/store.csv"}
    assert value(found, "s3stream_snapshot_keys", **where) == 1
    assert value(found, "s3stream_snapshot_last_check_failed", **where) == 0
    assert value(found, "s3stream_snapshot_downloads_total", **where) == 1
    for stamp in ("loaded", "last_check"):
        seconds = value(found, f"s3stream_snapshot_{stamp}_timestamp_seconds", **where)
        assert seconds is not None
        assert time.time() - 60 < seconds <= time.time()


def test_the_metrics_reference_lists_every_metric() -> None:
    """docs/metrics.md has one row per metric s3stream registers, with its type and label names, and
    no row for a metric that does not exist."""
    import s3stream.cli.snapshot
    import s3stream.s3.sqs  # noqa: F401

    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    section = doc.split("## Dashboard and alerts")[0]
    row = re.compile(r"^\| `(s3stream_\w+)` \| (\w+) \|([\w, ]*)\|", re.M)
    rows = {m[0]: (m[1], m[2]) for m in row.findall(section)}
    registered = {}
    for collector in list(REGISTRY._collector_to_names):  # prometheus-client keeps no public list
        labelnames = getattr(collector, "_labelnames", None)
        for family in collector.describe() if labelnames is not None else []:
            if family.name.startswith("s3stream_"):
                name = family.name + ("_total" if family.type == "counter" else "")
                registered[name] = (family.type, set(labelnames))
    for family in FollowerCollector(Follower("s3://bucket/key.csv")).collect():  # snapshot serve's
        registered[family.name + ("_total" if family.type == "counter" else "")] = (
            family.type, {k for s in family.samples for k in s.labels})
    assert set(rows) == set(registered)
    for name, (kind, labels) in rows.items():
        assert kind == registered[name][0], name
        assert registered[name][1] == {x.strip() for x in labels.split(",") if x.strip()}, name
