"""The S3-to-SQS bridge: the ``sqs`` handler, one SQS message per consumed object.

Messages from the concurrent workers are gathered into ``SendMessageBatch`` calls of up to 10 (a
batch leaves when it is full or ``batch_linger`` after its first message), and each ``handle()``
returns only once its own message is in SQS, so the consumer's checkpoint never passes an unsent one.
On a FIFO queue (URL ending in ``.fifo``) every message carries a ``MessageDeduplicationId`` hashed
from bucket, key and version (ETag and LastModified where the bucket keeps no versions; and offset,
for a segment's line), so a resend after a crash or a lost answer is dropped by SQS within its
five-minute window while an overwrite is a new message, and a ``MessageGroupId``: the shard
(order and parallelism per shard) or, with ``group_by = "key"``, the object key.

The body is by default the JSON object ``{"bucket", "key", "version_id", "size", "etag",
"last_modified"}`` (plus ``"offset"`` for a segment's line and ``"deleted": true`` for a delete
marker). ``template`` changes it; see :class:`Template`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import string
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from s3stream.config import S3Settings
from s3stream.errors import HandlerError, S3StreamError
from s3stream.message import Message, datetime_to_ms
from s3stream.s3.sqs import MAX_BATCH, OutMessage, Queue, open_sqs

FIELDS = ("bucket", "key", "version_id", "size", "etag", "last_modified", "deleted", "offset")
DEFAULT_FIELDS = ("bucket", "key", "version_id", "size", "etag", "last_modified")
OPTIONS = {"queue_url", "template", "group_by", "batch_linger", "deletes", "endpoint_url", "region"}
_SAFE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # what SQS accepts as a group or deduplication id
_AWS_QUEUE = re.compile(r"^https://sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")


def fields_of(message: Message) -> dict[str, Any]:
    """The values a template can use."""
    return {
        "bucket": message.bucket, "key": message.key, "version_id": message.version_id,
        "size": message.size, "etag": message.etag,
        "last_modified": message.last_modified.isoformat().replace("+00:00", "Z"),
        "deleted": message.deleted, "offset": message.offset,
    }


class Template:
    """How an SQS body is made from a message's fields (:data:`FIELDS`).

    * ``None``: the default JSON object (see the module docstring);
    * a string: ``str.format`` over the fields, sent as is (``"s3://{bucket}/{key}"``); a string that
      is a JSON object is read as the next form;
    * a mapping (a TOML table, or a JSON object string): sent as a JSON object whose string values are
      formatted, nested objects and lists included; a value that is exactly one field (``"{size}"``)
      keeps the field's type (a number, a boolean, null).

    Fields are plain names: ``{key}``, ``{size:>10}``; no attribute or index lookups.
    """

    def __init__(self, spec: str | dict[str, Any] | None = None) -> None:
        if isinstance(spec, str) and spec.lstrip().startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                loaded = orjson.loads(spec)
                if isinstance(loaded, dict):
                    spec = loaded
        if spec is not None and not isinstance(spec, str | dict):
            raise HandlerError("sqs handler: template must be a string or a table")
        self.spec = spec
        _check_fields(spec)

    def render(self, message: Message) -> str:
        """The SQS body for ``message``."""
        values = fields_of(message)
        if self.spec is None:
            doc = {name: values[name] for name in DEFAULT_FIELDS}
            if message.offset is not None:
                doc["offset"] = message.offset
            if message.deleted:
                doc["deleted"] = True
            return orjson.dumps(doc).decode()
        if isinstance(self.spec, str):
            return self.spec.format(**values)
        return orjson.dumps(_fill(self.spec, values)).decode()


def _fill(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str):
        whole = re.fullmatch(r"\{(\w+)\}", node)
        return values[whole.group(1)] if whole else node.format(**values)
    return node


def _check_fields(node: Any) -> None:
    """Fail at build time, naming the field, for a placeholder that is not a plain known field."""
    if isinstance(node, dict):
        for value in node.values():
            _check_fields(value)
    elif isinstance(node, list):
        for value in node:
            _check_fields(value)
    elif isinstance(node, str):
        try:
            parsed = list(string.Formatter().parse(node))
        except ValueError as exc:
            raise HandlerError(f"sqs handler: template {node!r}: {exc} (write {{{{ for a brace)") from None
        for _, name, _, _ in parsed:
            if name is not None and name not in FIELDS:
                raise HandlerError(f"sqs handler: template field {{{name}}} is unknown; "
                                   f"fields: {', '.join(FIELDS)}")


def dedup_id(message: Message) -> str:
    """The FIFO deduplication id of a message: a hash of its write's identity (and offset).

    A version id names one write for good. Where the bucket keeps no versions it is ``null`` for
    every write of a key, so the write is named as the ``objects`` layout names it: ETag and
    LastModified. An overwrite is then a new message, while a resend of the same write (a retry, a
    restart before the checkpoint) keeps its id and is dropped by SQS."""
    version = message.version_id
    if version == "null":
        version = f"{message.etag}@{datetime_to_ms(message.last_modified)}"
    ident = f"{message.bucket}\0{message.key}\0{version}\0{message.offset}"
    return hashlib.blake2b(ident.encode(), digest_size=32).hexdigest()


def safe_group(value: str) -> str:
    """``value`` as a FIFO group id: itself when SQS accepts it, else a readable prefix and a hash."""
    if _SAFE_ID.match(value):
        return value
    head = re.sub(r"[^\x21-\x7e]", "_", value)[:80]
    return f"{head}#{hashlib.blake2b(value.encode(), digest_size=16).hexdigest()}"


def queue_region(queue_url: str) -> str | None:
    """The region of an AWS queue URL (``https://sqs.REGION.amazonaws.com/…``), else None."""
    match = _AWS_QUEUE.match(queue_url)
    return match.group(1) if match else None


class Batcher:
    """Gathers single sends into batches of up to ``size``: a batch leaves when full or ``linger``
    seconds after its first entry. :meth:`submit` returns once its entry's batch was sent, or raises
    that batch's error (only for the entries that failed, when the error names them)."""

    def __init__(self, send: Callable[[list[OutMessage]], Awaitable[None]], *, linger: float,
                 size: int = MAX_BATCH) -> None:
        self._send = send
        self._linger = linger
        self._size = size
        self._buffer: list[tuple[OutMessage, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def buffered(self) -> int:
        """Entries waiting for their batch to leave."""
        return len(self._buffer)

    async def submit(self, entry: OutMessage) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._buffer.append((entry, future))
        if len(self._buffer) >= self._size:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger, self.flush)
        await future  # cancelled while still buffered: the entry is dropped from its batch

    def flush(self) -> None:
        """Send everything buffered now, in batches."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._buffer:
            batch, self._buffer = self._buffer[:self._size], self._buffer[self._size:]
            batch = [(e, f) for e, f in batch if not f.done()]
            if batch:
                task = asyncio.get_running_loop().create_task(self._deliver(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Send what is buffered and wait for every batch in flight."""
        self.flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, batch: list[tuple[OutMessage, asyncio.Future[None]]]) -> None:
        try:
            await self._send([entry for entry, _ in batch])
        except Exception as exc:
            failed = set(getattr(exc, "failed", None) or (e.id for e, _ in batch))
            for entry, future in batch:
                if not future.done():
                    if entry.id in failed:
                        future.set_exception(exc)
                    else:
                        future.set_result(None)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)


