"""S3's listing documents, parsed once, in document order, into :class:`~s3stream.message.Entry`.

botocore's parser spends about 90 µs per listed version and splits versions from delete markers; these
parsers read the raw XML with ElementTree (about 10 µs per version) and keep S3's interleaving, which
per-key order needs. Keys arrive URL-encoded when the request asked ``encoding-type=url`` (every lean
listing does, so that keys with characters XML 1.0 cannot carry still list).

A ``200`` whose body is not the listing asked for (a proxy's or captive portal's HTML page, a body cut
short) raises :class:`UnreadableListing`, a retriable error: taken for an empty page, it would let a
pass complete without listing what is there.
"""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_plus

from s3stream.errors import ServerError
from s3stream.message import Entry

VERSIONS_ROOT = "ListVersionsResult"
OBJECTS_ROOT = "ListBucketResult"


class UnreadableListing(ServerError):
    """A listing answered ``200`` with a body that is not the listing document: retried like a 5xx."""


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


class _Doc:
    """A parsed listing's root, its namespace and whether keys are URL-encoded."""

    def __init__(self, body: bytes, expected: str) -> None:
        try:
            self.root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise _unreadable(expected, f"a body that is not XML ({exc})", body) from None
        tag = self.root.tag
        self.ns = tag[: tag.index("}") + 1] if tag.startswith("{") else ""
        if tag[len(self.ns):] != expected:
            raise _unreadable(expected, f"a <{tag[len(self.ns):]}> document", body)
        self.encoded = (self.root.findtext(f"{self.ns}EncodingType") or "") == "url"

    def text(self, name: str, el: ET.Element | None = None) -> str | None:
        return (self.root if el is None else el).findtext(self.ns + name)

    def key(self, value: str | None) -> str | None:
        return unquote_plus(value) if (self.encoded and value is not None) else value


def _unreadable(expected: str, found: str, body: bytes) -> UnreadableListing:
    start = " ".join(body[:80].decode("utf-8", "replace").split())
    return UnreadableListing(f"the store answered a listing with {found} instead of <{expected}>, "
                             f"starting {start!r}; retrying", code="UnreadableListing")


def check_listing(body: bytes, expected: str) -> None:
    """Raise :class:`UnreadableListing` unless ``body`` is a listing whose root is ``expected``."""
    _Doc(body, expected)


def parse_version_entries(body: bytes) -> list[Entry]:
    """The ``Version`` and ``DeleteMarker`` elements of a ListVersionsResult, in document order."""
    return _version_entries(_Doc(body, VERSIONS_ROOT))


def parse_version_page(body: bytes, server_time_ms: int) -> VersionPage:
    """A whole ListVersionsResult page."""
    doc = _Doc(body, VERSIONS_ROOT)
    return VersionPage(
        entries=_version_entries(doc), truncated=doc.text("IsTruncated") == "true",
        next_key_marker=doc.key(doc.text("NextKeyMarker")),
        next_version_id_marker=doc.text("NextVersionIdMarker"), server_time_ms=server_time_ms,
    )


def parse_object_page(body: bytes, server_time_ms: int) -> ObjectPage:
    """A whole ListBucketResult (ListObjectsV2) page."""
    doc = _Doc(body, OBJECTS_ROOT)
    ns = doc.ns
    stamps: dict[str, int] = {}
    entries = [
        Entry(key=doc.key(el.findtext(ns + "Key")) or "", version_id="null",
              last_modified_ms=_iso_ms(el.findtext(ns + "LastModified") or "", stamps),
              size=int(el.findtext(ns + "Size") or 0), etag=(el.findtext(ns + "ETag") or "").strip('"'))
        for el in doc.root.iterfind(ns + "Contents")
    ]
    prefixes = [doc.key(el.findtext(ns + "Prefix")) or "" for el in doc.root.iterfind(ns + "CommonPrefixes")]
    token = doc.text("NextContinuationToken") if doc.text("IsTruncated") == "true" else None
    return ObjectPage(entries=entries, prefixes=prefixes, next_token=token, server_time_ms=server_time_ms)


def _version_entries(doc: _Doc) -> list[Entry]:
    ns, cut = doc.ns, len(doc.ns)
    stamps: dict[str, int] = {}
    out: list[Entry] = []
    for el in doc.root:
        tag = el.tag[cut:]
        if tag != "Version" and tag != "DeleteMarker":
            continue
        out.append(Entry(
            key=doc.key(el.findtext(ns + "Key")) or "",
            version_id=el.findtext(ns + "VersionId") or "null",
            last_modified_ms=_iso_ms(el.findtext(ns + "LastModified") or "", stamps),
            deleted=tag == "DeleteMarker",
            size=int(el.findtext(ns + "Size") or 0),
            etag=(el.findtext(ns + "ETag") or "").strip('"'),
            latest=el.findtext(ns + "IsLatest") == "true",
        ))
    return out


def _iso_ms(text: str, seen: dict[str, int]) -> int:
    """Milliseconds of an ISO 8601 stamp; a page's many equal stamps are parsed once."""
    value = seen.get(text)
    if value is None:
        value = seen[text] = int(datetime.fromisoformat(text).timestamp() * 1000)
    return value


def http_date_ms(value: str | None) -> int:
    """The server's clock from a ``Date`` header (so client clock skew does not matter)."""
    if value:
        with contextlib.suppress(TypeError, ValueError):
            return int(parsedate_to_datetime(value).timestamp() * 1000)
    return int(time.time() * 1000)
