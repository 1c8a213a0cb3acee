"""The lean request path (``s3stream.s3.lean``) against the emulator with signature checking on, and
against aiobotocore's own answers for the same requests: same objects, same pages, same errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from benchmarks.emulator import EmulatorProcess, run_emulator
from s3stream import errors
from s3stream.config import build_settings
from s3stream.s3.store import Store, open_store
from tests.conftest import new_bucket_name

pytestmark = pytest.mark.e2e  # an emulator subprocess serves every test

KEYS = ["lean/sp ace", "lean/plus+sign", "lean/per%cent", "lean/uni-ćø∂é-日本", "lean/eq=als", "lean/a&b?c#d"]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    """An express-profile emulator (directory buckets for ``--x-s3`` names) checking every signature."""
    with run_emulator("express", verify_signatures=True, latency_ms=0) as emu:
        yield emu


def settings(url: str, *, lean: bool = True, attempts: int = 8) -> object:
    return build_settings({"s3": {"endpoint_url": url, "addressing_style": "path", "lean_path": lean,
                                  "max_attempts": attempts}}).s3


@pytest.fixture
async def stores(emulator: EmulatorProcess) -> AsyncIterator[tuple[Store, Store]]:
    """A store on the lean path and one on aiobotocore only, both against the same emulator."""
    async with open_store(settings(emulator.url)) as lean, \
            open_store(settings(emulator.url, lean=False)) as boto:  # type: ignore[arg-type]
        assert lean.lean is not None
        assert boto.lean is None
        yield lean, boto


async def test_lean_and_botocore_paths_agree_on_objects_and_listings(
    stores: tuple[Store, Store], emulator: EmulatorProcess,
) -> None:
    """Writes on either path read back identically on both; version pages (with a delete marker
    interleaved) and object pages are equal entry for entry; every signature passed the check."""
    lean, boto = stores
    bucket = new_bucket_name("lean")
    await boto.create_bucket(bucket, versioning=True)
    for i, key in enumerate(KEYS):
        writer = lean if i % 2 else boto
        await writer.put_object(bucket, key, f"v1 {key}".encode(), metadata={"s3stream-key": "k%2F1"},
                                content_type="text/plain")
        await writer.put_object(bucket, key, f"v2 {key}".encode())
    await boto.delete_object(bucket, KEYS[0])
    for key in KEYS[1:]:
        a, b = await lean.get_object(bucket, key), await boto.get_object(bucket, key)
        assert a == b
        assert a.body == f"v2 {key}".encode()
        assert a.version_id
    page_a = await lean.list_versions(bucket, "lean/", max_keys=5)
    page_b = await boto.list_versions(bucket, "lean/", max_keys=5)
    assert page_a.entries == page_b.entries
    assert page_a.truncated
    assert (page_a.next_key_marker, page_a.next_version_id_marker) == (
        page_b.next_key_marker, page_b.next_version_id_marker)
    rest_a = await lean.list_versions(bucket, "lean/", key_marker=page_a.next_key_marker,
                                      version_id_marker=page_a.next_version_id_marker)
    assert len(page_a.entries) + len(rest_a.entries) == 2 * len(KEYS) + 1
    assert [e.deleted for e in page_a.entries + rest_a.entries].count(True) == 1
    first_a = await lean.list_versions(bucket, "lean/")
    old = next(e for e in first_a.entries if not e.latest and not e.deleted)
    assert (await lean.get_object(bucket, old.key, old.version_id)).body.startswith(b"v1 ")
    assert (await lean.get_object(bucket, old.key, old.version_id)).metadata == {"s3stream-key": "k%2F1"}
    objs_a, objs_b = await lean.list_objects(bucket, "lean/"), await boto.list_objects(bucket, "lean/")
    assert sorted(e.key for e in objs_a.entries) == sorted(e.key for e in objs_b.entries) == sorted(KEYS[1:])
    stats = emulator.stats()
    assert stats["signatures"].get("rejected", 0) == 0
    assert stats["signatures"]["s3"] > 20


async def test_directory_bucket_uses_session_credentials(
    stores: tuple[Store, Store], emulator: EmulatorProcess,
) -> None:
    """On an S3 Express directory bucket the lean path signs with CreateSession credentials
    (service ``s3express``, ``x-amz-s3session-token``), which the emulator verifies."""
    lean, _ = stores
    bucket = f"lean{new_bucket_name('x')[-6:].replace('-', '')}--use1-az4--x-s3"
    await lean.create_directory_bucket(bucket, "use1-az4")
    before = emulator.stats()["signatures"]
    await lean.put_object(bucket, "t/00/a b", b"hello", if_none_match=True)
    assert (await lean.get_object(bucket, "t/00/a b")).body == b"hello"
    page = await lean.list_objects(bucket, "t/")
    assert [e.key for e in page.entries] == ["t/00/a b"]
    after = emulator.stats()["signatures"]
    assert after["s3express-session"] - before.get("s3express-session", 0) >= 3
    assert after.get("rejected", 0) == 0


async def test_lean_errors_are_translated_like_botocore(stores: tuple[Store, Store]) -> None:
    """Missing key, failed precondition and missing bucket raise the same s3stream errors on both paths."""
    lean, boto = stores
    bucket = new_bucket_name("lean")
    await boto.create_bucket(bucket, versioning=False)
    await lean.put_object(bucket, "k", b"1")
    for store in (lean, boto):
        with pytest.raises(errors.NotFound):
            await store.get_object(bucket, "missing")
        with pytest.raises(errors.PreconditionFailed):
            await store.put_object(bucket, "k", b"2", if_none_match=True)
        with pytest.raises(errors.PreconditionFailed):
            await store.put_object(bucket, "k", b"2", if_match="0" * 32)
        with pytest.raises(errors.BucketNotFound):
            await store.get_object(new_bucket_name("gone"), "k")
    etag, _ = await lean.put_object(bucket, "k", b"3")
    await lean.put_object(bucket, "k", b"4", if_match=etag)
    assert (await boto.get_object(bucket, "k")).body == b"4"


async def test_lean_path_retries_throttling() -> None:
    """503 SlowDown on the lean path is retried under the store's policy until the PUTs land."""
    with run_emulator("standard", put_rate=20, latency_ms=0) as emu:
        async with open_store(settings(emu.url)) as store:  # type: ignore[arg-type]
            await store.create_bucket("slow", versioning=False)
            await asyncio.gather(*(store.put_object("slow", f"t/00/{i}", b"x") for i in range(60)))
            page = await store.list_objects("slow", "t/00/")
            assert len(page.entries) == 60
            assert emu.stats()["throttled"] > 0


async def test_every_answer_on_the_lean_path_narrows_its_buckets_server_clock(
    stores: tuple[Store, Store],
) -> None:
    """The ``Date`` of each answer on the lean path feeds the bucket's server clock (a producer's names
    come from it): writes at different fractions of a second narrow it from a second to well under
    half of one, and it reads the emulator's time (this host's) without falling behind. The
    aiobotocore path feeds nothing: its users read the clock themselves."""
    lean, boto = stores
    bucket = new_bucket_name("clk")
    await lean.create_bucket(bucket, versioning=False)
    clock = lean.server_clock(bucket)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    n = 0
    while not (clock.known and clock.uncertainty_ms() < 400):
        assert loop.time() < deadline, f"still {clock.uncertainty_ms():.0f} ms uncertain after {n} writes"
        await lean.put_object(bucket, f"clk/{n}", b"x")
        await boto.put_object(bucket, f"clk/boto{n}", b"x")
        n += 1
        await asyncio.sleep(0.037)  # the next write at another fraction of a second
    assert n >= 2
    host_ms = time.time() * 1000
    assert host_ms - 5 <= clock.now_ms() <= host_ms + 400
    assert not boto.server_clock(bucket).known
