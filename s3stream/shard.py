"""A shard: one consumed prefix with its cursor, checkpoint store and handler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from s3stream.checkpoint import CheckpointStore
from s3stream.codecs import DEFAULT_DECODER, Decoder
from s3stream.cursor import VersionCursor
from s3stream.handlers import Handler
from s3stream.message import Entry

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
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when nothing is in flight
    leased: Callable[[], bool] = lambda: True  # in a group: False once the lease may have expired
    decoder: Decoder = DEFAULT_DECODER  # how plain objects become messages (the source's codec settings)

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def wants(self, key: str) -> bool:
        """False for keys s3stream itself writes (checkpoints, topics, dead letters)."""
        return not key.startswith(self.exclude) if self.exclude else True


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One version handed from a poller to the workers."""

    shard: Shard
    entry: Entry
