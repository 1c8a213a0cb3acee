"""The in-memory S3 emulator (``benchmarks.emulator``) driven over HTTP by real aiobotocore clients.

Each profile runs as a subprocess started by ``run_emulator`` once per module. Most tests go through
s3stream's own ``Store``; the zero and express emulators verify every request's SigV4 signature, so
every test against them also proves that botocore's requests (awkward keys included) pass the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from yarl import URL

from benchmarks.emulator import EmulatorError, EmulatorProcess, run_emulator
from benchmarks.emulator import _await_ready as await_ready
from s3stream import errors
from s3stream.config import build_settings
from s3stream.s3.store import Store, open_store
from tests.conftest import new_bucket_name

pytestmark = pytest.mark.e2e  # an emulator subprocess serves every test

AWKWARD_KEYS = [
    "awk/sp ace", "awk/plus+sign", "awk/per%cent", "awk/uni-ćø∂é-日本", "awk/eq=als", "awk/tilde~",
    "awk/a//double", "awk/q?mark", "awk/hash#tag", "awk/amp&ersand", "awk/semi;colon", "awk/(paren)*!",
]


@pytest.fixture(scope="module")
def zero() -> Iterator[EmulatorProcess]:
    """A zero-profile emulator that verifies every request's signature."""
    with run_emulator("zero", verify_signatures=True) as emu:
        yield emu


@pytest.fixture(scope="module")
def express() -> Iterator[EmulatorProcess]:
    """An express-profile emulator (directory buckets, 5 ms) that verifies signatures."""
    with run_emulator("express", verify_signatures=True) as emu:
        yield emu


@pytest.fixture(scope="module")
def slow_express() -> Iterator[EmulatorProcess]:
    """An express-profile emulator with 100 ms per answer."""
    with run_emulator("express", latency_ms=100) as emu:
        yield emu


@pytest.fixture(scope="module")
def standard() -> Iterator[EmulatorProcess]:
    """A standard-profile emulator limited to 20 PUTs per second per prefix."""
    with run_emulator("standard", put_rate=20) as emu:
        yield emu


@contextlib.asynccontextmanager
async def store_for(url: str, max_connections: int = 32) -> AsyncIterator[Store]:
    settings = build_settings({"s3": {"endpoint_url": url, "addressing_style": "path"}}).s3
    async with open_store(settings, max_connections=max_connections) as st:
        yield st


@pytest.fixture
async def zstore(zero: EmulatorProcess) -> AsyncIterator[Store]:
    """An s3stream Store on the zero emulator."""
    async with store_for(zero.url) as st:
        yield st


def signed_headers(method: str, url: str, body: bytes = b"", access_key: str = "testing") -> dict[str, str]:
    """SigV4 headers for a request, made by botocore's signer (the test's trusted reference)."""
    request = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(access_key, "testing"), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def client_error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, dict[str, str]]:
    resp: dict[str, Any] = exc.value.response
    meta = resp["ResponseMetadata"]
    return int(meta["HTTPStatusCode"]), str(resp["Error"].get("Code", "")), dict(meta["HTTPHeaders"])


# --------------------------------------------------------------------------------------- lifecycle


def test_subprocess_announces_ready_and_exits_zero_on_sigterm() -> None:
    """``run_emulator`` reads the READY line, control calls work, and SIGTERM ends the process with 0."""
    with run_emulator("standard") as emu:
        assert emu.url.startswith("http://127.0.0.1:")
        stats = emu.stats()
        assert stats["profile"] == "standard"
        assert stats["uptime_seconds"] > 0
    assert emu.process.returncode == 0
    with pytest.raises(ValueError, match="unknown profile"), run_emulator("nonsense"):
        pass


def test_a_child_that_dies_before_ready_is_a_clear_error() -> None:
    """If the server process exits before printing READY, the error says so and shows its stderr."""
    code = "import sys; sys.stderr.write('boom: port in use'); sys.exit(3)"
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr)
        with pytest.raises(EmulatorError, match=r"exited with 3.*boom: port in use"):
            await_ready(child, stderr, 15.0)
        child.wait(timeout=15)
        assert child.stdout is not None
        child.stdout.close()


# ----------------------------------------------------------------------------------------- objects


