"""What parsing one listed version costs: botocore's parser against s3stream's (``s3stream.s3.s3xml``).

A pass lists every version under a shard, so at thousands of messages a second the listing parse
is the next limit after the GET itself. This times, on the same 1,000-version ListVersionsResult
document, botocore's response parser (what aiobotocore runs for ``list_object_versions``) and
``s3xml.parse_version_page`` (what the lean path runs), alternating, and prints µs per version.

    .venv/bin/python benchmarks/listing_parse.py [--versions 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import botocore.session
from botocore.parsers import create_parser

from s3stream.s3.s3xml import parse_version_page

VERSION = (
    "<Version><Key>orders/0a/customer-{i:06d}</Key><VersionId>3HL4kqtJlcpXroDTDmjVBH40Nrjfkd{i:06d}"
    "</VersionId><IsLatest>true</IsLatest><LastModified>2026-11-23T17:30:{s:02d}.000Z</LastModified>"
    '<ETag>"fba9dede5f27731c9771645a39863328"</ETag><Size>1024</Size><Owner><ID>75aa57f09aa0c8caeab4f8'
    "c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID></Owner><StorageClass>STANDARD</StorageClass>"
    "</Version>"
)


def document(versions: int) -> bytes:
    """A ListVersionsResult page as S3 writes it."""
    body = "".join(VERSION.format(i=i, s=i % 60) for i in range(versions))
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/'
        '2006-03-01/"><Name>b</Name><Prefix>orders/0a/</Prefix><KeyMarker></KeyMarker><VersionIdMarker>'
        f"</VersionIdMarker><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{body}"
        "</ListVersionsResult>"
    ).encode()


def botocore_parse() -> Callable[[bytes], object]:
    """botocore's rest-xml parser bound to ListObjectVersions' output shape."""
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("ListObjectVersions").output_shape
    parser = create_parser("rest-xml")

    def parse(body: bytes) -> object:
        return parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)

    return parse


def time_per_version(parse: Callable[[bytes], object], body: bytes, versions: int) -> float:
    started = time.perf_counter()
    parse(body)
    return (time.perf_counter() - started) / versions * 1e6


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--versions", type=int, default=1000)
    args.add_argument("--runs", type=int, default=5)
    opts = args.parse_args()
    body = document(opts.versions)
    parsers = {"botocore (aiobotocore path)": botocore_parse(),
               "s3stream.s3.s3xml (lean path)": lambda b: parse_version_page(b, 0)}
    times: dict[str, list[float]] = {name: [] for name in parsers}
    for _ in range(opts.runs):
        for name, parse in parsers.items():
            times[name].append(time_per_version(parse, body, opts.versions))
    print(f"parse one ListVersionsResult page of {opts.versions} versions, {opts.runs} runs (µs per version)")
    print(f"{'parser':<30} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:<30} {statistics.median(values):>8.1f} {min(values):>8.1f} {max(values):>8.1f}")
    boto, lean = (statistics.median(v) for v in times.values())
    print(f"ratio botocore / s3xml (medians): {boto / lean:.1f}x")


if __name__ == "__main__":
    main()
