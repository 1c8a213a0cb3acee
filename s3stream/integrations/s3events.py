"""S3 event messages as an SQS queue delivers them, parsed into :class:`ObjectEvent` (pure, no I/O).

Three shapes reach a queue:

* **direct** (S3 → SQS, or SNS with raw delivery): ``{"Records": [{"eventName": "ObjectCreated:Put",
  "s3": {"bucket": {"name": …}, "object": {"key": …, "versionId": …, "sequencer": …}}}]}``. The key
  is URL-encoded (``red flower.jpg`` arrives as ``red+flower.jpg``): it is decoded with
  ``unquote_plus``;
* **SNS-wrapped** (S3 → SNS → SQS): ``{"Type": "Notification", "Message": "<a direct body as a JSON
  string>"}``;
* **EventBridge** (S3 → EventBridge → SQS): ``{"source": "aws.s3", "detail-type": "Object Created",
  "detail": {"bucket": {"name": …}, "object": {"key": …, "version-id": …, "sequencer": …}}}``. Its
  key is not URL-encoded.

``s3:TestEvent`` (sent when a bucket's notification configuration is written) and events other than
object creation and removal parse to no events. A body that is none of these raises
:class:`NotAnS3Event` with one readable line.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import orjson

_OBJECT_EVENTS = ("ObjectCreated:", "ObjectRemoved:", "LifecycleExpiration:")
_EVENTBRIDGE_TYPES = {"Object Created", "Object Deleted"}


class NotAnS3Event(ValueError):
    """A queue message that is not an S3 event notification in any known format."""


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One object created or removed, as a notification reports it. ``key`` is decoded."""

    bucket: str
    key: str
    name: str  # "ObjectCreated:Put", "ObjectRemoved:DeleteMarkerCreated", "Object Created"…
    version_id: str | None = None
    sequencer: str | None = None
    etag: str | None = None
    time: str = ""

    @property
    def removed(self) -> bool:
        return not (self.name.startswith("ObjectCreated") or self.name == "Object Created")

    @property
    def ident(self) -> tuple[str, ...]:
        """What identifies the event for de-duplication: the version when the bucket is versioned,
        else the sequencer, else (moto, which sends neither) the ETag and the event's time."""
        if self.version_id:
            return (self.bucket, self.key, "v", self.version_id)
        if self.sequencer:
            return (self.bucket, self.key, "s", self.sequencer)
        return (self.bucket, self.key, "t", self.etag or "", self.time, self.name.split(":")[0])


@dataclass(frozen=True, slots=True)
class Parsed:
    """A queue message's events; ``test`` for ``s3:TestEvent``; ``ignored`` counts other event types."""

    events: tuple[ObjectEvent, ...] = ()
    test: bool = False
    ignored: int = 0


def parse_message(body: str) -> Parsed:
    """The events in one SQS message body, whichever of the three formats it is in."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotAnS3Event(f"not JSON: {_excerpt(body)}") from None
    if not isinstance(doc, dict):
        raise NotAnS3Event(f"not a JSON object: {_excerpt(body)}")
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_message(doc["Message"])  # SNS envelope
    if doc.get("source") == "aws.s3" and "detail-type" in doc:
        return _eventbridge(doc)
    if doc.get("Event") == "s3:TestEvent":
        return Parsed(test=True)
    records = doc.get("Records")
    if not isinstance(records, list):
        raise NotAnS3Event(f"no Records, SNS envelope or EventBridge detail: {_excerpt(body)}")
    events: list[ObjectEvent] = []
    ignored = 0
    for record in records:
        event = _record(record)
        if event is None:
            ignored += 1
        else:
            events.append(event)
    return Parsed(events=tuple(events), ignored=ignored)


def _record(record: Any) -> ObjectEvent | None:
    """One record of the direct format, or None for an event type that is not about an object."""
    if not isinstance(record, dict):
        raise NotAnS3Event(f"a record is not an object: {_excerpt(str(record))}")
    name = str(record.get("eventName", ""))
    if not name.startswith(_OBJECT_EVENTS):
        return None
    s3 = record.get("s3") or {}
    try:
        bucket = str(s3["bucket"]["name"])
        obj = s3["object"]
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError):
        raise NotAnS3Event(f"record {name!r} has no s3.bucket.name or s3.object.key") from None
    return ObjectEvent(bucket=bucket, key=key, name=name, version_id=_opt(obj.get("versionId")),
                       sequencer=_opt(obj.get("sequencer")), etag=_opt(obj.get("eTag")),
                       time=str(record.get("eventTime", "")))


def _eventbridge(doc: dict[str, Any]) -> Parsed:
    kind = str(doc.get("detail-type"))
    if kind not in _EVENTBRIDGE_TYPES:
        return Parsed(ignored=1)
    detail = doc.get("detail") or {}
    try:
        bucket = str(detail["bucket"]["name"])
        obj = detail["object"]
        key = str(obj["key"])
    except (KeyError, TypeError):
        raise NotAnS3Event(f"EventBridge {kind!r}: no detail.bucket.name or detail.object.key") from None
    event = ObjectEvent(bucket=bucket, key=key, name=kind, version_id=_opt(obj.get("version-id")),
                        sequencer=_opt(obj.get("sequencer")), etag=_opt(obj.get("etag") or obj.get("eTag")),
                        time=str(doc.get("time", "")))
    return Parsed(events=(event,))


def _opt(value: Any) -> str | None:
    return str(value) if value not in (None, "", "null") else None


def _excerpt(text: str, limit: int = 80) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= limit else one_line[:limit] + "…")


class RecentSet:
    """A bounded set of recently seen identities: at most ``size`` entries, each kept ``ttl`` seconds.

    Notifications are duplicated within minutes, not days; this keeps memory bounded whatever the
    event rate, and a duplicate that arrives after its identity was evicted is still caught by the
    cursor (it only costs one listing of its key)."""

    def __init__(self, size: int = 100_000, ttl: float = 3600.0) -> None:
        self.size = size
        self.ttl = ttl
        self._items: OrderedDict[Hashable, float] = OrderedDict()

    def __contains__(self, item: Hashable) -> bool:
        stamp = self._items.get(item)
        return stamp is not None and time.monotonic() - stamp < self.ttl

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Hashable) -> None:
        now = time.monotonic()
        self._items[item] = now
        self._items.move_to_end(item)
        items = self._items
        while items and (len(items) > self.size or now - next(iter(items.values())) >= self.ttl):
            items.popitem(last=False)
