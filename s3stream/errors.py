"""Every error s3stream raises, in one place.

botocore and aiohttp errors never leave :mod:`s3stream.s3.store`; they are translated there into this
hierarchy, so the rest of the code (and users) catch s3stream's own types::

    S3StreamError
    ├── ConfigError                 a setting is missing or invalid (names the field)
    ├── HandlerError                a handler cannot be resolved or built
    ├── HandlerFailed               a handler kept failing on one message
    ├── OutputClosed                a handler's output is gone (a closed pipe): the run ends cleanly
    ├── DeadLetterNow               raised by a handler: dead-letter this message now, no retries
    ├── CheckpointConflict          another writer changed the checkpoint under us
    └── StoreError                  the object store refused or could not be reached
        ├── RetriableError          worth another try after a backoff
        │   ├── Throttled           503 SlowDown and friends
        │   ├── ServerError         other 5xx
        │   ├── Conflict            409 on a conditional write
        │   └── EndpointUnreachable connection refused, reset or timed out, host unknown
        └── PermanentError          retrying will not help
            ├── BucketNotFound
            ├── AccessDenied        bad or missing credentials, or IAM says no
            ├── NotFound            no such key or version
            ├── ObjectUnreadable    this one object cannot be read (archived, its key refused, too large)
            │   └── BodyTooLarge    its body is over the size limit
            ├── PreconditionFailed  412 on If-Match / If-None-Match
            └── VersioningNotEnabled

The command line prints ``str(error)`` of any :class:`S3StreamError` as one line. It exits 3 for
``EndpointUnreachable`` (the endpoint could not be reached after the retries), 2 for ``ConfigError``,
``HandlerError`` and the other ``StoreError``s (the setup is wrong or the store is unusable) and 1 for
the rest (``HandlerFailed``, ``CheckpointConflict``: the stream itself could not go on).
``OutputClosed`` is not a failure: the consumer stops cleanly and the command exits 0.
"""

from __future__ import annotations


class S3StreamError(Exception):
    """Base class of every error s3stream raises on purpose."""


class ConfigError(S3StreamError):
    """A setting is missing or invalid. The message names the field and what is allowed."""


class HandlerError(S3StreamError):
    """A handler spec cannot be resolved, imported or built."""


class HandlerFailed(S3StreamError):
    """A handler raised on the same message more times than the policy allows."""


class OutputClosed(S3StreamError):
    """A handler's output is gone for good: the reader of its pipe went away (``consume | head``) or
    its file was closed. Raised by the built-in ``stdout`` and ``jsonl`` handlers (and any handler may
    raise it): the message is neither retried nor dead-lettered, it stays uncommitted, and the consumer
    stops cleanly as if it had been asked to."""


class DeadLetterNow(S3StreamError):
    """Raised by a handler for a message that no retry can help (a malformed order, a record its
    downstream refuses for good): the message goes straight to the dead letters with ``str(exc)`` as
    the reason, without further attempts, and the stream moves on. With ``dead_letters = false`` the
    consumer stops at it instead, as for any message that keeps failing."""


class CheckpointConflict(S3StreamError):
    """The checkpoint object was changed by another writer since we read it (If-Match failed)."""


class StoreError(S3StreamError):
    """The object store refused a request or could not be reached."""

    def __init__(self, message: str, *, code: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation


class RetriableError(StoreError):
    """A failure that may succeed when retried after a backoff."""


class Throttled(RetriableError):
    """The store asked us to slow down (503 SlowDown, throttling)."""


class ServerError(RetriableError):
    """The store answered with a 5xx other than SlowDown."""


class Conflict(RetriableError):
    """409: a concurrent conditional write conflicted; retry."""


class EndpointUnreachable(RetriableError):
    """The endpoint could not be connected to, or the connection failed mid-request."""


class PermanentError(StoreError):
    """A failure that retrying will not fix."""


class BucketNotFound(PermanentError):
    """The bucket does not exist."""


class BucketOwnedElsewhere(PermanentError):
    """A bucket name that another account already uses (bucket names are global)."""


class AccessDenied(PermanentError):
    """Credentials are missing, invalid or not allowed to do this."""


class NotFound(PermanentError):
    """No such key or version."""


class ObjectUnreadable(PermanentError):
    """One object (version) cannot be read although the store works: archived (403
    ``InvalidObjectState``), encrypted with a KMS key we may not use or that is disabled, encrypted with
    a customer key (SSE-C) we do not have, or larger than ``max_body_mb``. The consumer dead-letters it
    with this reason and goes on; other permanent errors (the bucket gone, access denied to everything)
    stop it."""


class BodyTooLarge(ObjectUnreadable):
    """The object's body is over the limit set for reading one (``max_body_mb``): known from the listing
    or ``Content-Length`` (``size``), or found while reading a body sent without one (``size`` None)."""

    def __init__(self, limit: int, size: int | None = None, *, operation: str = "GetObject") -> None:
        what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(f"the object is {what}, over the limit of {limit} bytes", code="TooLarge",
                         operation=operation)
        self.limit = limit
        self.size = size


class PreconditionFailed(PermanentError):
    """412: the object's ETag did not match the condition of the write."""


class VersioningNotEnabled(PermanentError):
    """The bucket is not versioned, so versions mode cannot follow it."""
