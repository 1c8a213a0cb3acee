"""The S3 boundary: client creation, the few operations s3stream needs, and error translation.

Everything that talks to aiobotocore lives here. Callers get :mod:`s3stream.errors` types, never
botocore's, and every call goes through the one :class:`~s3stream.retry.RetryPolicy` (botocore's own
retries are switched off so the two never multiply).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from s3stream import errors, metrics
from s3stream.config import S3Settings
from s3stream.message import Entry
from s3stream.retry import RetryPolicy, Throttle

_ENTRIES = "S3StreamEntries"

_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"}
_DENIED_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "AllAccessDisabled", "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}
_CONFLICT_CODES = {"ConditionalRequestConflict", "OperationAborted", "409"}


@dataclass(frozen=True, slots=True)
class VersionPage:
    """One page of ``ListObjectVersions``: versions and delete markers in S3's order."""

    entries: list[Entry]
    truncated: bool
    next_key_marker: str | None
    next_version_id_marker: str | None
    server_time_ms: int


@dataclass(frozen=True, slots=True)
class ObjectPage:
    """One page of ``ListObjectsV2`` (in whatever order the store gives: directory buckets shuffle)."""

    entries: list[Entry]
    prefixes: list[str]
    next_token: str | None
    server_time_ms: int


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A fetched object version."""

    body: bytes
    etag: str
    version_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)


class Store:
    """The operations s3stream performs on S3, with retries and translated errors."""

    def __init__(self, client: Any, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry
        self.throttle = Throttle()

    async def list_versions(
        self, bucket: str, prefix: str, *, key_marker: str | None = None,
        version_id_marker: str | None = None, max_keys: int = 1000,
    ) -> VersionPage:
        """One page of versions under ``prefix``, starting after the given markers."""
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if key_marker is not None:
            params["KeyMarker"] = key_marker
            params["VersionIdMarker"] = version_id_marker or ""
        resp = await self._call("ListObjectVersions", self.client.list_object_versions, **params)
        return VersionPage(
            entries=resp.get(_ENTRIES, []),
            truncated=bool(resp.get("IsTruncated")),
            next_key_marker=resp.get("NextKeyMarker"),
            next_version_id_marker=resp.get("NextVersionIdMarker"),
            server_time_ms=_server_time_ms(resp),
        )

    async def get_object(self, bucket: str, key: str, version_id: str | None = None) -> StoredObject:
        """Fetch one object version's body and metadata."""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id

        async def fetch() -> StoredObject:
            async with self._paced("GetObject", bucket):
                resp = await self.client.get_object(**params)
                async with resp["Body"] as stream:
                    body = await stream.read()
            return StoredObject(
                body=body, etag=resp.get("ETag", "").strip('"'),
                version_id=resp.get("VersionId"), metadata=resp.get("Metadata") or {},
            )

        return await self.retry.call(fetch, what=f"GetObject {key}")

    async def list_objects(
        self, bucket: str, prefix: str, *, delimiter: str | None = None, token: str | None = None,
        max_keys: int = 1000,
    ) -> ObjectPage:
        """One page of ``ListObjectsV2`` (no ``StartAfter``: directory buckets refuse it)."""
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            params["Delimiter"] = delimiter
        if token:
            params["ContinuationToken"] = token
        resp = await self._call("ListObjectsV2", self.client.list_objects_v2, **params)
        entries = [
            Entry(key=o["Key"], version_id="null", last_modified_ms=int(o["LastModified"].timestamp() * 1000),
                  size=int(o.get("Size", 0)), etag=str(o.get("ETag", "")).strip('"'))
            for o in resp.get("Contents", [])
        ]
        return ObjectPage(
            entries=entries, prefixes=[p["Prefix"] for p in resp.get("CommonPrefixes", [])],
            next_token=resp.get("NextContinuationToken") if resp.get("IsTruncated") else None,
            server_time_ms=_server_time_ms(resp),
        )

    async def put_object(
        self, bucket: str, key: str, body: bytes, *, if_match: str | None = None,
        if_none_match: bool = False, content_type: str | None = None,
        metadata: dict[str, str] | None = None, content_encoding: str | None = None,
    ) -> tuple[str, str | None]:
        """Write an object, optionally conditional; returns ``(etag, version_id)``."""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body}
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
    ) -> tuple[str, str | None]:
        """Write a large object in parts; aborts the upload if any part fails for good."""
        create: dict[str, Any] = {"Bucket": bucket, "Key": key, "Metadata": metadata or {}}
        if content_type:
            create["ContentType"] = content_type
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

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket."""
        await self._call("DeleteBucket", self.client.delete_bucket, Bucket=bucket)

    async def versioning_status(self, bucket: str) -> str:
        """``Enabled``, ``Suspended`` or ``""`` (never enabled)."""
        resp = await self._call("GetBucketVersioning", self.client.get_bucket_versioning, Bucket=bucket)
        return str(resp.get("Status") or "")

    async def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> str | None:
        """Delete an object or one version of it; returns the delete marker's (or version's) id."""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id
        resp = await self._call("DeleteObject", self.client.delete_object, **params)
        return resp.get("VersionId")  # type: ignore[no-any-return]

    async def check_bucket(self, bucket: str, *, require_versioning: bool = False) -> None:
        """Fail with one clear error when the bucket is missing or unreachable (or not versioned)."""
        await self._call("HeadBucket", self.client.head_bucket, Bucket=bucket)
        if require_versioning:
            await self.require_versioning(bucket)

    async def require_versioning(self, bucket: str) -> None:
        """Fail with one clear error when the bucket is not versioned."""
        status = await self.versioning_status(bucket)
        if status != "Enabled":
            status = status or "never enabled"
            raise errors.VersioningNotEnabled(
                f"versioning is not enabled on bucket {bucket!r} ({status}); enable it with "
                f"`aws s3api put-bucket-versioning --bucket {bucket} "
                "--versioning-configuration Status=Enabled`, or use a log-layout topic"
            )

    async def create_bucket(self, bucket: str, *, versioning: bool, region: str = "us-east-1") -> None:
        """Create a bucket (idempotent for its owner) and optionally enable versioning."""
        params: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._call("CreateBucket", self.client.create_bucket, **params)
        except errors.StoreError as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou"}:
                raise
        if versioning:
            await self._call(
                "PutBucketVersioning", self.client.put_bucket_versioning,
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"},
            )

    async def create_directory_bucket(self, bucket: str, zone: str) -> None:
        """Create an S3 Express One Zone directory bucket in the availability zone ``zone`` (an AZ ID
        such as ``use1-az4``). Directory buckets have no versioning."""
        config = {"Location": {"Type": "AvailabilityZone", "Name": zone},
                  "Bucket": {"Type": "Directory", "DataRedundancy": "SingleAvailabilityZone"}}
        await self._call("CreateBucket", self.client.create_bucket, Bucket=bucket,
                         CreateBucketConfiguration=config)

    async def _call(self, operation: str, method: Any, **params: Any) -> Any:
        async def once() -> Any:
            async with self._paced(operation, params.get("Bucket")):
                return await method(**params)

        return await self.retry.call(once, what=operation)

    @contextlib.asynccontextmanager
    async def _paced(self, operation: str, bucket: str | None) -> AsyncIterator[None]:
        """One attempt of one request: paced by the throttle, counted, errors translated."""
        await self.throttle.wait()
        metrics.S3_REQUESTS.labels(operation=operation).inc()
        try:
            with translate(operation, bucket=bucket):
                yield
        except errors.StoreError as exc:
            self.throttle.observe(exc)
            raise
        self.throttle.observe(None)


@contextlib.asynccontextmanager
async def open_store(settings: S3Settings, *, max_connections: int = 32) -> AsyncIterator[Store]:
    """Create the one S3 client for a process, sized for ``max_connections`` concurrent requests."""
    session = get_session()
    if settings.profile:
        session.set_config_variable("profile", settings.profile)
    config = AioConfig(
        region_name=settings.region,
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=max_connections,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    kwargs: dict[str, Any] = {"config": config, "endpoint_url": settings.resolved_endpoint()}
    if settings.access_key_id and settings.secret_access_key:
        kwargs["aws_access_key_id"] = settings.access_key_id
        kwargs["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    retry = RetryPolicy(attempts=settings.max_attempts, max_elapsed=settings.max_retry_time)
    with translate("CreateClient"):
        async with session.create_client("s3", **kwargs) as client:
            client.meta.events.register("before-parse.s3.ListObjectVersions", _capture_version_entries)
            yield Store(client, retry)


@contextlib.contextmanager
def translate(operation: str, *, bucket: str | None = None) -> Iterator[None]:
    """Translate botocore/aiohttp exceptions raised inside the block into s3stream errors."""
    try:
        yield
    except ClientError as exc:
        raise _from_client_error(exc, operation, bucket) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise errors.AccessDenied(
            f"no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run where an instance role is available", operation=operation,
        ) from exc
    except (BotoConnectionError, HTTPClientError, ReadTimeoutError, aiohttp.ClientError,
            TimeoutError, ConnectionError) as exc:
        if _cancelling():
            raise asyncio.CancelledError from exc
        raise errors.EndpointUnreachable(
            f"{operation}: cannot reach the S3 endpoint: {exc}", operation=operation
        ) from exc
    except BotoCoreError as exc:
        raise errors.StoreError(f"{operation}: {exc}", operation=operation) from exc


def _cancelling() -> bool:
    """True in a task that was asked to cancel. A cancellation can surface as a connection error (uvloop's
    ``sock_connect`` cancelled, then aiohappyeyeballs' ``sock.close()`` fails with EBADF): it must stay a
    cancellation, or the request is retried and the cancelled task (a poller at shutdown) runs on."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.cancelling() > 0


def _from_client_error(exc: ClientError, operation: str, bucket: str | None) -> errors.StoreError:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    detail = err.get("Message") or code or str(status)
    kw = {"code": code, "operation": operation}
    if code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
        return errors.BucketNotFound(f"bucket {bucket!r} does not exist", **kw)
    if code in _DENIED_CODES or status == 403:
        return errors.AccessDenied(
            f"{operation} on bucket {bucket!r} was denied ({code or status}): check the credentials "
            "and the IAM policy", **kw,
        )
    if code in {"PreconditionFailed", "412"} or status == 412:
        return errors.PreconditionFailed(f"{operation}: precondition failed ({detail})", **kw)
    if code in _CONFLICT_CODES or status == 409:
        return errors.Conflict(f"{operation}: conflict ({detail})", **kw)
    if code in _NOT_FOUND_CODES or status == 404:
        return errors.NotFound(f"{operation}: not found ({detail})", **kw)
    if code == "NotImplemented" or status == 501:
        return errors.PermanentError(f"{operation} is not supported by this bucket or store ({detail})", **kw)
    if code in _THROTTLE_CODES or status in {429, 503}:
        return errors.Throttled(f"{operation}: throttled ({code or status})", **kw)
    if status >= 500:
        return errors.ServerError(f"{operation}: server error {status} ({detail})", **kw)
    return errors.PermanentError(f"{operation}: {code or status}: {detail}", **kw)


def _capture_version_entries(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                             **_: Any) -> None:
    """Keep S3's interleaving of versions and delete markers, which botocore's parser splits apart."""
    if response_dict.get("status_code") == 200 and isinstance(response_dict.get("body"), bytes):
        customized_response_dict[_ENTRIES] = parse_version_entries(response_dict["body"])


def parse_version_entries(body: bytes) -> list[Entry]:
    """The ``Version`` and ``DeleteMarker`` elements of a ListVersionsResult, in document order."""
    root = ET.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "") == "url"
    out: list[Entry] = []
    for el in root:
        tag = el.tag[len(ns):]
        if tag not in ("Version", "DeleteMarker"):
            continue
        key = el.findtext(f"{ns}Key") or ""
        out.append(Entry(
            key=unquote_plus(key) if encoded else key,
            version_id=el.findtext(f"{ns}VersionId") or "null",
            last_modified_ms=_iso_ms(el.findtext(f"{ns}LastModified") or ""),
            deleted=tag == "DeleteMarker",
            size=int(el.findtext(f"{ns}Size") or 0),
            etag=(el.findtext(f"{ns}ETag") or "").strip('"'),
            latest=(el.findtext(f"{ns}IsLatest") or "") == "true",
        ))
    return out


def _iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _server_time_ms(resp: dict[str, Any]) -> int:
    """The server's clock from the ``Date`` header (so client clock skew does not matter)."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            return int(parsedate_to_datetime(date).timestamp() * 1000)
    return int(time.time() * 1000)
