"""The values that flow through the pipeline: a listed version (``Entry``) and a delivered ``Message``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Entry:
    """One version (or delete marker) as a listing shows it. ``last_modified_ms`` is epoch milliseconds."""

    key: str
    version_id: str
    last_modified_ms: int
    deleted: bool = False
    size: int = 0
    etag: str = ""
    latest: bool = False
    lane: str = ""  # versions of one lane run one at a time, in order; empty means the key

    @property
    def ident(self) -> tuple[str, str]:
        """The version's identity inside one prefix: ``(key, version_id)``. Where versioning is
        suspended every write replaces the version ``null``, so its ETag and time tell writes apart."""
        if self.version_id == "null":
            return (self.key, f"null@{self.etag}@{self.last_modified_ms}")
        return (self.key, self.version_id)


@dataclass(slots=True)
class Message:
    """What a handler receives: one version of one object, or a deletion. Treat it as read-only.

    ``(bucket, key, version_id)`` identifies the message for good; a handler that records it can be
    idempotent across the redeliveries a crash may cause. A deletion (an S3 delete marker) arrives with
    ``deleted=True``, its own ``version_id`` and an empty body. In the log layout objects are not
    versioned (``version_id`` is ``"null"``); a message from a segment is ``(bucket, key, offset)``.
    A source with a codec (see :mod:`s3stream.codecs`) sets ``value`` to the decoded body; with framing
    or compression, ``body`` is the message's own bytes (its line, decompressed). ``attempt`` is the
    number of this call to the handler for this message: 1, then 2, 3… on the retries after failures.
    ``value`` and ``attempt`` come last, so positional construction keeps working.
    """

    bucket: str
    key: str
    version_id: str
    last_modified: datetime
    size: int
    etag: str
    body: bytes
    deleted: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    partition_key: str | None = None  # the producer's message key (log layout)
    offset: int | None = None  # the message's line in a segment or lines object
    value: Any = None  # the body decoded by the source's codec (None with codec raw, the default)
    attempt: int = 1  # this handler call's number for this message (retries count up from 2)

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (raises ``UnicodeDecodeError`` if it is not)."""
        return self.body.decode("utf-8")


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    """An aware datetime to epoch milliseconds."""
    return int(value.timestamp() * 1000)


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC (``2026-11-23T14:46:00Z``, milliseconds when there are some)."""
    spec = "milliseconds" if ms % 1000 else "seconds"
    return ms_to_datetime(ms).isoformat(timespec=spec).replace("+00:00", "Z")
