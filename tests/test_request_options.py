"""What every request carries besides its operation, against moto behind a recording proxy: the region
taken from AWS_REGION / AWS_DEFAULT_REGION when the config names none (and the config's when it
does), a User-Agent naming s3stream on both request paths, a producer's SSE-KMS headers stored with
its objects, and the expected bucket owner sent with every request so that a bucket another account
owns is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from s3stream import __version__
from s3stream.config import Settings, build_settings
from s3stream.errors import AccessDenied, ConfigError
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.s3.requestopts import lean_user_agent
from s3stream.s3.store import Store, open_store
from tests.conftest import new_bucket_name
from tests.s3proxy import Rule, S3Error, S3Proxy

OWNER = "123456789012"  # the account moto's buckets belong to
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")


class Recorder:
    """A proxy rule that never fires and keeps each request's method, path and headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, request: web.Request) -> bool:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append((request.method, request.path_qs, headers))
        return False

    def headers(self, name: str) -> list[str | None]:
        return [h.get(name) for _, _, h in self.seen]


@pytest.fixture
def recording(moto_url: str) -> Iterator[tuple[S3Proxy, Recorder]]:
    """moto behind a proxy that records every request."""
    recorder = Recorder()
    with S3Proxy(moto_url, [Rule(S3Error(500, "Unused"), when=recorder)]) as proxy:
        yield proxy, recorder


def _settings(endpoint: str, *, lean: bool = True, environ: dict[str, str] | None = None,
              s3: dict[str, Any] | None = None, **producer: Any) -> Settings:
    return build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path", "lean_path": lean,
                                  **(s3 or {})},
                           "producer": producer}, environ=environ or {})


