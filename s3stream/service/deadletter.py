"""Dead letters: messages a handler kept failing on (or that could not be read or decoded), set aside.

Each dead letter is one JSON object under the control prefix,
``_s3stream/dead-letters/<group>/<shard>/<time>-<id>.json``, holding the original bucket, key,
version and offset, the error (the reason, ``error``), the last failure's exception as
``error_type`` (its qualified class name, ``builtins.ValueError``) and ``error_message``
(``str(exc)``, at most ``ERROR_LIMIT`` characters) and its ``traceback`` (as Python prints it, cut to
its last ``TRACEBACK_LIMIT`` characters at a line start: the innermost frames and the error), the
number of attempts, the time, and the body (base64) when it was read and is at most ``BODY_LIMIT``
bytes (otherwise ``body_b64`` is null and a replay fetches the original again). ``error_type`` and
``error_message`` are newer than the rest: a dead letter without them reads as empty strings.
The stream moves on and the checkpoint passes the message: the dead letter is now where it lives.
``s3stream dlq list|replay|purge`` work on them.
"""

from __future__ import annotations

import base64
import contextlib
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from s3stream.errors import PreconditionFailed
from s3stream.message import Message
from s3stream.pipeline.checkpoint import shard_name
from s3stream.s3.store import Store

BODY_LIMIT = 1 << 20
ERROR_LIMIT = 4000
TRACEBACK_LIMIT = 8000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as stored."""

    key: str  # where the dead letter itself is stored
    original_bucket: str
    original_key: str
    version_id: str
    offset: int | None
    error: str
    attempts: int
    time_ms: int
    body: bytes | None
    traceback: str = ""
    deleted: bool = False  # the original is a deletion (a delete marker)
    error_type: str = ""  # the exception's qualified class name; "" in older dead letters
    error_message: str = ""

    @classmethod
    def from_json(cls, key: str, data: bytes) -> DeadLetter:
        doc = orjson.loads(data)
        body = base64.b64decode(doc["body_b64"]) if doc.get("body_b64") is not None else None
        return cls(key=key, original_bucket=doc["bucket"], original_key=doc["key"],
                   version_id=doc["version_id"], offset=doc.get("offset"), error=doc["error"],
                   attempts=int(doc["attempts"]), time_ms=int(doc["time_ms"]), body=body,
                   traceback=str(doc.get("traceback") or ""), deleted=bool(doc.get("deleted")),
                   error_type=str(doc.get("error_type") or ""),
                   error_message=str(doc.get("error_message") or ""))


def format_traceback(exc: BaseException | None) -> str:
    """``exc``'s traceback as Python prints it, cut to its last ``TRACEBACK_LIMIT`` characters (the
    innermost frames and the error itself), from a line start, after a ``...`` line."""
    if exc is None:
        return ""
    text = "".join(traceback.format_exception(exc))
    if len(text) <= TRACEBACK_LIMIT:
        return text
    tail = text[-(TRACEBACK_LIMIT - 4):]
    cut = tail.find("\n")
    return "...\n" + (tail[cut + 1:] if 0 <= cut < len(tail) - 1 else tail)


def error_type(exc: BaseException | None) -> str:
    """``exc``'s class as ``module.QualifiedName`` (``builtins.ValueError``), or "" without one."""
    if exc is None:
        return ""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def group_prefix(control_prefix: str, group: str) -> str:
    return f"{control_prefix.strip('/')}/dead-letters/{group}/"


class DeadLetters:
    """Writes the dead letters of one consumer group."""

    def __init__(self, store: Store, *, control_prefix: str, group: str) -> None:
        self.store = store
        self.prefix = group_prefix(control_prefix, group)

    async def add(self, shard_prefix: str, message: Message, *, error: str, attempts: int,
                  exc: BaseException | None = None, body_read: bool = True) -> str:
        """Store a dead letter next to the original's bucket; returns its key. ``exc`` gives the
        traceback; ``body_read=False`` says the body was never read (it is not an empty body)."""
        now_ms = int(time.time() * 1000)
        key = f"{self.prefix}{shard_name(shard_prefix)}/{now_ms:013d}-{uuid.uuid4().hex[:12]}.json"
        kept = body_read and len(message.body) <= BODY_LIMIT
        doc = {
            "bucket": message.bucket, "key": message.key, "version_id": message.version_id,
            "offset": message.offset, "partition_key": message.partition_key, "deleted": message.deleted,
            "error": error[:ERROR_LIMIT], "error_type": error_type(exc),
            "error_message": str(exc)[:ERROR_LIMIT] if exc is not None else "",
            "traceback": format_traceback(exc), "attempts": attempts,
            "time_ms": now_ms, "body_b64": base64.b64encode(message.body).decode() if kept else None,
        }
        # A 412 is a retry of our own write whose answer was lost: the key is unique to this call.
        with contextlib.suppress(PreconditionFailed):
            await self.store.put_object(message.bucket, key, orjson.dumps(doc), if_none_match=True,
                                        content_type="application/json")
        return key


async def iter_dead_letters(store: Store, bucket: str, control_prefix: str,
                            group: str) -> AsyncIterator[DeadLetter]:
    """Every dead letter of ``group`` in ``bucket``, oldest first within each shard."""
    prefix, token = group_prefix(control_prefix, group), None
    while True:
        page = await store.list_objects(bucket, prefix, token=token)
        for entry in sorted(page.entries, key=lambda e: e.key):
            obj = await store.get_object(bucket, entry.key)
            yield DeadLetter.from_json(entry.key, obj.body)
        token = page.next_token
        if token is None:
            return
