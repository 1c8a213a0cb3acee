"""``s3stream doctor``, the requests: each probe writes and reads a few small objects under a scratch
prefix, ``_s3stream/doctor/<random>/`` at the bucket's root (never under a consumed prefix), and
every object and version written there is deleted afterwards, also when a probe fails.

A consumer with consumer-group leases calls :func:`require_conditional_writes` at start: the two
conditional-write probes run once per bucket and their verdict is kept in
``_s3stream/doctor/conditional-writes.json``, so later starts cost one GET. A verdict other than
``yes`` is probed again at the next start (the store may have been fixed); delete the object, or
run ``s3stream doctor``, to probe a store again after it changed.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime

import orjson

from s3stream import errors
from s3stream.layouts.topics import CONTROL_PREFIX, is_directory_bucket
from s3stream.message import Entry
from s3stream.ops.doctor import (
    CLOCK_SKEW,
    CLOCK_TOLERANCE_S,
    DELETE_MARKERS,
    DIRECTORY_BUCKET,
    IF_MATCH,
    IF_NONE_MATCH,
    LIST_ORDER,
    VERSION_PAGING,
    VERSIONING,
    Result,
    conditional_writes,
)
from s3stream.s3.store import Store

DOCTOR_PREFIX = f"{CONTROL_PREFIX}/doctor/"
CACHE_KEY = f"{DOCTOR_PREFIX}conditional-writes.json"
MAX_PAGES = 64  # a server whose markers never move the listing on is caught, not followed forever
_SETUP_ERRORS = (errors.AccessDenied, errors.BucketNotFound, errors.EndpointUnreachable)


class ConditionalWritesIgnored(errors.PermanentError):
    """The store accepts writes whose If-None-Match / If-Match condition fails: leases are unsafe."""


def scratch_prefix() -> str:
    """A fresh scratch prefix for one run of the probes."""
    return f"{DOCTOR_PREFIX}{secrets.token_hex(6)}/"


async def _guarded(feature: str, probe: Awaitable[Result]) -> Result:
    """The probe's result, or ``error`` when the store failed it; setup errors (credentials, bucket,
    endpoint) are raised: they are the run's answer, not a row's."""
    try:
        return await probe
    except _SETUP_ERRORS:
        raise
    except errors.StoreError as exc:
        return Result(feature, "error", str(exc))


async def _guarded_pair(probe: Awaitable[tuple[Result, Result]]) -> tuple[Result, Result]:
    """:func:`_guarded` for the two version-listing rows, probed together."""
    try:
        return await probe
    except _SETUP_ERRORS:
        raise
    except errors.StoreError as exc:
        return Result(VERSION_PAGING, "error", str(exc)), Result(DELETE_MARKERS, "error", str(exc))


async def run_probes(store: Store, bucket: str) -> list[Result]:
    """Every probe, in table order, under a fresh scratch prefix that is removed afterwards."""
    base = scratch_prefix()
    directory = is_directory_bucket(bucket)
    try:
        clock = await _guarded(CLOCK_SKEW, probe_clock(store, bucket, base))
        versioning = await _guarded(VERSIONING, probe_versioning(store, bucket, directory))
        if versioning.outcome == "yes":
            paging, markers = await _guarded_pair(probe_versions(store, bucket, base))
        else:
            why = "versioning is not enabled" if versioning.outcome == "no" else "versioning unknown"
            paging = Result(VERSION_PAGING, "n.a.", why)
            markers = Result(DELETE_MARKERS, "n.a.", why)
        absent = await _guarded(IF_NONE_MATCH, probe_if_none_match(store, bucket, base))
        cas = await _guarded(IF_MATCH, probe_if_match(store, bucket, base))
        order = await _guarded(LIST_ORDER, probe_list_order(store, bucket, base))
        express = await _guarded(DIRECTORY_BUCKET, probe_directory(store, bucket, order))
    finally:
        await cleanup(store, bucket, base, versioned=not directory)
    return [versioning, paging, markers, absent, cas, order, express, clock]


async def probe_clock(store: Store, bucket: str, base: str) -> Result:
    """The server's ``Date`` against this host's clock, from one small listing."""
    before = time.time()
    page = await store.list_objects(bucket, base, max_keys=1)
    after = time.time()
    if not page.server_time_ms:
        return Result(CLOCK_SKEW, "error", "the answer had no Date header")
    # Date has whole seconds: the server's time lies in [Date, Date + 1 s) when it answered.
    skew_s = (page.server_time_ms + 500) / 1000 - (before + after) / 2
    margin = 0.5 + (after - before) / 2
    side = "ahead of" if skew_s >= 0 else "behind"
    detail = f"server is {abs(skew_s):.1f} s {side} this host (±{margin:.1f} s)"
    return Result(CLOCK_SKEW, "yes" if abs(skew_s) - margin <= CLOCK_TOLERANCE_S else "no", detail)


async def probe_versioning(store: Store, bucket: str, directory: bool) -> Result:
    """GetBucketVersioning: ``yes`` only when Enabled (Suspended keeps one ``null`` version a key)."""
    if directory:
        return Result(VERSIONING, "no", "none (directory buckets have no versioning)")
    status = await store.versioning_status(bucket)
    if status == "Enabled":
        return Result(VERSIONING, "yes", "Enabled")
    return Result(VERSIONING, "no", status or "never enabled")


async def probe_versions(store: Store, bucket: str, base: str) -> tuple[Result, Result]:
    """Three versions of two keys and a delete marker on the first, listed one entry a page with
    key and version-id markers: every version once, keys ascending, each key's newest first."""
    prefix = f"{base}versions/"
    written: dict[str, list[str]] = {}
    for name in ("a", "b"):
        key = prefix + name
        written[key] = [str((await store.put_object(bucket, key, f"{name}{i}".encode()))[1])
                        for i in range(3)]
    marker = await store.delete_object(bucket, prefix + "a")
    entries, pages = await list_one_by_one(store, bucket, prefix)
    return (check_paging(entries, written, pages),
            check_markers(entries, prefix + "a", str(marker), written[prefix + "a"]))


