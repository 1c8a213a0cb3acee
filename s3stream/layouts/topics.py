"""Topics: metadata under the control prefix, shard naming, and the log layout's key format.

A topic ``T`` with ``N`` shards keeps its data under ``T/<shard>/`` where ``<shard>`` is a fixed-width
hex number (``T/00/`` … ``T/3f/``): S3 partitions request rates by prefix, so N shards give about
N x 3,500 PUT/s. A message key maps to a shard by a stable hash (BLAKE2b), the same in every process.

Layouts:

* ``versions``: a message with key ``K`` is a PUT to ``T/<shard>/K``; each PUT is a new version.
* ``log``: every message is a new object with a unique, time-ordered name in a minute directory,
  ``T/<shard>/<yyyymmddHHMM>/<ms>-<producer>-<seq>-<lane><suffix>``. ``<ms>`` is the server's time
  when the write started, ``<producer>`` a random id per producer (120 bits: ids never repeat, so
  neither do identities), ``<seq>`` its counter, ``<lane>`` a short hash of the message key (``_``
  without one; a segment holding keys: ``SEGMENTS_LANE``, shared by the shard's such segments, which
  are therefore written and handled one at a time); ``<suffix>`` marks segments (``.seg.jsonl`` plus
  ``.gz``/``.zst``), and objects of framing ``lines`` (``.jsonl``, ``.csv``, ``.txt``) or compressed
  ones (``.gz``/``.zst``).
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson

from s3stream.errors import ConfigError, NotFound, PreconditionFailed, S3StreamError
from s3stream.s3.store import Store

Layout = Literal["versions", "log"]
CONTROL_PREFIX = "_s3stream"
TOPICS_PREFIX = f"{CONTROL_PREFIX}/topics/"
DIRECTORY_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]*--[a-z0-9-]+--x-s3$")
MINUTE_MS = 60_000
DIR_SECONDS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)  # how long a log-layout directory may span
DEFAULT_DIR_SECONDS = 10  # new log topics: a directory is listed whole each pass, so keep it small
KEY_METADATA = "s3stream-key"  # user metadata holding a log object's message key (URL-quoted)
SEGMENTS_LANE = "00000000"  # the lane of segments holding keyed messages: one per shard, in order

_LOG_NAME = re.compile(
    r"(?P<dir>\d{12}(?:\d{2})?)/(?P<ms>\d{13})-(?P<pid>[a-z0-9]+)-(?P<seq>\d{12})-(?P<lane>[0-9a-f]{8}|_)"
    r"(?P<suffix>(\.seg\.jsonl|\.jsonl|\.csv|\.txt)?(\.gz|\.zst)?)$"
)


class TopicExists(S3StreamError):
    """``topic create`` on a topic that already exists."""


def is_directory_bucket(bucket: str) -> bool:
    """True for S3 Express One Zone directory bucket names (``name--azid--x-s3``)."""
    return bool(DIRECTORY_BUCKET.match(bucket))


def stable_hash(key: str) -> int:
    """A 64-bit hash of a message key, the same on every machine and Python version."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def lane_of(key: str | None) -> str:
    """The 8-hex-digit lane of a message key in log-layout names (``_`` for no key)."""
    return "_" if key is None else f"{stable_hash(key) & 0xFFFFFFFF:08x}"


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic's metadata: where it lives and how it is laid out."""

    bucket: str
    name: str
    layout: Layout = "versions"
    shards: int = 1
    created_ms: int = 0
    plain: bool = False  # a bare prefix with no metadata: one shard, no shard directory
    dir_seconds: int = 60  # log layout: the time one directory spans (topics from before it: a minute)

    @property
    def span_ms(self) -> int:
        """How long one log-layout directory spans, in ms."""
        return self.dir_seconds * 1000

    @property
    def width(self) -> int:
        return max(2, len(f"{self.shards - 1:x}"))

    def shard_prefix(self, shard: int) -> str:
        if self.plain:
            return f"{self.name}/" if self.name else ""
        return f"{self.name}/{shard:0{self.width}x}/"

    @property
    def prefixes(self) -> list[str]:
        return [self.shard_prefix(i) for i in range(self.shards)]

    def shard_of(self, key: str | None) -> int:
        """The shard a message key goes to (round-robin callers pass a random key)."""
        return 0 if key is None or self.shards == 1 else stable_hash(key) % self.shards

    @property
    def metadata_key(self) -> str:
        return f"{TOPICS_PREFIX}{self.name}.json"

    def to_json(self) -> bytes:
        doc: dict[str, object] = {"format": 1, "name": self.name, "layout": self.layout,
                                  "shards": self.shards, "created_ms": self.created_ms}
        if self.layout == "log":
            doc["dir_seconds"] = self.dir_seconds
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, bucket: str, data: bytes) -> Topic:
        doc = orjson.loads(data)
        dir_seconds = int(doc.get("dir_seconds", 60))
        if dir_seconds not in DIR_SECONDS:
            raise ValueError(f"dir_seconds {dir_seconds} is not one of {', '.join(map(str, DIR_SECONDS))}")
        return cls(bucket=bucket, name=doc["name"], layout=doc["layout"], shards=int(doc["shards"]),
                   created_ms=int(doc.get("created_ms", 0)), dir_seconds=dir_seconds)


async def resolve_topic(store: Store, bucket: str, prefix: str) -> Topic:
    """The topic at ``prefix``: its metadata if it has some, else a plain one-shard prefix (versions
    layout, or log layout in a directory bucket, which has no versioning)."""
    topic = await load_topic(store, bucket, prefix) if prefix.strip("/") else None
    if topic is not None:
        return topic
    layout: Layout = "log" if is_directory_bucket(bucket) else "versions"
    return Topic(bucket=bucket, name=prefix.strip("/"), layout=layout, plain=True)


