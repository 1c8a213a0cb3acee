"""The XML wire format of the S3 emulator (:mod:`benchmarks.emulator`): documents rendered and parsed.

Rendering is plain string building (escape and join), which is several times faster than an element
tree and is all S3's fixed-shape documents need. Listings render keys either XML-escaped or, when the
client asked for ``encoding-type=url``, form-encoded as S3 does (botocore decodes them with
``unquote_plus``). Times are whole seconds, as S3 lists them (``2026-11-23T10:00:00.000Z``).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Protocol
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n'

_iso_times: dict[int, str] = {}
_http_times: dict[int, str] = {}


class Listed(Protocol):
    """What a listing needs of a stored version (the emulator's ``Version`` has these fields)."""

    version_id: str
    etag: str
    size: int
    last_modified: int
    delete_marker: bool


def iso_time(seconds: int) -> str:
    """``2026-11-23T10:00:00.000Z``: S3's listing format, whole seconds."""
    text = _iso_times.get(seconds)
    if text is None:
        if len(_iso_times) > 100_000:
            _iso_times.clear()
        text = _iso_times[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))
    return text


def http_time(seconds: int) -> str:
    """``Mon, 23 Nov 2026 10:00:00 GMT``: the RFC 7231 format of ``Last-Modified``."""
    text = _http_times.get(seconds)
    if text is None:
        if len(_http_times) > 100_000:
            _http_times.clear()
        text = _http_times[seconds] = formatdate(seconds, usegmt=True)
    return text


def _document(root: str, inner: str) -> bytes:
    return f'{_PROLOG}<{root} xmlns="{NS}">{inner}</{root}>'.encode()


def _etag(etag: str) -> str:
    return etag.replace('"', "&quot;")


_texts: dict[tuple[str, bool], str] = {}


def _text(value: str, encode: bool) -> str:
    """``value`` form-encoded or XML-escaped; remembered, since a listing pass renders each key again."""
    text = _texts.get((value, encode))
    if text is None:
        if len(_texts) > 200_000:
            _texts.clear()
        text = _texts[(value, encode)] = quote_plus(value, safe="/") if encode else escape(value)
    return text


