"""An in-memory S3 emulator for benchmarks: one process, aiohttp's low-level server on uvloop, HTTP/1.1
keep-alive, every bucket and object held in memory.

What it is: enough of the S3 API for s3stream's benchmark scenarios, with S3's semantics where they
matter to s3stream (whole-second ``LastModified``, versions and delete markers interleaved in
``ListObjectVersions``, conditional writes, multipart objects dated by the start of their upload) and
three profiles:

- ``zero``: no added latency, no limits, general-purpose buckets.
- ``express`` (S3 Express One Zone): about 5 ms per request; buckets named ``*--x-s3`` are directory
  buckets: no versioning (501), ``ListObjectsV2`` pages shuffled, ``start-after`` refused, a prefix
  with a delimiter must end in ``/``, ETags that are not MD5. ``CreateSession`` issues credentials.
- ``standard`` (S3 Standard): about 25 ms to first byte and per-prefix request rates (3,500
  PUT/POST/DELETE and 5,500 GET/HEAD per second) beyond which it answers ``503 SlowDown``.

``--verify-signatures`` recomputes every request's SigV4 signature with botocore's own signer
(independently of s3stream's code) and answers ``403 SignatureDoesNotMatch`` on a mismatch.

What it is not: a general S3. No ListBuckets, ListObjects (V1), CopyObject, ranges, ACLs, policies,
tagging, lifecycle, encryption, checksums (sent ones are ignored), presigned URLs, a delimiter in
ListObjectVersions, session expiry, or persistence; unknown operations answer ``501 NotImplemented``.
moto remains the correctness reference; this is the endpoint that is not the bottleneck.

Control endpoints (never buckets): ``GET /_emulator/stats``, ``POST /_emulator/reset[?data=1]``,
``POST /_emulator/seed``. Start it with ``python -m s3stream.emulator --profile zero`` (prints
``READY http://127.0.0.1:PORT``) or, from Python, ``with run_emulator("express") as emu:``.

Performance (measured on a 2-core AMD EPYC, zero profile, GetObject of 100-byte objects over
keep-alive connections, client in another process): an aiohttp client with 64 connections gets
5,800-7,400 GET/s, limited by the client (the server used a third of a core, about 50 µs of CPU per
request); a lean raw-socket client gets about 21,000 GET/s with the server at 0.6 core, about 27 µs
of CPU per request (so roughly 35,000/s per core). PutObject costs about 70 µs. With
``--verify-signatures`` each request costs about 85 µs (about 9,000 GET/s measured).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import contextlib
import hashlib
import hmac
import itertools
import os
import random
import re
import resource
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any
from urllib.parse import parse_qsl, quote, unquote

import orjson
from aiohttp import HttpVersion11, web
from botocore.auth import S3ExpressAuth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy

from s3stream import emulator_xml as xml


@dataclass(frozen=True, slots=True)
class Profile:
    """How an emulated S3 behaves: latency per answer, request rates per prefix, directory buckets."""

    name: str
    latency: float
    put_rate: float | None
    get_rate: float | None
    directory_buckets: bool


PROFILES = {
    "zero": Profile("zero", 0.0, None, None, directory_buckets=False),
    "express": Profile("express", 0.005, None, None, directory_buckets=True),
    "standard": Profile("standard", 0.025, 3500.0, 5500.0, directory_buckets=False),
}

# Long-term credentials accepted with --verify-signatures: access key -> secret (the tests' ones).
CREDENTIALS = {"testing": "testing"}

# A request-rate "prefix" is the bucket plus this many leading "/"-separated key segments: s3stream's
# shards live at <topic>/<shard>/, so each shard gets its own allowance, as S3 partitions by prefix.
RATE_PREFIX_DEPTH = 2

SESSION_SECONDS = 300
DIRECTORY_SUFFIX = "--x-s3"
MIN_PART_SIZE = 5 << 20
CONTROL = "/_emulator/"
_VIRTUAL_SUFFIXES = (".localhost", ".127.0.0.1")
_BODY_METHODS = frozenset({"PUT", "POST"})
_READ_METHODS = frozenset({"GET", "HEAD"})
_XML = "application/xml"
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


def _precondition_failed(condition: str) -> S3Error:
    return S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                   extra={"Condition": condition})


def _not_implemented(what: str) -> S3Error:
    return S3Error(501, "NotImplemented", f"{what} is not implemented")


# --------------------------------------------------------------------------------------------- data


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


@dataclass(slots=True)
class Call:
    """One S3 request, parsed."""

    op: str
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    request_id: str


class RateLimiter:
    """A token bucket per prefix: ``rate`` requests per second, bursts of a tenth of a second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 10)
        self._state: dict[str, list[float]] = {}

    def allow(self, prefix: str, now: float) -> bool:
        state = self._state.get(prefix)
        if state is None:
            state = self._state[prefix] = [self.burst, now]
        tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
        state[1] = now
        if tokens < 1.0:
            state[0] = tokens
            return False
        state[0] = tokens - 1.0
        return True