async def list_one_by_one(store: Store, bucket: str, prefix: str) -> tuple[list[Entry], int]:
    """Every version and delete marker under ``prefix``, paged with MaxKeys=1; and the page count."""
    entries: list[Entry] = []
    key_marker: str | None = None
    version_marker: str | None = None
    for pages in range(1, MAX_PAGES + 1):
        page = await store.list_versions(bucket, prefix, key_marker=key_marker,
                                         version_id_marker=version_marker, max_keys=1)
        entries += page.entries
        if not page.truncated:
            return entries, pages
        if (page.next_key_marker, page.next_version_id_marker) == (key_marker, version_marker):
            break
        key_marker, version_marker = page.next_key_marker, page.next_version_id_marker
    return entries, MAX_PAGES + 1


def check_paging(entries: list[Entry], written: dict[str, list[str]], pages: int) -> Result:
    """``yes`` when the listed versions (delete markers aside) are exactly ``written``, each key's
    newest first and keys ascending."""
    if pages > MAX_PAGES:
        return Result(VERSION_PAGING, "no", f"the markers did not move the listing on ({MAX_PAGES} pages)")
    listed = [(e.key, e.version_id) for e in entries if not e.deleted]
    expected = [(key, vid) for key in sorted(written) for vid in reversed(written[key])]
    total = len(expected)
    if len(set(listed)) != len(listed):
        return Result(VERSION_PAGING, "no", f"{len(listed) - len(set(listed))} version(s) listed twice")
    if set(listed) != set(expected):
        missing = len(set(expected) - set(listed))
        return Result(VERSION_PAGING, "no", f"{missing} of {total} versions missing")
    if listed != expected:
        return Result(VERSION_PAGING, "no", "every version listed once, but not keys ascending, newest first")
    return Result(VERSION_PAGING, "yes", f"{total} versions of 2 keys in {pages} pages of MaxKeys=1, "
                                         "each once, in order")


def check_markers(entries: list[Entry], key: str, marker: str, versions: list[str]) -> Result:
    """``yes`` when the delete marker of ``key`` is listed exactly once."""
    found = [e for e in entries if e.deleted]
    if not found:
        return Result(DELETE_MARKERS, "no", "the delete marker was not listed")
    if len(found) > 1 or found[0].key != key or found[0].version_id != marker:
        return Result(DELETE_MARKERS, "no", f"{len(found)} delete markers listed, 1 expected")
    ids = [e.version_id for e in entries if e.key == key]
    first = ids and ids[0] == marker
    where = "before the versions it hides" if first else "after the versions it hides"
    return Result(DELETE_MARKERS, "yes", f"listed once, {where} ({len(versions)} versions)")


