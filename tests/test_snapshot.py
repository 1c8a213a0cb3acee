"""The snapshot follower against moto over HTTP, and its parsers.

Faults moto cannot produce (S3 answering 503, connections dropped) and the count of bodies actually
downloaded come from :class:`tests.s3proxy.S3Proxy` in front of moto. The command line tests (``snapshot
serve``, ``snapshot rollback``, ``bucket lifecycle``) are in ``tests/test_snapshot_cli.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from s3stream.config import S3Settings, build_settings
from s3stream.errors import BucketNotFound, ConfigError, NotFound
from s3stream.integrations.snapshot import Follower, Snapshot
from s3stream.integrations.snapshotparsers import (
    InvalidSnapshot,
    parse_csv,
    parse_csv_header,
    parse_json,
    parse_jsonl,
    resolve_parser,
)
from s3stream.s3.store import Store
from tests.conftest import new_bucket_name, wait_until
from tests.s3proxy import Drop, Relayed, Rule, S3Error, S3Proxy, Transform

KEY = "kv/store.csv"


def s3_settings(endpoint: str, *, lean: bool = True) -> S3Settings:
    """Settings for a follower: a short retry budget, so that a 503 or a dropped connection is reported
    within a second. The read timeout is long: moto on a loaded machine can take seconds to answer,
    and a slow answer is not the fault these tests are about."""
    return build_settings({"s3": {
        "endpoint_url": endpoint, "addressing_style": "path", "lean_path": lean, "max_attempts": 2,
        "max_retry_time": 1.0, "connect_timeout": 1.0, "read_timeout": 15.0,
    }}).s3


def follower(endpoint: str, bucket: str, *, key: str = KEY, lean: bool = True, **opts: Any) -> Follower:
    return Follower(f"s3://{bucket}/{key}", interval=opts.pop("interval", 0.05),
                    s3=s3_settings(endpoint, lean=lean), **opts)


async def put(store: Store, bucket: str, body: bytes, key: str = KEY) -> str:
    _, version_id = await store.put_object(bucket, key, body)
    assert version_id is not None
    return version_id


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    with S3Proxy(moto_endpoint) as p:
        yield p


def upper_keys(body: bytes) -> Mapping[str, Any]:
    """A plugin parser (``tests.test_snapshot:upper_keys``): ``k=v`` lines, keys upper-cased."""
    return dict(line.split("=", 1) for line in body.decode().upper().splitlines())


def not_a_mapping(body: bytes) -> Any:
    """A broken plugin parser: returns a list."""
    return [body]


# --- loading, swapping, callbacks ------------------------------------------------------------------


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiobotocore"])
async def test_loads_latest_version_and_exposes_it(store: Store, bucket: str, moto_endpoint: str,
                                                   lean: bool) -> None:
    """After start() the latest version is served: data, get(), version id, ETag, loaded-at and
    last-checked are set, last_error is None, and the data cannot be modified by a reader."""
    await put(store, bucket, b"old,0\n")
    version = await put(store, bucket, b"x,1\ny,two words\n")
    async with follower(moto_endpoint, bucket, lean=lean) as f:
        assert dict(f.data) == {"x": "1", "y": "two words"}
        assert f.get("x") == "1"
        assert f.get("nope") is None
        assert f.get("nope", "d") == "d"
        assert f.version_id == version
        assert f.etag
        assert f.loaded_at is not None
        assert f.last_checked is not None
        assert f.last_error is None
        with pytest.raises(TypeError):
            f.data["x"] = "changed"  # type: ignore[index]


async def test_new_valid_version_is_swapped_in_and_callbacks_run(store: Store, bucket: str,
                                                                 moto_endpoint: str) -> None:
    """A new valid version replaces the old one; sync and async callbacks get (old, new) for the first
    load (old None) and for each swap, and a callback that raises stops nothing."""
    first = await put(store, bucket, b"x,1\n")
    f = follower(moto_endpoint, bucket)
    calls: list[tuple[str | None, str | None]] = []
    async_calls: list[str | None] = []

    @f.on_swap
    def record(old: Snapshot | None, new: Snapshot) -> None:
        calls.append((old.version_id if old else None, new.version_id))

    async def record_async(old: Snapshot | None, new: Snapshot) -> None:
        async_calls.append(new.version_id)

    def broken(old: Snapshot | None, new: Snapshot) -> None:
        raise RuntimeError("callback bug")

    f.on_swap(broken)
    f.on_swap(record_async)
    async with f:
        second = await put(store, bucket, b"x,2\nz,3\n")
        await wait_until(lambda: f.version_id == second, what="the new version swapped in")
        assert dict(f.data) == {"x": "2", "z": "3"}
        assert f.last_error is None
    assert calls == [(None, first), (first, second)]
    assert async_calls == [first, second]


@pytest.mark.parametrize(("parser", "good", "bad", "error"), [
    ("csv", b"x,1\n", b"x,1\ny,2,3\n", "line 2: expected 2 fields"),
    ("csv", b"x,1\n", b"x,\xff\xfe\n", "not UTF-8"),
    ("csv", b"x,1\n", b"x,1\nx,2\n", "duplicate key 'x'"),
    ("json", b'{"x": 1}', b'{"x": 1,', "not valid JSON"),
    ("json", b'{"x": 1}', b"[1, 2]", "expected a JSON object"),
    ("jsonl", b'{"key": "x", "value": 1}\n', b'{"key": "x"}\n', 'exactly "key" and "value"'),
], ids=["csv-3-fields", "csv-not-utf8", "csv-duplicate", "json-truncated", "json-array", "jsonl-no-value"])
async def test_corrupt_version_is_refused_and_last_good_one_served(
    store: Store, bucket: str, moto_endpoint: str, parser: str, good: bytes, bad: bytes, error: str,
) -> None:
    """A corrupt version is refused: the last good version is still served, ``last_error`` says which
    version and why, no swap callback runs, and later checks do not download the corrupt file again.
    A valid version after it is swapped in and clears the error."""
    good_version = await put(store, bucket, good)
    f = follower(moto_endpoint, bucket, parser=parser)
    swaps: list[str | None] = []
    f.on_swap(lambda old, new: swaps.append(new.version_id))
    async with f:
        before = dict(f.data)
        bad_version = await put(store, bucket, bad)
        await wait_until(lambda: error in (f.last_error or ""), what="the corrupt version refused")
        assert bad_version in (f.last_error or "")
        assert f.version_id == good_version
        assert dict(f.data) == before
        downloads, checks = f.downloads, f.checks
        await wait_until(lambda: f.checks >= checks + 3, what="three more checks")
        assert f.downloads == downloads, "the refused version was downloaded again"
        assert f.last_error is not None
        fixed = await put(store, bucket, good)
        await wait_until(lambda: f.version_id == fixed, what="the next valid version")
        assert f.last_error is None
    assert swaps == [good_version, fixed]


async def test_start_falls_back_to_newest_valid_version(store: Store, bucket: str,
                                                        moto_endpoint: str) -> None:
    """Started while the latest version is corrupt, the follower serves the newest valid older version
    (not an older one), reports the refused one in ``last_error``, and takes the next valid version."""
    await put(store, bucket, b"x,1\n")
    newest_good = await put(store, bucket, b"x,2\n")
    await put(store, bucket, b"x,3,extra\n")
    broken = await put(store, bucket, b"\xff")
    async with follower(moto_endpoint, bucket) as f:
        assert f.version_id == newest_good
        assert dict(f.data) == {"x": "2"}
        assert broken in (f.last_error or "")
        assert f"serving version {newest_good}" in (f.last_error or "")
        fixed = await put(store, bucket, b"x,4\n")
        await wait_until(lambda: f.version_id == fixed, what="the next valid version")
        assert f.last_error is None


async def test_start_without_a_valid_version_fails_with_a_clear_error(store: Store, bucket: str,
                                                                      moto_endpoint: str) -> None:
    """start() raises s3stream errors that say what is wrong: a missing key, a missing bucket, a file
    with no valid version, a plugin that does not return a mapping, a bad URL or parser name."""
    with pytest.raises(NotFound, match="has no current version"):
        await follower(moto_endpoint, bucket, key="missing.csv").start()
    with pytest.raises(BucketNotFound, match="does not exist"):
        await follower(moto_endpoint, new_bucket_name("nobucket")).start()
    await put(store, bucket, b"a,b,c\n", key="bad.csv")
    with pytest.raises(InvalidSnapshot, match=r"line 1: expected 2 fields.*no older valid version"):
        await follower(moto_endpoint, bucket, key="bad.csv").start()
    await put(store, bucket, b"k=v\n", key="plugin.txt")
    with pytest.raises(InvalidSnapshot, match="returned a list, not a mapping"):
        await follower(moto_endpoint, bucket, key="plugin.txt",
                       parser="tests.test_snapshot:not_a_mapping").start()
    with pytest.raises(ConfigError, match="expected s3://BUCKET/KEY"):
        Follower(f"s3://{bucket}/prefix/")
    with pytest.raises(ConfigError, match="unknown parser 'xml'"):
        Follower(f"s3://{bucket}/{KEY}", parser="xml")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        Follower(f"s3://{bucket}/{KEY}", parser="no_such_module:parse")


async def test_plugin_parser_is_used(store: Store, bucket: str, moto_endpoint: str) -> None:
    """A ``module:attr`` parser gets the body and its mapping is what is served."""
    await put(store, bucket, b"a=1\nb=2\n", key="plugin.txt")
    plugin = "tests.test_snapshot:upper_keys"
    async with follower(moto_endpoint, bucket, key="plugin.txt", parser=plugin) as f:
        assert dict(f.data) == {"A": "1", "B": "2"}
        assert f.parser_name == "tests.test_snapshot:upper_keys"


async def test_deleted_key_keeps_last_version_served(store: Store, bucket: str, moto_endpoint: str) -> None:
    """When the key's latest version becomes a delete marker the last version is still served with an
    error saying so; a new version is loaded again."""
    await put(store, bucket, b"x,1\n")
    async with follower(moto_endpoint, bucket) as f:
        await store.delete_object(bucket, KEY)
        await wait_until(lambda: "has no current version" in (f.last_error or ""),
                         what="the deletion noticed")
        assert f.get("x") == "1"
        again = await put(store, bucket, b"x,5\n")
        await wait_until(lambda: f.version_id == again, what="the new version")
        assert f.last_error is None


# --- the cheap check and S3 faults, through the proxy ----------------------------------------------


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiobotocore"])
async def test_unchanged_file_is_checked_without_downloading(store: Store, bucket: str, proxy: S3Proxy,
                                                             lean: bool) -> None:
    """While nothing changes every check is a conditional GET answered 304 without a body (on both
    request paths); a new version costs exactly one 200 with the body."""
    await put(store, bucket, b"x,1\n")
    seen: list[tuple[int, int]] = []

    def record(_: web.Request, response: Relayed) -> Relayed:
        seen.append((response.status, len(response.body)))
        return response

    proxy.add(Rule(Transform(record), method="GET", when=lambda r: r.path == f"/{bucket}/{KEY}"))
    async with follower(proxy.endpoint, bucket, lean=lean) as f:
        await wait_until(lambda: f.checks >= 5, what="five checks")
        assert seen[0] == (200, 4)
        assert all(status == 304 and size == 0 for status, size in seen[1:]), seen
        assert f.downloads == 1
        new = await put(store, bucket, b"x,2\n")
        await wait_until(lambda: f.version_id == new, what="the new version")
        checks = f.checks
        await wait_until(lambda: f.checks >= checks + 2, what="two more checks")
    assert [status for status, _ in seen].count(200) == 2, seen
    assert f.downloads == 2


async def test_unreachable_s3_keeps_serving_last_good_version(store: Store, bucket: str,
                                                              proxy: S3Proxy) -> None:
    """With S3 answering 503 and then dropping connections, the follower keeps serving its version and
    says why in ``last_error``; once S3 is back it loads what was written meanwhile and clears it."""
    first = await put(store, bucket, b"x,1\n")
    async with follower(proxy.endpoint, bucket) as f:
        unavailable = proxy.add(Rule(S3Error(503, "ServiceUnavailable"), method="GET"))
        await wait_until(lambda: "ServiceUnavailable" in (f.last_error or ""), what="the 503 reported")
        assert f.version_id == first
        assert f.get("x") == "1"
        proxy.clear()
        proxy.add(Rule(Drop(), method="GET"))
        await wait_until(lambda: "cannot reach" in (f.last_error or ""), what="the dropped connections")
        checked = f.last_checked
        second = await put(store, bucket, b"x,2\n")
        assert f.get("x") == "1"
        assert f.last_checked == checked
        proxy.clear()
        await wait_until(lambda: f.version_id == second, within=30, what="the version written meanwhile")
        assert f.last_error is None
        assert f.get("x") == "2"
    assert unavailable.applied > 0


# --- parsers -----------------------------------------------------------------------------------------


def test_csv_parser_rules() -> None:
    """csv: RFC 4180 quoting (commas, quotes, line breaks in values), blank lines skipped, a BOM
    ignored, values kept verbatim; empty keys, duplicates, bad quoting and empty files refused;
    ``csv-header`` skips its first row."""
    body = '\ufeffa,1\n\n"b,c","say ""hi"""\r\nd,"two\nlines"\ne, spaced \n'.encode()
    assert parse_csv(body) == {"a": "1", "b,c": 'say "hi"', "d": "two\nlines", "e": " spaced "}
    assert parse_csv_header(b"key,value\nx,1\n") == {"x": "1"}
    assert parse_csv_header(b"key,value\n") == {}
    for bad, error in [(b",1\n", "line 1: empty key"), (b"x,1\nx,1\n", "duplicate key 'x' (first at line 1)"),
                       (b'x,"open\n', "line"), (b"", "empty file"),
                       (b"x\n", "expected 2 fields (key, value), got 1"),
                       (b"key,value,extra\nx,1\n", "expected 2 fields")]:
        with pytest.raises(InvalidSnapshot, match=re.escape(error)):
            parse_csv_header(bad) if b"key" in bad else parse_csv(bad)


