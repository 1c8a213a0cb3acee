"""What the S3 emulator stores: buckets, each key's versions, the sorted keys, multipart uploads and
sessions, and the storage operations every request handler builds on (:class:`Storage`)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import time
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from benchmarks.emulator import documents as xml

DIRECTORY_SUFFIX = "--x-s3"
_CHUNK = 1000  # keys per chunk of SortedKeys


class S3Error(Exception):
    """An S3 error answer: status, code, message, extra error-document fields and headers."""

    def __init__(self, status: int, code: str, message: str, *, extra: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        self.headers = headers or {}


def precondition_failed(condition: str) -> S3Error:
    return S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                   extra={"Condition": condition})


def unimplemented(what: str) -> S3Error:
    return S3Error(501, "NotImplemented", f"{what} is not implemented")


@dataclass(slots=True, eq=False)
class Version:
    """One stored version (or delete marker) of a key, with its GET/HEAD headers precomputed."""

    version_id: str
    body: bytes
    etag: str
    size: int
    last_modified: int
    delete_marker: bool
    headers: dict[str, str]


@dataclass(slots=True, eq=False)
class Upload:
    """A multipart upload in progress; its object will be dated by ``initiated``, as S3 does."""

    key: str
    initiated: int
    content_type: str | None
    content_encoding: str | None
    metadata: dict[str, str]
    parts: dict[int, tuple[str, bytes]] = field(default_factory=dict)


class SortedKeys:
    """Keys in ascending order, in chunks of about 1,000 (sortedcontainers' idea, the little we need):
    insert and remove cost O(log n + chunk); iterating from any key costs O(log n) to start."""

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._chunks: list[list[str]] = []
        self._maxes: list[str] = []
        self._len = 0
        self.update(keys)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        return self.iter_from("")

    def add(self, key: str) -> None:
        """Insert a key that is not present."""
        if not self._chunks:
            self._chunks, self._maxes, self._len = [[key]], [key], 1
            return
        i = min(bisect_left(self._maxes, key), len(self._maxes) - 1)
        chunk = self._chunks[i]
        insort(chunk, key)
        self._len += 1
        if len(chunk) > 2 * _CHUNK:
            upper = chunk[_CHUNK:]
            del chunk[_CHUNK:]
            self._chunks.insert(i + 1, upper)
            self._maxes.insert(i + 1, upper[-1])
        self._maxes[i] = chunk[-1]

    def remove(self, key: str) -> None:
        """Remove a key that is present."""
        i = bisect_left(self._maxes, key)
        chunk = self._chunks[i]
        del chunk[bisect_left(chunk, key)]
        self._len -= 1
        if chunk:
            self._maxes[i] = chunk[-1]
        else:
            del self._chunks[i], self._maxes[i]

    def update(self, keys: Iterable[str]) -> None:
        """Insert many new keys at once (one sort of mostly sorted runs: how seeding stays fast)."""
        ordered = sorted(itertools.chain(self, keys))
        self._chunks = [ordered[i:i + _CHUNK] for i in range(0, len(ordered), _CHUNK)]
        self._maxes = [chunk[-1] for chunk in self._chunks]
        self._len = len(ordered)

    def iter_from(self, start: str) -> Iterator[str]:
        """The keys ``>= start``, ascending."""
        chunks = self._chunks
        i = bisect_left(self._maxes, start)
        if i < len(chunks):
            yield from islice(chunks[i], bisect_left(chunks[i], start), None)
            for j in range(i + 1, len(chunks)):
                yield from chunks[j]


@dataclass(slots=True, eq=False)
class Bucket:
    """A bucket: each key's versions oldest first, the keys sorted, multipart uploads in progress."""

    name: str
    directory: bool
    versioning: str = ""  # "", "Enabled" or "Suspended"
    objects: dict[str, list[Version]] = field(default_factory=dict)
    keys: SortedKeys = field(default_factory=SortedKeys)
    uploads: dict[str, Upload] = field(default_factory=dict)
    stored: int = 0  # versions that are not delete markers


@dataclass(frozen=True, slots=True)
class Session:
    """Credentials issued by CreateSession."""

    access_key: str
    secret: str
    expires: float


class Storage:
    """The buckets and sessions of one emulated S3, and the storage operations on them (the request
    handlers in :mod:`~benchmarks.emulator.objects` and :mod:`~benchmarks.emulator.buckets` extend it)."""

    def __init__(self, *, directory_buckets: bool) -> None:
        self.directory_buckets = directory_buckets
        self.buckets: dict[str, Bucket] = {}
        self.sessions: dict[str, Session] = {}

    def _bucket(self, name: str) -> Bucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist",
                          extra={"BucketName": name})
        return bucket

    def _create(self, name: str) -> Bucket:
        directory = self.directory_buckets and name.endswith(DIRECTORY_SUFFIX)
        bucket = self.buckets[name] = Bucket(name, directory)
        return bucket

    def _new_version(self, bucket: Bucket, body: bytes, now: int, *, content_type: str | None = None,
                     content_encoding: str | None = None, metadata: Mapping[str, str] | None = None,
                     etag: str | None = None) -> Version:
        if etag is None:
            digest = secrets.token_hex(16) if bucket.directory else hashlib.md5(body).hexdigest()
            etag = f'"{digest}"'
        version_id = secrets.token_urlsafe(24) if bucket.versioning == "Enabled" else "null"
        headers = {"ETag": etag, "Last-Modified": xml.http_time(now), "Accept-Ranges": "bytes",
                   "Content-Type": content_type or "binary/octet-stream"}
        if content_encoding:
            headers["Content-Encoding"] = content_encoding
        if metadata:
            headers.update(metadata)
        return Version(version_id, body, etag, len(body), now, False, headers)

    def _store(self, bucket: Bucket, key: str, version: Version, *, index: bool = True) -> bool:
        """Add a version (replacing the ``null`` one if it is one); True when the key is new."""
        versions = bucket.objects.get(key)
        new = versions is None
        if versions is None:
            versions = bucket.objects[key] = []
            if index:
                bucket.keys.add(key)
        elif version.version_id == "null":
            for i, old in enumerate(versions):
                if old.version_id == "null":
                    del versions[i]
                    bucket.stored -= not old.delete_marker
                    break
        versions.append(version)
        bucket.stored += not version.delete_marker
        return new

    def _remove(self, bucket: Bucket, key: str, version_id: str) -> Version | None:
        versions = bucket.objects.get(key, [])
        for i, old in enumerate(versions):
            if old.version_id == version_id:
                del versions[i]
                bucket.stored -= not old.delete_marker
                if not versions:
                    del bucket.objects[key]
                    bucket.keys.remove(key)
                return old
        return None

    def _delete(self, bucket: Bucket, key: str, version_id: str | None) -> tuple[str | None, bool]:
        """Delete a version, or the key (a delete marker when versioned): ``(version id, marker?)``."""
        if version_id is not None:
            removed = self._remove(bucket, key, version_id)
            return version_id, bool(removed and removed.delete_marker)
        if not bucket.versioning:
            self._remove(bucket, key, "null")
            return None, False
        marker = Version(secrets.token_urlsafe(24) if bucket.versioning == "Enabled" else "null",
                         b"", "", 0, int(time.time()), True, {})
        self._store(bucket, key, marker)
        return marker.version_id, True

    def _current(self, bucket: Bucket, key: str) -> Version | None:
        versions = bucket.objects.get(key)
        if not versions or versions[-1].delete_marker:
            return None
        return versions[-1]

    def _find(self, bucket: Bucket, key: str, version_id: str | None) -> Version:
        versions = bucket.objects.get(key)
        if version_id is None:
            if not versions:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.", extra={"Key": key})
            latest = versions[-1]
            if latest.delete_marker:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.", extra={"Key": key},
                              headers={"x-amz-delete-marker": "true", "x-amz-version-id": latest.version_id})
            return latest
        found = next((v for v in versions or () if v.version_id == version_id), None)
        if found is None:
            raise S3Error(404, "NoSuchVersion", "The specified version does not exist.",
                          extra={"Key": key, "VersionId": version_id})
        if found.delete_marker:
            raise S3Error(405, "MethodNotAllowed", "This method is not allowed against a delete marker.",
                          headers={"x-amz-delete-marker": "true", "x-amz-version-id": version_id,
                                   "Allow": "DELETE"})
        return found

    def seed(self, doc: dict[str, Any]) -> int:
        """Store objects directly (bulk setup): ``{"bucket", "versioned", "objects": [...]}``."""
        name = doc["bucket"]
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"bucket must be a bucket name, not {name!r}")
        bucket = self.buckets.get(name) or self._create(name)
        if doc.get("versioned") and not bucket.directory:
            bucket.versioning = "Enabled"
        now, new_keys = int(time.time()), []
        for obj in doc["objects"]:
            key = obj["key"]
            if not isinstance(key, str) or not key:
                raise ValueError(f"object key must be a non-empty string, not {key!r}")
            body = base64.b64decode(obj["body_b64"]) if "body_b64" in obj else obj.get("body", "").encode()
            metadata = {f"x-amz-meta-{k.lower()}": str(v) for k, v in (obj.get("metadata") or {}).items()}
            version = self._new_version(bucket, body, now, content_type=obj.get("content_type"),
                                        content_encoding=obj.get("content_encoding"), metadata=metadata)
            if self._store(bucket, key, version, index=False):
                new_keys.append(key)
        bucket.keys.update(new_keys)
        return len(doc["objects"])