async def test_put_get_head_round_trip_metadata_and_encoding(zstore: Store) -> None:
    """Metadata, Content-Type and Content-Encoding are stored and returned on GET and HEAD; a gzip
    body is stored as sent (not decompressed); ETag is the MD5; Last-Modified has whole seconds;
    an unversioned bucket gives no version ids; every answer has Date and x-amz-request-id."""
    name = new_bucket_name("rt")
    await zstore.create_bucket(name, versioning=False)
    body = gzip.compress(b'{"hello": "world"}' * 50)
    etag, version = await zstore.put_object(name, "k/obj", body, metadata={"origin": "test", "n": "1"},
                                            content_type="application/json", content_encoding="gzip")
    assert etag == hashlib.md5(body).hexdigest()
    assert version is None
    got = await zstore.get_object(name, "k/obj")
    assert (got.body, got.etag, got.version_id) == (body, etag, None)
    assert got.metadata == {"origin": "test", "n": "1"}
    head = await zstore.client.head_object(Bucket=name, Key="k/obj")
    assert head["ContentEncoding"] == "gzip"
    assert head["ContentType"] == "application/json"
    assert head["ContentLength"] == len(body)
    assert head["LastModified"].microsecond == 0
    assert abs(head["LastModified"].timestamp() - time.time()) < 5
    assert {"date", "x-amz-request-id"} <= set(head["ResponseMetadata"]["HTTPHeaders"])
    page = await zstore.list_objects(name, "k/")
    assert [(e.key, e.size, e.etag) for e in page.entries] == [("k/obj", len(body), etag)]
    assert page.entries[0].last_modified_ms % 1000 == 0


async def test_conditional_writes_fail_with_412_both_ways(zstore: Store) -> None:
    """If-None-Match: * refuses an existing key; If-Match refuses a wrong ETag and an absent key;
    the right ETag passes. CompleteMultipartUpload honours If-None-Match too, and its object is the
    parts joined, with a multipart ETag."""
    name = new_bucket_name("cond")
    await zstore.create_bucket(name, versioning=True)
    etag, _ = await zstore.put_object(name, "c/key", b"one", if_none_match=True)
    with pytest.raises(errors.PreconditionFailed):
        await zstore.put_object(name, "c/key", b"two", if_none_match=True)
    with pytest.raises(errors.PreconditionFailed):
        await zstore.put_object(name, "c/key", b"two", if_match="0" * 32)
    with pytest.raises(errors.PreconditionFailed):
        await zstore.put_object(name, "c/absent", b"two", if_match=etag)
    new_etag, _ = await zstore.put_object(name, "c/key", b"two", if_match=etag)
    assert new_etag == hashlib.md5(b"two").hexdigest()
    body = bytes(range(256)) * (11 * 4096)  # 11 MiB: parts of 5, 5 and 1 MiB
    with pytest.raises(errors.PreconditionFailed):
        await zstore.put_multipart(name, "c/key", body, part_size=5 << 20, if_none_match=True)
    mp_etag, _ = await zstore.put_multipart(name, "c/big", body, part_size=5 << 20, if_none_match=True)
    assert mp_etag.endswith("-3")
    assert (await zstore.get_object(name, "c/big")).body == body


async def test_versions_get_by_id_not_modified_and_delete_markers(zstore: Store) -> None:
    """GET by versionId; If-None-Match with the current ETag gives 304; a delete marker as latest
    gives 404 NoSuchKey with x-amz-delete-marker; GET of the marker's id is 405; an unknown version
    is NotFound; deleting a version by id removes just that version."""
    name = new_bucket_name("ver")
    await zstore.create_bucket(name, versioning=True)
    _, v1 = await zstore.put_object(name, "v/k", b"first")
    etag2, v2 = await zstore.put_object(name, "v/k", b"second")
    assert v1 is not None
    assert v2 not in (None, v1)
    assert (await zstore.get_object(name, "v/k", v1)).body == b"first"
    assert (await zstore.get_object(name, "v/k")).version_id == v2
    with pytest.raises(ClientError) as not_modified:
        await zstore.client.get_object(Bucket=name, Key="v/k", IfNoneMatch=f'"{etag2}"')
    assert client_error(not_modified)[0] == 304
    marker = await zstore.delete_object(name, "v/k")
    with pytest.raises(ClientError) as deleted:
        await zstore.client.get_object(Bucket=name, Key="v/k")
    status, code, headers = client_error(deleted)
    assert (status, code, headers.get("x-amz-delete-marker"), headers.get("x-amz-version-id")) == (
        404, "NoSuchKey", "true", marker)
    with pytest.raises(ClientError) as on_marker:
        await zstore.client.get_object(Bucket=name, Key="v/k", VersionId=marker)
    assert client_error(on_marker)[:2] == (405, "MethodNotAllowed")
    with pytest.raises(errors.NotFound):
        await zstore.get_object(name, "v/k", "no-such-version")
    assert await zstore.delete_object(name, "v/k", marker) == marker
    assert (await zstore.get_object(name, "v/k")).version_id == v2
    await zstore.delete_object(name, "v/k", v2)
    assert (await zstore.get_object(name, "v/k")).version_id == v1


