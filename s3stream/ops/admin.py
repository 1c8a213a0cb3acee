"""What ``s3stream bucket …`` and ``s3stream topic …`` (but ``describe``) do: create and remove buckets and
topics, and find the consumer groups' checkpoints of a topic. Nothing here prints: the functions return
what they did, as a line for the command to print, and report long deletes to a ``progress`` callback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from s3stream.config import Settings
from s3stream.errors import (
    AccessDenied,
    BucketNotFound,
    BucketOwnedElsewhere,
    ConfigError,
    NotFound,
    PermanentError,
)
from s3stream.groups.membership import GROUPS_PREFIX, group_prefix, lease_key
from s3stream.layouts.cursor import Checkpoint
from s3stream.layouts.heads import head_key
from s3stream.layouts.logcursor import LogCheckpoint
from s3stream.layouts.topics import (
    DEFAULT_DIR_SECONDS,
    Layout,
    Topic,
    create_topic,
    is_directory_bucket,
    list_topics,
    resolve_topic,
    validate_topic_name,
)
from s3stream.pipeline.checkpoint import decode, shard_name
from s3stream.s3.keys import key_versions, split_url
from s3stream.s3.store import Store, open_store
from s3stream.service.progress import ProgressCallback

Idents = list[tuple[str, str | None]]


def directory_zone(bucket: str) -> str:
    """The availability zone ID in a directory bucket's name (``name--use1-az4--x-s3`` → ``use1-az4``)."""
    return bucket.rsplit("--", 2)[1]


async def create_bucket(settings: Settings, name: str, *, versioning: bool) -> str:
    """Create a bucket; a directory bucket (``NAME--AZID--x-s3``) in its zone, without versioning.
    Returns what happened, as one line. A bucket that exists and answers to these credentials is left
    as it is (``versioning`` still turns versioning on); one that belongs to another account is a
    :class:`~s3stream.errors.BucketOwnedElsewhere`."""
    async with open_store(settings.s3, max_connections=2) as store:
        if is_directory_bucket(name) and versioning:
            raise ConfigError(f"bucket {name!r} is an S3 Express directory bucket: directory buckets "
                              "have no versioning (drop --versioning; use log-layout topics)")
        if await _bucket_exists(store, name):
            said = f"bucket {name} already exists (owned by you)"
            if not versioning:
                return said
            await store.put_versioning(name, "Enabled")
            return f"{said}; versioning enabled"
        if is_directory_bucket(name):
            await store.create_directory_bucket(name, directory_zone(name))
            return f"created directory bucket {name} in zone {directory_zone(name)}"
        await store.create_bucket(name, versioning=versioning, region=settings.s3.region)
    return f"created bucket {name} (versioning {'enabled' if versioning else 'off'})"


async def _bucket_exists(store: Store, name: str) -> bool:
    """True when the bucket exists and answers to these credentials; False when there is none; a
    bucket that refuses them belongs to someone else."""
    try:
        await store.check_bucket(name)
    except BucketNotFound:
        return False
    except AccessDenied:
        raise BucketOwnedElsewhere(f"bucket {name!r} already exists and is not yours: HeadBucket was "
                                   "denied (another account owns it, or these credentials may not "
                                   "read it; bucket names are global)") from None
    return True


async def versioning(settings: Settings, name: str, *, change: str | None) -> str:
    """Bucket ``name``'s versioning status (``Enabled``, ``Suspended`` or ``Off``), after setting it to
    ``change`` (``Enabled`` or ``Suspended``) when given."""
    async with open_store(settings.s3, max_connections=2) as store:
        await store.check_bucket(name)
        if is_directory_bucket(name):
            if change is not None:
                raise ConfigError(f"bucket {name!r} is an S3 Express directory bucket: it has no versioning")
            return "Off"
        if change is not None:
            await store.put_versioning(name, change)
        return await store.versioning_status(name) or "Off"


async def is_versioned(store: Store, bucket: str) -> bool:
    """True when the bucket keeps versions (versioning enabled now or suspended after being enabled)."""
    return not is_directory_bucket(bucket) and await store.versioning_status(bucket) != ""


