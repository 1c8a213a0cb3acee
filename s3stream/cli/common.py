"""One-shot commands on messages: ``publish``, ``get`` and ``history``, and what the commands share.

Each command takes validated :class:`~s3stream.config.Settings` and raises
:class:`~s3stream.errors.S3StreamError` on failure; the command line turns that into one line on
stderr and an exit code. Output goes to stdout; summaries and notes go to stderr.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import click

from s3stream.cli.jsonout import emit
from s3stream.config import Settings, build_settings, read_toml
from s3stream.errors import ConfigError, NotFound
from s3stream.layouts.producer import Producer, Published
from s3stream.layouts.topics import resolve_topic
from s3stream.message import Entry, Message, iso, ms_to_datetime
from s3stream.pipeline.handlers import message_json
from s3stream.s3.keys import key_versions, split_url
from s3stream.s3.store import Store, StoredObject, open_store
from s3stream.service.progress import ProgressCallback

PUBLISH_BATCH = 1000  # lines read from the input and published concurrently at a time
FETCH_WINDOW = 16  # versions fetched concurrently by `history`


def command_settings(config: str | None, endpoint_url: str | None, *, sections: tuple[str, ...] = ("s3",),
                     **extra: Any) -> Settings:
    """Settings from the given ``sections`` of a TOML config file, ``--endpoint-url`` and ``extra``
    (a dict value is merged into its section, anything else replaces it)."""
    read = read_toml(config) if config else {}
    data: dict[str, Any] = {name: read[name] for name in sections if name in read}
    if endpoint_url:
        data.setdefault("s3", {})["endpoint_url"] = endpoint_url
    for name, value in extra.items():
        if isinstance(value, dict):
            data.setdefault(name, {}).update(value)
        else:
            data[name] = value
    return build_settings(data)


async def object_key(store: Store, url: str, message_key: str | None) -> tuple[str, str]:
    """The ``(bucket, object key)`` a command addresses: the URL itself, or with ``--key`` the object of
    that message key in the topic at the URL (its shard's prefix plus the key; versions layout only)."""
    bucket, path = split_url(url)
    if message_key is None:
        if not path:
            raise ConfigError(f"{url}: expected s3://BUCKET/KEY")
        return bucket, path
    topic = await resolve_topic(store, bucket, path)
    if topic.layout != "versions":
        raise ConfigError(f"topic {topic.name!r} has the log layout: its messages are not stored under "
                          "their key; give the object key in the URL instead of --key")
    return bucket, topic.shard_prefix(topic.shard_of(message_key)) + message_key


def published_line(published: Published) -> str:
    """``KEY [VERSION_ID]`` (plus ``offset N`` for a message stored in a segment)."""
    parts = [published.key]
    if published.version_id:
        parts.append(published.version_id)
    if published.offset is not None:
        parts.append(f"offset {published.offset}")
    return " ".join(parts)


def published_json(published: Published) -> dict[str, Any]:
    """A published message as JSON: ``{"key", "version_id", "offset"}``."""
    return {"key": published.key, "version_id": published.version_id, "offset": published.offset}


async def publish(settings: Settings, url: str, *, key: str | None, body: bytes | None, lines: bool,
                  as_json: bool = False, progress: ProgressCallback | None = None) -> dict[str, Any] | None:
    """Publish ``body`` (stdin when None) as one message, or with ``lines`` one message per non-empty
    line, concurrently in batches (one at a time when they share a key in the versions layout, so that
    the key's versions keep the input's order). With ``[producer] framing = "lines"`` on a versions topic,
    each batch is one object (per key) holding its lines. ``progress(count, None)`` follows each batch.
    Returns the summary of ``lines``: ``{"topic", "published", "seconds", "rate_per_s"}``."""
    async with Producer(settings) as producer:
        versions = (await producer.topic(url)).layout == "versions"
        lines_objects = versions and settings.producer.framing == "lines"  # a batch per object and key

        def key_of() -> str | None:
            # A keyless message of the versions layout gets a random name, as the producer would give
            # it, but chosen here so that it is hashed to a shard: keyless messages spread over shards.
            return uuid.uuid4().hex if key is None and versions and not lines_objects else key

        if not lines:
            data = sys.stdin.buffer.read() if body is None else body
            published = await producer.publish(url, data, key=key_of())
            if as_json:
                emit(published_json(published))
            else:
                click.echo(published_line(published))
            return None
        source = sys.stdin.buffer if body is None else io.BytesIO(body)
        started = time.monotonic()
        count = 0
        one_by_one = key is not None and versions and not lines_objects  # else a batch is one object
        for batch in _batches(source, 1 if one_by_one else PUBLISH_BATCH):
            await producer.publish_many(url, [(key_of(), line) for line in batch])
            count += len(batch)
            if progress is not None:
                progress(count, None)
    elapsed = time.monotonic() - started
    rate = count / elapsed if elapsed > 0 else 0.0
    return {"topic": url, "published": count, "seconds": round(elapsed, 3), "rate_per_s": round(rate, 1)}


def _batches(source: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """The non-empty lines of ``source`` (without their line ends), ``size`` at a time."""
    batch: list[bytes] = []
    for raw in source:
        line = raw.rstrip(b"\r\n")
        if line.strip():
            batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def get(settings: Settings, url: str, *, version_id: str | None, key: str | None) -> None:
    """Write the latest (or the given) version's body to stdout, byte for byte."""
    async with open_store(settings.s3, max_connections=4) as store:
        bucket, name = await object_key(store, url, key)
        try:
            obj = await store.get_object(bucket, name, version_id)
        except NotFound as exc:
            what = f"version {version_id} of s3://{bucket}/{name}" if version_id else f"s3://{bucket}/{name}"
            raise NotFound(f"{what} does not exist (or its latest version is a delete marker)",
                           code=exc.code, operation=exc.operation) from None
    sys.stdout.buffer.write(obj.body)
    sys.stdout.buffer.flush()


async def history(settings: Settings, url: str, *, key: str | None, as_json: bool) -> None:
    """Print every version and delete marker of one key, oldest first, one line each."""
    async with open_store(settings.s3, max_connections=FETCH_WINDOW + 2) as store:
        bucket, name = await object_key(store, url, key)
        entries = await key_versions(store, bucket, name)
        if not entries:
            raise NotFound(f"s3://{bucket}/{name} has no versions", operation="ListObjectVersions")
        for start in range(0, len(entries), FETCH_WINDOW):
            window = entries[start:start + FETCH_WINDOW]
            fetched = await asyncio.gather(*(_fetch(store, bucket, e) for e in window))
            for entry, obj in zip(window, fetched, strict=True):
                click.echo(_history_line(bucket, entry, obj, as_json), nl=False)


async def _fetch(store: Store, bucket: str, entry: Entry) -> StoredObject | None:
    if entry.deleted:
        return None
    return await store.get_object(bucket, entry.key, entry.version_id)


def _history_line(bucket: str, entry: Entry, obj: StoredObject | None, as_json: bool) -> str:
    """``LAST_MODIFIED  VERSION_ID  BODY`` (the body on one line), or the message's JSON line."""
    body = obj.body if obj is not None else b""
    if as_json:
        message = Message(bucket=bucket, key=entry.key, version_id=entry.version_id,
                          last_modified=ms_to_datetime(entry.last_modified_ms), size=entry.size,
                          etag=entry.etag, body=body, deleted=entry.deleted)
        return message_json(message).decode("utf-8")
    text = "(delete marker)" if entry.deleted else one_line(body)
    return f"{iso(entry.last_modified_ms)}  {entry.version_id}  {text}\n"


def one_line(body: bytes) -> str:
    """A body as text on one line: trailing line ends dropped, inner ones shown as ``\\n``."""
    text = body.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    return text.replace("\r", "\\r").replace("\n", "\\n")
