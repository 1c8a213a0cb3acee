"""s3stream's ListObjectsV2 page reader reads what botocore reads (no server).

The lean path parses listings itself (``s3stream.s3.s3xml``), and reads a page whose keys it mostly
knows by a scan that leaves the known objects out after reading their ``<Key>``. These properties
prove, on generated pages (keys with any character, URL-encoded or escaped, compact or indented,
truncated, with common prefixes), that both readings give exactly botocore's page less the known keys,
and that a body which is not a whole listing is refused, not taken for an empty page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.handlers import decode_list_object_v2
from botocore.parsers import create_parser
from hypothesis import given, settings
from hypothesis import strategies as st

from s3stream.message import Entry
from s3stream.s3.s3xml import ObjectPage, UnreadableListing, _scan_object_page, parse_object_page

_SHAPE = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape
_PARSER = create_parser("rest-xml")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

key_text = st.text(st.sampled_from(list("ab/-_.09 +%&<>\"'!:=~é漢\t")) | st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
objects = st.lists(st.tuples(key_text, st.integers(0, 10**12), st.integers(0, 2**40),
                             st.text("0123456789abcdef", min_size=32, max_size=32), st.booleans()),
                   max_size=12, unique_by=lambda o: o[0])


def page_xml(objs: list[tuple[str, int, int, str, bool]], *, encoded: bool, pretty: bool,
             token: str | None, prefixes: list[str]) -> bytes:
    """A ListBucketResult as S3 writes it (compact), or indented as some servers write it."""
    nl = "\n  " if pretty else ""

    def text(value: str) -> str:
        return escape(quote_plus(value, safe="/") if encoded else value, {'"': "&quot;"})

    def contents(key: str, ms: int, size: int, etag: str, owner: bool) -> str:
        stamp = (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        who = f"<Owner>{nl}<ID>75aa57f09aa0c8ca</ID>{nl}</Owner>" if owner else ""
        return (f"<Contents>{nl}<Key>{text(key)}</Key>{nl}<LastModified>{stamp}</LastModified>{nl}"
                f"<ETag>&quot;{etag}&quot;</ETag>{nl}<Size>{size}</Size>{nl}{who}"
                f"<StorageClass>EXPRESS_ONEZONE</StorageClass></Contents>{nl}")

    head = (f"<Name>b</Name>{nl}<Prefix>t/0/</Prefix>{nl}<KeyCount>{len(objs)}</KeyCount>{nl}"
            f"<MaxKeys>1000</MaxKeys>{nl}" + ("<EncodingType>url</EncodingType>" if encoded else "")
            + f"<IsTruncated>{'true' if token else 'false'}</IsTruncated>{nl}"
            + (f"<NextContinuationToken>{escape(token)}</NextContinuationToken>{nl}" if token else ""))
    tail = "".join(f"<CommonPrefixes><Prefix>{text(p)}</Prefix></CommonPrefixes>{nl}" for p in prefixes)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            f'2006-03-01/">{nl}{head}{"".join(contents(*o) for o in objs)}{tail}</ListBucketResult>').encode()


def botocore_page(body: bytes, known: frozenset[str]) -> ObjectPage:
    """What the aiobotocore path makes of the same body (its parser, then its URL decoding)."""
    parsed: dict[str, Any] = _PARSER.parse({"body": body, "headers": {}, "status_code": 200}, _SHAPE)
    decode_list_object_v2(parsed, {"encoding_type_auto_set": True})
    entries = [Entry(key=o["Key"], version_id="null", size=o["Size"], etag=o["ETag"].strip('"'),
                     last_modified_ms=int(o["LastModified"].timestamp() * 1000))
               for o in parsed.get("Contents", []) if o["Key"] not in known]
    return ObjectPage(entries=entries, prefixes=[p["Prefix"] for p in parsed.get("CommonPrefixes", [])],
                      next_token=parsed.get("NextContinuationToken") if parsed.get("IsTruncated") else None,
                      server_time_ms=7)


@settings(max_examples=300, deadline=None)
@given(objs=objects, encoded=st.booleans(), pretty=st.booleans(),
       token=st.none() | st.text("abcXYZ019+/=&<", min_size=1, max_size=20),
       prefixes=st.lists(key_text, max_size=3), known_mask=st.lists(st.booleans(), min_size=12, max_size=12))
def test_pages_read_as_botocore_reads_them_less_the_known_keys(
        objs: list[tuple[str, int, int, str, bool]], encoded: bool, pretty: bool, token: str | None,
        prefixes: list[str], known_mask: list[bool]) -> None:
    """Any page, with any of its keys known, reads as botocore's page without the known objects:
    by the scan where it applies, by the parser where it does not, and by the parser alone."""
    body = page_xml(objs, encoded=encoded, pretty=pretty, token=token, prefixes=prefixes)
    known = frozenset(o[0] for o, skip in zip(objs, known_mask, strict=False) if skip)
    expected = botocore_page(body, known)
    assert parse_object_page(body, 7, known) == expected
    assert parse_object_page(body, 7) == botocore_page(body, frozenset())


def test_the_scan_reads_pages_as_s3_writes_them() -> None:
    """A compact URL-encoded page of which all but two objects are known is read by the scan (not
    only by the parser it falls back to), with the two new objects whole."""
    objs = [(f"t/0/20261206201500/{i:04d}-p-{i}-_-x y", i, 1024, "f" * 32, i % 2 == 0) for i in range(200)]
    body = page_xml(objs, encoded=True, pretty=False, token="tok", prefixes=[])
    known = frozenset(o[0] for o in objs[:99] + objs[101:])
    page = _scan_object_page(body, 7, known)
    assert page is not None
    assert [e.key for e in page.entries] == [objs[99][0], objs[100][0]]
    assert page == botocore_page(body, known)


@settings(max_examples=100, deadline=None)
@given(objs=objects.filter(bool), cut=st.floats(0.0, 1.0, exclude_max=True), encoded=st.booleans())
def test_a_page_cut_short_is_refused_however_much_is_known(
        objs: list[tuple[str, int, int, str, bool]], cut: float, encoded: bool) -> None:
    """A body cut anywhere before its last ``>`` raises UnreadableListing (retried), whether its keys
    are known or not: a cut page is never read as a short one."""
    body = page_xml(objs, encoded=encoded, pretty=False, token=None, prefixes=[])
    short = body[: int(cut * body.rindex(b">"))]
    for known in (frozenset(), frozenset(o[0] for o in objs)):
        with pytest.raises(UnreadableListing):
            parse_object_page(short, 7, known)


@pytest.mark.parametrize("body", [
    b"<html><body><h1>Sign in to the network</h1></body></html>",
    b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body><Contents><Key>k</Key>'
    b"</Contents></body></html>",
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code></Error>',
])
def test_a_body_that_is_not_a_listing_is_refused(body: bytes) -> None:
    """A web page, or another document, answered with 200 is refused even with keys known."""
    with pytest.raises(UnreadableListing):
        parse_object_page(body, 7, frozenset({"k"}))