async def purge(store: Store, bucket: str, prefix: str, *, versions: bool,
                progress: ProgressCallback | None = None, done_before: int = 0) -> int:
    """Delete everything under ``prefix``: every version and delete marker (``versions``), else every
    object; one DeleteObjects request per listed page (at most 1,000). Returns how many went.
    ``progress(done, None)`` is called after each page, ``done`` counting from ``done_before``."""
    pages = _version_pages(store, bucket, prefix) if versions else _object_pages(store, bucket, prefix)
    deleted = 0
    previous: Idents = []
    async for idents in pages:
        if idents == previous:
            raise PermanentError(f"s3://{bucket}/{prefix}: {len(idents)} deleted objects are still listed")
        await store.delete_versions(bucket, idents)
        deleted += len(idents)
        previous = idents
        if progress is not None:
            progress(done_before + deleted, None)
    return deleted


async def _version_pages(store: Store, bucket: str, prefix: str) -> AsyncIterator[Idents]:
    """The first page of versions, again and again, until nothing is left (each page is deleted
    before the next listing, so no marker ever points at a deleted version)."""
    while True:
        page = await store.list_versions(bucket, prefix)
        if not page.entries:
            return
        yield [(e.key, e.version_id) for e in page.entries]


async def _object_pages(store: Store, bucket: str, prefix: str) -> AsyncIterator[Idents]:
    while True:
        page = await store.list_objects(bucket, prefix)
        if not page.entries:
            return
        yield [(e.key, None) for e in page.entries]


async def decommission(settings: Settings, name: str, *, yes: bool,
                       progress: ProgressCallback | None = None) -> str:
    """Delete every version, delete marker and object of a bucket, then the bucket (``progress``: see
    :func:`purge`). Returns what was done, as one line."""
    if not yes:
        raise ConfigError(f"decommission deletes every object, version and delete marker in bucket {name!r} "
                          "and then the bucket, for good; add --yes to confirm")
    async with open_store(settings.s3, max_connections=4) as store:
        await store.check_bucket(name)
        versions = await is_versioned(store, name)
        deleted = await purge(store, name, "", versions=versions, progress=progress)
        await store.delete_bucket(name)
    what = "versions and delete markers" if versions else "objects"
    return f"deleted {deleted} {what} and bucket {name}"


async def topic_create(settings: Settings, url: str, *, shards: int, layout: Layout,
                       dir_seconds: int = DEFAULT_DIR_SECONDS) -> str:
    """Write a topic's metadata; a versions-layout topic needs a versioned bucket. Returns what was
    done, as one line."""
    bucket, name = split_url(url)
    async with open_store(settings.s3, max_connections=2) as store:
        await store.check_bucket(bucket)
        if layout == "versions" and not is_directory_bucket(bucket):
            await store.require_versioning(bucket)
        topic = await create_topic(store, bucket, name, shards=shards, layout=layout, dir_seconds=dir_seconds)
    span = topic.prefixes[0] if shards == 1 else f"{topic.prefixes[0]} … {topic.prefixes[-1]}"
    dirs = f", a directory every {topic.dir_seconds} s" if layout == "log" else ""
    return f"created topic s3://{bucket}/{topic.name} ({layout} layout, {shards} shard(s): {span}{dirs})"


async def topic_list(settings: Settings, url: str) -> list[Topic]:
    """Every topic with metadata in the bucket of ``url``, by name."""
    bucket, _ = split_url(url)
    async with open_store(settings.s3, max_connections=8) as store:
        await store.check_bucket(bucket)
        return await list_topics(store, bucket)


async def topic_delete(settings: Settings, url: str, *, data: bool, yes: bool,
                       progress: ProgressCallback | None = None) -> str:
    """Delete a topic's metadata; with ``data`` also its shards' objects and its groups' checkpoints
    (``progress``: see :func:`purge`, counting over all shards). Returns what was done, as one line."""
    bucket, path = split_url(url)
    name = validate_topic_name(path)
    if data and not yes:
        raise ConfigError(f"--data deletes every message of {url} and its consumer groups' checkpoints, "
                          "for good; add --yes to confirm")
    async with open_store(settings.s3, max_connections=4) as store:
        await store.check_bucket(bucket)
        topic = await resolve_topic(store, bucket, name)
        if topic.plain and not data:
            raise NotFound(f"{url} has no topic metadata (a plain prefix); "
                           "`--data --yes` deletes its objects")
        versions = await is_versioned(store, bucket)
        removed = 0
        if data:
            for prefix in topic.prefixes:
                removed += await purge(store, bucket, prefix, versions=versions, progress=progress,
                                      done_before=removed)
            for found in await find_checkpoints(store, topic, settings.consumer.checkpoint.prefix):
                await delete_key(store, bucket, found.key, versions=versions)
            for key in await find_leases(store, topic):
                await delete_key(store, bucket, key, versions=versions)
            await delete_key(store, bucket, head_key(topic.name), versions=versions)
        if not topic.plain:
            await delete_key(store, bucket, topic.metadata_key, versions=versions)
    extra = f" and {removed} objects or versions" if data else ""
    return f"deleted topic s3://{bucket}/{topic.name}{extra}"


