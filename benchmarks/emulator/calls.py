"""One S3 request to the emulator as it arrives and leaves: which bucket, key and operation it is
(:class:`Call`), its body (``aws-chunked``), and the answer it gets."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDictProxy

CONTROL = "/_emulator/"
XML_TYPE = "application/xml"
BODY_METHODS = frozenset({"PUT", "POST"})
READ_METHODS = frozenset({"GET", "HEAD"})
_VIRTUAL_SUFFIXES = (".localhost", ".127.0.0.1")


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


_BUCKET_OPS = {
    ("GET", "session"): "CreateSession", ("GET", "versioning"): "GetBucketVersioning",
    ("GET", "versions"): "ListObjectVersions", ("GET", "location"): "GetBucketLocation",
    ("GET", "list-type"): "ListObjectsV2", ("GET", ""): "ListObjects", ("HEAD", ""): "HeadBucket",
    ("PUT", ""): "CreateBucket", ("PUT", "versioning"): "PutBucketVersioning",
    ("DELETE", ""): "DeleteBucket", ("POST", "delete"): "DeleteObjects",
}
_SUBRESOURCES = ("session", "versioning", "versions", "location", "list-type", "delete")
_LIST_PARAMS = frozenset({"prefix", "delimiter", "max-keys", "encoding-type", "marker"})


def operation(method: str, bucket: str, key: str, query: dict[str, str]) -> str:
    """botocore's name for the operation a request performs (``Unsupported`` for the rest)."""
    if not bucket:
        return "ListBuckets"
    if key:
        if method in READ_METHODS:
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


def route(host: str, path: str) -> tuple[str, str]:
    """``(bucket, key)`` from a path-style path, or a virtual-host ``bucket.localhost`` Host."""
    name = host.rpartition(":")[0] or host
    for suffix in _VIRTUAL_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], unquote(path[1:])
    bucket, _, key = path[1:].partition("/")
    return unquote(bucket), unquote(key)


def decode_aws_chunked(body: bytes) -> bytes:
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


def respond(call: Call, body: bytes = b"", headers: dict[str, str] | None = None, *,
            status: int = 200, content_type: str | None = None) -> web.Response:
    """An S3 answer to ``call``, with its request id (``headers`` is used, and changed, in place)."""
    h = headers if headers is not None else {}
    h["x-amz-request-id"] = call.request_id
    if content_type:
        h["Content-Type"] = content_type
    return web.Response(status=status, body=body, headers=h)
