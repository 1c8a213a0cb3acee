"""The proxy's response transforms and its S3 Express One Zone directory-bucket emulation.

Every test talks HTTP to the real moto server through :class:`tests.s3proxy.S3Proxy`, with s3stream's
own :class:`~s3stream.s3.store.Store` (and its aiobotocore client) or plain aiohttp for raw bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from botocore.parsers import ResponseParserError
from prometheus_client import REGISTRY

from s3stream import errors
from s3stream.config import build_settings
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store
from s3stream.s3.translate import translate
from tests.conftest import Recorder, make_settings, new_bucket_name, running, wait_until
from tests.s3proxy import (
    UNALIGNED_PREFIX_MESSAGE,
    Relayed,
    Rule,
    S3Error,
    S3Proxy,
    Transform,
    directory_bucket_rules,
    error_body,
)

MAX_ATTEMPTS = 3  # small, so refusals that s3stream deems retriable give up quickly
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.DOTALL)
_KEY = re.compile(rb"<Key>(.*?)</Key>")


@pytest.fixture
def dir_proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    """A proxy that makes moto behave like a directory bucket, shuffling listings with seed 7."""
    with S3Proxy(moto_endpoint, directory_bucket_rules(seed=7)) as proxy:
        yield proxy


@pytest.fixture
async def dir_store(dir_proxy: S3Proxy) -> AsyncIterator[Store]:
    """An s3stream Store whose endpoint is the directory-bucket proxy."""
    async with store_at(dir_proxy.endpoint) as st:
        yield st


@pytest.fixture
async def dir_bucket(dir_store: Store) -> str:
    """A fresh unversioned bucket, created through the directory-bucket proxy."""
    name = new_bucket_name("dir")
    await dir_store.create_bucket(name, versioning=False)
    return name


def store_at(endpoint: str) -> AbstractAsyncContextManager[Store]:
    """``open_store`` for ``endpoint`` with path-style addressing and MAX_ATTEMPTS attempts per call."""
    settings = build_settings({"s3": {
        "endpoint_url": endpoint, "addressing_style": "path", "max_attempts": MAX_ATTEMPTS,
    }}).s3
    return open_store(settings, max_connections=32)


async def list_v2(store: Store, **params: Any) -> dict[str, Any]:
    """One ListObjectsV2 call the way Store makes its own: translated errors, under its retry policy."""
    async def once() -> dict[str, Any]:
        with translate("ListObjectsV2", bucket=params["Bucket"]):
            return await store.client.list_objects_v2(**params)  # type: ignore[no-any-return]

    return await store.retry.call(once, what="ListObjectsV2")


async def list_pages(store: Store, bucket: str, prefix: str, page_size: int) -> list[list[str]]:
    """The keys of every ListObjectsV2 page under ``prefix``, following continuation tokens."""
    pages: list[list[str]] = []
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    while True:
        resp = await list_v2(store, **params)
        pages.append([obj["Key"] for obj in resp.get("Contents", [])])
        if not resp.get("IsTruncated"):
            return pages
        params["ContinuationToken"] = resp["NextContinuationToken"]


def outcomes(proxy: S3Proxy, query_key: str) -> list[str]:
    """What the proxy did with each request whose query string has ``query_key``."""
    return [
        outcome for _, path_qs, outcome in proxy.requests
        if query_key in parse_qs(urlsplit(path_qs).query, keep_blank_values=True)
    ]


async def put_keys(store: Store, bucket: str, keys: list[str]) -> None:
    await asyncio.gather(*(store.put_object(bucket, key, key.encode()) for key in keys))


# --- refusals ---------------------------------------------------------------------------------------


async def test_list_object_versions_is_refused_as_a_permanent_error(
    dir_proxy: S3Proxy, dir_store: Store, dir_bucket: str,
) -> None:
    """ListObjectVersions is refused with 501 NotImplemented, which s3stream translates to a
    PermanentError: it is asked once, never retried, and the message says it is not supported."""
    with pytest.raises(errors.PermanentError) as info:
        await dir_store.list_versions(dir_bucket, "topic/")
    assert info.value.code == "NotImplemented"
    assert info.value.operation == "ListObjectVersions"
    assert "not supported" in str(info.value)
    assert not isinstance(info.value, errors.RetriableError)
    assert outcomes(dir_proxy, "versions") == ["S3Error"]


async def test_put_bucket_versioning_is_refused(
    dir_proxy: S3Proxy, dir_store: Store, store: Store,
) -> None:
    """PutBucketVersioning is refused with 501 NotImplemented (a PermanentError, asked once).

    ``create_bucket(versioning=True)`` creates the bucket (CreateBucket passes through) but cannot
    enable versioning: moto, asked directly, still reports it unversioned.
    """
    name = new_bucket_name("dirver")
    with pytest.raises(errors.PermanentError) as info:
        await dir_store.create_bucket(name, versioning=True)
    assert (info.value.code, info.value.operation) == ("NotImplemented", "PutBucketVersioning")
    assert outcomes(dir_proxy, "versioning") == ["S3Error"]
    await store.check_bucket(name, require_versioning=False)
    with pytest.raises(errors.VersioningNotEnabled):
        await store.check_bucket(name, require_versioning=True)


async def test_start_after_is_refused(dir_proxy: S3Proxy, dir_store: Store, dir_bucket: str) -> None:
    """ListObjectsV2 with StartAfter is refused with 400 InvalidRequest: a PermanentError, not retried."""
    await put_keys(dir_store, dir_bucket, ["d/a", "d/b"])
    with pytest.raises(errors.PermanentError) as info:
        await list_v2(dir_store, Bucket=dir_bucket, Prefix="d/", StartAfter="d/a")
    assert type(info.value) is errors.PermanentError
    assert info.value.code == "InvalidRequest"
    assert outcomes(dir_proxy, "start-after") == ["S3Error"]


@pytest.mark.parametrize("prefix", ["d", "d/a", "d/sub/x"])
async def test_unaligned_prefix_is_refused(
    dir_proxy: S3Proxy, dir_store: Store, dir_bucket: str, prefix: str,
) -> None:
    """A ListObjectsV2 prefix not ending in "/" gets AWS's 400 InvalidRequest: a PermanentError, once."""
    await put_keys(dir_store, dir_bucket, ["d/a", "d/sub/x"])
    with pytest.raises(errors.PermanentError) as info:
        await list_v2(dir_store, Bucket=dir_bucket, Prefix=prefix)
    assert type(info.value) is errors.PermanentError
    assert info.value.code == "InvalidRequest"
    assert UNALIGNED_PREFIX_MESSAGE in str(info.value)
    assert outcomes(dir_proxy, "list-type") == ["S3Error"]