class SqsBridge:
    """The ``sqs`` handler: one SQS message per consumed message, sent in batches.

    Give it an open :class:`~s3stream.s3.sqs.Queue`, or settings to open its own client on first use
    (closed by :meth:`close`). ``shard_of`` maps a message to its shard's name for FIFO groups; without
    it the group is the bucket (one ordered stream per bucket).
    """

    def __init__(self, queue_url: str, *, queue: Queue | None = None, settings: S3Settings | None = None,
                 template: str | dict[str, Any] | None = None, group_by: str = "shard",
                 batch_linger: float = 0.05, deletes: bool = True,
                 shard_of: Callable[[Message], str] | None = None) -> None:
        if group_by not in {"shard", "key"}:
            raise HandlerError(f"sqs handler: group_by must be 'shard' or 'key', got {group_by!r}")
        if not 0 <= batch_linger <= 10:
            raise HandlerError(f"sqs handler: batch_linger must be 0 to 10 seconds, got {batch_linger}")
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        self.template = Template(template)
        self.group_by = group_by
        self.deletes = deletes
        self.shard_of = shard_of
        self.sent = 0
        self._queue = queue
        self._settings = settings or S3Settings()
        self._owned: contextlib.AsyncExitStack | None = None
        self._opening = asyncio.Lock()
        self._ids = itertools.count()
        self._batcher = Batcher(self._send, linger=batch_linger)

    @property
    def buffered(self) -> int:
        """Messages waiting for their batch to leave."""
        return self._batcher.buffered

    def out_message(self, message: Message) -> OutMessage:
        """The SQS entry for ``message`` (body, and FIFO group and deduplication ids)."""
        body = self.template.render(message)
        entry_id = f"m{next(self._ids)}"
        if not self.fifo:
            return OutMessage(id=entry_id, body=body)
        if self.group_by == "key":
            group = message.key
        else:
            group = self.shard_of(message) if self.shard_of is not None else message.bucket
        return OutMessage(id=entry_id, body=body, group_id=safe_group(group), dedup_id=dedup_id(message))

    async def handle(self, message: Message) -> None:
        """Send ``message``'s SQS message; returns once SQS has it."""
        if message.deleted and not self.deletes:
            return
        await self._batcher.submit(self.out_message(message))
        self.sent += 1

    async def close(self) -> None:
        """Send what is buffered, then close the client if this handler opened it."""
        try:
            await self._batcher.close()
        finally:
            if self._owned is not None:
                await self._owned.aclose()
                self._owned = self._queue = None

    async def _send(self, entries: list[OutMessage]) -> None:
        queue = self._queue or await self._open()
        await queue.send_batch(self.queue_url, entries)

    async def _open(self) -> Queue:
        async with self._opening:
            if self._queue is None:
                settings = self._settings
                region = queue_region(self.queue_url)
                if region is not None and region != settings.region:
                    settings = settings.model_copy(update={"region": region})
                self._owned = contextlib.AsyncExitStack()
                self._queue = await self._owned.enter_async_context(open_sqs(settings))
            return self._queue