def test_json_and_jsonl_parser_rules() -> None:
    """json: one object, any JSON values, NaN and duplicates (at any depth) refused; jsonl: one
    {"key", "value"} object per non-blank line, string keys, nothing else."""
    assert parse_json(b'{"a": {"b": [1, {}]}, "c": null}') == {"a": {"b": [1, {}]}, "c": None}
    assert parse_json(b"{}") == {}
    for bad, error in [(b'{"a": NaN}', "NaN"), (b'{"a": {"b": 1, "b": 2}}', "duplicate key 'b'"),
                       (b'"text"', "expected a JSON object"), (b'{"": 1}', "empty key")]:
        with pytest.raises(InvalidSnapshot, match=re.escape(error)):
            parse_json(bad)
    assert parse_jsonl(b'{"key": "a", "value": [1]}\n\n{"key": "b", "value": "x"}') == {"a": [1], "b": "x"}
    for bad, error in [(b'{"key": 1, "value": 2}', '"key" must be a string'),
                       (b'{"key": "a", "value": 1, "extra": 0}', "exactly"),
                       (b'{"key": "a", "value": 1}\n{"key": "a", "value": 2}', "line 2: duplicate key 'a'"),
                       (b"not json", "line 1: not valid JSON")]:
        with pytest.raises(InvalidSnapshot, match=re.escape(error)):
            parse_jsonl(bad)
    assert resolve_parser(parse_json) == ("parse_json", parse_json)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiobotocore"])
async def test_a_version_over_max_mb_is_refused_without_being_read(
    store: Store, bucket: str, moto_endpoint: str, lean: bool
) -> None:
    """A new version larger than ``max_mb`` is never read into memory: the last good version is still
    served and ``last_error`` names the size and the limit."""
    good_version = await put(store, bucket, b"x,1\n")
    async with follower(moto_endpoint, bucket, lean=lean, max_mb=1) as f:
        await put(store, bucket, b"y,2\n" * (600 * 1024))  # 2.4 MB
        await wait_until(lambda: "over the limit of 1048576 bytes" in (f.last_error or ""),
                         what="the large version refused")
        assert f.version_id == good_version
        assert dict(f.data) == {"x": "1"}
