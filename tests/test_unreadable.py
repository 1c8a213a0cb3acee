"""Objects that cannot be read: archived, encrypted with a key we may not use, or too large.

DESIGN.md promise 7: an object that cannot be read (archived, KMS-denied, SSE-C) is dead-lettered
with the reason and the stream moves on; permanent errors of the store itself (the bucket gone,
access denied to everything) stop the consumer with one clear line. Promise 6: one object's size
never decides memory; a body over ``max_body_mb`` is refused with a dead letter, never read whole.
The answers moto never gives come from :class:`tests.s3proxy.S3Proxy` in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from s3stream.config import build_settings
from s3stream.errors import AccessDenied, BucketNotFound, ConfigError, ObjectUnreadable, PermanentError
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from s3stream.s3.translate import classify
from tests.conftest import Recorder, cli_command, running, wait_until
from tests.s3proxy import Relayed, Rule, S3Error, S3Proxy, Transform
from tests.test_cli import child_env
from tests.test_faults import (
    all_idents,
    dead_letters,
    is_get_object,
    is_list_versions,
    put_versions,
    redelivered_on_restart,
    settings,
)

# What S3 answers a GetObject of an object it cannot give us (the codes and statuses S3 documents;
# the messages as AWS words them).
UNREADABLE = {
    "glacier": S3Error(403, "InvalidObjectState",
                       "The operation is not valid for the object's storage class"),
    "kms-denied": S3Error(403, "AccessDenied",
                          "User: arn:aws:iam::123456789012:user/consumer is not authorized to perform: "
                          "kms:Decrypt on the resource associated with this ciphertext because no "
                          "identity-based policy allows the kms:Decrypt action"),
    "kms-disabled": S3Error(400, "KMS.DisabledException",
                            "arn:aws:kms:us-east-1:123456789012:key/1234abcd is disabled."),
    "sse-c": S3Error(400, "InvalidRequest",
                     "The object was stored using a form of Server Side Encryption. The correct "
                     "parameters must be provided to retrieve the object."),
}


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    """A proxy in front of moto with no rules yet."""
    with S3Proxy(moto_endpoint) as p:
        yield p


def get_of(key: str) -> Any:
    """A rule predicate: a GetObject of ``key``."""
    return lambda request: is_get_object(request) and request.path.endswith(f"/{key}")


async def test_unreadable_objects_are_dead_lettered_with_the_reason_while_the_rest_flows(
    store: Store, bucket: str, proxy: S3Proxy,
) -> None:
    """Four objects whose GetObject S3 refuses for reasons of their own (archived in GLACIER:
    403 InvalidObjectState; a KMS key we may not use: 403 AccessDenied naming kms:Decrypt; a disabled
    KMS key: 400 KMS.DisabledException; SSE-C without the key: 400 InvalidRequest) among 40 others:
    the consumer keeps running, every other version is delivered, each of the four is dead-lettered
    once with S3's code and message as the reason (no body: it was never read), and the checkpoint
    passes them (a restart redelivers nothing)."""
    group = "unreadable-g"
    written = await put_versions(store, bucket, "u/", 20, 2)
    bad: dict[str, str] = {}
    for name, answer in UNREADABLE.items():
        key = f"u/k-{name}"
        _, vid = await store.put_object(bucket, key, b"locked away")
        bad[key] = str(vid)
        proxy.add(Rule(answer, when=get_of(key)))
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/u/", group=group, concurrency=4))
    consumer.register_handler("rec", rec)
    letters: list[dict[str, Any]] = []

    async def lettered() -> bool:
        letters[:] = await dead_letters(store, bucket, group)
        return len(letters) >= len(bad)

    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()) or task.done())
        await wait_until(lambda: task.done() or lettered(), what="four dead letters")
        assert not task.done(), f"consumer died: {task.exception()!r}"
    assert set(rec.idents()) == all_idents(written)
    assert {(dl["key"], dl["version_id"]) for dl in letters} == set(bad.items())
    for dl in letters:
        answer = UNREADABLE[dl["key"].removeprefix("u/k-")]
        assert answer.code in dl["error"]
        assert answer.message[:40] in dl["error"]
        assert dl["error"].startswith("unreadable:")
        assert dl["body_b64"] is None
        assert "ObjectUnreadable" in dl["traceback"]
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "u/", group=group) == []


@pytest.mark.parametrize("lean_path", [True, False], ids=["lean", "aiobotocore"])
async def test_with_dead_letters_off_an_unreadable_object_stops_the_consumer_without_passing_it(
    store: Store, bucket: str, proxy: S3Proxy, lean_path: bool,
) -> None:
    """With ``dead_letters = false`` an archived object stops the consumer with one error naming the
    object and the reason, on either request path; nothing is committed past it: once it can be read,
    a restart delivers it."""
    key = "n/k-archived"
    _, vid = await store.put_object(bucket, key, b"archived")
    proxy.add(Rule(UNREADABLE["glacier"], when=get_of(key)))
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/n/", group="strict", dead_letters=False,
                                 s3={"lean_path": lean_path}))
    consumer.register_handler("rec", Recorder())
    with pytest.raises(ObjectUnreadable) as info:
        async with asyncio.timeout(30):
            await consumer.run()
    text = str(info.value)
    assert "\n" not in text
    assert f"s3://{bucket}/{key}" in text
    assert "InvalidObjectState" in text
    assert await dead_letters(store, bucket, "strict") == []
    proxy.clear()
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "n/", group="strict") == [
        (key, str(vid))]


async def test_cli_with_dead_letters_off_stops_on_an_unreadable_object_with_one_line(
    store: Store, bucket: str, proxy: S3Proxy, tmp_path: Path,
) -> None:
    """``s3stream consume`` with ``dead_letters = false`` on an object in GLACIER exits 2 with one
    ``s3stream: error:`` line naming the object and the reason, and no traceback."""
    key = "c/k-archived"
    await store.put_object(bucket, key, b"archived")
    proxy.add(Rule(UNREADABLE["glacier"], when=get_of(key)))
    cfg = tmp_path / "strict.toml"
    cfg.write_text('[s3]\naddressing_style = "path"\n[consumer]\ndead_letters = false\n'
                   "poll_interval = 0.05\nmax_poll_interval = 0.2\n")
    result = await asyncio.to_thread(
        subprocess.run,
        cli_command("consume", f"s3://{bucket}/c/", "--config", str(cfg), "--endpoint-url", proxy.endpoint),
        env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("s3stream: error:")]
    assert len(errors) == 1, result.stderr
    assert f"s3://{bucket}/{key}" in errors[0]
    assert "InvalidObjectState" in errors[0]


@pytest.mark.parametrize(("answer", "error", "requests"), [
    (S3Error(403, "AccessDenied", "Access Denied"), AccessDenied, is_get_object),
    (S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"), AccessDenied,
     is_get_object),
    (S3Error(404, "NoSuchBucket", "The specified bucket does not exist"), BucketNotFound, is_get_object),
    (S3Error(403, "AccessDenied", "Access Denied"), AccessDenied, is_list_versions),
], ids=["read-denied", "read-bad-key", "read-bucket-gone", "listing-denied"])
async def test_store_wide_refusals_stop_the_consumer_and_dead_letter_nothing(
    store: Store, bucket: str, proxy: S3Proxy, answer: S3Error, error: type[Exception],
    requests: Callable[[web.Request], bool],
) -> None:
    """Every GetObject (or every listing) answered with a refusal of the store itself (access denied
    without a reason tied to the object, credentials refused, the bucket gone) stops the consumer with
    that error instead of dead-lettering the topic message by message; nothing is committed past
    them: once the store answers again, a restart delivers everything."""
    written = await put_versions(store, bucket, "w/", 5, 1)
    rule = proxy.add(Rule(answer, method="GET", when=requests))
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/w/", group="wide"))
    consumer.register_handler("rec", Recorder())
    with pytest.raises(error):
        async with asyncio.timeout(30):
            await consumer.run()
    assert rule.applied >= 1
    assert await dead_letters(store, bucket, "wide") == []
    proxy.clear()
    again = await redelivered_on_restart(store, proxy.endpoint, bucket, "w/", group="wide")
    assert set(again) == all_idents(written)


@pytest.mark.parametrize(("code", "status", "message", "operation", "expected"), [
    ("InvalidObjectState", 403, "The operation is not valid for the object's storage class", "GetObject",
     ObjectUnreadable),
    ("AccessDenied", 403, UNREADABLE["kms-denied"].message, "GetObject", ObjectUnreadable),
    ("AccessDenied", 403, "The ciphertext refers to a customer master key that does not exist",
     "GetObject", ObjectUnreadable),
    ("KMS.KMSInvalidStateException", 400, "pending deletion", "GetObject", ObjectUnreadable),
    ("InvalidRequest", 400, UNREADABLE["sse-c"].message, "GetObject", ObjectUnreadable),
    ("AccessDenied", 403, "Access Denied", "GetObject", AccessDenied),
    ("ExpiredToken", 400, "The provided token has expired.", "GetObject", AccessDenied),
    ("AccessDenied", 403, "kms:Decrypt", "ListObjectVersions", AccessDenied),
    ("InvalidObjectState", 403, "archived", "PutObject", AccessDenied),
    ("InvalidArgument", 400, "Invalid version id specified", "GetObject", PermanentError),
])
def test_which_read_refusals_are_about_the_object(code: str, status: int, message: str, operation: str,
                                                  expected: type[Exception]) -> None:
    """Only a GetObject refused for a reason of that object (archived, its KMS key, SSE-C) is
    ``ObjectUnreadable``; refusals of the credentials, of listings or of everything stay what they
    were, so they stop the consumer."""
    error = classify(code, status, message, operation, "bkt")
    assert type(error) is expected


# --- bodies over max_body_mb ------------------------------------------------------------------------

MIB = 1 << 20


class EndlessBodies(S3Proxy):
    """The proxy, except that a GetObject of a key ending in ``-endless`` is answered 200 with a body
    sent in chunks without a ``Content-Length``, 64 MiB in all (endless, as far as a 1 MiB limit can
    tell); ``sent`` counts the bytes that went out."""

    sent = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not (is_get_object(request) and request.path.endswith("-endless")):
            return await super()._handle(request)
        reply = web.StreamResponse(status=200, headers={
            "ETag": '"0123456789abcdef0123456789abcdef"', "Last-Modified": "Mon, 23 Nov 2026 14:46:00 GMT",
            "x-amz-version-id": request.query.get("versionId", "null")})
        reply.enable_chunked_encoding()
        await reply.prepare(request)
        chunk = b"x" * (256 << 10)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(64 * MIB // len(chunk)):
                await reply.write(chunk)
                self.sent += len(chunk)
            await reply.write_eof()
        return reply


def understate_sizes(_request: web.Request, response: Relayed) -> Relayed:
    """A listing whose every ``<Size>`` says 10 bytes."""
    return replace(response, body=re.sub(rb"<Size>\d+</Size>", b"<Size>10</Size>", response.body))


async def lettered_keys(store: Store, bucket: str, group: str, count: int) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = []

    async def enough() -> bool:
        letters[:] = await dead_letters(store, bucket, group)
        return len(letters) >= count

    await wait_until(enough, what=f"{count} dead letter(s)")
    return letters


async def test_an_object_over_max_body_mb_is_dead_lettered_without_being_fetched(
    store: Store, bucket: str, proxy: S3Proxy,
) -> None:
    """With ``max_body_mb = 1`` an object of 3 MiB is never fetched (its listed size is over the
    limit): it is dead-lettered with its size and the limit as the reason while 10 small objects flow,
    and the checkpoint passes it."""
    group = "big-g"
    written = await put_versions(store, bucket, "b/", 10, 1)
    key = "b/k-big"
    _, vid = await store.put_object(bucket, key, b"y" * (3 * MIB))
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/b/", group=group, max_body_mb=1))
    consumer.register_handler("rec", rec)
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
        [letter] = await lettered_keys(store, bucket, group, 1)
        assert not task.done()
    assert set(rec.idents()) == all_idents(written)
    assert (letter["key"], letter["version_id"]) == (key, str(vid))
    assert f"{3 * MIB} bytes" in letter["error"]
    assert "max_body_mb = 1" in letter["error"]
    assert letter["body_b64"] is None
    assert not [r for r in proxy.requests if r[0] == "GET" and r[1].startswith(f"/{bucket}/{key}")]
    assert await redelivered_on_restart(store, proxy.endpoint, bucket, "b/", group=group) == []


@pytest.mark.parametrize("lean_path", [True, False], ids=["lean", "aiobotocore"])
async def test_a_listing_that_understates_the_size_cannot_bypass_the_limit(
    store: Store, bucket: str, proxy: S3Proxy, lean_path: bool,
) -> None:
    """Every listing claims 10-byte objects; the 3 MiB object's GetObject answer declares its real
    ``Content-Length``, which is checked before its body is read: it is dead-lettered with its size,
    never handed to the handler, on either request path."""
    group = "lying-g"
    proxy.add(Rule(Transform(understate_sizes), method="GET", when=lambda r: "versions" in r.query))
    written = await put_versions(store, bucket, "l/", 5, 1)
    key = "l/k-big"
    await store.put_object(bucket, key, b"y" * (3 * MIB))
    rec = Recorder()
    consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/l/", group=group, max_body_mb=1,
                                 s3={"lean_path": lean_path}))
    consumer.register_handler("rec", rec)
    async with running(consumer) as task:
        await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
        [letter] = await lettered_keys(store, bucket, group, 1)
        assert not task.done()
    assert key not in {m.key for m in rec.messages}
    assert letter["key"] == key
    assert f"{3 * MIB} bytes" in letter["error"]
    assert "max_body_mb = 1" in letter["error"]


@pytest.mark.parametrize("lean_path", [True, False], ids=["lean", "aiobotocore"])
async def test_a_body_without_content_length_is_cut_off_at_the_limit(
    store: Store, bucket: str, moto_endpoint: str, lean_path: bool,
) -> None:
    """A GetObject answered with a chunked body and no ``Content-Length`` (64 MiB, as far as a 1 MiB
    limit can tell endless) is read only until it passes ``max_body_mb``: the consumer stops reading
    after a few MiB, dead-letters it as larger than the limit, never hands it to the handler, and the
    rest flows."""
    group = "endless-g"
    written = await put_versions(store, bucket, "e/", 5, 1)
    await store.put_object(bucket, "e/k-endless", b"small, as listed")
    with EndlessBodies(moto_endpoint) as proxy:
        rec = Recorder()
        consumer = Consumer(settings(proxy.endpoint, f"s3://{bucket}/e/", group=group, max_body_mb=1,
                                     s3={"lean_path": lean_path}))
        consumer.register_handler("rec", rec)
        async with running(consumer) as task:
            await rec.wait_for(lambda: all_idents(written) <= set(rec.idents()))
            [letter] = await lettered_keys(store, bucket, group, 1)
            assert not task.done()
        assert proxy.sent < 16 * MIB, f"{proxy.sent} bytes were sent before the reader let go"
    assert "e/k-endless" not in {m.key for m in rec.messages}
    assert letter["key"] == "e/k-endless"
    assert f"more than {MIB} bytes" in letter["error"]
    assert "max_body_mb = 1" in letter["error"]


def test_max_body_mb_is_validated() -> None:
    """``consumer.max_body_mb`` is a whole number of MiB above 0 (default 256); a bad value names the
    field."""
    assert build_settings({}).consumer.max_body_mb == 256
    with pytest.raises(ConfigError, match=r"consumer\.max_body_mb"):
        build_settings({"consumer": {"max_body_mb": 0}})
