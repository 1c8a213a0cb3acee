"""Checkpoint stores: where a shard's :class:`~s3stream.layouts.cursor.Checkpoint` is committed.

The S3 store keeps one small JSON object per group and shard under a control prefix, written with
``If-None-Match: *`` the first time and ``If-Match: <etag>`` after, so two consumers that both think
they own a shard cannot silently overwrite each other: the loser gets
:class:`~s3stream.errors.CheckpointConflict`. The file store writes atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

import orjson

from s3stream.errors import CheckpointConflict, ConfigError, NotFound, PreconditionFailed
from s3stream.layouts.cursor import Checkpoint, PassProgress, Version
from s3stream.layouts.logcursor import LogCheckpoint
from s3stream.message import Entry
from s3stream.s3.store import StoredObject

FORMAT_VERSION = 1


def encode(checkpoint: Checkpoint | LogCheckpoint, *, bucket: str, prefix: str,
           extra: dict[str, Any] | None = None) -> bytes:
    """The JSON form of a checkpoint; ``done`` is grouped by key (or directory) to stay compact.
    ``extra`` adds fields (the lease a group member wrote it under)."""
    if isinstance(checkpoint, LogCheckpoint):
        doc = _log_document(checkpoint, bucket=bucket, prefix=prefix)
    else:
        doc = _document(checkpoint, bucket=bucket, prefix=prefix)
    return orjson.dumps({**doc, **extra} if extra else doc)


def _grouped(versions: tuple[Version, ...]) -> dict[str, list[list[Any]]]:
    grouped: dict[str, list[list[Any]]] = {}
    for key, version_id, last_modified_ms in versions:
        grouped.setdefault(key, []).append([version_id, last_modified_ms])
    return grouped


def _ungrouped(grouped: dict[str, list[list[Any]]]) -> tuple[Version, ...]:
    return tuple(sorted((key, str(vid), int(lm)) for key, pairs in grouped.items() for vid, lm in pairs))


def _document(checkpoint: Checkpoint, *, bucket: str, prefix: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT_VERSION, "bucket": bucket, "prefix": prefix,
        "watermark_ms": checkpoint.watermark_ms, "done": _grouped(checkpoint.done),
    }
    if checkpoint.pending:
        doc["pending"] = _grouped(checkpoint.pending)
    if checkpoint.progress:
        doc["progress"] = [[p.horizon_ms, p.key, p.before_ms] for p in checkpoint.progress]
    return doc


def _decode_versions(doc: dict[str, Any]) -> Checkpoint:
    progress = tuple(PassProgress(int(h), str(k), int(b)) for h, k, b in doc.get("progress", ()))
    return Checkpoint(watermark_ms=int(doc["watermark_ms"]), done=_ungrouped(doc["done"]),
                      pending=_ungrouped(doc.get("pending", {})), progress=progress)


def _log_document(checkpoint: LogCheckpoint, *, bucket: str, prefix: str) -> dict[str, Any]:
    done: dict[str, dict[str, list[list[int]]]] = {}
    for dir_ms, producer, ranges in checkpoint.done:
        done.setdefault(str(dir_ms), {})[producer] = [list(r) for r in ranges]
    others: dict[str, list[str]] = {}
    for dir_ms, key in checkpoint.others:
        others.setdefault(str(dir_ms), []).append(key)
    return {
        "format": FORMAT_VERSION, "layout": "log", "bucket": bucket, "prefix": prefix,
        "sealed_ms": checkpoint.sealed_ms, "done": done, "others": others,
    }


def _decode_log(doc: dict[str, Any]) -> LogCheckpoint:
    done = tuple(sorted(
        (int(d), producer, tuple((int(lo), int(hi)) for lo, hi in ranges))
        for d, producers in doc["done"].items() for producer, ranges in producers.items()
    ))
    others = tuple(sorted((int(d), str(k)) for d, keys in doc.get("others", {}).items() for k in keys))
    return LogCheckpoint(sealed_ms=int(doc["sealed_ms"]), done=done, others=others)


def decode(data: bytes, *, where: str) -> Checkpoint | LogCheckpoint:
    """Parse a stored checkpoint; a damaged one is a clear error, never a silent restart."""
    return _parse(data, where=where)[1]


def _parse(data: bytes, *, where: str) -> tuple[dict[str, Any], Checkpoint | LogCheckpoint]:
    """The stored document and the checkpoint it holds."""
    try:
        doc = orjson.loads(data)
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        if doc.get("layout") == "log":
            return doc, _decode_log(doc)
        return doc, _decode_versions(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"checkpoint {where} is damaged ({exc}); move it aside to restart") from None


def shard_name(prefix: str) -> str:
    """A stable, path-safe name for a shard prefix (readable part plus a short hash)."""
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in prefix.strip("/"))[:80] or "_root"
    return f"{readable}-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"


class ConditionalStore(Protocol):
    """The object operations checkpoints and leases need: :class:`~s3stream.s3.store.Store`, or any
    store with the same conditional writes (the model-based tests use one in memory)."""

    async def get_object(self, bucket: str, key: str, version_id: str | None = None, *,
                         max_bytes: int | None = None) -> StoredObject: ...

    async def put_object(
        self, bucket: str, key: str, body: bytes, *, if_match: str | None = None,
        if_none_match: bool = False, content_type: str | None = None,
        metadata: dict[str, str] | None = None, content_encoding: str | None = None,
    ) -> tuple[str, str | None]: ...

    async def list_all_objects(self, bucket: str, prefix: str) -> tuple[list[Entry], int]: ...

    async def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> str | None: ...


class CheckpointStore(Protocol):
    """Loads and saves one shard's checkpoint."""

    async def load(self) -> Checkpoint | LogCheckpoint | None: ...

    async def save(self, checkpoint: Checkpoint | LogCheckpoint) -> None: ...


