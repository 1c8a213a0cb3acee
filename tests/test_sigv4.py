"""The lean SigV4 signer against botocore's own: same request, same instant, same signature."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3ExpressAuth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from s3stream.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Credentials, Signer, canonical_query, quote_path

NOW = datetime(2026, 11, 23, 17, 30, 5, tzinfo=UTC)

KEYS = [
    "topic/0a/plain-key",
    "topic/0a/with space+plus=equals",
    "topic/ff/percent%2F and ~tilde",
    "topic/01/unicodé/ключ/🙂",
    "topic/01/a&b?c#d",
    "trailing/slash/",
]


def botocore_headers(method: str, url: str, headers: dict[str, str], body: bytes,
                     creds: BotoCredentials, service: str, region: str,
                     payload_hash: str = EMPTY_SHA256) -> dict[str, str]:
    """Sign the same request with botocore at ``NOW`` and return its headers, lower-cased."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    if payload_hash == UNSIGNED_PAYLOAD:
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    auth: S3SigV4Auth
    if service == "s3express":
        auth = S3ExpressAuth(creds, service, region, identity_cache=None)
    else:
        auth = S3SigV4Auth(creds, service, region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth.add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


def lean_headers(method: str, url: str, headers: dict[str, str], payload_hash: str,
                 creds: Credentials, service: str, region: str) -> dict[str, str]:
    parts = urlsplit(url)
    return Signer(region, service).sign(
        method, parts.netloc, parts.path, parts.query, {k.lower(): v for k, v in headers.items()},
        payload_hash, creds, NOW,
    )


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("base", ["http://127.0.0.1:9000/bucket/", "https://bucket.s3.us-west-2.amazonaws.com/"])
def test_get_signature_matches_botocore(key: str, base: str) -> None:
    """A GET of any key, path- or virtual-host style, with a version id, signs exactly as botocore."""
    query = canonical_query({"versionId": "3/L4kqtJl40Nr8X8gdRQBpUMLUo+Q=="})
    url = base + quote_path(key) + "?" + query
    boto = botocore_headers("GET", url, {}, b"", BotoCredentials("AKID", "secret"), "s3", "us-west-2")
    lean = lean_headers("GET", url, {}, EMPTY_SHA256, Credentials("AKID", "secret"), "s3", "us-west-2")
    assert lean["authorization"] == boto["authorization"]
    assert lean["x-amz-content-sha256"] == boto["x-amz-content-sha256"]


def test_listing_query_and_session_token_match_botocore() -> None:
    """A listing with several query parameters (sorted, encoded) and temporary credentials."""
    params = {"list-type": "2", "prefix": "topic/0a/20261123 1730/", "continuation-token": "a+b/c==",
              "encoding-type": "url", "max-keys": "1000"}
    url = "http://127.0.0.1:9000/bucket?" + canonical_query(params)
    boto = botocore_headers("GET", url, {}, b"", BotoCredentials("AKID", "secret", "tok/en=="), "s3",
                            "eu-central-1")
    lean = lean_headers("GET", url, {}, EMPTY_SHA256, Credentials("AKID", "secret", "tok/en=="), "s3",
                        "eu-central-1")
    assert lean["x-amz-security-token"] == "tok/en=="
    assert lean["authorization"] == boto["authorization"]


def test_put_with_headers_matches_botocore() -> None:
    """A PUT with conditional, metadata and content headers, payload hashed over HTTP, unsigned over HTTPS."""
    body = b'{"hello": "world"}\n'
    headers = {"If-None-Match": "*", "Content-Type": "application/x-ndjson", "Content-Encoding": "zstd",
               "x-amz-meta-s3stream-key": "user%2F42", "Content-Length": str(len(body))}
    for base, payload in [("http://127.0.0.1:9000/bucket/", hashlib.sha256(body).hexdigest()),
                          ("https://bucket.s3.amazonaws.com/", UNSIGNED_PAYLOAD)]:
        url = base + quote_path("topic/0a/202611231730/1764-p-1-x")
        boto = botocore_headers("PUT", url, headers, body, BotoCredentials("AKID", "secret"), "s3",
                                "us-east-1", payload)
        lean = lean_headers("PUT", url, headers, payload, Credentials("AKID", "secret"), "s3", "us-east-1")
        assert lean["x-amz-content-sha256"] == boto["x-amz-content-sha256"]
        assert lean["authorization"] == boto["authorization"]


def test_s3express_session_signature_matches_botocore() -> None:
    """S3 Express session credentials: service ``s3express``, token in ``x-amz-s3session-token``."""
    url = "https://bench--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com/" + quote_path("t/0a/k")
    creds = BotoCredentials("ASIASESSION", "sessionsecret", "sessiontoken")
    boto = botocore_headers("GET", url, {}, b"", creds, "s3express", "us-east-1")
    lean = lean_headers("GET", url, {}, EMPTY_SHA256, Credentials("ASIASESSION", "sessionsecret",
                                                                   "sessiontoken"),
                        "s3express", "us-east-1")
    assert "x-amz-security-token" not in lean
    assert lean["x-amz-s3session-token"] == boto["x-amz-s3session-token"] == "sessiontoken"
    assert lean["authorization"] == boto["authorization"]


def test_signing_key_cached_per_day() -> None:
    """The derived key is reused within a day and derived anew on the next (signatures still differ)."""
    signer = Signer("us-east-1")
    creds = Credentials("AKID", "secret")
    one = signer.sign("GET", "h", "/b/k", "", {}, EMPTY_SHA256, creds, NOW)["authorization"]
    two = signer.sign("GET", "h", "/b/k", "", {}, EMPTY_SHA256, creds, NOW)["authorization"]
    later = signer.sign("GET", "h", "/b/k", "", {}, EMPTY_SHA256, creds,
                        NOW.replace(day=24))["authorization"]
    assert one == two != later
    assert len(signer._keys) == 2
