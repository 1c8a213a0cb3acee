"""``s3stream group seek`` and ``group export``: read a group's positions in a topic, plan a move, write it.

Each shard's checkpoint is read (its document and ETag), the shard is listed once (to count what the
move replays and skips, and for ``latest``), the new checkpoint is computed by :mod:`s3stream.groups.seekpos`
and written with ``If-Match`` on the ETag that was read (``If-None-Match: *`` where there was none).

Fences keep working: the new checkpoint names the same lease generation as the one it replaces, so a
member taking the shard later fences it as usual and resumes from the new position; a member that
holds the shard now (only with ``--force``) keeps its own position in memory, and its next commit
fails on the changed ETag: it logs that the shard was fenced and forfeits it, and the shard is taken
again (by that member at its next round, or by another once the lease expires) under a new generation,
from the new position. The seek is never overwritten.
A consumer run without leases stops at its next commit with a checkpoint conflict instead.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from s3stream.config import Settings
from s3stream.errors import CheckpointConflict, ConfigError, NotFound, PreconditionFailed
from s3stream.groups.membership import group_prefix
from s3stream.groups.seekpos import (
    Change,
    Position,
    Target,
    compare,
    log_floor_ms,
    log_position,
    versions_position,
)
from s3stream.groups.view import read_leases, read_members
from s3stream.layouts.cursor import Checkpoint
from s3stream.layouts.logcursor import LogCheckpoint
from s3stream.layouts.topics import CONTROL_PREFIX, Topic, resolve_topic
from s3stream.message import Entry, iso
from s3stream.ops.admin import shard_prefixes
from s3stream.ops.describe import _entries as shard_entries
from s3stream.pipeline.checkpoint import FORMAT_VERSION, decode, encode, shard_name
from s3stream.pipeline.poller import list_page
from s3stream.s3.keys import split_url
from s3stream.s3.store import Store

POSITION_KIND = "s3stream-group-positions"


class Slot(Protocol):
    """Where one shard's checkpoint of the group lives: an S3 object or a local file."""

    @property
    def where(self) -> str: ...

    async def read(self) -> tuple[dict[str, Any] | None, str | None]: ...

    async def write(self, body: bytes, etag: str | None) -> None: ...


@dataclass
class S3Slot:
    """The group's checkpoint object of one shard prefix, written with ``If-Match``."""

    store: Store
    bucket: str
    key: str

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    async def read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            obj = await self.store.get_object(self.bucket, self.key)
        except NotFound:
            return None, None
        decode(obj.body, where=self.where)  # a damaged checkpoint is an error, not a restart
        return orjson.loads(obj.body), obj.etag

    async def write(self, body: bytes, etag: str | None) -> None:
        await self.store.put_object(self.bucket, self.key, body, if_match=etag, if_none_match=etag is None,
                                    content_type="application/json")


@dataclass
class FileSlot:
    """A checkpoint file of ``consume --checkpoint-dir`` (no fence: replaced atomically)."""

    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    async def read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        decode(data, where=self.where)
        return orjson.loads(data), None

    async def write(self, body: bytes, etag: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, self.path)


@dataclass
class ShardSeek:
    """One shard: where the group is, where it goes, and what that replays and skips."""

    index: int
    prefix: str
    slots: list[tuple[str, Slot]]  # (prefix named by the checkpoint, where it is) to write
    current: Position | None
    docs: list[tuple[dict[str, Any] | None, str | None]]  # each slot's document and ETag as read
    new: Position | None = None  # None: no checkpoint (the group's start_from applies)
    change: Change = field(default_factory=lambda: Change(0, 0, 0))
    owner: str | None = None  # the member holding a live lease on it
    written: bool = False


@dataclass
class SeekPlan:
    """Everything a seek shows and writes."""

    group: str
    topic: Topic
    now_ms: int
    target: Target | None
    shards: list[ShardSeek]
    owners: dict[str, list[int]] = field(default_factory=dict)  # live lease owner -> shard indexes


def _slot(store: Store, bucket: str, prefix: str, group: str, control: str,
          checkpoint_dir: str | None) -> Slot:
    name = f"{shard_name(prefix)}.json"
    if checkpoint_dir:
        return FileSlot(Path(checkpoint_dir) / group / bucket / name)
    return S3Slot(store, bucket, f"{control}/{group}/{name}")


