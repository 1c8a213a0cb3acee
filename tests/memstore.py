"""An object store in memory with S3's conditional writes, for the model-based tests.

:class:`MemStore` implements :class:`s3stream.pipeline.checkpoint.ConditionalStore` the way S3 answers it:

* the ETag of an object is the MD5 of its body, so two identical bodies have one ETag (what made a
  renewal that rewrote the same body indistinguishable from no renewal at all);
* ``If-None-Match: *`` on an existing key, and ``If-Match`` on another ETag or on a missing key, raise
  :class:`~s3stream.errors.PreconditionFailed`;
* LastModified and the server time of a listing are whole seconds (truncated) of a clock the test
  controls.

:meth:`MemStore.client` gives one requester its own view of the store. A view may take a ``hook``,
awaited twice per request: when the request is sent (before the store applies it) and once it is
applied (before the answer arrives). A hook can advance the test's clock (a slow request), wait for
the test to let the request go on (a request in flight while other things happen) or raise (an answer
lost after the write landed); :meth:`MemClient.fail` answers the requester with an error at once while
the request goes on (a timeout whose write lands later). Once sent, a request is served by a task of
its own: cancelling the requester (a crash) does not stop a write already on its way from landing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from s3stream.errors import NotFound, PreconditionFailed
from s3stream.message import Entry
from s3stream.s3.store import StoredObject


@dataclass(frozen=True, slots=True)
class Stored:
    """One object as the store keeps it."""

    body: bytes
    etag: str
    last_modified_ms: int


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    """A request as a hook sees it: who sent it, the operation (GET, PUT, LIST, DELETE), the bucket
    and the key (the prefix, for a listing). Each request is its own (compared by identity)."""

    who: str
    op: str
    bucket: str
    key: str


Hook = Callable[[Request, str], Awaitable[None]]  # (request, "sent" | "applied")
Watcher = Callable[[str, str, Stored | None], None]  # (bucket, key, the object after a write; None: deleted)


def etag_of(body: bytes) -> str:
    """S3's ETag of a single-part upload: the MD5 of the body, in hex."""
    return hashlib.md5(body).hexdigest()


class MemStore:
    """The shared state: objects by (bucket, key), and the server's clock (seconds)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.objects: dict[tuple[str, str], Stored] = {}
        self.watchers: list[Watcher] = []  # told of every write as it lands

    def now_ms(self) -> int:
        """The server's time, truncated to whole seconds like S3's LastModified and Date."""
        return int(self.now()) * 1000

    def client(self, who: str = "", hook: Hook | None = None) -> MemClient:
        """A requester's view of the store, its requests going through ``hook``."""
        return MemClient(self, who, hook)

    # The operations, applied at once (a client's hook decides when they are applied).

    def apply_get(self, bucket: str, key: str) -> StoredObject:
        stored = self.objects.get((bucket, key))
        if stored is None:
            raise NotFound(f"GetObject: no such key {key}", code="NoSuchKey", operation="GetObject")
        return StoredObject(body=stored.body, etag=stored.etag, version_id=None)

    def apply_put(self, bucket: str, key: str, body: bytes, if_match: str | None,
                  if_none_match: bool) -> tuple[str, str | None]:
        current = self.objects.get((bucket, key))
        if if_none_match and current is not None:
            raise PreconditionFailed(f"PutObject {key}: the object exists", code="PreconditionFailed",
                                     operation="PutObject")
        if if_match is not None and (current is None or current.etag != if_match.strip('"')):
            raise PreconditionFailed(f"PutObject {key}: the ETag does not match",
                                     code="PreconditionFailed", operation="PutObject")
        stored = Stored(body, etag_of(body), self.now_ms())
        self.objects[(bucket, key)] = stored
        for watch in self.watchers:
            watch(bucket, key, stored)
        return stored.etag, None

    def apply_list(self, bucket: str, prefix: str) -> tuple[list[Entry], int]:
        entries = [Entry(key, "null", s.last_modified_ms, size=len(s.body), etag=s.etag, latest=True)
                   for (b, key), s in sorted(self.objects.items()) if b == bucket and key.startswith(prefix)]
        return entries, self.now_ms()

    def apply_delete(self, bucket: str, key: str) -> str | None:
        if self.objects.pop((bucket, key), None) is not None:
            for watch in self.watchers:
                watch(bucket, key, None)
        return None

    # The store as a requester without a hook sees it: ConditionalStore.

    async def get_object(self, bucket: str, key: str, version_id: str | None = None, *,
                         max_bytes: int | None = None) -> StoredObject:
        return self.apply_get(bucket, key)

    async def put_object(self, bucket: str, key: str, body: bytes, *, if_match: str | None = None,
                         if_none_match: bool = False, content_type: str | None = None,
                         metadata: dict[str, str] | None = None,
                         content_encoding: str | None = None) -> tuple[str, str | None]:
        return self.apply_put(bucket, key, body, if_match, if_none_match)

    async def list_all_objects(self, bucket: str, prefix: str) -> tuple[list[Entry], int]:
        return self.apply_list(bucket, prefix)

    async def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> str | None:
        return self.apply_delete(bucket, key)