async def test_aligned_or_empty_prefix_and_slash_delimiter_are_listed(
    dir_store: Store, dir_bucket: str,
) -> None:
    """A prefix ending in "/", no prefix at all, and the "/" delimiter are all accepted and answered."""
    await put_keys(dir_store, dir_bucket, ["d/a", "d/sub/x", "e/b"])
    aligned = await list_v2(dir_store, Bucket=dir_bucket, Prefix="d/")
    assert sorted(obj["Key"] for obj in aligned["Contents"]) == ["d/a", "d/sub/x"]
    everything = await list_v2(dir_store, Bucket=dir_bucket)
    assert sorted(obj["Key"] for obj in everything["Contents"]) == ["d/a", "d/sub/x", "e/b"]
    grouped = await list_v2(dir_store, Bucket=dir_bucket, Prefix="d/", Delimiter="/")
    assert [obj["Key"] for obj in grouped["Contents"]] == ["d/a"]
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["d/sub/"]


async def test_delimiter_other_than_slash_is_refused(
    dir_proxy: S3Proxy, dir_store: Store, dir_bucket: str,
) -> None:
    """A ListObjectsV2 delimiter other than "/" is refused with 400 InvalidRequest (PermanentError)."""
    with pytest.raises(errors.PermanentError) as info:
        await list_v2(dir_store, Bucket=dir_bucket, Prefix="d/", Delimiter="-")
    assert info.value.code == "InvalidRequest"
    assert outcomes(dir_proxy, "delimiter") == ["S3Error"]


# --- unordered listings -------------------------------------------------------------------------------


