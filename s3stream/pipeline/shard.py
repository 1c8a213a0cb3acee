"""A shard: one consumed prefix with its cursor, checkpoint store and handler."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from s3stream.groups.lease import Tenure
from s3stream.integrations.codecs import DEFAULT_DECODER, Decoder
from s3stream.layouts.cursor import VersionCursor
from s3stream.message import Entry
from s3stream.pipeline.checkpoint import CheckpointStore
from s3stream.pipeline.handlers import Handler

ShardLayout = Literal["versions", "log", "objects"]
"""How a shard is listed: object versions, the log layout, or ``objects`` (a plain prefix in a bucket
without versioning: ``ListObjectsV2``, an object's identity is its ETag and LastModified)."""


class Cursor(Protocol):
    """What the pipeline needs of a cursor (``VersionCursor`` or ``LogCursor``)."""

    @property
    def generation(self) -> int: ...

    @property
    def horizon_ms(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def watermark_ms(self) -> int: ...

    def is_new(self, entry: Entry) -> bool: ...

    def oldest_in_flight_ms(self) -> int | None: ...

    def start(self, entry: Entry) -> None: ...

    def complete(self, ident: tuple[str, str]) -> None: ...

    def skip(self, entry: Entry) -> None: ...

    def checkpoint(self) -> Any: ...


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(eq=False)
class Shard:
    """Everything the pipeline stages share about one prefix."""

    bucket: str
    prefix: str
    handler: Handler
    checkpoints: CheckpointStore
    cursor: Cursor = field(default_factory=VersionCursor)
    layout: ShardLayout = "versions"
    fresh: bool = True  # no checkpoint existed when the consumer started
    exclude: tuple[str, ...] = ()  # control prefixes (checkpoints, dead letters) inside this prefix
    saved_generation: int = -1
    last_poll: float = field(default_factory=time.monotonic)
    tenure: Tenure | None = None  # in a group: the lease holding the shard was opened under
    open: bool = True  # False once given up, dropped or fenced: workers start none of its items
    running: int = 0  # its items a worker is running now
    idle: asyncio.Event = field(default_factory=_set_event)  # set while none of its items runs
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one checkpoint write at a time
    decoder: Decoder = DEFAULT_DECODER  # how plain objects become messages (the source's codec settings)
    topic: str | None = None  # the source's prefix (the topic) this shard belongs to; None: the prefix itself
    group: str = ""  # the consumer group reading it (a label of its metrics)

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def holds(self, now: float) -> bool:
        """True while the shard is open and (in a group) its lease surely ours at monotonic ``now``."""
        return self.open and (self.tenure is None or self.tenure.holds(now))

    def wants(self, key: str) -> bool:
        """False for keys s3stream itself writes (checkpoints, topics, dead letters)."""
        return not key.startswith(self.exclude) if self.exclude else True


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One version handed from a poller to the workers."""

    shard: Shard
    entry: Entry
