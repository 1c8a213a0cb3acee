"""What a worker needs around a handler call: the messages of a fetched object (one, or a segment's or
a lines object's many), the shard's ownership checks, the watch the watchdog times, and the
accounting of a failure (metrics, log line).
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from datetime import datetime
from urllib.parse import unquote

import structlog
from prometheus_client.metrics import Counter, Histogram

from s3stream.errors import (
    DeadLetterNow,
)
from s3stream.groups.lease import Tenure
from s3stream.groups.lease import clock as lease_clock
from s3stream.layouts import segments
from s3stream.layouts.topics import KEY_METADATA, parse_log_key
from s3stream.message import Entry, Message, ms_to_datetime
from s3stream.pipeline.shard import Shard
from s3stream.s3.store import StoredObject
from s3stream.service import metrics
from s3stream.service.logs import get_logger

log = get_logger("s3stream.pipeline.workers")


def messages(shard: Shard, entry: Entry, obj: StoredObject, when: datetime) -> list[Message]:
    """An object's messages: a segment's lines, or a plain object through the source's decoder (one
    message of the stored bytes on the default path; frames decoded by its codec otherwise)."""
    bucket, key, vid, meta = shard.bucket, entry.key, version_id(shard, entry), obj.metadata
    etag = entry.etag or obj.etag
    decoder = shard.decoder
    name = parse_log_key(entry.key) if shard.layout == "log" else None
    if name is not None and name.is_segment:
        pairs = segments.decode(obj.body, name.suffix, shard.decoder.max_decompressed)
        if decoder.raw:
            out = [Message(bucket, key, vid, when, len(body), etag, body, False, meta, pkey, offset)
                   for offset, (pkey, body) in enumerate(pairs)]
        else:
            values = decoder.decode_bodies([body for _, body in pairs])
            out = [Message(bucket, key, vid, when, len(body), etag, body, False, meta, pkey, offset, value)
                   for offset, ((pkey, body), value) in enumerate(zip(pairs, values, strict=True))]
        return segments.with_contexts(out, pairs)
    quoted = meta.get(KEY_METADATA)
    pkey = unquote(quoted) if quoted is not None else None
    if decoder.passthrough(key, obj.content_encoding):
        return [Message(bucket, key, vid, when, len(obj.body), etag, obj.body, False, meta, pkey)]
    return [Message(bucket, key, vid, when, len(body), etag, body, False, meta, pkey, offset, value)
            for offset, body, value in decoder.decode(obj.body, key, obj.content_encoding)]


def unread(shard: Shard, entry: Entry, body: bytes = b"", offset: int | None = None) -> Message:
    """A message standing for an object that could not be turned into messages, for its dead letter."""
    return Message(bucket=shard.bucket, key=entry.key, version_id=version_id(shard, entry),
                   last_modified=ms_to_datetime(entry.last_modified_ms), size=entry.size, etag=entry.etag,
                   body=body, offset=offset)


def replaceable(shard: Shard, entry: Entry) -> bool:
    """True when a later write replaces what was listed (no versioning, or versioning suspended)."""
    return shard.layout == "objects" or (shard.layout == "versions" and entry.version_id == "null")


def version_id(shard: Shard, entry: Entry) -> str:
    """The message's version id: S3's, or ``"null"`` where the bucket keeps no versions."""
    return "null" if shard.layout == "objects" else entry.version_id


async def owned(shard: Shard) -> bool:
    """Whether a worker may start an item of ``shard``: it is open and, in a group, its lease holds.
    While the lease is overdue (renewals late, not known lost) this waits for the group to decide."""
    if not shard.open:
        return False
    return shard.tenure is None or (await holds(shard.tenure) and shard.open)


async def holds(tenure: Tenure) -> bool:
    """True at once while the lease holds; while overdue, waits for the group to decide."""
    return tenure.holds(lease_clock()) or await tenure.settled(lease_clock)


class Lost(Exception):
    """The shard's lease was lost while its item was being handed out: stop, commit nothing of it."""


class Left(Exception):
    """The pool stopped while an item waited for its next attempt: leave the item in flight."""


class Watch:
    """One worker's handler call, as the watchdog sees it: the task and when its call must end."""

    __slots__ = ("deadline", "fired", "task")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.deadline = float("inf")
        self.fired = False


@functools.lru_cache(maxsize=1024)
def handler_seconds(handler: str) -> Histogram:
    return metrics.HANDLER_SECONDS.labels(handler=handler)


def shard_counters(shard: Shard) -> tuple[Counter, Counter]:
    found = _counters.get(shard)
    if found is None:
        labels = metrics.shard_labels(shard)
        found = metrics.MESSAGES_CONSUMED.labels(**labels), metrics.BYTES_CONSUMED.labels(**labels)
        _counters[shard] = found
    return found


def reason(exc: BaseException) -> str:
    """A dead letter's reason: what a handler said with DeadLetterNow, else the exception's repr."""
    return f"DeadLetterNow: {exc}" if isinstance(exc, DeadLetterNow) else repr(exc)


def note_failure(handler: str, exc: BaseException, attempt: int,
                  bound: structlog.typing.FilteringBoundLogger, with_traceback: bool) -> None:
    metrics.ERRORS.labels(kind=f"handler:{metrics.error_kind(exc)}").inc()
    bound.warning("handler failed", handler=handler, attempt=attempt, error=repr(exc),
                  exc_info=exc if with_traceback else None)


_counters: weakref.WeakKeyDictionary[Shard, tuple[Counter, Counter]] = weakref.WeakKeyDictionary()