class S3CheckpointStore:
    """A checkpoint object in S3, fenced by its ETag.

    In a consumer group the member that takes a shard's lease first :meth:`fence` rewrites the checkpoint:
    it names the lease's owner and generation, written with ``If-Match`` on the ETag it read. Any
    write by the shard's previous holder (a paused or partitioned process) then fails with a 412 and
    :class:`~s3stream.errors.CheckpointConflict`: progress is never rewound or clobbered by a member
    whose lease was taken. A write of the previous holder that landed before the fence is kept. A
    fence never displaces a later generation's: a taker slower than the next one finds the shard
    fenced and gives its lease back."""

    def __init__(self, store: ConditionalStore, *, bucket: str, prefix: str, control_prefix: str,
                 group: str) -> None:
        self._store = store
        self._bucket = bucket
        self._prefix = prefix
        self.key = f"{control_prefix.strip('/')}/{group}/{shard_name(prefix)}.json"
        self._etag: str | None = None
        self._fenced_at = 0  # the lease generation named by the checkpoint last read
        self._unconfirmed: list[bytes] = []  # bodies sent whose outcome we never learned
        self.lease: dict[str, Any] | None = None  # {"owner", "generation"} once fenced

    async def load(self) -> Checkpoint | LogCheckpoint | None:
        try:
            obj = await self._store.get_object(self._bucket, self.key)
        except NotFound:
            self._etag = None
            return None
        self._etag = obj.etag
        doc, checkpoint = _parse(obj.body, where=f"s3://{self._bucket}/{self.key}")
        lease = doc.get("lease")
        self._fenced_at = int(lease.get("generation", 0)) if isinstance(lease, dict) else 0
        return None if doc.get("fresh") else checkpoint  # a fence before any progress

    async def fence(self, owner: str, generation: int) -> Checkpoint | LogCheckpoint | None:
        """Take the checkpoint over under lease ``generation``: read it, write it back naming the
        lease (``If-Match`` on what was read; again if the previous holder wrote in between). Returns
        the checkpoint to resume from (None: no progress yet)."""
        self.lease = {"owner": owner, "generation": generation}
        where = f"s3://{self._bucket}/{self.key}"
        for _ in range(5):
            saved = await self.load()
            if self._fenced_at > generation:
                raise CheckpointConflict(f"checkpoint {where} is fenced by lease generation "
                                         f"{self._fenced_at}, later than ours ({generation})")
            extra = {"lease": self.lease, **({"fresh": True} if saved is None else {})}
            body = encode(saved or Checkpoint(watermark_ms=0), bucket=self._bucket, prefix=self._prefix,
                          extra=extra)
            try:
                self._etag = await self._put(body)
            except PreconditionFailed:
                continue
            self._unconfirmed.clear()
            return saved
        raise CheckpointConflict(f"checkpoint {where} keeps changing under a fence")

    async def save(self, checkpoint: Checkpoint | LogCheckpoint) -> None:
        extra = {"lease": self.lease} if self.lease else None
        body = encode(checkpoint, bucket=self._bucket, prefix=self._prefix, extra=extra)
        try:
            etag = await self._put(body)
        except PreconditionFailed:
            etag = await self._recover(body)
        self._etag = etag
        self._unconfirmed.clear()

    async def _put(self, body: bytes) -> str:
        self._unconfirmed = [*self._unconfirmed[-3:], body]  # until the answer arrives
        etag, _ = await self._store.put_object(
            self._bucket, self.key, body, if_match=self._etag, if_none_match=self._etag is None,
            content_type="application/json",
        )
        return etag

    async def _recover(self, body: bytes) -> str:
        """After a 412: one of our own writes may have landed without our learning it (its answer
        was lost, or it was cancelled at shutdown). If the stored checkpoint is what we wrote, adopt
        it; otherwise someone else wrote it."""
        try:
            stored = await self._store.get_object(self._bucket, self.key)
        except NotFound:
            stored = None
        if stored is not None and stored.body == body:
            return stored.etag
        if stored is not None and stored.body in self._unconfirmed:
            self._etag = stored.etag
            try:
                return await self._put(body)
            except PreconditionFailed:
                pass
        raise CheckpointConflict(
            f"checkpoint s3://{self._bucket}/{self.key} was changed by another consumer; "
            "is a second consumer running with the same group? (to share a topic, run every "
            "member with leases: --lease-duration, [consumer.leases])"
        ) from None


class FileCheckpointStore:
    """A checkpoint file on local disk, replaced atomically."""

    def __init__(self, directory: str | Path, *, bucket: str, prefix: str, group: str) -> None:
        self._bucket = bucket
        self._prefix = prefix
        self.path = Path(directory) / group / bucket / f"{shard_name(prefix)}.json"

    async def load(self) -> Checkpoint | LogCheckpoint | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return decode(data, where=str(self.path))

    async def save(self, checkpoint: Checkpoint | LogCheckpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(encode(checkpoint, bucket=self._bucket, prefix=self._prefix))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class MemoryCheckpointStore:
    """Keeps the checkpoint in memory only: for ``tail`` and other throwaway readers."""

    def __init__(self) -> None:
        self.saved: Checkpoint | LogCheckpoint | None = None

    async def load(self) -> Checkpoint | LogCheckpoint | None:
        return self.saved

    async def save(self, checkpoint: Checkpoint | LogCheckpoint) -> None:
        self.saved = checkpoint