class MemClient:
    """One requester's view of a :class:`MemStore`: a ConditionalStore whose requests go through a hook."""

    def __init__(self, store: MemStore, who: str, hook: Hook | None) -> None:
        self.store = store
        self.who = who
        self.hook = hook
        self._answers: dict[Request, asyncio.Future[Any]] = {}

    async def _send(self, op: str, bucket: str, key: str, apply: Callable[[], Any]) -> Any:
        if self.hook is None:
            return apply()
        request = Request(self.who, op, bucket, key)
        hook = self.hook

        async def serve() -> Any:
            await hook(request, "sent")
            result = apply()
            await hook(request, "applied")
            return result

        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[request] = answer
        serving = asyncio.ensure_future(serve())  # goes on even if the requester is cancelled
        serving.add_done_callback(lambda done: _relay(done, answer))
        try:
            return await answer
        finally:
            self._answers.pop(request, None)

    def fail(self, request: Request, error: BaseException) -> None:
        """The requester of ``request`` gets ``error`` now (a timeout, a connection reset), while the
        request itself goes on and may still be applied."""
        answer = self._answers.get(request)
        if answer is not None and not answer.done():
            answer.set_exception(error)

    async def get_object(self, bucket: str, key: str, version_id: str | None = None, *,
                         max_bytes: int | None = None) -> StoredObject:
        result: StoredObject = await self._send("GET", bucket, key, lambda: self.store.apply_get(bucket, key))
        return result

    async def put_object(self, bucket: str, key: str, body: bytes, *, if_match: str | None = None,
                         if_none_match: bool = False, content_type: str | None = None,
                         metadata: dict[str, str] | None = None,
                         content_encoding: str | None = None) -> tuple[str, str | None]:
        result: tuple[str, str | None] = await self._send(
            "PUT", bucket, key, lambda: self.store.apply_put(bucket, key, body, if_match, if_none_match))
        return result

    async def list_all_objects(self, bucket: str, prefix: str) -> tuple[list[Entry], int]:
        result: tuple[list[Entry], int] = await self._send(
            "LIST", bucket, prefix, lambda: self.store.apply_list(bucket, prefix))
        return result

    async def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> str | None:
        result: str | None = await self._send("DELETE", bucket, key,
                                              lambda: self.store.apply_delete(bucket, key))
        return result


def _relay(served: asyncio.Future[Any], answer: asyncio.Future[Any]) -> None:
    """The store's outcome of a request, to its requester if it still waits for one."""
    error = None if served.cancelled() else served.exception()  # retrieved, so never reported unheard
    if answer.done():
        return
    if served.cancelled():
        answer.cancel()
    elif error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(served.result())
