"""What every S3 request of s3stream carries besides its operation: the User-Agent that names
s3stream (in CloudTrail, S3 server access logs and the bucket owner's request metrics), the expected
bucket owner, and a producer's server-side encryption headers, on both request paths (aiobotocore's
and the lean one, :mod:`s3stream.s3.lean`).
"""

from __future__ import annotations

import functools
import platform
import re
from typing import Any

import aiobotocore
import botocore

from s3stream._version import __version__

#: s3stream's product token: aiobotocore appends it to its own User-Agent (``user_agent_extra``), and
#: the lean path's User-Agent starts with it.
PRODUCT = f"s3stream/{__version__}"
EXPECTED_OWNER_HEADER = "x-amz-expected-bucket-owner"

_UNSAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+\-.^_`|~]")
# The SSE headers of PutObject and CreateMultipartUpload, and botocore's names for them.
_SSE_PARAMS = {
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
}


def _token(value: str) -> str:
    return _UNSAFE.sub("-", value) or "unknown"


@functools.cache
def lean_user_agent() -> str:
    """The lean path's User-Agent, in botocore's style: ``s3stream/<v> aiobotocore/<v>
    md/Botocore#<v> ua/2.1 os/<os>#<release> md/arch#<machine> lang/python#<v> md/pyimpl#<impl>``."""
    parts = (
        PRODUCT,
        f"aiobotocore/{_token(aiobotocore.__version__)}",
        f"md/Botocore#{_token(botocore.__version__)}",
        "ua/2.1",
        f"os/{_token(platform.system().lower())}#{_token(platform.release())}",
        f"md/arch#{_token(platform.machine().lower())}",
        f"lang/python#{_token(platform.python_version())}",
        f"md/pyimpl#{_token(platform.python_implementation())}",
    )
    return " ".join(parts)


def expect_owner(owner: str) -> Any:
    """A botocore ``before-parameter-build.s3`` handler that sets ``ExpectedBucketOwner`` to
    ``owner`` on every operation that takes it (S3 then refuses, 403, a bucket another account owns)."""

    def handler(params: dict[str, Any], model: Any, **_: Any) -> None:
        shape = model.input_shape
        if shape is not None and "ExpectedBucketOwner" in shape.members:
            params.setdefault("ExpectedBucketOwner", owner)

    return handler


def sse_params(headers: dict[str, str] | None) -> dict[str, str]:
    """Server-side encryption headers (``x-amz-server-side-encryption…``) as botocore parameters."""
    return {_SSE_PARAMS[name]: value for name, value in (headers or {}).items()}
