"""The aiobotocore client every S3 (and SQS) call goes through, as ``[s3]`` configures it.

botocore's own retries are off (the one :class:`~s3stream.s3.retry.RetryPolicy` retries), its user agent names
s3stream, and two hooks keep what its parser would lose: S3's interleaving of versions and delete
markers (read back by the store under ``ENTRIES``), and a ``200`` that is not a listing (retried).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from s3stream.config import S3Settings
from s3stream.s3.requestopts import PRODUCT
from s3stream.s3.retry import RetryPolicy
from s3stream.s3.s3xml import (
    OBJECTS_ROOT,
    check_listing,
    parse_version_entries,
)
from s3stream.s3.translate import translate

ENTRIES = "S3StreamEntries"


@contextlib.asynccontextmanager
async def aws_client(settings: S3Settings, service: str, *, max_connections: int,
                     read_timeout: float | None = None, **config: Any) -> AsyncIterator[Any]:
    """An aiobotocore client for ``service`` built from ``[s3]`` settings: profile, region,
    credentials, per-service endpoint, timeouts, pool size, and botocore's own retries off (the
    one :class:`RetryPolicy` retries). ``config`` adds service options (``s3={...}``)."""
    session = get_session()
    if settings.profile:
        session.set_config_variable("profile", settings.profile)
    aio_config = AioConfig(
        region_name=settings.region,
        max_pool_connections=max_connections,
        connect_timeout=settings.connect_timeout,
        read_timeout=read_timeout or settings.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        user_agent_extra=PRODUCT,  # CloudTrail and access logs name s3stream
        **config,
    )
    kwargs: dict[str, Any] = {"config": aio_config, "endpoint_url": settings.resolved_endpoint(service)}
    if settings.access_key_id and settings.secret_access_key:
        kwargs["aws_access_key_id"] = settings.access_key_id
        kwargs["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    with translate("CreateClient", service=service.upper()):
        async with session.create_client(service, **kwargs) as client:
            yield client


def retry_policy(settings: S3Settings) -> RetryPolicy:
    """The one retry policy, as ``[s3]`` sizes it."""
    return RetryPolicy(attempts=settings.max_attempts, max_elapsed=settings.max_retry_time)


def capture_version_entries(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                             **_: Any) -> None:
    """Keep S3's interleaving of versions and delete markers, which botocore's parser splits apart."""
    if response_dict.get("status_code") == 200 and isinstance(response_dict.get("body"), bytes):
        customized_response_dict[ENTRIES] = parse_version_entries(response_dict["body"])


def check_object_listing(response_dict: dict[str, Any], **_: Any) -> None:
    """A ``200`` that is not a ListBucketResult is retried, not read as an empty listing."""
    if response_dict.get("status_code") == 200 and isinstance(response_dict.get("body"), bytes):
        check_listing(response_dict["body"], OBJECTS_ROOT)