def validate_topic_name(name: str) -> str:
    """A topic name is a key prefix without leading/trailing ``/`` and outside the control prefix."""
    name = name.strip("/")
    if not name or name.startswith(CONTROL_PREFIX) or not re.fullmatch(r"[A-Za-z0-9._/-]+", name):
        raise ConfigError(
            f"topic name {name!r}: use letters, digits, '.', '_', '-', '/', outside {CONTROL_PREFIX}/"
        )
    return name


async def create_topic(store: Store, bucket: str, name: str, *, shards: int = 1,
                       layout: Layout = "versions", dir_seconds: int = DEFAULT_DIR_SECONDS) -> Topic:
    """Write the topic's metadata with ``If-None-Match: *``: creating it twice is an error.
    ``dir_seconds`` (log layout) is how long one directory spans, a divisor of a minute."""
    if not 1 <= shards <= 4096:
        raise ConfigError(f"shards: must be between 1 and 4096, got {shards}")
    if dir_seconds not in DIR_SECONDS:
        raise ConfigError(f"dir_seconds: must divide a minute ({', '.join(map(str, DIR_SECONDS))}), "
                          f"got {dir_seconds}")
    if layout == "versions" and is_directory_bucket(bucket):
        raise ConfigError(f"bucket {bucket!r} is an S3 Express directory bucket: it has no versioning; "
                          "use --layout log")
    topic = Topic(bucket=bucket, name=validate_topic_name(name), layout=layout, shards=shards,
                  created_ms=int(time.time() * 1000), dir_seconds=dir_seconds if layout == "log" else 60)
    try:
        await store.put_object(bucket, topic.metadata_key, topic.to_json(), if_none_match=True,
                               content_type="application/json")
    except PreconditionFailed:
        raise TopicExists(f"topic {topic.name!r} already exists in bucket {bucket!r}") from None
    return topic


async def load_topic(store: Store, bucket: str, name: str) -> Topic | None:
    """The topic's metadata, or None when ``name`` is a plain prefix with no metadata."""
    key = f"{TOPICS_PREFIX}{name.strip('/')}.json"
    try:
        obj = await store.get_object(bucket, key)
    except NotFound:
        return None
    try:
        return Topic.from_json(bucket, obj.body)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"topic metadata s3://{bucket}/{key} is damaged: {exc}") from None


async def list_topics(store: Store, bucket: str) -> list[Topic]:
    """Every topic with metadata in ``bucket``, by name."""
    topics, token = [], None
    while True:
        page = await store.list_objects(bucket, TOPICS_PREFIX, token=token)
        for entry in page.entries:
            name = entry.key[len(TOPICS_PREFIX):].removesuffix(".json")
            topic = await load_topic(store, bucket, name)
            if topic is not None:
                topics.append(topic)
        token = page.next_token
        if token is None:
            return sorted(topics, key=lambda t: t.name)


@dataclass(frozen=True, slots=True)
class LogName:
    """The parts of a log-layout object name."""

    dir_ms: int
    ms: int
    producer: str
    seq: int
    lane: str
    suffix: str

    @property
    def is_segment(self) -> bool:
        return self.suffix.startswith(".seg.")


def dir_name(ms: int, span_ms: int) -> str:
    """The directory holding time ``ms`` (epoch ms, UTC) when directories span ``span_ms``:
    ``yyyymmddHHMM`` for a minute, ``yyyymmddHHMMSS`` (its first second) for less."""
    form = "%Y%m%d%H%M" if span_ms == MINUTE_MS else "%Y%m%d%H%M%S"
    return datetime.fromtimestamp((ms - ms % span_ms) / 1000, tz=UTC).strftime(form)


def is_dir_name(name: str) -> bool:
    """True for a log-layout directory name (``yyyymmddHHMM`` or ``yyyymmddHHMMSS``)."""
    return len(name) in (12, 14) and name.isdigit()


@functools.lru_cache(maxsize=4096)
def dir_start_ms(name: str) -> int:
    """Epoch ms of the start of a ``yyyymmddHHMM`` or ``yyyymmddHHMMSS`` directory."""
    if not is_dir_name(name):
        raise ValueError(f"not a log directory: {name!r}")
    second = int(name[12:14]) if len(name) == 14 else 0
    fields = (int(name[0:4]), int(name[4:6]), int(name[6:8]), int(name[8:10]), int(name[10:12]), second)
    return calendar.timegm(fields) * 1000


def log_key(shard_prefix: str, ms: int, producer: str, seq: int, lane: str, suffix: str = "", *,
            span_ms: int) -> str:
    """The object key of one log-layout message or segment, in directories of ``span_ms`` (the
    topic's :attr:`Topic.span_ms`)."""
    return f"{shard_prefix}{dir_name(ms, span_ms)}/{ms:013d}-{producer}-{seq:012d}-{lane}{suffix}"


@functools.lru_cache(maxsize=16384)
def parse_log_key(key: str) -> LogName | None:
    """Parse a log-layout key; None for keys s3stream did not name (written by other tools).
    Cached: poller, cursor and workers each ask about the same recent keys."""
    match = _LOG_NAME.search(key)
    if match is None:
        return None
    return LogName(dir_ms=dir_start_ms(match["dir"]), ms=int(match["ms"]), producer=match["pid"],
                   seq=int(match["seq"]), lane=match["lane"], suffix=match["suffix"])
