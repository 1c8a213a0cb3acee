"""The S3 boundary: client creation, the few operations s3stream needs, and error translation.

Everything that talks to aiobotocore lives here. Callers get :mod:`s3stream.errors` types, never
botocore's, and every call goes through the one :class:`~s3stream.s3.retry.RetryPolicy` (botocore's own
retries are switched off so the two never multiply).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Container
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import (
    ClientError,
)

from s3stream import errors
from s3stream.config import S3Settings
from s3stream.message import Entry
from s3stream.s3.buckets import BucketOperations
from s3stream.s3.client import (
    ENTRIES,
    aws_client,
    capture_version_entries,
    check_object_listing,
    retry_policy,
)
from s3stream.s3.lean import LeanClient, Response
from s3stream.s3.requestopts import expect_owner, sse_params
from s3stream.s3.retry import RetryPolicy, Throttle
from s3stream.s3.s3xml import (
    ObjectPage,
    VersionPage,
    http_date_ms,
    parse_object_page,
    parse_version_page,
)
from s3stream.s3.serverclock import ServerClock
from s3stream.s3.translate import translate
from s3stream.s3.versionorder import ListingOrder
from s3stream.service import metrics

_Page = TypeVar("_Page")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A fetched object version."""

    body: bytes
    etag: str
    version_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    content_encoding: str = ""


