"""A consumer group as stored in the bucket: its members, who holds each shard of a topic, and how far
behind the group is in each (what ``s3stream group describe`` shows and ``group seek`` checks).

Everything is read from the bucket with the group's own objects (see :mod:`s3stream.groups.membership`): one
listing of ``_s3stream/groups/<group>/members/`` and a GET per member record, one listing of
``…/leases/`` and a GET per lease of the topic's shards, a GET per checkpoint, and the shards'
listings that ``topic describe`` makes (:mod:`s3stream.ops.describe`) to count what the group has not
handled. A member or lease is live while its LastModified is within the lease duration of the
server's clock (the member's own ``lease_duration``; for a lease, its owner's, else
``[consumer.leases] duration``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from s3stream.config import Settings
from s3stream.errors import NotFound
from s3stream.groups.lease import is_live
from s3stream.groups.membership import group_prefix, lease_key
from s3stream.layouts.topics import Topic, resolve_topic
from s3stream.message import Entry
from s3stream.ops.admin import find_checkpoints, shard_prefixes
from s3stream.ops.describe import ShardStats, shard_stats
from s3stream.s3.keys import split_url
from s3stream.s3.store import Store, open_store

LeaseState = Literal["owned", "expired", "free"]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member record of the group, as listed and read."""

    member: str
    live: bool
    renewed_ms: int
    age_s: int  # seconds since its last renewal, by the server's clock
    lease_duration: float
    host: str | None = None
    pid: int | None = None
    started_ms: int | None = None
    shards: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One shard's lease: ``owned`` (renewed in time), ``expired`` (its owner stopped renewing) or
    ``free`` (released, never taken, or unreadable)."""

    state: LeaseState
    owner: str | None
    generation: int
    renewed_ms: int | None  # None: no lease object


@dataclass
class GroupView:
    """Everything ``group describe`` shows."""

    group: str
    topic: Topic
    now_ms: int
    members: list[MemberInfo]
    leases: list[LeaseInfo]  # one per shard, in shard order
    stats: list[ShardStats]


async def read_group(settings: Settings, url: str) -> GroupView:
    """Read the group's members, the topic's leases and checkpoints, and scan its shards."""
    bucket, name = split_url(url)
    group = settings.consumer.group
    default_duration = settings.consumer.leases.duration
    async with open_store(settings.s3, max_connections=16) as store:
        await store.check_bucket(bucket)
        topic = await resolve_topic(store, bucket, name)
        members = await read_members(store, bucket, group, default_duration)
        durations = {m.member: m.lease_duration for m in members}
        leases, now_ms = await read_leases(store, topic, group, durations, default_duration)
        found = await find_checkpoints(store, topic, settings.consumer.checkpoint.prefix, [group])
        stats = await shard_stats(store, topic, found, [group])
    if topic.plain and not found and not any(s.versions for s in stats):
        raise NotFound(f"topic s3://{bucket}/{topic.name} does not exist (no topic metadata, no objects)",
                       operation="ListObjectVersions")
    return GroupView(group, topic, now_ms, members, leases, stats)


async def _list_json(store: Store, bucket: str, prefix: str) -> tuple[list[Entry], int]:
    """Every ``.json`` object under ``prefix`` (all pages), and the server's time of the first page."""
    entries, now_ms = await store.list_all_objects(bucket, prefix)
    return [e for e in entries if e.key.endswith(".json")], now_ms or int(time.time() * 1000)


async def _read_json(store: Store, bucket: str, key: str) -> dict[str, Any] | None:
    """A small JSON object's content; None when it is gone or is not a JSON object."""
    try:
        obj = await store.get_object(bucket, key)
        doc = orjson.loads(obj.body)
    except NotFound:
        return None
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def read_members(store: Store, bucket: str, group: str, default_duration: float) -> list[MemberInfo]:
    """The group's member records in ``bucket``, sorted by id, live or not."""
    prefix = f"{group_prefix(group)}members/"
    entries, now_ms = await _list_json(store, bucket, prefix)
    docs = await asyncio.gather(*(_read_json(store, bucket, e.key) for e in entries))
    members = []
    for entry, doc in zip(entries, docs, strict=True):
        if doc is None:  # deleted between the listing and the GET
            continue
        duration = _number(doc.get("lease_duration"), float) or default_duration
        shards = doc.get("shards")
        members.append(MemberInfo(
            member=entry.key[len(prefix):-len(".json")],
            live=is_live(entry.last_modified_ms, now_ms, duration),
            renewed_ms=entry.last_modified_ms,
            age_s=max(0, (now_ms - entry.last_modified_ms) // 1000),
            lease_duration=duration,
            host=str(doc["host"]) if doc.get("host") is not None else None,
            pid=_number(doc.get("pid"), int),
            started_ms=_number(doc.get("started_ms"), int),
            shards=tuple(str(s) for s in shards) if isinstance(shards, list) else (),
        ))
    return sorted(members, key=lambda m: m.member)


async def read_leases(store: Store, topic: Topic, group: str, durations: dict[str, float],
                      default_duration: float) -> tuple[list[LeaseInfo], int]:
    """Each shard's lease, in shard order, and the server's time of the listing. A lease lives as long
    as its owner's record says (``durations``), else ``default_duration``."""
    listed, now_ms = await _list_json(store, topic.bucket, f"{group_prefix(group)}leases/")
    by_key = {e.key: e for e in listed}
    alternatives = shard_prefixes(topic)  # a plain topic's members may name it with or without "/"
    chosen: list[Entry | None] = []
    for index in range(topic.shards):
        named = [by_key[key] for i, prefix in alternatives
                 if i == index and (key := lease_key(group, prefix)) in by_key]
        chosen.append(max(named, key=lambda e: e.last_modified_ms) if named else None)
    docs = await asyncio.gather(*(_read_json(store, topic.bucket, e.key) for e in chosen if e is not None))
    bodies = iter(docs)
    leases = []
    for entry in chosen:
        doc = next(bodies) if entry is not None else None
        if entry is None or doc is None:
            leases.append(LeaseInfo("free", None, 0, None))
            continue
        owner = str(doc["owner"]) if doc.get("owner") is not None else None
        generation = _number(doc.get("generation"), int) or 0
        duration = durations.get(owner or "", default_duration)
        state: LeaseState = "free"
        if owner is not None:
            state = "owned" if is_live(entry.last_modified_ms, now_ms, duration) else "expired"
        leases.append(LeaseInfo(state, owner, generation, entry.last_modified_ms))
    return leases, now_ms


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """``value`` as an int or float, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)
