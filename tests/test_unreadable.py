"""Objects that cannot be read: archived, encrypted with a key we may not use, or too large.

DESIGN.md promise 7: an object that cannot be read (archived, KMS-denied, SSE-C) is dead-lettered
with the reason and the stream moves on; permanent errors of the store itself (the bucket gone,
access denied to everything) stop the consumer with one clear line. Promise 6: one object's size
never decides memory; a body over ``max_body_mb`` is refused with a dead letter, never read whole.
The answers moto never gives come from :class:`tests.s3proxy.S3Proxy` in front of it.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3stream.consumer import Consumer
from s3stream.errors import AccessDenied, BucketNotFound, ObjectUnreadable, PermanentError
from s3stream.store import Store, classify
from tests.conftest import Recorder, cli_command, running, wait_until
from tests.s3proxy import Rule, S3Error, S3Proxy
from tests.test_cli import child_env
from tests.test_faults import (
    all_idents,
    dead_letters,
    is_get_object,
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


@pytest.mark.parametrize(("answer", "error"), [
    (S3Error(403, "AccessDenied", "Access Denied"), AccessDenied),
    (S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"), AccessDenied),
    (S3Error(404, "NoSuchBucket", "The specified bucket does not exist"), BucketNotFound),
], ids=["access-denied", "bad-key", "bucket-gone"])
async def test_store_wide_refusals_of_reads_stop_the_consumer_and_dead_letter_nothing(
    store: Store, bucket: str, proxy: S3Proxy, answer: S3Error, error: type[Exception],
) -> None:
    """Every GetObject answered with a refusal of the store itself (access denied without a reason
    tied to the object, credentials refused, the bucket gone) stops the consumer with that error
    instead of dead-lettering the topic message by message; nothing is committed past them."""
    written = await put_versions(store, bucket, "w/", 5, 1)
    rule = proxy.add(Rule(answer, method="GET", when=is_get_object))
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
