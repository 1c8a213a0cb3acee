"""``s3stream topic describe``: a topic's layout and shards, what each shard holds, and how far behind
each consumer group is.

A group's checkpoint of a shard says what it has handled (a watermark plus a done set); the shard's
listing is checked against the cursor rebuilt from it, so ``unconsumed`` counts exactly the versions
(or log objects) the group would still deliver. ``lag`` is the newest message's time minus the group's
effective watermark, the time of the oldest message it has not handled (0 when it has handled all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import click

from s3stream.config import Settings
from s3stream.errors import NotFound
from s3stream.layouts.cursor import Checkpoint, VersionCursor
from s3stream.layouts.logcursor import LogCheckpoint, LogCursor
from s3stream.layouts.topics import CONTROL_PREFIX, Topic, resolve_topic
from s3stream.message import Entry, iso
from s3stream.ops.admin import GroupCheckpoint, find_checkpoints
from s3stream.s3.keys import split_url
from s3stream.s3.store import Store, open_store


@dataclass
class GroupShard:
    """One group's position in one shard."""

    checkpoint: GroupCheckpoint | None
    cursor: VersionCursor | LogCursor
    unconsumed: int = 0
    oldest_unconsumed_ms: int | None = None


@dataclass
class ShardStats:
    """What one shard holds, and each group's position in it."""

    index: int
    prefix: str
    objects: int = 0
    versions: int = 0
    newest_ms: int | None = None
    groups: dict[str, GroupShard] = field(default_factory=dict)

    def lag_ms(self, group: str) -> int:
        pos = self.groups[group]
        if pos.oldest_unconsumed_ms is None or self.newest_ms is None:
            return 0
        return max(0, self.newest_ms - pos.oldest_unconsumed_ms)


@dataclass
class TopicView:
    """Everything ``topic describe`` shows."""

    topic: Topic
    stats: list[ShardStats]
    groups: list[str]


async def read_topic(settings: Settings, url: str) -> TopicView:
    """Read the topic's metadata and checkpoints and scan its shards. A prefix with neither topic
    metadata nor objects is a :class:`~s3stream.errors.NotFound` ("topic … does not exist")."""
    bucket, name = split_url(url)
    async with open_store(settings.s3, max_connections=16) as store:
        await store.check_bucket(bucket)
        topic = await resolve_topic(store, bucket, name)
        found = await find_checkpoints(store, topic, settings.consumer.checkpoint.prefix)
        groups = sorted({cp.group for cp in found})
        stats = await shard_stats(store, topic, found, groups)
    if topic.plain and not groups and not any(s.versions for s in stats):
        raise NotFound(f"topic s3://{bucket}/{topic.name} does not exist (no topic metadata, no objects)",
                       operation="ListObjectVersions")
    return TopicView(topic, stats, groups)


async def describe(settings: Settings, url: str) -> None:
    """Print the topic's description (see the module docstring)."""
    view = await read_topic(settings, url)
    for line in render(view.topic, view.stats, view.groups):
        click.echo(line)


def to_json(view: TopicView) -> dict[str, Any]:
    """The description as one JSON document (times ISO 8601 UTC, lag in seconds)."""
    topic, stats = view.topic, view.stats
    newest = max((s.newest_ms for s in stats if s.newest_ms), default=None)
    groups = []
    for group in view.groups:
        positions = [s.groups[group] for s in stats]
        committed = [p.checkpoint for p in positions if p.checkpoint is not None]
        groups.append({
            "group": group, "checkpoints": len(committed),
            "watermark": iso(min(cp.watermark_ms for cp in committed)) if committed else None,
            "unconsumed": sum(p.unconsumed for p in positions),
            "lag_s": max((s.lag_ms(group) for s in stats), default=0) / 1000,
        })
    return {
        "topic": f"s3://{topic.bucket}/{topic.name}", "bucket": topic.bucket, "name": topic.name,
        "layout": topic.layout, "shards": topic.shards, "plain": topic.plain,
        "created": None if topic.plain else iso(topic.created_ms),
        "newest_message": iso(newest) if newest else None,
        "shard_stats": [{
            "index": s.index, "prefix": s.prefix, "objects": s.objects, "versions": s.versions,
            "newest_message": iso(s.newest_ms) if s.newest_ms else None,
        } for s in stats],
        "groups": groups,
    }


