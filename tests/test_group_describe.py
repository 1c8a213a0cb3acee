"""``s3stream group describe``, run as a subprocess against the real moto server over HTTP.

The group's member records and leases are written directly (as :mod:`s3stream.groups.membership` lays them
out),
with moto's clock moved back for the ones that must look expired, and a checkpoint through
:class:`~s3stream.pipeline.checkpoint.S3CheckpointStore`; the command must show each member's liveness,
host, pid and shards, each shard's lease owner and generation, and the group's lag in each shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from s3stream.groups.membership import lease_key, member_key
from s3stream.layouts.cursor import Checkpoint
from s3stream.layouts.topics import Topic, create_topic
from s3stream.pipeline.checkpoint import S3CheckpointStore
from s3stream.s3.store import Store
from tests.conftest import new_bucket_name
from tests.test_cli import assert_one_line_error
from tests.test_commands import cli, ok

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"
CONTROL = "_s3stream/checkpoints"


@dataclass
class Seeded:
    """A topic with four shards and group ``g`` in every state a shard can be in."""

    bucket: str
    topic: Topic

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.topic.name}"


async def put_member(store: Store, bucket: str, group: str, member: str, *, host: str, pid: int,
                     shards: list[str], duration: float = 30.0) -> None:
    body = orjson.dumps({"format": 1, "member": member, "host": host, "pid": pid,
                         "started_ms": 1_700_000_000_000, "lease_duration": duration, "shards": shards})
    await store.put_object(bucket, member_key(group, member), body, content_type="application/json")


async def put_lease(store: Store, bucket: str, group: str, prefix: str, owner: str | None,
                    generation: int) -> None:
    body = orjson.dumps({"format": 1, "owner": owner, "generation": generation, "prefix": prefix})
    await store.put_object(bucket, lease_key(group, prefix), body, content_type="application/json")


async def save_checkpoint(store: Store, bucket: str, prefix: str, group: str, watermark_ms: int) -> None:
    checkpoints = S3CheckpointStore(store, bucket=bucket, prefix=prefix, control_prefix=CONTROL, group=group)
    await checkpoints.save(Checkpoint(watermark_ms=watermark_ms))


async def newest_ms(store: Store, bucket: str, prefix: str) -> int:
    page = await store.list_versions(bucket, prefix)
    return max(e.last_modified_ms for e in page.entries)


@pytest.fixture
async def seeded(store: Store, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    """Group g on topic t (4 shards):

    * shard 00: one message, covered by g's checkpoint; leased by live member m1 (generation 3);
    * shard 01: two messages stamped 10 s apart (moto's clock moved), g's checkpoint at the first;
      leased (generation 2) by m2, whose record and lease were written 120 s in the past: expired;
    * shard 02: empty, no checkpoint, lease released by its last owner (generation 5);
    * shard 03: one message, no checkpoint, never leased.

    Group ``other`` has a live member of its own, which g's description must not show."""
    import moto.s3.models

    real = moto.s3.models.utcnow

    def clock(offset: float) -> Callable[[], Any]:
        return lambda: real() + timedelta(seconds=offset)

    bucket = new_bucket_name("gdesc")
    await store.create_bucket(bucket, versioning=True)
    topic = await create_topic(store, bucket, "t", shards=4)
    p = topic.prefixes

    await store.put_object(bucket, p[0] + "a", b"a")
    await save_checkpoint(store, bucket, p[0], "g", await newest_ms(store, bucket, p[0]) + 1000)

    await store.put_object(bucket, p[1] + "x", b"x")
    first = await newest_ms(store, bucket, p[1])
    monkeypatch.setattr(moto.s3.models, "utcnow", clock(10))
    await store.put_object(bucket, p[1] + "y", b"y")
    monkeypatch.setattr(moto.s3.models, "utcnow", clock(-120))
    await put_member(store, bucket, "g", "m2", host="web-2", pid=7, shards=[p[1]])
    await put_lease(store, bucket, "g", p[1], "m2", 2)
    monkeypatch.setattr(moto.s3.models, "utcnow", real)
    await save_checkpoint(store, bucket, p[1], "g", first)

    await put_lease(store, bucket, "g", p[2], None, 5)
    await store.put_object(bucket, p[3] + "z", b"z")

    await put_member(store, bucket, "g", "m1", host="web-1", pid=1, shards=[p[0]])
    await put_lease(store, bucket, "g", p[0], "m1", 3)
    await put_member(store, bucket, "other", "o1", host="web-9", pid=9, shards=[p[0]])
    await put_lease(store, bucket, "other", p[0], "o1", 8)
    return Seeded(bucket, topic)


async def test_describe_shows_members_leases_generations_and_lag(seeded: Seeded, moto_endpoint: str) -> None:
    """The text output names the group and topic, lists m1 as live and m2 as expired with their host,
    pid, renewal age and shard count (and not the other group's member), then per shard: m1's live
    lease with its generation, m2's expired one, a released and a never-taken lease as free, each
    with the group's watermark (or no checkpoint), unconsumed count and lag (10 s in shard 01)."""
    out = (await ok(moto_endpoint, "group", "describe", seeded.url, "--group", "g")).text
    lines = out.splitlines()
    assert lines[:5] == ["group: g", f"topic: {seeded.url}", "layout: versions", "shards: 4",
                         "members: 2 (1 live)"], out
    live = re.search(r"^member m1: live, host web-1, pid 1, renewed (\d+)s ago, holds 1 shard$", out, re.M)
    assert live is not None, out
    assert int(live[1]) <= 5
    gone = re.search(r"^member m2: expired, host web-2, pid 7, renewed (\d+)s ago, holds 1 shard$", out, re.M)
    assert gone is not None, out
    assert 110 <= int(gone[1]) <= 130
    assert "o1" not in out
    assert "web-9" not in out

    assert re.search(rf"^shard 00 t/00/: owner m1, generation 3, watermark {ISO}, unconsumed 0, lag 0\.0s$",
                     out, re.M), out
    lagging = re.search(rf"^shard 01 t/01/: expired \(was m2\), generation 2, watermark {ISO}, "
                        r"unconsumed 2, lag (\d+\.\d)s$", out, re.M)
    assert lagging is not None, out
    assert 9.0 <= float(lagging[1]) <= 11.0
    assert "shard 02 t/02/: free, generation 5, no checkpoint, unconsumed 0, lag 0.0s" in lines, out
    assert "shard 03 t/03/: free, generation 0, no checkpoint, unconsumed 1, lag 0.0s" in lines, out
    total = re.fullmatch(r"total: unconsumed 3, lag (\d+\.\d)s", lines[-1])
    assert total is not None, out
    assert total[1] == lagging[1]


async def test_describe_json_is_one_document_with_the_same_facts(seeded: Seeded, moto_endpoint: str) -> None:
    """``--json`` prints one JSON document: members with liveness, host, pid and held shards; per shard
    the lease state, owner and generation, the watermark (null without a checkpoint), the unconsumed
    count and lag in seconds; and the totals."""
    doc: dict[str, Any] = json.loads(
        (await ok(moto_endpoint, "group", "describe", seeded.url, "--group", "g", "--json")).text)
    p = seeded.topic.prefixes
    assert (doc["group"], doc["topic"], doc["layout"]) == ("g", seeded.url, "versions")
    assert re.fullmatch(ISO, doc["server_time"])
    members = {m["member"]: m for m in doc["members"]}
    assert set(members) == {"m1", "m2"}
    assert (members["m1"]["live"], members["m1"]["host"], members["m1"]["pid"]) == (True, "web-1", 1)
    assert members["m1"]["shards"] == [p[0]]
    assert members["m1"]["lease_duration"] == 30.0
    assert (members["m2"]["live"], members["m2"]["host"], members["m2"]["pid"]) == (False, "web-2", 7)
    assert members["m2"]["age_s"] >= 110

    shards = doc["shards"]
    assert [s["prefix"] for s in shards] == p
    assert [s["index"] for s in shards] == [0, 1, 2, 3]
    assert [(s["lease"]["state"], s["lease"]["owner"], s["lease"]["generation"]) for s in shards] == [
        ("owned", "m1", 3), ("expired", "m2", 2), ("free", None, 5), ("free", None, 0)]
    assert shards[3]["lease"]["renewed"] is None
    assert [s["unconsumed"] for s in shards] == [0, 2, 0, 1]
    assert [s["watermark"] is not None for s in shards] == [True, True, False, False]
    assert 9.0 <= shards[1]["lag_s"] <= 11.0
    assert doc["unconsumed"] == 3
    assert doc["lag_s"] == shards[1]["lag_s"]


async def test_group_from_config_and_a_group_with_nothing_yet(store: Store, moto_endpoint: str,
                                                              tmp_path: Path) -> None:
    """Without ``--group`` the group is ``[consumer] group`` of ``--config``; a group that has no
    members, leases or checkpoints yet shows ``members: none`` and every shard free at generation 0,
    with everything in the shard unconsumed."""
    bucket = new_bucket_name("gnone")
    await store.create_bucket(bucket, versioning=True)
    topic = await create_topic(store, bucket, "t", shards=2)
    await store.put_object(bucket, topic.prefixes[1] + "k", b"v")
    config = tmp_path / "s3stream.toml"
    config.write_text('[consumer]\ngroup = "workers"\n[consumer.leases]\nenabled = true\nduration = 10\n')
    out = (await ok(moto_endpoint, "group", "describe", f"s3://{bucket}/t", "--config", str(config))).text
    assert out.splitlines() == [
        "group: workers", f"topic: s3://{bucket}/t", "layout: versions", "shards: 2", "members: none",
        "shard 00 t/00/: free, generation 0, no checkpoint, unconsumed 0, lag 0.0s",
        "shard 01 t/01/: free, generation 0, no checkpoint, unconsumed 1, lag 0.0s",
        "total: unconsumed 1, lag 0.0s",
    ], out


async def test_missing_bucket_and_bad_group_name_are_one_line_errors(moto_endpoint: str) -> None:
    """A bucket that does not exist, or a group name the consumer would refuse, is one
    ``s3stream: error:`` line on stderr and exit code 2, with no traceback."""
    missing = f"s3://{new_bucket_name('none')}/t"
    assert_one_line_error(await cli(moto_endpoint, "group", "describe", missing, "--group", "g"),
                          "does not exist")
    assert_one_line_error(await cli(moto_endpoint, "group", "describe", missing, "--group", "a/b"),
                          "consumer.group")
