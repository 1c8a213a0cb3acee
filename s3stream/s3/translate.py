"""Botocore's and aiohttp's exceptions turned into :mod:`s3stream.errors` types, at the boundary.

S3's error codes are classified once here (throttled, denied, not found, conflict, an object that
cannot be read), for both request paths; the SQS boundary passes its own classifier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError

from s3stream import errors
from s3stream.s3.lean import S3HTTPError

_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"}


_DENIED_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "AllAccessDisabled", "403",
}


_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}


_CONFLICT_CODES = {"ConditionalRequestConflict", "OperationAborted", "409"}


ErrorClassifier = Callable[[str, int, "str | None"], errors.StoreError]


@contextlib.contextmanager
def translate(operation: str, *, bucket: str | None = None, service: str = "S3",
              classifier: ErrorClassifier | None = None) -> Iterator[None]:
    """Translate botocore/aiohttp exceptions raised inside the block into s3stream errors. Error
    answers go through ``classifier(code, status, message)`` (S3's :func:`classify` by default; the
    SQS boundary passes its own), everything else is handled the same for every AWS service."""
    def answer(code: str, status: int, message: str | None) -> errors.StoreError:
        if classifier is not None:
            return classifier(code, status, message)
        return classify(code, status, message, operation, bucket)

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        raise answer(str(err.get("Code", "")), status, err.get("Message")) from exc
    except S3HTTPError as exc:
        raise answer(exc.code, exc.status, exc.message) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise errors.AccessDenied(
            f"no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run where an instance role is available", operation=operation,
        ) from exc
    except (BotoConnectionError, HTTPClientError, ReadTimeoutError, aiohttp.ClientError,
            TimeoutError, ConnectionError) as exc:
        if _cancelling():
            raise asyncio.CancelledError from exc
        raise errors.EndpointUnreachable(
            f"{operation}: cannot reach the {service} endpoint: {exc}", operation=operation
        ) from exc
    except ResponseParserError as exc:  # an answer botocore cannot read: garbled on the way, retry
        detail = " ".join(str(exc).split())[:200]
        raise errors.ServerError(f"{operation}: unreadable answer ({detail})", operation=operation) from exc
    except BotoCoreError as exc:
        raise errors.StoreError(f"{operation}: {exc}", operation=operation) from exc


def _cancelling() -> bool:
    """True in a task that was asked to cancel. A cancellation can surface as a connection error (uvloop's
    ``sock_connect`` cancelled, then aiohappyeyeballs' ``sock.close()`` fails with EBADF): it must stay a
    cancellation, or the request is retried and the cancelled task (a poller at shutdown) runs on."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.cancelling() > 0


def classify(code: str, status: int, message: str | None, operation: str,
             bucket: str | None) -> errors.StoreError:
    """The s3stream error for an S3 error answer (its code and HTTP status)."""
    detail = message or code or str(status)
    kw = {"code": code, "operation": operation}
    if code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
        return errors.BucketNotFound(f"bucket {bucket!r} does not exist", **kw)
    if code == "BucketAlreadyExists":
        return errors.BucketOwnedElsewhere(f"bucket {bucket!r} already exists and is owned by another "
                                           "account (bucket names are global: choose another name)", **kw)
    if operation == "GetObject" and _unreadable_object(code, status, message or ""):
        return errors.ObjectUnreadable(f"GetObject: the object cannot be read ({code or status}: {detail})",
                                       **kw)
    if code in _DENIED_CODES or status == 403:
        return errors.AccessDenied(
            f"{operation} on bucket {bucket!r} was denied ({code or status}): check the credentials "
            "and the IAM policy", **kw,
        )
    if code in {"PreconditionFailed", "412"} or status == 412:
        return errors.PreconditionFailed(f"{operation}: precondition failed ({detail})", **kw)
    if code in _CONFLICT_CODES or status == 409:
        return errors.Conflict(f"{operation}: conflict ({detail})", **kw)
    if code in _NOT_FOUND_CODES or status == 404:
        return errors.NotFound(f"{operation}: not found ({detail})", **kw)
    if code == "NotImplemented" or status == 501:
        return errors.PermanentError(f"{operation} is not supported by this bucket or store ({detail})", **kw)
    if code in _THROTTLE_CODES or status in {429, 503}:
        return errors.Throttled(f"{operation}: throttled ({code or status})", **kw)
    if status >= 500:
        return errors.ServerError(f"{operation}: server error {status} ({detail})", **kw)
    return errors.PermanentError(f"{operation}: {code or status}: {detail}", **kw)


def _unreadable_object(code: str, status: int, message: str) -> bool:
    """Whether a GetObject refusal is about that object, not the store or the credentials: archived
    (``InvalidObjectState``), its KMS key refused or disabled (a ``KMS.*`` code, or ``AccessDenied``
    naming KMS), or encrypted with a customer key (SSE-C) that was not sent (a 400 naming encryption).
    A bare ``AccessDenied`` cannot be told apart from a policy that denies every read: it stops."""
    if code == "InvalidObjectState" or code.startswith("KMS."):
        return True
    text = message.lower()
    if code == "AccessDenied":
        return "kms" in text or "ciphertext" in text
    return status == 400 and "encrypt" in text