async def test_paginated_listing_has_every_key_once_but_not_in_order(
    dir_proxy: S3Proxy, dir_store: Store, dir_bucket: str, store: Store,
) -> None:
    """300 keys written through the proxy list, 100 per page, each exactly once yet not in key order.

    The pages hold the same keys as moto's own (sorted) pages: the shuffle stays within a page, and
    the continuation tokens still walk the whole listing.
    """
    keys = [f"d/{i:04d}" for i in range(300)]
    await put_keys(dir_store, dir_bucket, keys)
    pages = await list_pages(dir_store, dir_bucket, "d/", page_size=100)

    listed = [key for page in pages for key in page]
    assert len(pages) == 3
    assert len(listed) == len(keys)
    assert Counter(listed) == Counter(keys)
    assert listed != sorted(listed)
    assert all(page != sorted(page) for page in pages)

    direct = await list_pages(store, dir_bucket, "d/", page_size=100)  # moto, no proxy
    assert direct == [keys[0:100], keys[100:200], keys[200:300]]
    assert [set(page) for page in pages] == [set(page) for page in direct]
    assert outcomes(dir_proxy, "list-type") == ["Transform"] * 3
    assert [o for m, _, o in dir_proxy.requests if m == "PUT"] == ["forwarded"] * (1 + len(keys))


async def test_shuffle_is_reproducible_per_seed(moto_endpoint: str, store: Store) -> None:
    """The same seed gives the same listing order on a fresh proxy; another seed gives another order."""
    name = new_bucket_name("seed")
    await store.create_bucket(name, versioning=False)
    await put_keys(store, name, [f"s/{i:03d}" for i in range(50)])

    async def order(seed: int) -> list[str]:
        with S3Proxy(moto_endpoint, directory_bucket_rules(seed=seed)) as proxy:
            async with store_at(proxy.endpoint) as st:
                return [key for page in await list_pages(st, name, "s/", 20) for key in page]

    first, again, other = await order(3), await order(3), await order(4)
    assert first == again
    assert first != other
    assert sorted(first) == sorted(other) == [f"s/{i:03d}" for i in range(50)]


async def test_shuffle_keeps_the_rest_of_the_document(
    moto_endpoint: str, dir_proxy: S3Proxy, store: Store,
) -> None:
    """Only the <Contents> elements move: every other byte, IsTruncated and the token included, is kept.

    The same unsigned request goes to moto directly and through the proxy; with the Contents cut out
    the two bodies are identical, and the Contents are the same elements in another order.
    """
    name = new_bucket_name("raw")
    await store.create_bucket(name, versioning=False)
    await put_keys(store, name, [f"r/{i:02d}" for i in range(25)])
    query = f"/{name}?list-type=2&prefix=r/&max-keys=10"
    async with aiohttp.ClientSession() as session:
        async with session.get(moto_endpoint + query) as resp:
            assert resp.status == 200
            direct = await resp.read()
        async with session.get(dir_proxy.endpoint + query) as resp:
            assert resp.status == 200
            assert resp.content_length == len(direct)
            proxied = await resp.read()

    assert _CONTENTS.sub(b"", proxied) == _CONTENTS.sub(b"", direct)
    assert b"<IsTruncated>true</IsTruncated>" in proxied
    assert b"<NextContinuationToken>" in proxied
    moved, kept = _CONTENTS.findall(proxied), _CONTENTS.findall(direct)
    assert Counter(moved) == Counter(kept)
    assert len(kept) == 10
    assert moved != kept
    assert [_KEY.findall(c) for c in kept] == [[f"r/{i:02d}".encode()] for i in range(10)]


# --- everything else passes through ---------------------------------------------------------------


async def test_object_requests_pass_through_unchanged(
    dir_proxy: S3Proxy, dir_store: Store, dir_bucket: str, store: Store,
) -> None:
    """PUT, GET, HEAD bucket, GetBucketVersioning and DELETE are forwarded and answered as moto answers."""
    body = bytes(range(256)) * 64
    etag, version = await dir_store.put_object(dir_bucket, "d/blob", body, content_type="image/png")
    assert version is None  # unversioned, like every directory bucket

    via_proxy = await dir_store.get_object(dir_bucket, "d/blob")
    direct = await store.get_object(dir_bucket, "d/blob")
    assert via_proxy == direct
    assert (via_proxy.body, via_proxy.etag) == (body, etag)

    await dir_store.check_bucket(dir_bucket, require_versioning=False)
    with pytest.raises(errors.VersioningNotEnabled):
        await dir_store.check_bucket(dir_bucket, require_versioning=True)
    await dir_store.delete_object(dir_bucket, "d/blob")
    with pytest.raises(errors.NotFound):
        await store.get_object(dir_bucket, "d/blob")
    assert {outcome for _, _, outcome in dir_proxy.requests} == {"forwarded"}