def rate_prefix(key: str) -> str:
    """The part of a key (or listing prefix) a request-rate allowance belongs to."""
    parts = key.split("/", RATE_PREFIX_DEPTH)
    if len(parts) > RATE_PREFIX_DEPTH:
        return "/".join(parts[:RATE_PREFIX_DEPTH]) + "/"
    return key[: key.rfind("/") + 1]


# ---------------------------------------------------------------------------------- signatures

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^/\s]+)/(\d{8})/([^/\s]+)/([^/\s]+)/aws4_request\s*,\s*"
    r"SignedHeaders=([a-z0-9;_.-]+)\s*,\s*Signature=([0-9a-f]{64})"
)
_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
_MAX_SKEW = 15 * 60


class _SignedAsNamed:
    """Sign exactly the headers the request names in ``SignedHeaders``, as the client sent them."""

    def headers_to_sign(self, request: Any) -> Any:
        return request.context["signed_headers"]


class _NamedS3SigV4(_SignedAsNamed, S3SigV4Auth):  # type: ignore[misc]
    pass


class _NamedS3Express(_SignedAsNamed, S3ExpressAuth):  # type: ignore[misc]
    pass


class SignatureVerifier:
    """Checks SigV4 ``Authorization`` headers by recomputing them with botocore's signer classes."""

    def __init__(self, sessions: dict[str, Session]) -> None:
        self.sessions = sessions
        self.counts: Counter[str] = Counter()

    def verify(self, method: str, path: str, pairs: list[tuple[str, str]],
               headers: CIMultiDictProxy[str], body: bytes) -> None:
        """Raise :class:`S3Error` unless the request is signed by a known key and unchanged."""
        try:
            service = self._verify(method, path, pairs, headers, body)
        except S3Error:
            self.counts["rejected"] += 1
            raise
        self.counts[service] += 1

    def _verify(self, method: str, path: str, pairs: list[tuple[str, str]],
                headers: CIMultiDictProxy[str], body: bytes) -> str:
        auth = headers.get("Authorization")
        if not auth:
            raise S3Error(403, "AccessDenied", "anonymous requests are refused (--verify-signatures)")
        match = _AUTH_RE.fullmatch(auth.strip())
        if match is None:
            raise S3Error(400, "AuthorizationHeaderMalformed", f"unparsable Authorization: {auth[:200]}")
        access_key, day, region, service, signed, signature = match.groups()
        timestamp = _timestamp(headers, day)
        secret, token = self._secret(access_key, service, headers)
        _check_payload(headers, body)
        names = signed.split(";")
        if "host" not in names or names != sorted(set(names)):
            raise S3Error(403, "SignatureDoesNotMatch", f"SignedHeaders must be sorted, with host: {signed}")
        signer_cls = _NamedS3Express if token else _NamedS3SigV4
        kwargs = {"identity_cache": None} if token else {}
        signer = signer_cls(Credentials(access_key, secret, token), service, region, **kwargs)
        request = _aws_request(method, path, pairs, headers, names, body, timestamp)
        canonical = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical)
        if not hmac.compare_digest(signer.signature(string_to_sign, request), signature):
            raise S3Error(403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature you provided.",
                          extra={"AWSAccessKeyId": access_key, "StringToSign": string_to_sign,
                                 "CanonicalRequest": canonical})
        return "s3express-session" if token else service

    def _secret(self, access_key: str, service: str,
                headers: CIMultiDictProxy[str]) -> tuple[str, str | None]:
        token = headers.get("x-amz-s3session-token")
        if token is None:
            secret = CREDENTIALS.get(access_key)
            if secret is None:
                raise S3Error(403, "InvalidAccessKeyId", f"unknown access key {access_key!r}")
            if service not in ("s3", "s3express"):
                raise S3Error(400, "AuthorizationHeaderMalformed", f"wrong service {service!r} in scope")
            return secret, None
        session = self.sessions.get(token)
        if session is None or session.access_key != access_key:
            raise S3Error(403, "InvalidToken", "unknown session token, or not the session's access key")
        if service != "s3express":
            raise S3Error(400, "AuthorizationHeaderMalformed", "session requests are signed for s3express")
        return session.secret, token


def _timestamp(headers: CIMultiDictProxy[str], day: str) -> str:
    stamp = headers.get("x-amz-date", "")
    if not _AMZ_DATE_RE.fullmatch(stamp):
        raise S3Error(403, "AccessDenied", "SigV4 requests need an x-amz-date header (YYYYMMDDTHHMMSSZ)")
    if stamp[:8] != day:
        raise S3Error(400, "AuthorizationHeaderMalformed", f"credential date {day} is not {stamp[:8]}")
    skew = abs(time.time() - calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))
    if skew > _MAX_SKEW:
        raise S3Error(403, "RequestTimeTooSkewed", "the request time is over 15 minutes from the server's")
    return stamp