def _current(doc: dict[str, Any] | None, where: str) -> Position | None:
    if doc is None or doc.get("fresh"):
        return None
    return decode(orjson.dumps(doc), where=where)


async def read_positions(store: Store, settings: Settings, url: str, checkpoint_dir: str | None) -> SeekPlan:
    """The topic, the group's checkpoint of each shard, its live lease owners and the server's time;
    refuses an unknown topic or group with one line."""
    bucket, name = split_url(url)
    group = settings.consumer.group
    await store.check_bucket(bucket)
    topic = await resolve_topic(store, bucket, name)
    control = settings.consumer.checkpoint.prefix.strip("/")
    shards: list[ShardSeek] = []
    for index in range(topic.shards):
        named = [p for i, p in shard_prefixes(topic) if i == index]
        slots = [(p, _slot(store, bucket, p, group, control, checkpoint_dir)) for p in named]
        docs = await asyncio.gather(*(slot.read() for _, slot in slots))
        found = [(s, d) for s, d in zip(slots, docs, strict=True) if d[0] is not None]
        if found:
            slots, docs = [s for s, _ in found], [d for _, d in found]
        current = _current(docs[0][0], slots[0][1].where)
        shards.append(ShardSeek(index, topic.shard_prefix(index), slots, current, list(docs)))
    members = await read_members(store, bucket, group, settings.consumer.leases.duration)
    durations = {m.member: m.lease_duration for m in members}
    leases, now_ms = await read_leases(store, topic, group, durations, settings.consumer.leases.duration)
    if topic.plain and not (await store.list_objects(bucket, topic.shard_prefix(0), max_keys=1)).entries:
        raise ConfigError(f"topic s3://{bucket}/{topic.name} does not exist (no topic metadata, no objects)")
    known = any(doc for s in shards for doc, _ in s.docs) or members or any(
        lease.renewed_ms is not None for lease in leases)
    if not known and not await _has_group_objects(store, bucket, group):
        raise ConfigError(f"group {group!r} does not exist for s3://{bucket}/{topic.name} "
                          "(no checkpoints, members or leases)")
    plan = SeekPlan(group, topic, now_ms, None, shards)
    for shard, lease in zip(shards, leases, strict=True):
        if lease.state == "owned" and lease.owner is not None:
            shard.owner = lease.owner
            plan.owners.setdefault(lease.owner, []).append(shard.index)
    return plan


async def _has_group_objects(store: Store, bucket: str, group: str) -> bool:
    page = await store.list_objects(bucket, group_prefix(group), max_keys=1)
    return bool(page.entries)


async def listing(store: Store, topic: Topic, prefix: str, *, objects: bool = False) -> list[Entry]:
    """Every message (version or log object) stored under the shard now; with ``objects`` (a plain
    prefix in a bucket without versioning), its current objects named as the consumer names them."""
    control = CONTROL_PREFIX + "/"
    if not objects:
        return [e async for e in shard_entries(store, topic, prefix) if not e.key.startswith(control)]
    entries: list[Entry] = []
    marker: str | None = None
    while True:
        page = await list_page(store, topic.bucket, prefix, objects=True, key_marker=marker,
                               version_marker=None, max_keys=1000)
        entries += [e for e in page.entries if not e.key.startswith(control)]
        if not page.truncated:
            return entries
        marker = page.next_key_marker


def new_position(plan: SeekPlan, shard: ShardSeek, target: Target, listed: list[Entry],
                 loaded: list[Position | None] | None, settle_ms: int) -> Position | None:
    """The position ``target`` means in ``shard``."""
    log = plan.topic.layout == "log"
    if target.kind == "file":
        assert loaded is not None
        return loaded[shard.index]
    if target.kind == "earliest":
        if log:
            return log_position(shard.prefix, log_floor_ms(shard.prefix, listed, plan.now_ms, settle_ms))
        return Checkpoint(watermark_ms=0)
    at_ms, latest = (plan.now_ms, True) if target.kind == "latest" else (target.at_ms, False)
    if log:
        floor = log_floor_ms(shard.prefix, listed, plan.now_ms, settle_ms)
        return log_position(shard.prefix, at_ms, listed, settle_ms=settle_ms, latest=latest,
                            not_before_ms=floor)
    return versions_position(at_ms, listed, settle_ms=settle_ms, latest=latest)


