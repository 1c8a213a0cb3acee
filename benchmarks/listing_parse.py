"""What parsing one listed entry costs: botocore's parser against s3stream's (``s3stream.s3.s3xml``).

A pass lists every version under a shard, so at thousands of messages a second the listing parse
is the next limit after the GET itself. This times, on the same 1,000-version ListVersionsResult
document, botocore's response parser (what aiobotocore runs for ``list_object_versions``) and
``s3xml.parse_version_page`` (what the lean path runs), alternating, and prints µs per version.

A log-layout pass on a directory bucket lists each hot directory whole, again and again, and most of
what it lists is known. The second table times, on one 1,000-object ListBucketResult page, botocore's
parser, ``s3xml.parse_object_page`` reading it whole, and the same told all but 10 keys are known
(the scan that leaves known objects out unread), in µs per listed object.

    .venv/bin/python benchmarks/listing_parse.py [--versions 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import botocore.session
from botocore.parsers import create_parser

from s3stream.s3.s3xml import parse_object_page, parse_version_page

VERSION = (
    "<Version><Key>orders/0a/customer-{i:06d}</Key><VersionId>3HL4kqtJlcpXroDTDmjVBH40Nrjfkd{i:06d}"
    "</VersionId><IsLatest>true</IsLatest><LastModified>2026-11-23T17:30:{s:02d}.000Z</LastModified>"
    '<ETag>"fba9dede5f27731c9771645a39863328"</ETag><Size>1024</Size><Owner><ID>75aa57f09aa0c8caeab4f8'
    "c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID></Owner><StorageClass>STANDARD</StorageClass>"
    "</Version>"
)


def _page(root: str, head: str, entry: str, count: int) -> bytes:
    """A listing document as S3 writes it: ``head``, then ``count`` entries from the template."""
    body = "".join(entry.format(i=i, s=i % 60) for i in range(count))
    return (f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"{head}<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{body}</{root}>").encode()


def document(versions: int) -> bytes:
    """A ListVersionsResult page as S3 writes it."""
    return _page("ListVersionsResult", "<Name>b</Name><Prefix>orders/0a/</Prefix><KeyMarker></KeyMarker>"
                 "<VersionIdMarker></VersionIdMarker>", VERSION, versions)


OBJECT = (
    "<Contents><Key>orders/00/20261206201500/1765052100{i:03d}-p7f3a9c2e-{i}-_-{i:x}</Key><LastModified>"
    "2026-12-06T20:15:{s:02d}.000Z</LastModified><ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag>"
    "<Size>1024</Size><StorageClass>EXPRESS_ONEZONE</StorageClass></Contents>"
)


def object_document(objects: int) -> bytes:
    """A ListBucketResult page as a directory bucket writes it (URL-encoded keys)."""
    head = ("<Name>b--use1-az4--x-s3</Name><Prefix>orders/00/20261206201500/</Prefix>"
            f"<KeyCount>{objects}</KeyCount><EncodingType>url</EncodingType>")
    return _page("ListBucketResult", head, OBJECT, objects)


def botocore_parse(operation: str = "ListObjectVersions") -> Callable[[bytes], object]:
    """botocore's rest-xml parser bound to an operation's output shape."""
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model(operation).output_shape
    parser = create_parser("rest-xml")

    def parse(body: bytes) -> object:
        return parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)

    return parse


def time_per_version(parse: Callable[[bytes], object], body: bytes, versions: int) -> float:
    started = time.perf_counter()
    parse(body)
    return (time.perf_counter() - started) / versions * 1e6


def table(title: str, parsers: dict[str, Callable[[bytes], object]], body: bytes, entries: int,
          runs: int) -> list[float]:
    """Time each parser on ``body`` ``runs`` times, alternating; print and return the medians."""
    times: dict[str, list[float]] = {name: [] for name in parsers}
    for _ in range(runs):
        for name, parse in parsers.items():
            times[name].append(time_per_version(parse, body, entries))
    print(title)
    print(f"{'parser':<44} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:<44} {statistics.median(values):>8.2f} {min(values):>8.2f} {max(values):>8.2f}")
    return [statistics.median(v) for v in times.values()]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--versions", type=int, default=1000)
    args.add_argument("--runs", type=int, default=5)
    opts = args.parse_args()
    boto, lean = table(
        f"parse one ListVersionsResult page of {opts.versions} versions, {opts.runs} runs (µs per version)",
        {"botocore (aiobotocore path)": botocore_parse(),
         "s3stream.s3.s3xml (lean path)": lambda b: parse_version_page(b, 0)},
        document(opts.versions), opts.versions, opts.runs)
    print(f"ratio botocore / s3xml (medians): {boto / lean:.1f}x\n")
    page = object_document(opts.versions)
    keys = [e.key for e in parse_object_page(page, 0).entries]
    known = frozenset(keys[10:])
    boto, whole, scan = table(
        f"parse one ListBucketResult page of {opts.versions} objects, {opts.runs} runs (µs per object)",
        {"botocore (aiobotocore path)": botocore_parse("ListObjectsV2"),
         "s3xml, read whole (nothing known)": lambda b: parse_object_page(b, 0),
         f"s3xml, {len(known)} of {len(keys)} known": lambda b: parse_object_page(b, 0, known)},
        page, opts.versions, opts.runs)
    print(f"ratio botocore / s3xml whole: {boto / whole:.1f}x; "
          f"s3xml whole / with keys known: {whole / scan:.1f}x")


if __name__ == "__main__":
    main()
