"""Signature checking for the S3 emulator's ``--verify-signatures``: every request's SigV4
``Authorization`` is recomputed with botocore's own signer classes (independently of s3stream's code),
for the long-term test credentials and for the S3 Express sessions CreateSession issued."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections import Counter
from typing import Any
from urllib.parse import quote, unquote

from botocore.auth import S3ExpressAuth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy

from benchmarks.emulator.state import S3Error, Session

# Long-term credentials accepted with --verify-signatures: access key -> secret (the tests' ones).
CREDENTIALS = {"testing": "testing"}

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^/\s]+)/(\d{8})/([^/\s]+)/([^/\s]+)/aws4_request\s*,\s*"
    r"SignedHeaders=([a-z0-9;_.-]+)\s*,\s*Signature=([0-9a-f]{64})"
)
_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
_MAX_SKEW = 15 * 60


class _SignedAsNamed:
    """Sign exactly the headers the request names in ``SignedHeaders``, as the client sent them."""

    def headers_to_sign(self, request: Any) -> Any:
        return request.context["signed_headers"]


class _NamedS3SigV4(_SignedAsNamed, S3SigV4Auth):  # type: ignore[misc]
    pass


class _NamedS3Express(_SignedAsNamed, S3ExpressAuth):  # type: ignore[misc]
    pass


class SignatureVerifier:
    """Checks SigV4 ``Authorization`` headers by recomputing them with botocore's signer classes."""

    def __init__(self, sessions: dict[str, Session]) -> None:
        self.sessions = sessions
        self.counts: Counter[str] = Counter()

    def verify(self, method: str, path: str, pairs: list[tuple[str, str]],
               headers: CIMultiDictProxy[str], body: bytes) -> None:
        """Raise :class:`S3Error` unless the request is signed by a known key and unchanged."""
        try:
            service = self._verify(method, path, pairs, headers, body)
        except S3Error:
            self.counts["rejected"] += 1
            raise
        self.counts[service] += 1

    def _verify(self, method: str, path: str, pairs: list[tuple[str, str]],
                headers: CIMultiDictProxy[str], body: bytes) -> str:
        auth = headers.get("Authorization")
        if not auth:
            raise S3Error(403, "AccessDenied", "anonymous requests are refused (--verify-signatures)")
        match = _AUTH_RE.fullmatch(auth.strip())
        if match is None:
            raise S3Error(400, "AuthorizationHeaderMalformed", f"unparsable Authorization: {auth[:200]}")
        access_key, day, region, service, signed, signature = match.groups()
        timestamp = _timestamp(headers, day)
        secret, token = self._secret(access_key, service, headers)
        _check_payload(headers, body)
        names = signed.split(";")
        if "host" not in names or names != sorted(set(names)):
            raise S3Error(403, "SignatureDoesNotMatch", f"SignedHeaders must be sorted, with host: {signed}")
        signer_cls = _NamedS3Express if token else _NamedS3SigV4
        kwargs = {"identity_cache": None} if token else {}
        signer = signer_cls(Credentials(access_key, secret, token), service, region, **kwargs)
        request = _aws_request(method, path, pairs, headers, names, body, timestamp)
        canonical = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical)
        if not hmac.compare_digest(signer.signature(string_to_sign, request), signature):
            raise S3Error(403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature you provided.",
                          extra={"AWSAccessKeyId": access_key, "StringToSign": string_to_sign,
                                 "CanonicalRequest": canonical})
        return "s3express-session" if token else service

    def _secret(self, access_key: str, service: str,
                headers: CIMultiDictProxy[str]) -> tuple[str, str | None]:
        token = headers.get("x-amz-s3session-token")
        if token is None:
            secret = CREDENTIALS.get(access_key)
            if secret is None:
                raise S3Error(403, "InvalidAccessKeyId", f"unknown access key {access_key!r}")
            if service not in ("s3", "s3express"):
                raise S3Error(400, "AuthorizationHeaderMalformed", f"wrong service {service!r} in scope")
            return secret, None
        session = self.sessions.get(token)
        if session is None or session.access_key != access_key:
            raise S3Error(403, "InvalidToken", "unknown session token, or not the session's access key")
        if service != "s3express":
            raise S3Error(400, "AuthorizationHeaderMalformed", "session requests are signed for s3express")
        return session.secret, token


def _timestamp(headers: CIMultiDictProxy[str], day: str) -> str:
    stamp = headers.get("x-amz-date", "")
    if not _AMZ_DATE_RE.fullmatch(stamp):
        raise S3Error(403, "AccessDenied", "SigV4 requests need an x-amz-date header (YYYYMMDDTHHMMSSZ)")
    if stamp[:8] != day:
        raise S3Error(400, "AuthorizationHeaderMalformed", f"credential date {day} is not {stamp[:8]}")
    skew = abs(time.time() - calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))
    if skew > _MAX_SKEW:
        raise S3Error(403, "RequestTimeTooSkewed", "the request time is over 15 minutes from the server's")
    return stamp


def _check_payload(headers: CIMultiDictProxy[str], body: bytes) -> None:
    declared = headers.get("x-amz-content-sha256")
    if declared is None:
        raise S3Error(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if len(declared) == 64 and declared != hashlib.sha256(body).hexdigest():
        raise S3Error(400, "XAmzContentSHA256Mismatch", "the body's SHA-256 is not x-amz-content-sha256")


def _aws_request(method: str, path: str, pairs: list[tuple[str, str]], headers: CIMultiDictProxy[str],
                 names: list[str], body: bytes, timestamp: str) -> Any:
    """The incoming request as botocore's ``AWSRequest``: path and query canonicalized from their
    decoded form (as S3 does), and exactly the named headers, with the client's values."""
    named = HTTPHeaders()
    for name in names:
        values = headers.getall(name, [])
        if not values:
            raise S3Error(403, "SignatureDoesNotMatch", f"signed header {name!r} is not in the request")
        for value in values:
            named[name] = value
    request = AWSRequest(method=method, url="http://emulator" + quote(unquote(path), safe="/~"),
                         headers={"X-Amz-Content-SHA256": headers["x-amz-content-sha256"]},
                         data=body, params=pairs)
    request.context["timestamp"] = timestamp
    request.context["signed_headers"] = named
    return request
