"""The lean request path: the hot S3 requests signed here and sent over one shared aiohttp session.

aiobotocore spends about a millisecond of CPU on each request (endpoint rules evaluated per key,
response parsing through the service model, signing, user agent), which caps a consumer near 800
objects/s per core. The requests a stream makes by the thousand -- GetObject, PutObject and the two
listings -- take this path instead: the bucket's URL is resolved **once**, by botocore itself (a
presigned URL for a probe key gives scheme, host, path- or virtual-host style, region and signing
service), then each request is a string join, a :class:`~s3stream.s3.sigv4.Signer` signature and an
aiohttp call. Credentials still come from botocore's chain (refreshed as they expire); for S3 Express
directory buckets the session credentials come from aiobotocore's own ``CreateSession`` cache, so the
rules for refreshing them are botocore's. Retries, pacing, metrics and error translation are the
store's, exactly as for every other request: this module raises :class:`S3HTTPError` with the status
and S3 error code, and :func:`s3stream.s3.translate.translate` turns it into an :mod:`s3stream.errors` type.

Every answer's ``Date`` feeds its bucket's :class:`~s3stream.s3.serverclock.ServerClock` (``clock``),
so a producer's clock is narrowed by its own writes. Everything else (bucket set-up, multipart,
deletes, checkpoints' rare requests) stays on aiobotocore.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiobotocore.credentials import AioRefreshableCredentials
from aiobotocore.utils import AioS3ExpressIdentityCache
from multidict import CIMultiDictProxy
from yarl import URL

from s3stream import errors
from s3stream.s3.requestopts import EXPECTED_OWNER_HEADER, lean_user_agent
from s3stream.s3.s3xml import http_date_ms
from s3stream.s3.serverclock import ServerClock
from s3stream.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Credentials, Signer, canonical_query, quote_path

_PROBE = "s3stream-probe"
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class S3HTTPError(Exception):
    """An S3 error answer on the lean path: the status, S3's error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer: status, headers and the whole body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a bucket's requests go and how they are signed, as botocore resolved it."""

    base: str          # scheme://host[:port]/[bucket/]  (path-style keeps the bucket in the path)
    host: str          # the Host header, default port left out, as botocore signs it
    path_prefix: str   # the encoded path before the key: "/" or "/bucket/"
    signer: Signer
    express: bool
    secure: bool


class LeanClient:
    """Signed GET/PUT/list requests for the hot path; one per :class:`~s3stream.s3.store.Store`."""

    def __init__(self, client: Any, *, max_connections: int, connect_timeout: float,
                 read_timeout: float, expected_bucket_owner: str | None = None) -> None:
        self._client = client
        self._owner = expected_bucket_owner
        self._user_agent = lean_user_agent()
        self._targets: dict[str, _Target] = {}
        self._express: AioS3ExpressIdentityCache | None = None
        self._clocks: dict[str, ServerClock] = {}
        self._date = ("", 0)  # the latest Date header and its epoch ms: it changes once a second
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",),
            read_bufsize=1 << 20,
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._session.close()

    async def request(self, method: str, bucket: str, key: str = "", *, params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None, body: bytes = b"",
                      max_body: int | None = None) -> Response:
        """Send one signed request; returns the answer or raises :class:`S3HTTPError`. A successful
        answer's body over ``max_body`` bytes raises :class:`~s3stream.errors.BodyTooLarge` unread."""
        target = self._targets.get(bucket) or await self._resolve(bucket)
        creds = await self._credentials(bucket, target)
        path = target.path_prefix + quote_path(key)
        query = canonical_query(params) if params else ""
        if not body:
            payload = EMPTY_SHA256
        else:
            payload = UNSIGNED_PAYLOAD if target.secure else hashlib.sha256(body).hexdigest()
        headers = dict(headers or {})
        if self._owner:  # an x-amz-* header: signed
            headers[EXPECTED_OWNER_HEADER] = self._owner
        signed = target.signer.sign(method, target.host, path, query, headers, payload, creds)
        signed["host"] = target.host
        signed["user-agent"] = self._user_agent  # not signed, as botocore leaves it out
        url = URL(target.base + quote_path(key) + ("?" + query if query else ""), encoded=True)
        sent = time.monotonic()
        async with self._session.request(method, url, headers=signed, data=body or None) as resp:
            self._dated(bucket, resp.headers.get("Date"), sent)
            if resp.status >= 300 and resp.status != 304:
                raise _error(resp.status, await resp.read())
            data = await (resp.read() if max_body is None else read_capped(resp, max_body))
            return Response(resp.status, resp.headers, data)

    def clock(self, bucket: str) -> ServerClock:
        """``bucket``'s server clock, read from the ``Date`` of every answer this client receives."""
        clock = self._clocks.get(bucket)
        if clock is None:
            clock = self._clocks[bucket] = ServerClock()
        return clock

    def _dated(self, bucket: str, date: str | None, sent: float) -> None:
        if not date:
            return
        if date != self._date[0]:
            self._date = (date, http_date_ms(date))
        self.clock(bucket).observe(self._date[1], received=time.monotonic(), sent=sent)

    async def _resolve(self, bucket: str) -> _Target:
        """Ask botocore where ``bucket`` lives: a presigned URL for a probe key carries it all."""
        url = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": _PROBE}, ExpiresIn=60,
        )
        parts = urlsplit(url)
        credential = parse_qs(parts.query).get("X-Amz-Credential")
        if credential:  # SigV4 presigning names the signing region and service (s3 or s3express)
            region, service = credential[0].split("/")[2:4]
        else:
            region, service = self._client.meta.region_name, "s3"
        port = parts.port
        host = parts.hostname or ""
        if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
            host = f"{host}:{port}"
        path_prefix = parts.path[: -len(_PROBE)]
        target = _Target(
            base=f"{parts.scheme}://{parts.netloc}{path_prefix}", host=host, path_prefix=path_prefix,
            signer=Signer(region, service), express=service == "s3express", secure=parts.scheme == "https",
        )
        self._targets[bucket] = target
        return target

    async def _credentials(self, bucket: str, target: _Target) -> Credentials:
        if target.express:
            if self._express is None:
                self._express = AioS3ExpressIdentityCache(self._client, AioRefreshableCredentials)
            source = await self._express.get_credentials(bucket)
        else:
            source = self._client._request_signer._credentials  # botocore's resolved chain
        if source is None:
            raise errors.AccessDenied(
                "no usable AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run where an instance role is available",
            )
        frozen = await source.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of ``resp``, or :class:`~s3stream.errors.BodyTooLarge` as soon as it is known to be
    over ``limit`` bytes: from ``Content-Length`` before reading (aiohttp then reads no more than it
    declares), else while reading a body sent without one. Leaving the response unread closes its
    connection instead of draining it."""
    declared = resp.content_length
    if declared is not None:
        if declared > limit:
            raise errors.BodyTooLarge(limit, declared)
        return await resp.read()
    chunks, total = [], 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        total += len(chunk)
        if total > limit:
            raise errors.BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, body: bytes) -> S3HTTPError:
    code = _ERROR_CODE.search(body)
    message = _ERROR_MESSAGE.search(body)
    return S3HTTPError(
        status, code.group(1).decode() if code else str(status),
        message.group(1).decode(errors="replace") if message else "",
    )