class Store(BucketOperations):
    """The operations s3stream performs on S3, with retries and translated errors.

    With a :class:`~s3stream.s3.lean.LeanClient` (the default), GetObject, PutObject and the two listings
    take the lean path; everything else, and everything when ``s3.lean_path`` is off, goes through
    aiobotocore. Both paths share the retry policy, the throttle, the metrics and the error types.
    """

    def __init__(self, client: Any, retry: RetryPolicy, lean: LeanClient | None = None) -> None:
        self.client = client
        self.retry = retry
        self._throttles: dict[str, Throttle] = {}
        self.lean = lean
        self.listing = ListingOrder()  # how this server orders versions and delete markers, once seen
        self._clocks: dict[str, ServerClock] = {}

    def server_clock(self, bucket: str) -> ServerClock:
        """``bucket``'s server clock: fed by every answer on the lean path, else only by its users."""
        if self.lean is not None:
            return self.lean.clock(bucket)
        return self._clocks.setdefault(bucket, ServerClock())

    async def list_versions(
        self, bucket: str, prefix: str, *, key_marker: str | None = None,
        version_id_marker: str | None = None, max_keys: int = 1000,
    ) -> VersionPage:
        """One page of versions under ``prefix``, starting after the given markers."""
        if self.lean is not None:
            query = {"versions": "", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
            if key_marker is not None:
                query.update({"key-marker": key_marker, "version-id-marker": version_id_marker or ""})
            return await self._lean_listing("ListObjectVersions", bucket, query, parse_version_page)
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if key_marker is not None:
            params["KeyMarker"] = key_marker
            params["VersionIdMarker"] = version_id_marker or ""
        resp = await self._call("ListObjectVersions", self.client.list_object_versions, **params)
        return VersionPage(
            entries=resp.get(ENTRIES, []),
            truncated=bool(resp.get("IsTruncated")),
            next_key_marker=resp.get("NextKeyMarker"),
            next_version_id_marker=resp.get("NextVersionIdMarker"),
            server_time_ms=_server_time_ms(resp),
        )

    async def get_object(self, bucket: str, key: str, version_id: str | None = None, *,
                         max_bytes: int | None = None) -> StoredObject:
        """Fetch one object version's body and metadata; a body over ``max_bytes`` raises
        :class:`~s3stream.errors.BodyTooLarge` without being read (checked against ``Content-Length``,
        and while reading a body sent without one)."""
        if self.lean is not None:
            query = {"versionId": version_id} if version_id is not None else None
            answer = await self._lean("GetObject", "GET", bucket, key, params=query, max_body=max_bytes)
            return StoredObject(
                body=answer.body, etag=answer.headers.get("ETag", "").strip('"'),
                version_id=answer.headers.get("x-amz-version-id"), metadata=_metadata(answer),
                content_encoding=answer.headers.get("Content-Encoding", ""),
            )
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id

        async def fetch() -> StoredObject:
            async with self._paced("GetObject", bucket, key):
                resp = await self.client.get_object(**params)
                stream = resp["Body"]  # not `as`: aiobotocore 3.0's __aenter__ gives the raw aiohttp answer
                async with stream:
                    body = await _read_body(stream, resp.get("ContentLength"), max_bytes)
            return StoredObject(
                body=body, etag=resp.get("ETag", "").strip('"'),
                version_id=resp.get("VersionId"), metadata=resp.get("Metadata") or {},
                content_encoding=resp.get("ContentEncoding") or "",
            )

        return await self.retry.call(fetch, what=f"GetObject {key}")

    async def list_objects(
        self, bucket: str, prefix: str, *, delimiter: str | None = None, token: str | None = None,
        max_keys: int = 1000, known: Container[str] = frozenset(),
    ) -> ObjectPage:
        """One page of ``ListObjectsV2`` (no ``StartAfter``: directory buckets refuse it), leaving out
        the objects whose keys are in ``known`` (on the lean path, without reading more than their key)."""
        if self.lean is not None:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            return await self._lean_listing("ListObjectsV2", bucket, query,
                                            lambda body, now_ms: parse_object_page(body, now_ms, known))
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            params["Delimiter"] = delimiter
        if token:
            params["ContinuationToken"] = token
        resp = await self._call("ListObjectsV2", self.client.list_objects_v2, **params)
        entries = [
            Entry(key=o["Key"], version_id="null", last_modified_ms=int(o["LastModified"].timestamp() * 1000),
                  size=int(o.get("Size", 0)), etag=str(o.get("ETag", "")).strip('"'))
            for o in resp.get("Contents", []) if o["Key"] not in known
        ]
        return ObjectPage(
            entries=entries, prefixes=[p["Prefix"] for p in resp.get("CommonPrefixes", [])],
            next_token=resp.get("NextContinuationToken") if resp.get("IsTruncated") else None,
            server_time_ms=_server_time_ms(resp),
        )

    async def list_all_objects(self, bucket: str, prefix: str) -> tuple[list[Entry], int]:
        """Every object under ``prefix`` (all pages), and the server's time of the first page."""
        entries: list[Entry] = []
        now_ms, token = 0, None
        while True:
            page = await self.list_objects(bucket, prefix, token=token)
            now_ms = now_ms or page.server_time_ms
            entries += page.entries
            if (token := page.next_token) is None:
                return entries, now_ms

    async def put_object(
        self, bucket: str, key: str, body: bytes, *, if_match: str | None = None,
        if_none_match: bool = False, content_type: str | None = None,
        metadata: dict[str, str] | None = None, content_encoding: str | None = None,
        encryption: dict[str, str] | None = None,
    ) -> tuple[str, str | None]:
        """Write an object, optionally conditional; returns ``(etag, version_id)``. With ``if_match``,
        a key that is gone fails the condition: S3 answers 404 ``NoSuchKey`` (other servers 412), and
        either is :class:`~s3stream.errors.PreconditionFailed`. ``encryption``: server-side encryption
        headers (:meth:`~s3stream.config.ProducerSettings.encryption_headers`)."""
        try:
            return await self._put_object(bucket, key, body, if_match=if_match, if_none_match=if_none_match,
                                          content_type=content_type, metadata=metadata,
                                          content_encoding=content_encoding, encryption=encryption)
        except errors.NotFound as exc:
            if if_match is None:
                raise
            raise errors.PreconditionFailed(f"PutObject: precondition failed (no object to match: {exc})",
                                            code=exc.code, operation="PutObject") from None

    async def _put_object(
        self, bucket: str, key: str, body: bytes, *, if_match: str | None, if_none_match: bool,
        content_type: str | None, metadata: dict[str, str] | None, content_encoding: str | None,
        encryption: dict[str, str] | None,
    ) -> tuple[str, str | None]:
        if self.lean is not None:
            headers = {f"x-amz-meta-{k.lower()}": v for k, v in (metadata or {}).items()}
            headers.update(encryption or {})
            if if_match is not None:
                headers["if-match"] = if_match if if_match.startswith('"') else f'"{if_match}"'
            if if_none_match:
                headers["if-none-match"] = "*"
            if content_type:
                headers["content-type"] = content_type
            if content_encoding:
                headers["content-encoding"] = content_encoding
            answer = await self._lean("PutObject", "PUT", bucket, key, headers=headers, body=body)
            return answer.headers.get("ETag", "").strip('"'), answer.headers.get("x-amz-version-id")
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, **sse_params(encryption)}
        if if_match is not None:
            params["IfMatch"] = if_match
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if content_type:
            params["ContentType"] = content_type
        if content_encoding:
            params["ContentEncoding"] = content_encoding
        if metadata:
            params["Metadata"] = metadata
        resp = await self._call("PutObject", self.client.put_object, **params)
        return resp.get("ETag", "").strip('"'), resp.get("VersionId")

    async def put_multipart(
        self, bucket: str, key: str, body: bytes, *, part_size: int, if_none_match: bool = False,
        metadata: dict[str, str] | None = None, content_type: str | None = None,
        content_encoding: str | None = None, encryption: dict[str, str] | None = None,
    ) -> tuple[str, str | None]:
        """Write a large object in parts; aborts the upload if any part fails for good."""
        create: dict[str, Any] = {"Bucket": bucket, "Key": key, "Metadata": metadata or {},
                                  **sse_params(encryption)}
        if content_type:
            create["ContentType"] = content_type
        if content_encoding:
            create["ContentEncoding"] = content_encoding
        upload = await self._call("CreateMultipartUpload", self.client.create_multipart_upload, **create)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(body), part_size), start=1):
                resp = await self._call(
                    "UploadPart", self.client.upload_part, Bucket=bucket, Key=key, UploadId=upload_id,
                    PartNumber=number, Body=body[start:start + part_size],
                )
                parts.append({"ETag": resp["ETag"], "PartNumber": number})
            complete: dict[str, Any] = {
                "Bucket": bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": {"Parts": parts},
            }
            if if_none_match:
                complete["IfNoneMatch"] = "*"
            resp = await self._call("CompleteMultipartUpload", self.client.complete_multipart_upload,
                                    **complete)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return str(resp.get("ETag", "")).strip('"'), resp.get("VersionId")

    async def delete_versions(self, bucket: str, idents: list[tuple[str, str | None]]) -> None:
        """Delete up to 1,000 objects or versions in one request; any per-key error is raised."""
        objects = [{"Key": k, **({"VersionId": v} if v else {})} for k, v in idents]
        resp = await self._call("DeleteObjects", self.client.delete_objects, Bucket=bucket,
                                Delete={"Objects": objects, "Quiet": True})
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise errors.PermanentError(
                f"DeleteObjects: {len(resp['Errors'])} not deleted, e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}", code=str(first.get("Code", "")),
            )

    async def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> str | None:
        """Delete an object or one version of it; returns the delete marker's (or version's) id."""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id
        resp = await self._call("DeleteObject", self.client.delete_object, **params)
        return resp.get("VersionId")  # type: ignore[no-any-return]

    # --- the snapshot follower's few requests (s3stream.integrations.snapshot, snapshotcli) ---

    async def get_object_if_changed(self, bucket: str, key: str, etag: str | None, *,
                                    max_bytes: int | None = None) -> StoredObject | None:
        """The latest version of ``key``, or None when its ETag is still ``etag``: a GET with
        ``If-None-Match`` that S3 answers ``304 Not Modified``, without a body. A body over
        ``max_bytes`` raises :class:`~s3stream.errors.BodyTooLarge`, as in :meth:`get_object`."""
        quoted = f'"{etag.strip(chr(34))}"' if etag else None
        if self.lean is not None:
            answer = await self._lean("GetObject", "GET", bucket, key,
                                      headers={"if-none-match": quoted} if quoted else None,
                                      max_body=max_bytes)
            if answer.status == 304:
                return None
            return StoredObject(body=answer.body, etag=answer.headers.get("ETag", "").strip('"'),
                                version_id=answer.headers.get("x-amz-version-id"), metadata=_metadata(answer))
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, **({"IfNoneMatch": quoted} if quoted else {})}

        async def fetch() -> StoredObject | None:
            async with self._paced("GetObject", bucket, key):
                try:
                    resp = await self.client.get_object(**params)
                except ClientError as exc:
                    if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
                        return None
                    raise
                stream = resp["Body"]  # not `as`: aiobotocore 3.0's __aenter__ gives the raw aiohttp answer
                async with stream:
                    body = await _read_body(stream, resp.get("ContentLength"), max_bytes)
            return StoredObject(body=body, etag=resp.get("ETag", "").strip('"'),
                                version_id=resp.get("VersionId"), metadata=resp.get("Metadata") or {})

        return await self.retry.call(fetch, what=f"GetObject {key}")

    async def copy_version(self, bucket: str, key: str, version_id: str) -> str | None:
        """Copy a version of ``key`` onto ``key``: the copy becomes its latest version (how S3 restores a
        previous version; bodies up to 5 GB). Returns the new version id."""
        resp = await self._call("CopyObject", self.client.copy_object, Bucket=bucket, Key=key,
                                CopySource={"Bucket": bucket, "Key": key, "VersionId": version_id})
        return resp.get("VersionId")  # type: ignore[no-any-return]

    async def _call(self, operation: str, method: Any, **params: Any) -> Any:
        where = params.get("Key") or params.get("Prefix")

        async def once() -> Any:
            async with self._paced(operation, params.get("Bucket"), where):
                return await method(**params)

        return await self.retry.call(once, what=operation)

    async def _lean(self, operation: str, method: str, bucket: str, key: str = "", *,
                    params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                    body: bytes = b"", max_body: int | None = None) -> Response:
        lean = self.lean
        assert lean is not None

        async def once() -> Response:
            async with self._paced(operation, bucket, key or (params or {}).get("prefix")):
                return await lean.request(method, bucket, key, params=params, headers=headers, body=body,
                                          max_body=max_body)

        return await self.retry.call(once, what=f"{operation} {key}" if key else operation)

    async def _lean_listing(self, operation: str, bucket: str, query: dict[str, str],
                            parse: Callable[[bytes, int], _Page]) -> _Page:
        """A listing on the lean path, parsed within its attempt: a ``200`` that is not the listing
        (:class:`~s3stream.s3.s3xml.UnreadableListing`) is retried like a 5xx."""
        lean = self.lean
        assert lean is not None

        async def once() -> _Page:
            async with self._paced(operation, bucket, query.get("prefix")):
                answer = await lean.request("GET", bucket, params=query)
                return parse(answer.body, http_date_ms(answer.headers.get("Date")))

        return await self.retry.call(once, what=operation)

    def throttle_for(self, bucket: str | None, key: str | None) -> Throttle:
        """The throttle of the partition ``key`` falls in. S3 scales (and answers SlowDown) per
        prefix; s3stream's shards are ``topic/<shard>/``, so a partition is a key's first two path
        segments: a SlowDown on one shard paces that shard's requests, not every shard's."""
        name = f"{bucket}/{'/'.join((key or '').split('/', 2)[:2])}"
        throttle = self._throttles.get(name)
        if throttle is None:
            if len(self._throttles) > 4096:
                self._throttles = {k: t for k, t in self._throttles.items() if t.rate is not None}
            throttle = self._throttles[name] = Throttle()
        return throttle

    @contextlib.asynccontextmanager
    async def _paced(self, operation: str, bucket: str | None, key: str | None = None) -> AsyncIterator[None]:
        """One attempt of one request: paced by its partition's throttle, counted, errors translated."""
        throttle = self.throttle_for(bucket, key)
        await throttle.wait()
        _request_counter(operation).inc()
        started = time.monotonic()
        try:
            with translate(operation, bucket=bucket):
                yield
        except errors.StoreError as exc:
            metrics.observe_request(operation, time.monotonic() - started, exc)
            throttle.observe(exc, started)
            raise
        metrics.observe_request(operation, time.monotonic() - started, None)
        throttle.observe(None, started)