async def probe_if_none_match(store: Store, bucket: str, base: str) -> Result:
    """Create with ``If-None-Match: *`` twice: the second must be refused with 412 and change nothing."""
    key = f"{base}conditional/absent"
    try:
        await store.put_object(bucket, key, b"first", if_none_match=True)
    except errors.PreconditionFailed:
        return Result(IF_NONE_MATCH, "no", "refused the first put-if-absent of a new key (412)")
    except errors.PermanentError as exc:
        return Result(IF_NONE_MATCH, "no", f"the header is not supported ({exc})")
    try:
        await store.put_object(bucket, key, b"second", if_none_match=True)
    except errors.PreconditionFailed:
        kept = (await store.get_object(bucket, key)).body == b"first"
        return (Result(IF_NONE_MATCH, "yes", "a second put-if-absent was refused (412)") if kept else
                Result(IF_NONE_MATCH, "no", "answered 412 but overwrote the object"))
    except errors.PermanentError as exc:
        return Result(IF_NONE_MATCH, "no", f"the second put-if-absent failed otherwise ({exc})")
    return Result(IF_NONE_MATCH, "no", "a second put-if-absent was accepted: the header is ignored")


async def probe_if_match(store: Store, bucket: str, base: str) -> Result:
    """Overwrite with ``If-Match`` on a stale ETag (must be refused with 412, changing nothing),
    then on the current one (must succeed)."""
    key = f"{base}conditional/swap"
    stale, _ = await store.put_object(bucket, key, b"one")
    current, _ = await store.put_object(bucket, key, b"two")
    try:
        await store.put_object(bucket, key, b"three", if_match=stale)
    except errors.PreconditionFailed:
        if (await store.get_object(bucket, key)).body != b"two":
            return Result(IF_MATCH, "no", "answered 412 to a stale ETag but overwrote the object")
    except errors.PermanentError as exc:
        return Result(IF_MATCH, "no", f"the header is not supported ({exc})")
    else:
        return Result(IF_MATCH, "no", "a write with a stale ETag was accepted: the header is ignored")
    try:
        await store.put_object(bucket, key, b"four", if_match=current)
    except errors.PreconditionFailed:
        return Result(IF_MATCH, "no", "a stale ETag was refused, but so was the current one")
    return Result(IF_MATCH, "yes", "a stale ETag was refused (412), the current one accepted")


ORDER_KEYS = ("k-2", "k-0", "k-10", "k-B", "k-1", "k-b")  # written in this order, listed sorted


async def probe_list_order(store: Store, bucket: str, base: str) -> Result:
    """Six keys written out of order, listed two a page: key order (UTF-8 bytes) across pages, and
    from ``StartAfter``."""
    prefix = f"{base}order/"
    for name in ORDER_KEYS:
        await store.put_object(bucket, prefix + name, b"")
    listed: list[str] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        page = await store.list_objects(bucket, prefix, token=token, max_keys=2)
        listed += [e.key[len(prefix):] for e in page.entries]
        if (token := page.next_token) is None:
            break
    expected = sorted(ORDER_KEYS)
    if sorted(listed) != expected:
        return Result(LIST_ORDER, "no", f"paging returned {listed}, not each of {expected} once")
    ordered = listed == expected
    after = await _start_after(store, bucket, prefix, "k-1")
    honoured = after == expected[expected.index("k-1") + 1:]
    start = ("StartAfter honoured" if honoured else f"StartAfter not honoured ({after})"
             if isinstance(after, list) else f"StartAfter refused ({after})")
    if ordered:
        return Result(LIST_ORDER, "yes" if honoured else "no", f"keys in byte order across pages; {start}")
    return Result(LIST_ORDER, "no", f"keys not in byte order ({listed}); {start}")


async def _start_after(store: Store, bucket: str, prefix: str, name: str) -> list[str] | str:
    """The names listed after ``name`` with ListObjectsV2 StartAfter (a parameter s3stream itself
    never sends), or the error's text."""
    try:
        resp = await store._call("ListObjectsV2", store.client.list_objects_v2, Bucket=bucket,
                                 Prefix=prefix, StartAfter=prefix + name)
    except _SETUP_ERRORS:
        raise
    except errors.StoreError as exc:
        return exc.code or str(exc)
    return [str(o["Key"])[len(prefix):] for o in resp.get("Contents", [])]