def sqs_handler(options: dict[str, Any]) -> SqsBridge:
    """Entry point ``sqs``: ``[handlers.NAME] use = "sqs"`` with ``queue_url`` and optionally
    ``template``, ``group_by`` (``"shard"`` | ``"key"``), ``batch_linger`` (seconds, 0.05),
    ``deletes`` (send delete markers, true), ``endpoint_url`` and ``region`` (for SQS; the endpoint
    also comes from ``AWS_ENDPOINT_URL_SQS`` / ``AWS_ENDPOINT_URL``)."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise HandlerError(f"sqs handler: unknown option(s) {sorted(unknown)}; allowed: {sorted(OPTIONS)}")
    queue_url = options.get("queue_url")
    if not isinstance(queue_url, str) or not queue_url.startswith(("http://", "https://")):
        raise HandlerError("sqs handler: needs `queue_url = \"https://sqs.REGION.amazonaws.com/ACCOUNT/NAME\"`")
    try:
        settings = S3Settings(**{k: options[k] for k in ("endpoint_url", "region") if k in options})
        return SqsBridge(
            queue_url, settings=settings, template=options.get("template"),
            group_by=str(options.get("group_by", "shard")),
            batch_linger=float(options.get("batch_linger", 0.05)), deletes=bool(options.get("deletes", True)),
        )
    except S3StreamError:
        raise
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"sqs handler: invalid option: {exc}") from None