@contextlib.asynccontextmanager
async def open_store(settings: S3Settings, *, max_connections: int = 32) -> AsyncIterator[Store]:
    """Create the one S3 client for a process, sized for ``max_connections`` concurrent requests
    (``[s3] max_connections`` when set, else the caller's figure)."""
    max_connections = settings.max_connections or max_connections
    retry = retry_policy(settings)
    async with aws_client(settings, "s3", max_connections=max_connections,
                          s3={"addressing_style": settings.addressing_style}) as client:
        client.meta.events.register("before-parse.s3.ListObjectVersions", capture_version_entries)
        client.meta.events.register("before-parse.s3.ListObjectsV2", check_object_listing)
        owner = settings.expected_bucket_owner
        if owner:
            client.meta.events.register("before-parameter-build.s3", expect_owner(owner))
        lean = None
        if settings.lean_path:
            lean = LeanClient(
                client, max_connections=max_connections, connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout, expected_bucket_owner=owner,
            )
        try:
            yield Store(client, retry, lean)
        finally:
            if lean is not None:
                await lean.close()


async def _read_body(stream: Any, declared: int | None, limit: int | None) -> bytes:
    """An aiobotocore body, read whole, or refused as :class:`~s3stream.errors.BodyTooLarge` once it is
    known to be over ``limit`` bytes (from its ``Content-Length``, else while reading)."""
    if limit is None:
        return await stream.read()  # type: ignore[no-any-return]
    if declared is not None:
        if declared > limit:
            raise errors.BodyTooLarge(limit, declared)
        return await stream.read()  # type: ignore[no-any-return]
    chunks, total = [], 0
    while chunk := await stream.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise errors.BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@functools.lru_cache(maxsize=128)
def _request_counter(operation: str) -> Any:
    return metrics.S3_REQUESTS.labels(operation=operation)


def _metadata(answer: Response) -> dict[str, str]:
    return {k[11:].lower(): v for k, v in answer.headers.items() if k[:11].lower() == "x-amz-meta-"}


def _server_time_ms(resp: dict[str, Any]) -> int:
    return http_date_ms(resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date"))