# ---------------------------------------------------------------------------------------- listings


async def test_version_listing_interleaves_delete_markers_across_pages(zstore: Store) -> None:
    """ListObjectVersions gives keys ascending and each key's versions and delete markers newest
    first, interleaved in one sequence, and pages may end inside a key's versions; any page size
    gives the same sequence. (moto differs: it lists a key's delete markers after its versions and
    makes no marker when deleting a key that never existed, which S3 does; so this asserts the
    order directly.)"""
    name = new_bucket_name("lv")
    await zstore.create_bucket(name, versioning=True)
    a1 = (await zstore.put_object(name, "p/a", b"1"))[1]
    a2 = (await zstore.put_object(name, "p/a", b"22"))[1]
    am = await zstore.delete_object(name, "p/a")
    a3 = (await zstore.put_object(name, "p/a", b"333"))[1]
    b1 = (await zstore.put_object(name, "p/b", b"4"))[1]
    bm = await zstore.delete_object(name, "p/b")
    cm = await zstore.delete_object(name, "p/c")
    d1 = (await zstore.put_object(name, "p/d", b"55555"))[1]
    await zstore.put_object(name, "q/outside", b"x")
    expected = [("p/a", a3, False, True), ("p/a", am, True, False), ("p/a", a2, False, False),
                ("p/a", a1, False, False), ("p/b", bm, True, True), ("p/b", b1, False, False),
                ("p/c", cm, True, True), ("p/d", d1, False, True)]
    for size in (1, 3, 1000):
        seen, pages, key_marker, vid_marker = [], 0, None, None
        while True:
            page = await zstore.list_versions(name, "p/", key_marker=key_marker,
                                              version_id_marker=vid_marker, max_keys=size)
            seen += [(e.key, e.version_id, e.deleted, e.latest) for e in page.entries]
            pages += 1
            if not page.truncated:
                break
            assert (page.next_key_marker, page.next_version_id_marker) == seen[-1][:2]
            key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker
        assert seen == expected, f"page size {size}"
        assert pages == -(-len(expected) // size)


async def test_list_objects_v2_pages_with_delimiter_like_moto(zstore: Store, store: Store,
                                                              bucket: str) -> None:
    """The same keys (a deleted one among them) listed with a delimiter in pages of 2 give exactly
    the pages moto gives: contents, common prefixes, continuation."""
    keys = ["d/a/1", "d/a/2", "d/b/1", "d/c", "d/dead", "d/e", "d/f/x/y", "d/sp ace", "d/plus+", "d/ü", "e/x"]
    name = new_bucket_name("lo")
    await zstore.create_bucket(name, versioning=True)

    async def pages(st: Store, bucket_name: str) -> list[tuple[list[str], list[str], bool]]:
        for key in keys:
            await st.put_object(bucket_name, key, key.encode())
        await st.delete_object(bucket_name, "d/dead")
        out, token = [], None
        while True:
            page = await st.list_objects(bucket_name, "d/", delimiter="/", token=token, max_keys=2)
            out.append(([e.key for e in page.entries], page.prefixes, page.next_token is not None))
            token = page.next_token
            if token is None:
                return out

    ours = await pages(zstore, name)
    assert ours == await pages(store, bucket)
    assert [k for c, _, _ in ours for k in c] == ["d/c", "d/e", "d/plus+", "d/sp ace", "d/ü"]
    assert [p for _, ps, _ in ours for p in ps] == ["d/a/", "d/b/", "d/f/"]
    after = await zstore.client.list_objects_v2(Bucket=name, Prefix="d/", StartAfter="d/e")
    assert [o["Key"] for o in after["Contents"]] == ["d/f/x/y", "d/plus+", "d/sp ace", "d/ü"]


# ------------------------------------------------------------------------------ directory buckets


async def test_directory_bucket_semantics(express: EmulatorProcess) -> None:
    """An express ``--x-s3`` bucket: each ListObjectsV2 page covers its own key range but not in
    key order; StartAfter and a delimiter with a prefix not ending in / are refused (400);
    ListObjectVersions and versioning are 501 (s3stream's PermanentError); ETags are not MD5."""
    name = "emu-dir--use1-az4--x-s3"
    async with store_for(express.url, max_connections=32) as st:
        await st.create_directory_bucket(name, "use1-az4")
        keys = [f"t/00/k{i:03d}" for i in range(300)]
        etags = await asyncio.gather(*(st.put_object(name, k, k.encode()) for k in keys))
        md5s = [hashlib.md5(k.encode()).hexdigest() for k in keys]
        assert not {etag for etag, _ in etags} & set(md5s)
        pages, token = [], None
        while True:
            page = await st.list_objects(name, "t/00/", token=token, max_keys=100)
            pages.append([e.key for e in page.entries])
            if (token := page.next_token) is None:
                break
        assert [sorted(p) for p in pages] == [keys[0:100], keys[100:200], keys[200:300]]
        assert any(p != sorted(p) for p in pages)
        with pytest.raises(ClientError) as start_after:
            await st.client.list_objects_v2(Bucket=name, Prefix="t/", StartAfter="t/00/k100")
        assert client_error(start_after)[:2] == (400, "InvalidArgument")
        with pytest.raises(ClientError) as bad_prefix:
            await st.client.list_objects_v2(Bucket=name, Prefix="t/0", Delimiter="/")
        assert client_error(bad_prefix)[:2] == (400, "InvalidArgument")
        with pytest.raises(errors.PermanentError) as versions:
            await st.list_versions(name, "t/")
        assert versions.value.code == "NotImplemented"
        with pytest.raises(errors.PermanentError):
            await st.require_versioning(name)


async def test_create_session_is_accepted_and_session_requests_verified(express: EmulatorProcess) -> None:
    """aiobotocore, left to pick S3 Express auth itself, calls CreateSession (before CreateBucket),
    accepts the credentials, and signs the following requests with them and x-amz-s3session-token;
    the emulator verifies each of those with the session's secret and rejects none."""
    before = express.stats()
    config = AioConfig(region_name="us-east-1", s3={"addressing_style": "path"},
                       retries={"total_max_attempts": 1, "mode": "standard"})
    name = "emu-sess--use1-az4--x-s3"
    async with get_session().create_client("s3", endpoint_url=express.url, config=config) as client:
        await client.create_bucket(Bucket=name, CreateBucketConfiguration={
            "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
            "Bucket": {"Type": "Directory", "DataRedundancy": "SingleAvailabilityZone"}})
        for key in AWKWARD_KEYS[:6]:
            await client.put_object(Bucket=name, Key=key, Body=key.encode())
        listed = await client.list_objects_v2(Bucket=name, Prefix="awk/")
        got = await client.get_object(Bucket=name, Key=AWKWARD_KEYS[3])
        assert await got["Body"].read() == AWKWARD_KEYS[3].encode()
        await client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": AWKWARD_KEYS[0]}]})
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(AWKWARD_KEYS[:6])
    after = express.stats()
    assert after["requests"]["CreateSession"] > before["requests"].get("CreateSession", 0)
    signed = after["signatures"]
    assert signed["s3express-session"] - (before["signatures"] or {}).get("s3express-session", 0) >= 10
    assert signed.get("rejected", 0) == (before["signatures"] or {}).get("rejected", 0)


# ------------------------------------------------------------------------------------- signatures


async def test_verified_signatures_accept_awkward_keys_and_queries(zstore: Store,
                                                                   zero: EmulatorProcess) -> None:
    """With --verify-signatures, aiobotocore's requests pass for keys with spaces, +, %, =, ~, //,
    ?, #, & and unicode, for versionId queries, paged version listings (key and version-id markers)
    and ListObjectsV2 continuation tokens with a prefix, and DeleteObjects."""
    rejected = (zero.stats()["signatures"] or {}).get("rejected", 0)
    name = new_bucket_name("sig")
    await zstore.create_bucket(name, versioning=True)
    written = {key: (await zstore.put_object(name, key, key.encode()))[1] for key in AWKWARD_KEYS}
    for key, vid in written.items():
        got = await zstore.get_object(name, key, vid)
        assert (got.body, got.version_id) == (key.encode(), vid)
    seen, key_marker, vid_marker = [], None, None
    while True:
        page = await zstore.list_versions(name, "awk/", key_marker=key_marker, version_id_marker=vid_marker,
                                          max_keys=5)
        seen += [e.key for e in page.entries]
        if not page.truncated:
            break
        key_marker, vid_marker = page.next_key_marker, page.next_version_id_marker
    assert seen == sorted(AWKWARD_KEYS)
    listed, token = [], None
    while True:
        objects = await zstore.list_objects(name, "awk/", token=token, max_keys=4)
        listed += [e.key for e in objects.entries]
        if (token := objects.next_token) is None:
            break
    assert listed == sorted(AWKWARD_KEYS)
    await zstore.delete_versions(name, list(written.items()))
    assert (await zstore.list_versions(name, "awk/")).entries == []
    assert (zero.stats()["signatures"] or {}).get("rejected", 0) == rejected


async def test_verified_signatures_reject_tampered_requests(zstore: Store, zero: EmulatorProcess) -> None:
    """A request signed by botocore passes; the same signature on another key, another body, an
    altered signature, an unknown access key or no signature at all is refused, and nothing is
    written."""
    name = new_bucket_name("tamper")
    await zstore.create_bucket(name, versioning=False)
    base = f"{zero.url}/{name}"
    good = signed_headers("PUT", f"{base}/t/ok", b"payload")
    async with aiohttp.ClientSession() as http:
        async def put(path: str, headers: dict[str, str], body: bytes = b"payload") -> tuple[int, str]:
            async with http.put(URL(f"{base}/{path}", encoded=True), data=body, headers=headers) as resp:
                text = await resp.text()
            return resp.status, text.split("<Code>")[1].split("</Code>")[0] if "<Code>" in text else ""

        assert await put("t/ok", good) == (200, "")
        assert await put("t/other", good) == (403, "SignatureDoesNotMatch")
        assert await put("t/ok", good, b"tampered") == (400, "XAmzContentSHA256Mismatch")
        auth = good["Authorization"]
        flipped = dict(good, Authorization=auth[:-1] + ("0" if auth[-1] != "0" else "1"))
        assert await put("t/ok", flipped) == (403, "SignatureDoesNotMatch")
        stranger = signed_headers("PUT", f"{base}/t/ok", b"payload", access_key="AKIDSTRANGER")
        assert await put("t/ok", stranger) == (403, "InvalidAccessKeyId")
        assert await put("t/ok", {}) == (403, "AccessDenied")
    assert [e.key for e in (await zstore.list_objects(name, "t/")).entries] == ["t/ok"]


async def test_virtual_host_style_names_the_bucket_in_the_host(zstore: Store, zero: EmulatorProcess) -> None:
    """A request whose Host is ``<bucket>.localhost:<port>`` addresses that bucket, the whole path
    being the key (signed for that host, so the verifier sees the same Host)."""
    name = new_bucket_name("vhost")
    await zstore.create_bucket(name, versioning=False)
    port = URL(zero.url).port
    host = f"{name}.localhost:{port}"
    headers = {**signed_headers("PUT", f"http://{host}/v/key", b"virtual"), "Host": host}
    async with aiohttp.ClientSession() as http, http.put(f"{zero.url}/v/key", data=b"virtual",
                                                         headers=headers) as resp:
        assert resp.status == 200
    assert (await zstore.get_object(name, "v/key")).body == b"virtual"


# ------------------------------------------------------------------------------ profiles and limits


async def test_standard_profile_throttles_beyond_the_put_rate(standard: EmulatorProcess) -> None:
    """At 20 PUT/s per prefix, 200 concurrent PUTs to one shard prefix get some 503 SlowDown answers
    (counted in ``throttled``), while another shard prefix still has its own allowance."""
    before = standard.stats()["throttled"]
    name = new_bucket_name("slow")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        async with http.put(f"{standard.url}/{name}") as resp:
            assert resp.status == 200

        async def put(key: str) -> tuple[int, bytes]:
            async with http.put(f"{standard.url}/{name}/{key}", data=b"x") as answer:
                return answer.status, await answer.read()

        results = await asyncio.gather(*(put(f"topic/00/k{i}") for i in range(200)))
        other = await put("topic/01/k0")
    throttled = [body for status, body in results if status == 503]
    assert throttled
    assert all(b"<Code>SlowDown</Code>" in body for body in throttled)
    assert sum(status == 200 for status, _ in results) >= 1
    assert len(throttled) + sum(status == 200 for status, _ in results) == 200
    assert other[0] == 200
    assert standard.stats()["throttled"] - before == len(throttled)


async def test_express_latency_is_applied_concurrently(slow_express: EmulatorProcess) -> None:
    """With 100 ms per answer, 50 concurrent GETs finish in well under 50 x 100 ms: each request
    waits its own latency (this proves concurrency, it is not a speed test). The GETs take the lean
    path, whose few µs of client CPU a request keep a loaded machine's client out of the figure."""
    name = new_bucket_name("lat")
    async with store_for(slow_express.url, max_connections=64) as st:
        await st.create_bucket(name, versioning=False)
        await st.put_object(name, "k", b"x")
        started = time.monotonic()
        gets = await asyncio.gather(*(st.get_object(name, "k") for _ in range(50)))
        elapsed = time.monotonic() - started
    assert [g.body for g in gets] == [b"x"] * 50
    assert 0.1 <= elapsed < 2.5


# --------------------------------------------------------------------------------- control plane


async def test_seed_then_full_listing(zstore: Store, zero: EmulatorProcess) -> None:
    """Seeding 10,000 objects in one call stores them all; a full ListObjectsV2 returns every key in
    order; seeded bodies (text or bytes), metadata and encoding read back; a versioned seed gives
    each object a version id."""
    name = new_bucket_name("seed")
    objects: list[dict[str, Any]] = [{"key": f"s/{i % 16:02x}/m{i:05d}", "body": f"message {i}"}
                                     for i in range(10_000)]
    objects[7] = {"key": objects[7]["key"], "body": b"\x00\xff bytes", "content_encoding": "identity",
                  "metadata": {"Source": "seed"}}
    assert zero.seed(name, objects) == 10_000
    keys, token = [], None
    while True:
        page = await zstore.list_objects(name, "s/", token=token)
        keys += [e.key for e in page.entries]
        if (token := page.next_token) is None:
            break
    assert keys == sorted(o["key"] for o in objects)
    got = await zstore.get_object(name, objects[7]["key"])
    assert (got.body, got.metadata) == (b"\x00\xff bytes", {"source": "seed"})
    assert (await zstore.get_object(name, objects[8]["key"])).body == b"message 8"
    versioned = new_bucket_name("seedv")
    two = [{"key": "v/a", "body": "1"}, {"key": "v/a", "body": "22"}]
    assert zero.seed(versioned, two, versioned=True) == 2
    entries = (await zstore.list_versions(versioned, "v/")).entries
    assert [e.size for e in entries] == [2, 1]
    assert all(e.version_id != "null" for e in entries)
    assert await zstore.versioning_status(versioned) == "Enabled"


async def test_stats_count_requests_by_operation(zstore: Store, zero: EmulatorProcess) -> None:
    """After a reset, stats count each request under botocore's operation name and report the
    server's CPU time; a data reset drops the buckets; /_emulator/ paths are never buckets."""
    name = new_bucket_name("stats")
    await zstore.create_bucket(name, versioning=False)
    zero.reset_stats()
    for i in range(3):
        await zstore.put_object(name, f"k{i}", b"x")
    await zstore.get_object(name, "k0")
    await zstore.get_object(name, "k1")
    await zstore.client.head_object(Bucket=name, Key="k2")
    await zstore.list_objects(name, "")
    await zstore.delete_versions(name, [("k0", None)])
    stats = zero.stats()
    assert stats["requests"] == {"PutObject": 3, "GetObject": 2, "HeadObject": 1, "ListObjectsV2": 1,
                                 "DeleteObjects": 1}
    assert stats["cpu_seconds"] > 0
    assert stats["objects"] >= 2
    assert stats["throttled"] == 0
    with pytest.raises(ClientError) as not_empty:
        await zstore.client.delete_bucket(Bucket=name)
    assert client_error(not_empty)[:2] == (409, "BucketNotEmpty")
    with pytest.raises(ClientError) as twice:
        await zstore.client.create_bucket(Bucket=name)
    assert client_error(twice)[:2] == (409, "BucketAlreadyOwnedByYou")
    async with aiohttp.ClientSession() as http, http.get(f"{zero.url}/_emulator/nothing") as resp:
        assert resp.status == 404
        assert "no control endpoint" in (await resp.json())["error"]
    zero.reset_stats(data=True)
    with pytest.raises(errors.BucketNotFound):
        await zstore.check_bucket(name)
    assert zero.stats()["objects"] == 0