async def delete_key(store: Store, bucket: str, key: str, *, versions: bool) -> None:
    """Delete one key: every version and delete marker of it in a versioned bucket."""
    if versions:
        entries = await key_versions(store, bucket, key)
        for start in range(0, len(entries), 1000):
            await store.delete_versions(bucket, [(e.key, e.version_id) for e in entries[start:start + 1000]])
    else:
        await store.delete_object(bucket, key)


@dataclass(frozen=True, slots=True)
class GroupCheckpoint:
    """A consumer group's committed checkpoint of one shard of a topic."""

    group: str
    shard: int
    prefix: str  # the prefix the consumer used (a plain topic may be consumed with or without "/")
    key: str
    checkpoint: Checkpoint | LogCheckpoint

    @property
    def watermark_ms(self) -> int:
        """Everything before it has been handled by the group."""
        cp = self.checkpoint
        return cp.watermark_ms if isinstance(cp, Checkpoint) else cp.sealed_ms


async def find_checkpoints(store: Store, topic: Topic, control_prefix: str,
                           groups: list[str] | None = None) -> list[GroupCheckpoint]:
    """Every group's checkpoints of the topic's shards, found under ``<control>/<group>/`` (only
    ``groups``' when given, without listing the groups)."""
    control = control_prefix.strip("/") + "/"
    if groups is None:
        groups = await _child_names(store, topic.bucket, control)
    wanted = [(group, shard, prefix, f"{control}{group}/{shard_name(prefix)}.json")
              for group in groups for shard, prefix in shard_prefixes(topic)]
    loaded = await asyncio.gather(*(_load_checkpoint(store, topic.bucket, key) for *_, key in wanted))
    return [GroupCheckpoint(group, shard, prefix, key, cp)
            for (group, shard, prefix, key), cp in zip(wanted, loaded, strict=True) if cp is not None]


async def find_leases(store: Store, topic: Topic) -> list[str]:
    """The keys of every consumer group's leases on the topic's shards. Member records are kept: a
    member may consume other topics too, and an idle record expires on its own."""
    found = []
    for group in await _child_names(store, topic.bucket, GROUPS_PREFIX):
        keys = {lease_key(group, prefix) for _, prefix in shard_prefixes(topic)}
        entries, _ = await store.list_all_objects(topic.bucket, f"{group_prefix(group)}leases/")
        found += [e.key for e in entries if e.key in keys]
    return found


def shard_prefixes(topic: Topic) -> list[tuple[int, str]]:
    """Each shard's index and the prefixes a consumer may have named it by (a plain topic's, with and
    without the trailing ``/``)."""
    if not topic.plain:
        return list(enumerate(topic.prefixes))
    return [(0, topic.name + "/"), (0, topic.name)] if topic.name else [(0, "")]


async def _child_names(store: Store, bucket: str, prefix: str) -> list[str]:
    """The names of the "folders" directly under ``prefix``."""
    names: list[str] = []
    token: str | None = None
    while True:
        page = await store.list_objects(bucket, prefix, delimiter="/", token=token)
        names += [p[len(prefix):].rstrip("/") for p in page.prefixes]
        token = page.next_token
        if token is None:
            return names


async def _load_checkpoint(store: Store, bucket: str, key: str) -> Checkpoint | LogCheckpoint | None:
    try:
        obj = await store.get_object(bucket, key)
    except NotFound:
        return None
    return decode(obj.body, where=f"s3://{bucket}/{key}")