async def plan_seek(store: Store, plan: SeekPlan, target: Target, *, settle_window: float) -> None:
    """Fill in each shard's new position and what the move replays and skips (lists every shard);
    ``settle_window`` is the group's (``[consumer] settle_window``)."""
    plan.target = target
    loaded = load_positions(target.path, plan.topic) if target.path is not None else None
    topic = plan.topic
    objects = (topic.layout == "versions" and topic.plain
               and await store.versioning_status(topic.bucket) != "Enabled")
    for shard in plan.shards:
        listed = await listing(store, topic, shard.prefix, objects=objects)
        shard.new = new_position(plan, shard, target, listed, loaded, round(settle_window * 1000))
        if shard.new is not None:
            shard.change = compare(shard.prefix, plan.topic.layout, shard.current, shard.new, listed)
        else:  # back to no checkpoint: counted as a group that has handled nothing
            shard.change = compare(shard.prefix, plan.topic.layout, shard.current,
                                   _nothing_handled(plan.topic, shard.prefix), listed)


def _nothing_handled(topic: Topic, prefix: str) -> Position:
    return LogCheckpoint(sealed_ms=0) if topic.layout == "log" else Checkpoint(watermark_ms=0)


def _body(plan: SeekPlan, prefix: str, position: Position | None, doc: dict[str, Any] | None) -> bytes:
    """The checkpoint document to write: the new position, naming the lease generation it replaces."""
    extra: dict[str, Any] = {}
    if doc is not None and isinstance(doc.get("lease"), dict):
        extra["lease"] = doc["lease"]
    if position is None:
        extra["fresh"] = True
    return encode(position or Checkpoint(watermark_ms=0), bucket=plan.topic.bucket, prefix=prefix,
                  extra=extra or None)


async def write_positions(plan: SeekPlan, *, force: bool) -> None:
    """Write each shard's new checkpoint with ``If-Match`` on what was read. A checkpoint that changed
    in between (a member committed or took the shard) stops the seek unless ``force``, which reads it
    again and writes on top (keeping the lease generation it names)."""
    for shard in plan.shards:
        for i, (prefix, slot) in enumerate(shard.slots):
            doc, etag = shard.docs[i]
            for _ in range(5):
                try:
                    await slot.write(_body(plan, prefix, shard.new, doc), etag)
                    break
                except PreconditionFailed:
                    if not force:
                        raise CheckpointConflict(
                            f"checkpoint {slot.where} changed during the seek (a member committed or "
                            f"took shard {shard.index:0{plan.topic.width}x}); shards before it were "
                            "moved; run the seek again") from None
                    doc, etag = await slot.read()
            else:
                raise CheckpointConflict(f"checkpoint {slot.where} keeps changing; run the seek again")
        shard.written = True


def export_document(plan: SeekPlan) -> dict[str, Any]:
    """The group's current positions as a position file (``--to FILE`` restores them)."""
    topic = plan.topic
    return {
        "format": FORMAT_VERSION, "kind": POSITION_KIND, "topic": f"s3://{topic.bucket}/{topic.name}",
        "layout": topic.layout, "shards": topic.shards, "group": plan.group, "saved": iso(plan.now_ms),
        "positions": [{
            "shard": s.index, "prefix": s.prefix,
            "checkpoint": None if s.current is None else orjson.loads(
                encode(s.current, bucket=topic.bucket, prefix=s.prefix)),
        } for s in plan.shards],
    }


def load_positions(path: Path, topic: Topic) -> list[Position | None]:
    """Each shard's position from a position file, checked against the topic's layout and shards."""
    where = f"--to {path}"
    try:
        doc = orjson.loads(path.read_bytes())
        if not isinstance(doc, dict) or doc.get("kind") != POSITION_KIND:
            raise ValueError("not a position file of `s3stream group export` or `group seek --save`")
        if doc.get("layout") != topic.layout or doc.get("shards") != topic.shards:
            raise ValueError(f"it holds {doc.get('shards')} {doc.get('layout')} shards of "
                             f"{doc.get('topic')}; s3://{topic.bucket}/{topic.name} has "
                             f"{topic.shards} {topic.layout} shards")
        by_shard = {int(p["shard"]): p.get("checkpoint") for p in doc["positions"]}
        if sorted(by_shard) != list(range(topic.shards)):
            raise ValueError("it does not hold one position per shard")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return [None if by_shard[i] is None else decode(orjson.dumps(by_shard[i]), where=f"{where} shard {i}")
            for i in range(topic.shards)]