def _check_payload(headers: CIMultiDictProxy[str], body: bytes) -> None:
    declared = headers.get("x-amz-content-sha256")
    if declared is None:
        raise S3Error(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if len(declared) == 64 and declared != hashlib.sha256(body).hexdigest():
        raise S3Error(400, "XAmzContentSHA256Mismatch", "the body's SHA-256 is not x-amz-content-sha256")


def _aws_request(method: str, path: str, pairs: list[tuple[str, str]], headers: CIMultiDictProxy[str],
                 names: list[str], body: bytes, timestamp: str) -> Any:
    """The incoming request as botocore's ``AWSRequest``: path and query canonicalized from their
    decoded form (as S3 does), and exactly the named headers, with the client's values."""
    named = HTTPHeaders()
    for name in names:
        values = headers.getall(name, [])
        if not values:
            raise S3Error(403, "SignatureDoesNotMatch", f"signed header {name!r} is not in the request")
        for value in values:
            named[name] = value
    request = AWSRequest(method=method, url="http://emulator" + quote(unquote(path), safe="/~"),
                         headers={"X-Amz-Content-SHA256": headers["x-amz-content-sha256"]},
                         data=body, params=pairs)
    request.context["timestamp"] = timestamp
    request.context["signed_headers"] = named
    return request


def _decode_aws_chunked(body: bytes) -> bytes:
    """The payload of an ``aws-chunked`` body (chunk signatures and trailers are not checked)."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


# ------------------------------------------------------------------------------------- the emulator


def _etag_matches(condition: str, etag: str) -> bool:
    wanted = {c.strip().removeprefix("W/").strip('"') for c in condition.split(",")}
    return "*" in wanted or etag.strip('"') in wanted


def _after_prefix(prefix: str) -> str:
    """The smallest string above every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _max_keys(query: dict[str, str]) -> int:
    text = query.get("max-keys", "1000")
    if not text.isdigit():
        raise S3Error(400, "InvalidArgument", f"max-keys must be a non-negative integer, not {text!r}")
    return min(int(text), 1000)


def _metadata(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k[:11].lower() == "x-amz-meta-"}


def _content_encoding(headers: CIMultiDictProxy[str]) -> str | None:
    value = headers.get("Content-Encoding")
    if value and "aws-chunked" in value:
        value = ",".join(p for p in (s.strip() for s in value.split(",")) if p != "aws-chunked")
    return value or None


_BUCKET_OPS = {
    ("GET", "session"): "CreateSession", ("GET", "versioning"): "GetBucketVersioning",
    ("GET", "versions"): "ListObjectVersions", ("GET", "location"): "GetBucketLocation",
    ("GET", "list-type"): "ListObjectsV2", ("GET", ""): "ListObjects", ("HEAD", ""): "HeadBucket",
    ("PUT", ""): "CreateBucket", ("PUT", "versioning"): "PutBucketVersioning",
    ("DELETE", ""): "DeleteBucket", ("POST", "delete"): "DeleteObjects",
}
_SUBRESOURCES = ("session", "versioning", "versions", "location", "list-type", "delete")
_LIST_PARAMS = frozenset({"prefix", "delimiter", "max-keys", "encoding-type", "marker"})


def _operation(method: str, bucket: str, key: str, query: dict[str, str]) -> str:
    """botocore's name for the operation a request performs (``Unsupported`` for the rest)."""
    if not bucket:
        return "ListBuckets"
    if key:
        if method in _READ_METHODS:
            return "GetObject" if method == "GET" else "HeadObject"
        if "uploadId" in query:
            return {"PUT": "UploadPart", "POST": "CompleteMultipartUpload",
                    "DELETE": "AbortMultipartUpload"}.get(method, "Unsupported")
        if method == "POST":
            return "CreateMultipartUpload" if "uploads" in query else "Unsupported"
        return {"PUT": "PutObject", "DELETE": "DeleteObject"}.get(method, "Unsupported")
    sub = next((s for s in _SUBRESOURCES if s in query), "")
    if not sub and not _LIST_PARAMS.issuperset(query):
        return "Unsupported"
    return _BUCKET_OPS.get((method, sub), "Unsupported")


async def _read_body(request: web.BaseRequest) -> bytes:
    """The whole request body, answering ``Expect: 100-continue`` first (the low-level server does
    not, and botocore waits for it before sending a PUT's body)."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return await request.content.read()


class Emulator:
    """The state of one emulated S3 and the handling of its requests."""

    def __init__(self, profile: Profile, *, verify_signatures: bool = False, put_rate: float | None = None,
                 get_rate: float | None = None, latency_ms: float | None = None) -> None:
        self.profile = profile
        self.latency = profile.latency if latency_ms is None else latency_ms / 1000
        put_rate = profile.put_rate if put_rate is None else put_rate
        get_rate = profile.get_rate if get_rate is None else get_rate
        self.put_limit = RateLimiter(put_rate) if put_rate else None
        self.get_limit = RateLimiter(get_rate) if get_rate else None
        self.sessions: dict[str, Session] = {}
        self.verifier = SignatureVerifier(self.sessions) if verify_signatures else None
        self.buckets: dict[str, Bucket] = {}
        self.requests: Counter[str] = Counter()
        self.throttled = 0
        self.started = time.monotonic()
        self._ids = itertools.count(1)
        self._ops: dict[str, Callable[[Call], web.Response]] = {
            "GetObject": self.get_object, "HeadObject": self.get_object, "PutObject": self.put_object,
            "DeleteObject": self.delete_object, "DeleteObjects": self.delete_objects,
            "ListObjectsV2": self.list_objects_v2, "ListObjectVersions": self.list_object_versions,
            "CreateBucket": self.create_bucket, "HeadBucket": self.head_bucket,
            "DeleteBucket": self.delete_bucket, "GetBucketVersioning": self.get_bucket_versioning,
            "PutBucketVersioning": self.put_bucket_versioning, "CreateSession": self.create_session,
            "GetBucketLocation": self.get_bucket_location,
            "CreateMultipartUpload": self.create_multipart_upload, "UploadPart": self.upload_part,
            "CompleteMultipartUpload": self.complete_multipart_upload,
            "AbortMultipartUpload": self.abort_multipart_upload,
        }

    # ----------------------------------------------------------------------------- request flow

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one HTTP request (the low-level server's handler)."""
        path, _, qs = request.raw_path.partition("?")
        if path.startswith(CONTROL):
            return await self._control(request, path, qs)
        request_id = f"{next(self._ids):016X}"
        try:
            call = await self._prepare(request, path, qs, request_id)
            response = self._ops.get(call.op, self.not_implemented)(call)
        except S3Error as exc:
            response = self._error(exc, request_id)
        except Exception:  # an emulator bug: answer like S3's InternalError, and show it on stderr
            traceback.print_exc()
            response = self._error(S3Error(500, "InternalError", "emulator failure (see its stderr)"),
                                   request_id)
        if self.latency:
            await asyncio.sleep(self.latency)
        return response

    async def _prepare(self, request: web.BaseRequest, path: str, qs: str, request_id: str) -> Call:
        """Parse, count, read, verify and rate-limit one S3 request."""
        bucket, key = self._route(request.host, path)
        pairs = parse_qsl(qs, keep_blank_values=True) if qs else []
        query = dict(pairs)
        method = request.method
        op = _operation(method, bucket, key, query)
        self.requests[op] += 1
        body = await _read_body(request) if method in _BODY_METHODS else b""
        if self.verifier is not None:
            self.verifier.verify(method, path, pairs, request.headers, body)
        if body and (request.headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
                     or "aws-chunked" in request.headers.get("Content-Encoding", "")):
            try:
                body = _decode_aws_chunked(body)
            except ValueError:
                raise S3Error(400, "IncompleteBody", "the aws-chunked body is malformed") from None
        call = Call(op, method, bucket, key, query, request.headers, body, request_id)
        if self.put_limit is not None or self.get_limit is not None:
            self._throttle(call)
        return call

    @staticmethod
    def _route(host: str, path: str) -> tuple[str, str]:
        """``(bucket, key)`` from a path-style path, or a virtual-host ``bucket.localhost`` Host."""
        name = host.rpartition(":")[0] or host
        for suffix in _VIRTUAL_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)], unquote(path[1:])
        bucket, _, key = path[1:].partition("/")
        return unquote(bucket), unquote(key)

    def _throttle(self, call: Call) -> None:
        limiter = self.get_limit if call.method in _READ_METHODS else self.put_limit
        if limiter is None:
            return
        where = f"{call.bucket}/{rate_prefix(call.key or call.query.get('prefix', ''))}"
        if not limiter.allow(where, time.monotonic()):
            self.throttled += 1
            raise S3Error(503, "SlowDown", "Please reduce your request rate.")

    def _respond(self, call: Call, body: bytes = b"", headers: dict[str, str] | None = None, *,
                 status: int = 200, content_type: str | None = None) -> web.Response:
        h = headers if headers is not None else {}
        h["x-amz-request-id"] = call.request_id
        if content_type:
            h["Content-Type"] = content_type
        return web.Response(status=status, body=body, headers=h)

    def _error(self, exc: S3Error, request_id: str) -> web.Response:
        headers = {"x-amz-request-id": request_id, "Content-Type": _XML, **exc.headers}
        body = xml.error_xml(exc.code, exc.message, request_id, exc.extra)
        return web.Response(status=exc.status, body=body, headers=headers)

    def not_implemented(self, call: Call) -> web.Response:
        raise _not_implemented(call.op if call.op != "Unsupported" else f"{call.method} with this query")

    # ----------------------------------------------------------------------------- storage

    def _bucket(self, name: str) -> Bucket:
        bucket = self.buckets.get(name)
        if bucket is None:
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist",
                          extra={"BucketName": name})
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

    @staticmethod
    def _check_write(headers: CIMultiDictProxy[str], current: Version | None) -> None:
        none_match = headers.get("If-None-Match")
        if none_match is not None and current is not None and _etag_matches(none_match, current.etag):
            raise _precondition_failed("If-None-Match")
        match = headers.get("If-Match")
        if match is not None and (current is None or not _etag_matches(match, current.etag)):
            raise _precondition_failed("If-Match")

    def _write_headers(self, bucket: Bucket, version: Version) -> dict[str, str]:
        headers = {"ETag": version.etag}
        if bucket.versioning:
            headers["x-amz-version-id"] = version.version_id
        return headers

    # ----------------------------------------------------------------------------- objects

    def get_object(self, call: Call) -> web.Response:
        """GetObject and HeadObject (aiohttp leaves the body out of a HEAD answer)."""
        bucket = self._bucket(call.bucket)
        version = self._find(bucket, call.key, call.query.get("versionId"))
        headers = dict(version.headers)
        if bucket.versioning:
            headers["x-amz-version-id"] = version.version_id
        none_match = call.headers.get("If-None-Match")
        if none_match is not None and _etag_matches(none_match, version.etag):
            return self._respond(call, b"", headers, status=304)
        match = call.headers.get("If-Match")
        if match is not None and not _etag_matches(match, version.etag):
            raise _precondition_failed("If-Match")
        return self._respond(call, version.body, headers)

    def put_object(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if "x-amz-copy-source" in call.headers:
            raise _not_implemented("CopyObject")
        self._check_write(call.headers, self._current(bucket, call.key))
        version = self._new_version(
            bucket, call.body, int(time.time()), content_type=call.headers.get("Content-Type"),
            content_encoding=_content_encoding(call.headers), metadata=_metadata(call.headers),
        )
        self._store(bucket, call.key, version)
        return self._respond(call, b"", self._write_headers(bucket, version))

    def delete_object(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        version_id, marker = self._delete(bucket, call.key, call.query.get("versionId"))
        headers = {}
        if version_id is not None:
            headers["x-amz-version-id"] = version_id
        if marker:
            headers["x-amz-delete-marker"] = "true"
        return self._respond(call, b"", headers, status=204)

    def delete_objects(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        try:
            objects, quiet = xml.parse_delete(call.body)
        except xml.MalformedXML as exc:
            raise S3Error(400, "MalformedXML", str(exc)) from None
        if not objects or len(objects) > 1000:
            raise S3Error(400, "MalformedXML", "DeleteObjects takes 1 to 1,000 objects")
        deleted = []
        for key, version_id in objects:
            vid, marker = self._delete(bucket, key, version_id)
            marker_id = vid if marker else None
            deleted.append(xml.Deleted(key, version_id, marker, marker_id))
        return self._respond(call, xml.delete_result_xml(deleted, quiet), content_type=_XML)

    # ----------------------------------------------------------------------------- listings

    def list_objects_v2(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        q = call.query
        page = xml.ObjectsPage(
            bucket=bucket.name, prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
            max_keys=_max_keys(q), encode=q.get("encoding-type") == "url",
            storage_class="EXPRESS_ONEZONE" if bucket.directory else "STANDARD",
            token=q.get("continuation-token"), start_after=q.get("start-after") or None,
        )
        if bucket.directory:
            _directory_listing_rules(page)
        start = page.prefix
        if page.token is not None:
            start = max(start, _decode_token(page.token))
        elif page.start_after:
            start = max(start, page.start_after + "\0")
        resume = self._scan(bucket, page, start)
        page.next_token = base64.urlsafe_b64encode(resume.encode()).decode() if resume is not None else None
        if bucket.directory:
            random.shuffle(page.contents)
        return self._respond(call, xml.list_objects_v2_xml(page), content_type=_XML)

    @staticmethod
    def _scan(bucket: Bucket, page: xml.ObjectsPage, start: str) -> str | None:
        """Fill a page with current objects and common prefixes from ``start`` on; return where the
        next page starts, or None when nothing is left. A common prefix is skipped in one seek."""
        prefix, delimiter, objects = page.prefix, page.delimiter, bucket.objects
        keys, resume, found = bucket.keys.iter_from(start), start, 0
        while (key := next(keys, None)) is not None and key.startswith(prefix):
            latest = objects[key][-1]
            if latest.delete_marker:
                continue
            if found == page.max_keys:
                return resume
            found += 1
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                page.contents.append((key, latest))
                resume = key + "\0"
            else:
                common = key[: cut + len(delimiter)]
                page.prefixes.append(common)
                resume = _after_prefix(common)
                keys = bucket.keys.iter_from(resume)
        return None

    def list_object_versions(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.directory:
            raise _not_implemented("ListObjectVersions on a directory bucket")
        q = call.query
        if q.get("delimiter"):
            raise _not_implemented("ListObjectVersions with a delimiter")
        page = xml.VersionsPage(
            bucket=bucket.name, prefix=q.get("prefix", ""), key_marker=q.get("key-marker", ""),
            version_id_marker=q.get("version-id-marker", ""), max_keys=_max_keys(q),
            encode=q.get("encoding-type") == "url",
        )
        self._scan_versions(bucket, page)
        return self._respond(call, xml.list_versions_xml(page), content_type=_XML)

    @staticmethod
    def _scan_versions(bucket: Bucket, page: xml.VersionsPage) -> None:
        """Keys ascending, each key's versions newest first, after the markers."""
        start = page.key_marker if page.version_id_marker else page.key_marker + "\0"
        for key in bucket.keys.iter_from(max(page.prefix, start) if page.key_marker else page.prefix):
            if not key.startswith(page.prefix):
                return
            versions = bucket.objects[key]
            newest = index = len(versions) - 1
            if key == page.key_marker:  # resume inside the marker key, after its marker version
                ids = [v.version_id for v in versions]
                if page.version_id_marker not in ids:
                    continue
                index = ids.index(page.version_id_marker) - 1
            while index >= 0:
                if len(page.entries) == page.max_keys:
                    page.truncated = True
                    return
                page.entries.append((key, versions[index], index == newest))
                index -= 1

    # ----------------------------------------------------------------------------- buckets

    def create_bucket(self, call: Call) -> web.Response:
        if call.bucket in self.buckets:
            raise S3Error(409, "BucketAlreadyOwnedByYou",
                          "Your previous request to create the named bucket succeeded and you own it.",
                          extra={"BucketName": call.bucket})
        self._create(call.bucket)
        return self._respond(call, b"", {"Location": f"/{call.bucket}"})

    def _create(self, name: str) -> Bucket:
        directory = self.profile.directory_buckets and name.endswith(DIRECTORY_SUFFIX)
        bucket = self.buckets[name] = Bucket(name, directory)
        return bucket

    def head_bucket(self, call: Call) -> web.Response:
        self._bucket(call.bucket)
        return self._respond(call, b"", {"x-amz-bucket-region": "us-east-1"})

    def delete_bucket(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.objects:
            raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty",
                          extra={"BucketName": bucket.name})
        del self.buckets[bucket.name]
        return self._respond(call, b"", status=204)

    def get_bucket_versioning(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.directory:
            raise _not_implemented("GetBucketVersioning on a directory bucket")
        return self._respond(call, xml.versioning_xml(bucket.versioning), content_type=_XML)

    def put_bucket_versioning(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.directory:
            raise _not_implemented("PutBucketVersioning on a directory bucket")
        try:
            bucket.versioning = xml.parse_versioning(call.body)
        except xml.MalformedXML as exc:
            raise S3Error(400, "MalformedXML", str(exc)) from None
        return self._respond(call)

    def get_bucket_location(self, call: Call) -> web.Response:
        self._bucket(call.bucket)
        return self._respond(call, xml.location_xml(), content_type=_XML)

    def create_session(self, call: Call) -> web.Response:
        """Issue session credentials, for any bucket name: aiobotocore asks before CreateBucket."""
        now = time.time()
        if len(self.sessions) > 10_000:
            for token in [t for t, s in self.sessions.items() if s.expires < now]:
                del self.sessions[token]
        token = secrets.token_urlsafe(48)
        access_key = "ASIA" + secrets.token_hex(8).upper()
        session = Session(access_key, secrets.token_urlsafe(30), now + SESSION_SECONDS)
        self.sessions[token] = session
        body = xml.create_session_xml(session.access_key, session.secret, token, session.expires)
        return self._respond(call, body, content_type=_XML)

    # ----------------------------------------------------------------------------- multipart

    def create_multipart_upload(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        upload_id = secrets.token_urlsafe(24)
        bucket.uploads[upload_id] = Upload(
            call.key, int(time.time()), call.headers.get("Content-Type"), _content_encoding(call.headers),
            _metadata(call.headers),
        )
        body = xml.initiate_upload_xml(bucket.name, call.key, upload_id)
        return self._respond(call, body, content_type=_XML)

    def _upload(self, bucket: Bucket, call: Call) -> tuple[str, Upload]:
        upload_id = call.query.get("uploadId", "")
        upload = bucket.uploads.get(upload_id)
        if upload is None or upload.key != call.key:
            raise S3Error(404, "NoSuchUpload", "The specified multipart upload does not exist.",
                          extra={"UploadId": upload_id})
        return upload_id, upload

    def upload_part(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        _, upload = self._upload(bucket, call)
        number = call.query.get("partNumber", "")
        if not number.isdigit() or not 1 <= int(number) <= 10_000:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000")
        etag = f'"{hashlib.md5(call.body).hexdigest()}"'
        upload.parts[int(number)] = (etag, call.body)
        return self._respond(call, b"", {"ETag": etag})

    def complete_multipart_upload(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        upload_id, upload = self._upload(bucket, call)
        body, etag = _assemble(upload, call.body, directory=bucket.directory)
        self._check_write(call.headers, self._current(bucket, call.key))
        version = self._new_version(bucket, body, upload.initiated, content_type=upload.content_type,
                                    content_encoding=upload.content_encoding, metadata=upload.metadata,
                                    etag=etag)
        self._store(bucket, call.key, version)
        del bucket.uploads[upload_id]
        headers = self._write_headers(bucket, version)
        del headers["ETag"]
        return self._respond(call, xml.complete_upload_xml(bucket.name, call.key, etag), headers,
                             content_type=_XML)

    def abort_multipart_upload(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        upload_id, _ = self._upload(bucket, call)
        del bucket.uploads[upload_id]
        return self._respond(call, b"", status=204)

    # ----------------------------------------------------------------------------- control

    async def _control(self, request: web.BaseRequest, path: str, qs: str) -> web.Response:
        action, method = path[len(CONTROL):], request.method
        if (method, action) == ("GET", "stats"):
            return _json(self.stats())
        if (method, action) == ("POST", "reset"):
            self.reset(data=dict(parse_qsl(qs)).get("data", "") in ("1", "true"))
            return _json({"reset": True})
        if (method, action) == ("POST", "seed"):
            try:
                return _json({"stored": self.seed(orjson.loads(await _read_body(request)))})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return _json({"error": f"bad seed document: {exc!r}"}, status=400)
        return _json({"error": f"no control endpoint {method} {path}"}, status=404)

    def stats(self) -> dict[str, Any]:
        """Counters of this emulator process (see the module docstring)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "profile": self.profile.name,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "requests": dict(self.requests),
            "throttled": self.throttled,
            "objects": sum(b.stored for b in self.buckets.values()),
            "uptime_seconds": time.monotonic() - self.started,
            "signatures": dict(self.verifier.counts) if self.verifier is not None else None,
        }

    def reset(self, *, data: bool = False) -> None:
        """Zero the counters; with ``data`` also drop every bucket."""
        self.requests.clear()
        self.throttled = 0
        if self.verifier is not None:
            self.verifier.counts.clear()
        if data:
            self.buckets.clear()

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


def _directory_listing_rules(page: xml.ObjectsPage) -> None:
    """What S3 Express refuses in ``ListObjectsV2`` on a directory bucket."""
    if page.start_after:
        raise S3Error(400, "InvalidArgument", "StartAfter is not supported by directory buckets")
    if page.delimiter and page.delimiter != "/":
        raise S3Error(400, "InvalidArgument", "directory buckets only support the delimiter /")
    if page.delimiter and page.prefix and not page.prefix.endswith("/"):
        raise S3Error(400, "InvalidArgument", "with a delimiter, a directory bucket prefix must end in /")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect") from None


def _assemble(upload: Upload, document: bytes, *, directory: bool) -> tuple[bytes, str]:
    """The body and ETag of a completed upload, checking the part list as S3 does."""
    try:
        listed = xml.parse_complete(document)
    except xml.MalformedXML as exc:
        raise S3Error(400, "MalformedXML", str(exc)) from None
    if not listed:
        raise S3Error(400, "MalformedXML", "CompleteMultipartUpload needs at least one part")
    numbers = [n for n, _ in listed]
    if numbers != sorted(set(numbers)):
        raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
    chunks = []
    for i, (number, etag) in enumerate(listed):
        part = upload.parts.get(number)
        if part is None or part[0].strip('"') != etag.strip('"'):
            raise S3Error(400, "InvalidPart", f"part {number} was not uploaded or its ETag differs")
        if i < len(listed) - 1 and len(part[1]) < MIN_PART_SIZE:
            raise S3Error(400, "EntityTooSmall", "a part other than the last is smaller than 5 MiB")
        chunks.append(part[1])
    if directory:
        return b"".join(chunks), f'"{secrets.token_hex(16)}"'
    digests = b"".join(hashlib.md5(c).digest() for c in chunks)
    return b"".join(chunks), f'"{hashlib.md5(digests).hexdigest()}-{len(chunks)}"'


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


# ----------------------------------------------------------------------------------------- server


@dataclass(slots=True)
class EmulatorServer:
    """A running in-process emulator: ``url``, ``emulator`` (its state), ``await close()``."""

    emulator: Emulator
    url: str
    _server: asyncio.Server
    _handler: web.Server

    async def close(self) -> None:
        self._server.close()
        await self._handler.shutdown(1.0)
        await self._server.wait_closed()


async def start_emulator_server(
    profile: str = "zero", host: str = "127.0.0.1", port: int = 0, *, verify_signatures: bool = False,
    put_rate: float | None = None, get_rate: float | None = None, latency_ms: float | None = None,
) -> EmulatorServer:
    """Start an emulator in this event loop (``port=0``: a free port)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    emulator = Emulator(PROFILES[profile], verify_signatures=verify_signatures, put_rate=put_rate,
                        get_rate=get_rate, latency_ms=latency_ms)
    # auto_decompress off: a body sent with Content-Encoding: gzip is stored as sent, as S3 does.
    handler = web.Server(emulator.handle, access_log=None, auto_decompress=False)
    server = await asyncio.get_running_loop().create_server(handler, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    return EmulatorServer(emulator, f"http://{host}:{bound}", server, handler)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3stream.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="zero")
    parser.add_argument("--verify-signatures", action="store_true")
    parser.add_argument("--put-rate", type=float, help="PUT/POST/DELETE per second per prefix")
    parser.add_argument("--get-rate", type=float, help="GET/HEAD per second per prefix")
    parser.add_argument("--latency-ms", type=float, help="added to every answer (overrides the profile)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = await start_emulator_server(
        args.profile, args.host, args.port, verify_signatures=args.verify_signatures,
        put_rate=args.put_rate, get_rate=args.get_rate, latency_ms=args.latency_ms,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.url}", flush=True)
    await stop.wait()
    await server.close()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    """``python -m s3stream.emulator``: serve until SIGTERM or SIGINT, then exit 0."""
    _run(_serve(_arguments(argv)))


# -------------------------------------------------------------------------------- subprocess client


class EmulatorError(RuntimeError):
    """The emulator subprocess did not start, or a control call failed."""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never a proxy


class EmulatorProcess:
    """A running emulator subprocess: ``url``, ``process``, and the control calls (synchronous)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``."""
        return dict(self._control("GET", "stats"))

    def reset_stats(self, *, data: bool = False) -> None:
        """Zero the counters; with ``data=True`` also drop every bucket."""
        self._control("POST", "reset?data=1" if data else "reset", {})

    def seed(self, bucket: str, objects: Iterable[Mapping[str, Any]], *, versioned: bool = False) -> int:
        """Store objects directly: dicts with ``key`` and ``body`` (str or bytes) or ``body_b64``, and
        optionally ``content_type``, ``content_encoding``, ``metadata``. Returns how many were stored."""
        docs = []
        for obj in objects:
            doc = dict(obj)
            if isinstance(doc.get("body"), bytes | bytearray):
                doc["body_b64"] = base64.b64encode(doc.pop("body")).decode()
            docs.append(doc)
        answer = self._control("POST", "seed", {"bucket": bucket, "versioned": versioned, "objects": docs})
        return int(answer["stored"])

    def _control(self, method: str, action: str, payload: Any = None) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        request = urllib.request.Request(f"{self.url}{CONTROL}{action}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=120) as answer:
                return orjson.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {CONTROL}{action}: {exc.code} {exc.read()[:500]!r}") from None
        except OSError as exc:
            raise EmulatorError(f"{method} {CONTROL}{action}: {exc}") from None


@contextlib.contextmanager
def run_emulator(profile: str = "zero", verify_signatures: bool = False, put_rate: float | None = None,
                 get_rate: float | None = None, latency_ms: float | None = None, *,
                 ready_timeout: float = 15.0) -> Iterator[EmulatorProcess]:
    """Run ``python -m s3stream.emulator`` on a free port of 127.0.0.1 for the ``with`` block; stop it
    with SIGTERM (then SIGKILL after 10 s) on exit. Its stderr is copied to ours when it stops."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    argv = [sys.executable, "-m", "s3stream.emulator", "--host", "127.0.0.1", "--port", "0",
            "--profile", profile]
    if verify_signatures:
        argv.append("--verify-signatures")
    for flag, value in (("--put-rate", put_rate), ("--get-rate", get_rate), ("--latency-ms", latency_ms)):
        if value is not None:
            argv += [flag, str(value)]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        try:
            url = _await_ready(process, errors, ready_timeout)
            yield EmulatorProcess(url, process)
        finally:
            _stop(process)
            errors.seek(0)
            if output := errors.read():
                sys.stderr.write(output.decode(errors="replace"))


def _await_ready(process: subprocess.Popen[bytes], errors: IO[bytes], timeout: float) -> str:
    """The URL from the ``READY`` line, read with a deadline."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            chunk = os.read(process.stdout.fileno(), 4096) if left > 0 and selector.select(left) else None
            if not chunk:
                why = f"not ready within {timeout:g} s"
                if chunk == b"":  # stdout closed: the process is exiting
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5)
                    why = f"exited with {process.poll()}"
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace")
                raise EmulatorError(f"s3stream.emulator {why}; stderr: {tail or '(empty)'}")
            buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("READY http://"):
        raise EmulatorError(f"s3stream.emulator printed {line!r} instead of READY <url>")
    return line.removeprefix("READY ")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


if __name__ == "__main__":
    main()