def error_xml(code: str, message: str, request_id: str, extra: dict[str, str] | None = None) -> bytes:
    """S3's error document: ``<Error><Code/><Message/>…<RequestId/></Error>``."""
    parts = [f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"]
    parts.extend(f"<{name}>{escape(value)}</{name}>" for name, value in (extra or {}).items())
    parts.append(f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId>")
    return f"{_PROLOG}<Error>{''.join(parts)}</Error>".encode()


@dataclass(slots=True)
class ObjectsPage:
    """One ``ListObjectsV2`` answer."""

    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    encode: bool
    storage_class: str
    contents: list[tuple[str, Listed]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    token: str | None = None
    next_token: str | None = None
    start_after: str | None = None


def list_objects_v2_xml(page: ObjectsPage) -> bytes:
    """A ``ListBucketResult`` (V2) document."""
    enc = page.encode
    head = [f"<Name>{escape(page.bucket)}</Name><Prefix>{_text(page.prefix, enc)}</Prefix>"]
    if page.delimiter:
        head.append(f"<Delimiter>{_text(page.delimiter, enc)}</Delimiter>")
    head.append(f"<MaxKeys>{page.max_keys}</MaxKeys>"
                f"<KeyCount>{len(page.contents) + len(page.prefixes)}</KeyCount>"
                f"<IsTruncated>{'true' if page.next_token else 'false'}</IsTruncated>")
    if enc:
        head.append("<EncodingType>url</EncodingType>")
    if page.token is not None:
        head.append(f"<ContinuationToken>{escape(page.token)}</ContinuationToken>")
    if page.next_token:
        head.append(f"<NextContinuationToken>{escape(page.next_token)}</NextContinuationToken>")
    if page.start_after:
        head.append(f"<StartAfter>{_text(page.start_after, enc)}</StartAfter>")
    tail = f"<StorageClass>{page.storage_class}</StorageClass></Contents>"
    head.extend(
        f"<Contents><Key>{_text(key, enc)}</Key><LastModified>{iso_time(v.last_modified)}</LastModified>"
        f"<ETag>{_etag(v.etag)}</ETag><Size>{v.size}</Size>{tail}"
        for key, v in page.contents
    )
    head.extend(f"<CommonPrefixes><Prefix>{_text(p, enc)}</Prefix></CommonPrefixes>" for p in page.prefixes)
    return _document("ListBucketResult", "".join(head))


@dataclass(slots=True)
class VersionsPage:
    """One ``ListObjectVersions`` answer: entries are ``(key, version, is_latest)`` in S3's order."""

    bucket: str
    prefix: str
    key_marker: str
    version_id_marker: str
    max_keys: int
    encode: bool
    entries: list[tuple[str, Listed, bool]] = field(default_factory=list)
    truncated: bool = False


def list_versions_xml(page: VersionsPage) -> bytes:
    """A ``ListVersionsResult``: ``Version`` and ``DeleteMarker`` elements interleaved in S3's order
    (keys ascending, each key's versions newest first), in one sequence as S3 sends them."""
    enc = page.encode
    parts = [f"<Name>{escape(page.bucket)}</Name><Prefix>{_text(page.prefix, enc)}</Prefix>"
             f"<KeyMarker>{_text(page.key_marker, enc)}</KeyMarker>"
             f"<VersionIdMarker>{escape(page.version_id_marker)}</VersionIdMarker>"]
    if page.truncated and page.entries:
        last_key, last, _ = page.entries[-1]
        parts.append(f"<NextKeyMarker>{_text(last_key, enc)}</NextKeyMarker>"
                     f"<NextVersionIdMarker>{escape(last.version_id)}</NextVersionIdMarker>")
    parts.append(f"<MaxKeys>{page.max_keys}</MaxKeys>"
                 f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
    if enc:
        parts.append("<EncodingType>url</EncodingType>")
    for key, v, latest in page.entries:
        common = (f"<Key>{_text(key, enc)}</Key><VersionId>{escape(v.version_id)}</VersionId>"
                  f"<IsLatest>{'true' if latest else 'false'}</IsLatest>"
                  f"<LastModified>{iso_time(v.last_modified)}</LastModified>")
        if v.delete_marker:
            parts.append(f"<DeleteMarker>{common}</DeleteMarker>")
        else:
            parts.append(f"<Version>{common}<ETag>{_etag(v.etag)}</ETag><Size>{v.size}</Size>"
                         "<StorageClass>STANDARD</StorageClass></Version>")
    return _document("ListVersionsResult", "".join(parts))


def versioning_xml(status: str) -> bytes:
    """``GetBucketVersioning``: empty when versioning was never enabled, as S3 answers."""
    return _document("VersioningConfiguration", f"<Status>{status}</Status>" if status else "")


def location_xml() -> bytes:
    """``GetBucketLocation`` (us-east-1 is the empty constraint)."""
    return _document("LocationConstraint", "")


def create_session_xml(access_key: str, secret: str, token: str, expires: float) -> bytes:
    """``CreateSessionResult``: the session credentials botocore signs S3 Express requests with."""
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    return _document("CreateSessionResult", (
        f"<Credentials><SessionToken>{escape(token)}</SessionToken>"
        f"<SecretAccessKey>{escape(secret)}</SecretAccessKey><AccessKeyId>{escape(access_key)}</AccessKeyId>"
        f"<Expiration>{expiration}</Expiration></Credentials>"
    ))


def initiate_upload_xml(bucket: str, key: str, upload_id: str) -> bytes:
    return _document("InitiateMultipartUploadResult", (
        f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
    ))


def complete_upload_xml(bucket: str, key: str, etag: str) -> bytes:
    return _document("CompleteMultipartUploadResult", (
        f"<Location>/{escape(bucket)}/{escape(key)}</Location><Bucket>{escape(bucket)}</Bucket>"
        f"<Key>{escape(key)}</Key><ETag>{_etag(etag)}</ETag>"
    ))


@dataclass(frozen=True, slots=True)
class Deleted:
    """One outcome of ``DeleteObjects``: ``marker_id`` when a delete marker was made or removed."""

    key: str
    version_id: str | None
    marker: bool = False
    marker_id: str | None = None


def delete_result_xml(deleted: list[Deleted], quiet: bool) -> bytes:
    """``DeleteResult``; in quiet mode only errors are listed (this emulator has none to report)."""
    parts = []
    for d in [] if quiet else deleted:
        inner = f"<Key>{escape(d.key)}</Key>"
        if d.version_id is not None:
            inner += f"<VersionId>{escape(d.version_id)}</VersionId>"
        if d.marker:
            inner += "<DeleteMarker>true</DeleteMarker>"
            if d.marker_id is not None:
                inner += f"<DeleteMarkerVersionId>{escape(d.marker_id)}</DeleteMarkerVersionId>"
        parts.append(f"<Deleted>{inner}</Deleted>")
    return _document("DeleteResult", "".join(parts))


class MalformedXML(ValueError):
    """A request body that is not the XML document the operation takes."""


def _parse(body: bytes) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise MalformedXML(str(exc)) from None
    for el in root.iter():
        el.tag = el.tag.rpartition("}")[2]
    return root


def parse_delete(body: bytes) -> tuple[list[tuple[str, str | None]], bool]:
    """A ``Delete`` document: the ``(key, version_id)`` pairs and the ``Quiet`` flag."""
    root = _parse(body)
    if root.tag != "Delete":
        raise MalformedXML(f"expected <Delete>, got <{root.tag}>")
    objects = []
    for el in root.findall("Object"):
        key = el.findtext("Key")
        if key is None:
            raise MalformedXML("<Object> without <Key>")
        objects.append((key, el.findtext("VersionId")))
    return objects, (root.findtext("Quiet") or "").strip().lower() == "true"


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """A ``CompleteMultipartUpload`` document: ``(part_number, etag)`` in the order given."""
    root = _parse(body)
    parts = []
    for el in root.findall("Part"):
        number, etag = el.findtext("PartNumber"), el.findtext("ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise MalformedXML("<Part> needs <PartNumber> and <ETag>")
        parts.append((int(number), etag.strip()))
    return parts


def parse_versioning(body: bytes) -> str:
    """A ``VersioningConfiguration`` document: its ``Status`` (``Enabled`` or ``Suspended``)."""
    status = (_parse(body).findtext("Status") or "").strip()
    if status not in ("Enabled", "Suspended"):
        raise MalformedXML(f"versioning Status must be Enabled or Suspended, not {status!r}")
    return status
