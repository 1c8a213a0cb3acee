"""S3's listing documents, parsed once, in document order, into :class:`~s3stream.message.Entry`.

botocore's parser spends about 90 µs per listed version and splits versions from delete markers; these
parsers read the raw XML with ElementTree (about 10 µs per version) and keep S3's interleaving, which
per-key order needs. Keys arrive URL-encoded when the request asked ``encoding-type=url`` (every lean
listing does, so that keys with characters XML 1.0 cannot carry still list).

A directory bucket lists a directory whole on every pass, so most of what a page holds was seen
before: :func:`parse_object_page` takes the keys the caller already knows and leaves them out after
reading only their ``<Key>``, by a scan of the raw page (under 1 µs an entry instead of 5); anything
the scan is not sure of (comments, CDATA, a DOCTYPE, carriage returns, an unexpected shape) is read
by ElementTree instead, so both give the same page.

A ``200`` whose body is not the listing asked for (a proxy's or captive portal's HTML page, a body cut
short) raises :class:`UnreadableListing`, a retriable error: taken for an empty page, it would let a
pass complete without listing what is there.
"""

from __future__ import annotations

import contextlib
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Container
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


def parse_object_page(body: bytes, server_time_ms: int, known: Container[str] = frozenset()) -> ObjectPage:
    """A whole ListBucketResult (ListObjectsV2) page, leaving out the objects whose keys are in ``known``."""
    page = _scan_object_page(body, server_time_ms, known) if known else None
    if page is not None:
        return page
    doc = _Doc(body, OBJECTS_ROOT)
    stamps: dict[str, int] = {}
    entries = [_object_entry(el, doc, doc.ns, stamps) for el in doc.root.iterfind(doc.ns + "Contents")]
    return _object_page(doc, [e for e in entries if e.key not in known] if known else entries, server_time_ms)


_KEYS = re.compile(rb"<Contents><Key>([^<&]*)</Key>")
_BETWEEN = re.compile(rb"</Contents>\s*<Contents>")
_OPEN, _CLOSE = b"<Contents>", b"</Contents>"
SCAN_NEW_LIMIT = 32  # a page with more new objects than this is read whole by the parser


def _scan_object_page(body: bytes, server_time_ms: int, known: Container[str]) -> ObjectPage | None:
    """The page read by a scan of its ``<Contents>`` blocks, or None where only a parser is sure.
    The blocks must be one run, each opening with its ``<Key>``; ElementTree reads what is around the
    run (the root, the token, the prefixes) and each block whose key is not in ``known``."""
    raw_keys = _KEYS.findall(body)
    first, last = body.find(_OPEN), body.rfind(_CLOSE) + len(_CLOSE)
    if not raw_keys or not _plain(body, first):
        return None
    if body.count(b"Contents>") != 2 * len(raw_keys):
        return None  # a block that does not open with its key, a prefixed name: not for a scan
    if body.count(_CLOSE + _OPEN, first, last) != len(raw_keys) - 1 \
            and len(_BETWEEN.findall(body, first, last)) != len(raw_keys) - 1:
        return None  # something else between the blocks
    try:
        keys = [raw.decode() for raw in raw_keys]
        doc = _Doc(body[:first] + body[last:], OBJECTS_ROOT)
    except (UnicodeDecodeError, UnreadableListing):
        return None  # cut short, say: the parser names what is wrong
    if doc.encoded:
        keys = [unquote_plus(key) if ("%" in key or "+" in key) else key for key in keys]
    new = [i for i, key in enumerate(keys) if key not in known]
    if len(new) > SCAN_NEW_LIMIT:
        return None
    stamps: dict[str, int] = {}
    entries: list[Entry] = []
    at = first
    for i in new:
        at = body.find(_OPEN + b"<Key>" + raw_keys[i] + b"</Key>", at)
        end = body.find(_CLOSE, at) + len(_CLOSE)
        try:
            entries.append(_object_entry(ET.fromstring(body[at:end]), doc, "", stamps))
        except ET.ParseError:
            return None
        at = end
    return _object_page(doc, entries, server_time_ms)


def _plain(body: bytes, first: int) -> bool:
    """Whether ``body`` is UTF-8 without what a scan cannot read as plain text (carriage returns,
    comments, CDATA, a DOCTYPE, namespace prefixes): single-byte tests first, as they cost nothing."""
    if b"\r" in body or (b"!" in body and b"<!" in body) or b"xmlns:" in body[:first]:
        return False
    if body.startswith(b"<?xml"):
        declaration = body[:body.find(b"?>")].lower()
        return b"encoding" not in declaration or b"utf-8" in declaration
    return True


def _object_entry(el: ET.Element, doc: _Doc, ns: str, stamps: dict[str, int]) -> Entry:
    """One ``<Contents>`` element of ``doc`` (``ns``: its names' namespace, none in a block read alone)."""
    return Entry(key=doc.key(el.findtext(ns + "Key")) or "", version_id="null",
                 last_modified_ms=_iso_ms(el.findtext(ns + "LastModified") or "", stamps),
                 size=int(el.findtext(ns + "Size") or 0), etag=(el.findtext(ns + "ETag") or "").strip('"'))


def _object_page(doc: _Doc, entries: list[Entry], server_time_ms: int) -> ObjectPage:
    ns = doc.ns
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