# --- the region ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "environ", "region"), [
    ({}, {}, "us-east-1"),
    ({}, {"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
    ({}, {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-3"),
    ({"region": "ap-south-1"}, {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "eu-west-1"}, "ap-south-1"),
])
def test_region_comes_from_the_config_then_aws_region_then_aws_default_region(
        file: dict[str, str], environ: dict[str, str], region: str) -> None:
    """``[s3] region`` wins; without it AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1."""
    assert build_settings({"s3": file}, environ=environ).s3.region == region


def test_a_command_line_region_beats_the_environment_and_settings_built_in_code_read_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag's region (``cli``) beats AWS_REGION; ``Settings()`` built in code (the library's default)
    reads the process environment when it is built, not when the module was imported."""
    environ = {"AWS_REGION": "eu-west-3"}
    assert build_settings({}, environ=environ, cli={"s3": {"region": "sa-east-1"}}).s3.region == "sa-east-1"
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    assert Settings().s3.region == "eu-north-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    assert Settings().s3.region == "ca-central-1"


@pytest.mark.parametrize("lean", [True, False])
async def test_requests_are_signed_for_the_region_the_environment_names(
        store: Store, recording: tuple[S3Proxy, Recorder], lean: bool) -> None:
    """With no ``[s3] region``, every request (lean-path PUT and GET, and aiobotocore's HeadBucket) is
    signed for AWS_REGION's region: its credential scope names it."""
    proxy, recorder = recording
    bucket = new_bucket_name("region")
    await store.create_bucket(bucket, versioning=True)
    settings = _settings(proxy.endpoint, lean=lean, environ={"AWS_REGION": "eu-west-3"})
    assert settings.s3.region == "eu-west-3"
    async with open_store(settings.s3) as st:
        await st.check_bucket(bucket)
        await st.put_object(bucket, "k", b"v")
        assert (await st.get_object(bucket, "k")).body == b"v"
    scopes = [SCOPE.search(auth or "") for auth in recorder.headers("authorization")]
    assert {scope.group(1) if scope else None for scope in scopes} == {"eu-west-3"}
    assert len(recorder.seen) >= 3


# --- the User-Agent ------------------------------------------------------------------------------


def test_the_lean_user_agent_is_in_botocores_style_and_starts_with_s3stream() -> None:
    """``s3stream/<version> aiobotocore/<v> md/Botocore#<v> ua/2.1 os/… md/arch#… lang/python#…
    md/pyimpl#…``: tokens without spaces, s3stream's first."""
    agent = lean_user_agent()
    tokens = agent.split(" ")
    assert tokens[0] == f"s3stream/{__version__}"
    assert re.fullmatch(r"aiobotocore/[\w.]+", tokens[1])
    assert re.fullmatch(r"md/Botocore#[\w.]+", tokens[2])
    assert [t.split("/")[0] for t in tokens[3:]] == ["ua", "os", "md", "lang", "md"]
    assert re.fullmatch(r"lang/python#3\.\d+\.\d+\w*", tokens[6])


async def test_every_request_names_s3stream_in_its_user_agent(
        store: Store, recording: tuple[S3Proxy, Recorder]) -> None:
    """The lean path's requests (PUT, GET, listings) carry the lean User-Agent; aiobotocore's
    (HeadBucket, DeleteObject) carry aiobotocore's own with ``s3stream/<version>`` appended."""
    proxy, recorder = recording
    bucket = new_bucket_name("ua")
    await store.create_bucket(bucket, versioning=True)
    async with open_store(_settings(proxy.endpoint).s3) as st:
        await st.check_bucket(bucket)
        await st.put_object(bucket, "a/k", b"v")
        await st.get_object(bucket, "a/k")
        await st.list_versions(bucket, "a/")
        await st.list_objects(bucket, "a/")
        await st.delete_object(bucket, "a/k")
    product = f"s3stream/{__version__}"
    by_method: dict[str, set[str]] = {}
    for method, _, headers in recorder.seen:
        by_method.setdefault(method, set()).add(headers.get("user-agent", ""))
    assert set(by_method) == {"HEAD", "PUT", "GET", "DELETE"}
    assert by_method["PUT"] | by_method["GET"] == {lean_user_agent()}
    for agent in by_method["HEAD"] | by_method["DELETE"]:
        assert agent.startswith("aiobotocore/")
        assert agent.endswith(" " + product)


# --- SSE-KMS -------------------------------------------------------------------------------------


def test_a_kms_key_without_kms_encryption_is_a_readable_config_error() -> None:
    """``sse_kms_key_id`` alone (or with AES256) is refused, naming the field; the headers a producer
    sends follow the settings."""
    with pytest.raises(ConfigError, match=r"sse_kms_key_id: needs sse = \"aws:kms\""):
        build_settings({"producer": {"sse_kms_key_id": "alias/x"}}, environ={})
    with pytest.raises(ConfigError, match=r"producer\.sse"):
        build_settings({"producer": {"sse": "kms"}}, environ={})
    kms = {"sse": "aws:kms", "sse_kms_key_id": "alias/x"}
    producer = build_settings({"producer": kms}, environ={}).producer
    assert producer.encryption_headers() == {"x-amz-server-side-encryption": "aws:kms",
                                             "x-amz-server-side-encryption-aws-kms-key-id": "alias/x"}
    assert build_settings({}, environ={}).producer.encryption_headers() == {}


@pytest.mark.parametrize("lean", [True, False])
async def test_producer_objects_are_stored_with_the_configured_kms_key(
        store: Store, moto_url: str, lean: bool) -> None:
    """``[producer] sse = "aws:kms"`` with a key id: a plain-prefix message, a log-layout topic's
    message and a multipart one are each stored SSE-KMS under that key (HEAD answers both)."""
    bucket = new_bucket_name("sse")
    await store.create_bucket(bucket, versioning=True)
    await create_topic(store, bucket, "logs", shards=1, layout="log")
    key_id = "arn:aws:kms:us-east-1:123456789012:key/0c2a7f4e-2b6b-4d3c-9d44-6a1c2b0c9a11"
    settings = _settings(moto_url, lean=lean, sse="aws:kms", sse_kms_key_id=key_id,
                         multipart_threshold=5 << 20, multipart_part_size=5 << 20)
    async with Producer(settings) as producer:
        written = [
            await producer.publish(f"s3://{bucket}/plain/", b"small", key="k"),
            await producer.publish(f"s3://{bucket}/logs", b"log message"),
            await producer.publish(f"s3://{bucket}/plain/", b"x" * ((5 << 20) + 1), key="big"),
        ]
    for published in written:
        head = await store.client.head_object(Bucket=bucket, Key=published.key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_id), published.key


# --- the expected bucket owner -------------------------------------------------------------------


def _owner_check(request: web.Request) -> bool:
    """What S3 does with x-amz-expected-bucket-owner (moto ignores it): another account: 403."""
    sent = request.headers.get("x-amz-expected-bucket-owner")
    return sent is not None and sent != OWNER


@pytest.mark.parametrize("lean", [True, False])
async def test_the_expected_bucket_owner_is_sent_with_every_request_and_a_mismatch_is_refused(
        store: Store, moto_url: str, lean: bool) -> None:
    """With ``[s3] expected_bucket_owner``, every request of a producer and of the store's reads and
    listings (lean path and aiobotocore alike) carries x-amz-expected-bucket-owner. moto does not
    enforce the header, so the proxy answers as S3 does, 403 AccessDenied when it names another
    account: the producer then fails with AccessDenied and writes nothing; the right owner works."""
    bucket = new_bucket_name("owner")
    await store.create_bucket(bucket, versioning=True)
    recorder = Recorder()
    rules = [Rule(S3Error(500, "Unused"), when=recorder),
             Rule(S3Error(403, "AccessDenied", "Access Denied"), when=_owner_check)]
    with S3Proxy(moto_url, rules) as proxy:
        right = _settings(proxy.endpoint, lean=lean, s3={"expected_bucket_owner": OWNER, "max_attempts": 1})
        async with Producer(right) as producer:
            published = await producer.publish(f"s3://{bucket}/in/", b"v", key="k")
            await producer.store.check_bucket(bucket, require_versioning=True)
            await producer.store.get_object(bucket, published.key)
            await producer.store.list_versions(bucket, "in/")
            await producer.store.list_objects(bucket, "in/")
        assert recorder.seen
        assert set(recorder.headers("x-amz-expected-bucket-owner")) == {OWNER}
        recorder.seen.clear()

        wrong = _settings(proxy.endpoint, lean=lean, s3={"expected_bucket_owner": "210987654321",
                                                         "max_attempts": 1})
        with pytest.raises(AccessDenied, match="denied"):
            async with Producer(wrong) as producer:
                await producer.publish(f"s3://{bucket}/in/", b"w", key="other")
        assert set(recorder.headers("x-amz-expected-bucket-owner")) == {"210987654321"}
    keys = [e.key for e in (await store.list_versions(bucket, "in/")).entries]
    assert keys == ["in/k"]


def test_the_expected_bucket_owner_is_an_account_id() -> None:
    """An expected owner that is not a 12-digit account id is refused at start, naming the field."""
    with pytest.raises(ConfigError, match=r"s3\.expected_bucket_owner"):
        build_settings({"s3": {"expected_bucket_owner": "my-account"}}, environ={})
