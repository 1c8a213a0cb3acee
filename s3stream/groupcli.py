"""``s3stream group describe``: a consumer group's members, who holds each shard of a topic, and how far
behind the group is in each.

Everything is read from the bucket with the group's own objects (see :mod:`s3stream.group`): one
listing of ``_s3stream/groups/<group>/members/`` and a GET per member record, one listing of
``…/leases/`` and a GET per lease of the topic's shards, a GET per checkpoint, and the shards'
listings that ``topic describe`` makes (:mod:`s3stream.describe`) to count what the group has not
handled. A member or lease is live while its LastModified is within the lease duration of the
server's clock (the member's own ``lease_duration``; for a lease, its owner's, else
``[consumer.leases] duration``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import click
import orjson

from s3stream.admin import find_checkpoints, shard_prefixes
from s3stream.cli import main, run_async, s3_options
from s3stream.commands import command_settings, iso, split_url
from s3stream.config import Settings
from s3stream.describe import ShardStats, shard_stats
from s3stream.errors import NotFound
from s3stream.group import group_prefix, lease_key
from s3stream.lease import is_live
from s3stream.message import Entry
from s3stream.store import Store, open_store
from s3stream.topics import Topic, resolve_topic

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


@main.group("group")
def group_cli() -> None:
    """Inspect consumer groups (members sharing a topic by leases) and move their positions."""


@group_cli.command("describe")
@click.argument("url")
@click.option("--group", help="The consumer group. [default: [consumer] group, else default]")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text lines.")
@s3_options
def group_describe(url: str, group: str | None, as_json: bool, endpoint_url: str | None,
                   config: str | None) -> None:
    """Members, shard leases (owner, generation) and per-shard lag of a group on s3://BUCKET/TOPIC.

    A topic that does not exist (neither metadata nor objects) is an error, exit 2; a group that has
    no members, leases or checkpoints yet is described as it would start: everything unconsumed."""
    extra: dict[str, Any] = {"consumer": {"group": group}} if group else {}
    run_async(lambda: describe_group(
        command_settings(config, endpoint_url, sections=("s3", "consumer"), **extra), url, as_json=as_json))


async def describe_group(settings: Settings, url: str, *, as_json: bool = False) -> None:
    """Print the group's description (see the module docstring)."""
    view = await read_group(settings, url)
    if as_json:
        click.echo(orjson.dumps(to_json(view), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(view):
            click.echo(line)


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


def _lease_text(lease: LeaseInfo) -> str:
    if lease.state == "owned":
        return f"owner {lease.owner}"
    if lease.state == "expired":
        return f"expired (was {lease.owner})"
    return "free"


def render(view: GroupView) -> list[str]:
    """The description as lines of ``name: value``."""
    topic = view.topic
    live = sum(1 for m in view.members if m.live)
    lines = [
        f"group: {view.group}",
        f"topic: s3://{topic.bucket}/{topic.name}",
        f"layout: {topic.layout}",
        f"shards: {topic.shards}",
        f"members: {len(view.members)} ({live} live)" if view.members else "members: none",
    ]
    for m in view.members:
        held = f"{len(m.shards)} shard" + ("" if len(m.shards) == 1 else "s")
        lines.append(f"member {m.member}: {'live' if m.live else 'expired'}, host {m.host or '-'}, "
                     f"pid {m.pid if m.pid is not None else '-'}, renewed {m.age_s}s ago, holds {held}")
    for stats, lease in zip(view.stats, view.leases, strict=True):
        pos = stats.groups[view.group]
        committed = f"watermark {iso(pos.checkpoint.watermark_ms)}" if pos.checkpoint else "no checkpoint"
        lines.append(f"shard {stats.index:0{topic.width}x} {stats.prefix}: {_lease_text(lease)}, "
                     f"generation {lease.generation}, {committed}, unconsumed {pos.unconsumed}, "
                     f"lag {stats.lag_ms(view.group) / 1000:.1f}s")
    unconsumed = sum(s.groups[view.group].unconsumed for s in view.stats)
    lag = max((s.lag_ms(view.group) for s in view.stats), default=0) / 1000
    lines.append(f"total: unconsumed {unconsumed}, lag {lag:.1f}s")
    return lines


def to_json(view: GroupView) -> dict[str, Any]:
    """The description as one JSON-able document (times ISO 8601, durations in seconds)."""
    topic = view.topic
    shards: list[dict[str, Any]] = []
    for stats, lease in zip(view.stats, view.leases, strict=True):
        pos = stats.groups[view.group]
        shards.append({
            "index": stats.index, "prefix": stats.prefix,
            "lease": {"state": lease.state, "owner": lease.owner, "generation": lease.generation,
                      "renewed": iso(lease.renewed_ms) if lease.renewed_ms is not None else None},
            "watermark": iso(pos.checkpoint.watermark_ms) if pos.checkpoint else None,
            "unconsumed": pos.unconsumed, "lag_s": stats.lag_ms(view.group) / 1000,
        })
    return {
        "group": view.group,
        "topic": f"s3://{topic.bucket}/{topic.name}",
        "layout": topic.layout,
        "server_time": iso(view.now_ms),
        "members": [{
            "member": m.member, "live": m.live, "host": m.host, "pid": m.pid,
            "started": iso(m.started_ms) if m.started_ms is not None else None,
            "renewed": iso(m.renewed_ms), "age_s": m.age_s, "lease_duration": m.lease_duration,
            "shards": list(m.shards),
        } for m in view.members],
        "shards": shards,
        "unconsumed": sum(s.groups[view.group].unconsumed for s in view.stats),
        "lag_s": max((s.lag_ms(view.group) for s in view.stats), default=0) / 1000,
    }


from s3stream import seekcli as _seekcli  # noqa: E402, F401  (registers `group seek` and `group export`)