# --- the generic transform ------------------------------------------------------------------------


async def test_transform_rewrites_the_answer_after_upstream_acted(moto_endpoint: str, store: Store) -> None:
    """A Transform forwards the request, then relays what ``rewrite`` returns instead of the answer.

    Here the first PUT is stored by moto but its 200 is turned into a 503 SlowDown: s3stream sees
    Throttled, retries, and the second (untouched) PUT succeeds; the object holds the written body.
    """
    name = new_bucket_name("xform")
    await store.create_bucket(name, versioning=False)
    seen: list[int] = []

    def slow_down(request: web.Request, response: Relayed) -> Relayed:
        seen.append(response.status)
        return replace(response, status=503, headers=(("Content-Type", "application/xml"),),
                       body=error_body(S3Error(503, "SlowDown"), request.path))

    rule = Rule(Transform(slow_down), method="PUT", first=1)
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        async with store_at(proxy.endpoint) as st:
            await st.put_object(name, "k", b"payload")
    assert seen == [200]
    assert (rule.matched, rule.applied) == (2, 1)
    assert [outcome for _, _, outcome in proxy.requests] == ["Transform", "forwarded"]
    assert (await store.get_object(name, "k")).body == b"payload"


# --- answers that are not what was asked for -------------------------------------------------------

_HTML = (b"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>Gateway</title></head>"
         b"<body><p>Sign in to continue<br></body></html>")
_XHTML = b'<html xmlns="http://www.w3.org/1999/xhtml"><body><p>Back soon</p></body></html>'


@pytest.mark.parametrize(("versioned", "lean"), [(True, True), (False, True), (True, False), (False, False)],
                         ids=["versions-lean", "objects-lean", "versions-botocore", "objects-botocore"])
async def test_a_listing_answered_200_with_a_web_page_is_retried(
        store: Store, moto_endpoint: str, versioned: bool, lean: bool) -> None:
    """A listing answered ``200`` with an HTML page (a captive portal, a proxy's error page), once not
    even XML and once well-formed XHTML, is a failed attempt to retry, not a crash and not an empty
    listing: the consumer keeps going and delivers every object, on both request paths and both
    listings (versions, and plain objects in a bucket without versioning)."""
    name = new_bucket_name("html")
    await store.create_bucket(name, versioning=versioned)
    written = {f"l/{i}" for i in range(5)}
    for key in sorted(written):
        await store.put_object(name, key, key.encode())
    pages = iter([_HTML, _XHTML])

    def web_page(_: web.Request, relayed: Relayed) -> Relayed:
        return replace(relayed, status=200, headers=(("Content-Type", "text/html"),), body=next(pages))

    def consumed_listing(request: web.Request) -> bool:
        listing = "versions" in request.query or request.query.get("list-type") == "2"
        return listing and request.query.get("prefix") == "l/"

    rule = Rule(Transform(web_page), method="GET", when=consumed_listing, first=2)
    operation = "ListObjectVersions" if versioned else "ListObjectsV2"
    retries_before = retries(operation)
    recorder = Recorder()
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        settings = make_settings(proxy.endpoint, f"s3://{name}/l/")
        settings = settings.model_copy(update={"s3": settings.s3.model_copy(update={"lean_path": lean})})
        consumer = Consumer(settings)
        consumer.register_handler("rec", recorder)
        async with running(consumer) as task:
            await wait_until(lambda: task.done() or {m.key for m in recorder.messages} >= written,
                             what="every object delivered")
            assert not task.done(), f"consumer died: {task.exception()!r}"
    assert rule.applied == 2
    assert retries(operation) - retries_before >= 2  # neither page was taken for an empty listing
    assert sorted(m.key for m in recorder.messages) == sorted(written)


def retries(operation: str) -> float:
    return REGISTRY.get_sample_value("s3stream_retries_total", {"what": operation}) or 0.0


def test_an_answer_botocore_cannot_read_is_a_retriable_server_error() -> None:
    """On the aiobotocore path, an answer its parser cannot read is translated into a retriable
    ServerError naming the operation, in one line, not left to escape as botocore's own exception."""
    with (pytest.raises(errors.ServerError, match=r"^ListObjectsV2: unreadable answer") as caught,
          translate("ListObjectsV2", bucket="b")):
        raise ResponseParserError("Unable to parse response (not well-formed),\ninvalid XML received")
    assert "\n" not in str(caught.value)