async def shard_stats(store: Store, topic: Topic, found: list[GroupCheckpoint],
                      groups: list[str]) -> list[ShardStats]:
    """Each shard of the topic, listed once, with each of ``groups``' position in it (from the
    checkpoints ``found``)."""
    stats = []
    for index, prefix in enumerate(topic.prefixes):
        shard = ShardStats(index, prefix)
        for group in groups:
            shard.groups[group] = _position(topic, shard, [cp for cp in found if cp.group == group])
        await _scan(store, topic, shard)
        stats.append(shard)
    return stats


def _position(topic: Topic, shard: ShardStats, found: list[GroupCheckpoint]) -> GroupShard:
    """A group's cursor in a shard, from its checkpoint (a fresh cursor when it has none)."""
    mine = next((cp for cp in found if cp.shard == shard.index), None)
    cp = mine.checkpoint if mine else None
    if topic.layout == "log":
        saved = cp if isinstance(cp, LogCheckpoint) else None
        return GroupShard(mine, LogCursor(mine.prefix if mine else shard.prefix, saved))
    return GroupShard(mine, VersionCursor(cp if isinstance(cp, Checkpoint) else None))


async def _scan(store: Store, topic: Topic, shard: ShardStats) -> None:
    """List the shard once, counting what it holds and what each group has not handled."""
    async for entry in _entries(store, topic, shard.prefix):
        if entry.key.startswith(CONTROL_PREFIX + "/"):
            continue
        shard.versions += 1
        shard.objects += 1 if topic.layout == "log" or (entry.latest and not entry.deleted) else 0
        shard.newest_ms = max(shard.newest_ms or 0, entry.last_modified_ms)
        for pos in shard.groups.values():
            if pos.cursor.is_new(entry):
                pos.unconsumed += 1
                oldest = pos.oldest_unconsumed_ms
                lm = entry.last_modified_ms
                pos.oldest_unconsumed_ms = lm if oldest is None else min(oldest, lm)


async def _entries(store: Store, topic: Topic, prefix: str) -> AsyncIterator[Entry]:
    """Every version (versions layout) or object (log layout) under ``prefix``, all pages."""
    if topic.layout == "log":
        token: str | None = None
        while True:
            objects = await store.list_objects(topic.bucket, prefix, token=token)
            for entry in objects.entries:
                yield entry
            token = objects.next_token
            if token is None:
                return
    key_marker: str | None = None
    version_marker: str | None = None
    while True:
        page = await store.list_versions(topic.bucket, prefix, key_marker=key_marker,
                                         version_id_marker=version_marker)
        for entry in page.entries:
            yield entry
        if not page.truncated:
            return
        key_marker, version_marker = page.next_key_marker, page.next_version_id_marker


def render(topic: Topic, stats: list[ShardStats], groups: list[str]) -> list[str]:
    """The description as lines of ``name: value``."""
    newest = max((s.newest_ms for s in stats if s.newest_ms), default=None)
    lines = [
        f"topic: s3://{topic.bucket}/{topic.name}",
        f"layout: {topic.layout}",
        f"shards: {topic.shards}",
        f"created: {iso(topic.created_ms) if not topic.plain else '- (a plain prefix, no topic metadata)'}",
        f"newest message: {iso(newest) if newest else '-'}",
    ]
    for s in stats:
        held = f"{s.objects} objects" + (f", {s.versions} versions" if topic.layout == "versions" else "")
        lines.append(f"shard {s.index:0{topic.width}x} {s.prefix}: {held}, "
                     f"newest {iso(s.newest_ms) if s.newest_ms else '-'}")
    lines += [_group_line(group, topic, stats) for group in groups] or ["groups: none"]
    return lines


def _group_line(group: str, topic: Topic, stats: list[ShardStats]) -> str:
    positions = [s.groups[group] for s in stats]
    committed = [p.checkpoint for p in positions if p.checkpoint is not None]
    watermark = min(cp.watermark_ms for cp in committed)
    unconsumed = sum(p.unconsumed for p in positions)
    lag = max(s.lag_ms(group) for s in stats) / 1000
    return (f"group {group}: checkpoints {len(committed)}/{topic.shards}, watermark {iso(watermark)}, "
            f"unconsumed {unconsumed}, lag {lag:.1f}s")