async def probe_directory(store: Store, bucket: str, order: Result) -> Result:
    """In a directory bucket: CreateSession works; the listing order is reported, not relied on."""
    if not is_directory_bucket(bucket):
        return Result(DIRECTORY_BUCKET, "n.a.", "a general purpose bucket")
    await store._call("CreateSession", store.client.create_session, Bucket=bucket)
    seen = "in key order this time (not promised)" if order.outcome == "yes" else "not in key order"
    return Result(DIRECTORY_BUCKET, "yes", f"CreateSession works; listing {seen}; log layout only")


async def cleanup(store: Store, bucket: str, base: str, *, versioned: bool) -> None:
    """Delete every object, version and delete marker under ``base``: listed with ListObjectVersions
    unless ``versioned`` is false (directory buckets have none) or it fails, else with ListObjectsV2.
    Best effort: a failure here must not hide the probes' results; what is left lies under
    ``_s3stream/doctor/``."""
    with contextlib.suppress(errors.StoreError):
        idents = await _scratch_versions(store, bucket, base) if versioned else None
        if idents is None:
            idents = [(e.key, None) for e in (await store.list_all_objects(bucket, base))[0]]
        for start in range(0, len(idents), 1000):
            await store.delete_versions(bucket, idents[start:start + 1000])


async def _scratch_versions(store: Store, bucket: str, base: str) -> list[tuple[str, str | None]] | None:
    """Every version and delete marker under ``base``; None when they cannot be listed."""
    idents: list[tuple[str, str | None]] = []
    key_marker: str | None = None
    version_marker: str | None = None
    try:
        while True:
            page = await store.list_versions(bucket, base, key_marker=key_marker,
                                             version_id_marker=version_marker)
            idents += [(e.key, e.version_id) for e in page.entries]
            if not page.truncated:
                return idents
            key_marker, version_marker = page.next_key_marker, page.next_version_id_marker
    except errors.StoreError:
        return None


# --- the consumer's check at start ---------------------------------------------------------------


async def probe_conditional(store: Store, bucket: str) -> Result:
    """Both conditional-write probes under a fresh scratch prefix, as one verdict."""
    base = scratch_prefix()
    directory = is_directory_bucket(bucket)
    try:
        results = [await _guarded(IF_NONE_MATCH, probe_if_none_match(store, bucket, base)),
                   await _guarded(IF_MATCH, probe_if_match(store, bucket, base))]
    finally:
        await cleanup(store, bucket, base, versioned=not directory)
    return conditional_writes(results)


async def read_cached(store: Store, bucket: str) -> Result | None:
    """The cached conditional-write verdict of ``bucket`` (one GET), or None when there is none."""
    try:
        doc = orjson.loads((await store.get_object(bucket, CACHE_KEY)).body)
    except (errors.NotFound, orjson.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("result") not in ("yes", "no"):
        return None
    return Result("conditional-writes", doc["result"], str(doc.get("detail", "")))


async def write_cache(store: Store, bucket: str, result: Result) -> None:
    """Keep a definite (``yes``/``no``) conditional-write verdict for the next consumer start."""
    if result.outcome not in ("yes", "no"):
        return
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    await store.put_object(bucket, CACHE_KEY, orjson.dumps(
        {"format": 1, "result": result.outcome, "detail": result.detail, "probed": now}),
        content_type="application/json")


async def require_conditional_writes(store: Store, buckets: Iterable[str]) -> None:
    """Refuse to go on when a bucket's store ignores If-None-Match or If-Match (consumer-group
    leases would not be exclusive). One GET per bucket once a ``yes`` is cached."""
    for bucket in sorted(set(buckets)):
        cached = await read_cached(store, bucket)
        if cached is not None and cached.outcome == "yes":
            continue
        result = await probe_conditional(store, bucket)
        await write_cache(store, bucket, result)
        if result.outcome != "yes":
            raise ConditionalWritesIgnored(
                f"bucket {bucket!r}: the store does not enforce conditional writes ({result.detail}); "
                "consumer-group leases need them, so this member will not start (see `s3stream doctor`)",
                code="ConditionalWritesIgnored", operation="PutObject")
