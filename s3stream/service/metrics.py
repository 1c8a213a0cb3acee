"""Prometheus metrics, and the HTTP endpoint that serves them with ``/healthz`` and ``/readyz``.

The metrics live in prometheus-client's default registry, so a library user who already exposes
Prometheus metrics gets s3stream's for free. ``s3stream run --metrics-port N`` serves them itself on
127.0.0.1 (``[metrics] host`` to change), as does ``snapshot serve`` on its own port. Request counts
by operation let cost be computed: multiply ``s3stream_s3_requests_total`` by the store's per-request
price. ``docs/metrics.md`` lists every series.

Naming follows Prometheus' conventions: base units as suffixes (``_seconds``, ``_bytes``), counters
end in ``_total``. A shard's series carry ``topic`` (the prefix, without ``s3://bucket/``), ``bucket``,
``shard`` (its index in the topic) and ``group`` as separate labels, so they aggregate.

s3stream's own endpoints leave out prometheus-client's ``*_created`` series (see :func:`exposition`)
without touching the library's global switch, so an application exposing the default registry itself
decides for itself (``prometheus_client.disable_created_metrics()``).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.metrics_core import Metric

from s3stream._version import __version__
from s3stream.errors import BodyTooLarge

if TYPE_CHECKING:
    from s3stream.pipeline.shard import Shard

VERSION = __version__
SHARD_LABELS = ("topic", "bucket", "shard", "group")
_LATENCY = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

MESSAGES_CONSUMED = Counter("s3stream_messages_consumed_total", "Messages handed to handlers and completed.",
                            SHARD_LABELS)
BYTES_CONSUMED = Counter("s3stream_consumed_bytes_total", "Body bytes of consumed messages.", SHARD_LABELS)
MESSAGES_PRODUCED = Counter("s3stream_messages_produced_total", "Messages stored by producers.",
                            ["topic", "bucket"])
BYTES_PRODUCED = Counter("s3stream_produced_bytes_total", "Body bytes of produced messages.",
                         ["topic", "bucket"])
HANDLER_SECONDS = Histogram("s3stream_handler_duration_seconds", "Time in the handler per message.",
                            ["handler"], buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
ERRORS = Counter("s3stream_errors_total", "Errors by kind.", ["kind"])
RETRIES = Counter("s3stream_retries_total", "Retries by what was retried.", ["what"])
QUEUE_DEPTH = Gauge("s3stream_queue_depth", "Items waiting in the work queue.")
IN_FLIGHT = Gauge("s3stream_in_flight", "Items handed to the workers and not completed.")
BODY_BYTES = Gauge("s3stream_body_bytes", "Bytes of object bodies held by the workers (max_inflight_mb).")
LAG_SECONDS = Gauge("s3stream_lag_seconds", "Age of the oldest unfinished message of a shard, 0 when idle.",
                    SHARD_LABELS)
LAG_MESSAGES = Gauge("s3stream_lag_messages", "Messages of a shard listed and not yet completed.",
                     SHARD_LABELS)
CHECKPOINT_COMMITS = Counter("s3stream_checkpoint_commits_total", "Checkpoints written.", SHARD_LABELS)
CHECKPOINT_LAST_SUCCESS = Gauge(
    "s3stream_checkpoint_last_success_timestamp_seconds",
    "Unix time the shard's checkpoint was last known current: written, or found with nothing new to write.",
    SHARD_LABELS)
DEAD_LETTERS = Counter("s3stream_dead_letters_total", "Messages sent to the dead-letter prefix.",
                       SHARD_LABELS)
LEASE_OWNED = Gauge("s3stream_lease_owned", "1 while this group member holds the shard's lease, else 0.",
                    SHARD_LABELS)
S3_REQUESTS = Counter("s3stream_s3_requests_total", "S3 requests sent (every attempt), by operation.",
                      ["operation"])
S3_REQUEST_SECONDS = Histogram("s3stream_s3_request_duration_seconds",
                               "Time of one S3 request attempt (answered or failed), by operation.",
                               ["operation"], buckets=_LATENCY)
S3_ERRORS = Counter("s3stream_s3_errors_total",
                    "S3 request attempts that failed, by operation and S3 error code (SlowDown, 503, ...).",
                    ["operation", "code"])
BUILD_INFO = Gauge("s3stream_build_info", "Always 1; the labels name the running s3stream and Python.",
                   ["version", "python"])
BUILD_INFO.labels(version=VERSION, python=platform.python_version()).set(1)

def error_kind(exc: BaseException) -> str:
    """A short, bounded label for an exception (its class name)."""
    return type(exc).__name__


def topic_and_index(topic_prefix: str, prefix: str) -> tuple[str, int]:
    """The topic (``topic_prefix`` without slashes) and the shard index of the shard at ``prefix``:
    ``orders`` and 3 for ``orders/03/``; a plain prefix is shard 0 of itself."""
    topic = topic_prefix.strip("/")
    rest = prefix[len(topic_prefix):].strip("/") if prefix.startswith(topic_prefix) else ""
    try:
        return topic, int(rest, 16) if rest else 0
    except ValueError:
        return prefix.strip("/"), 0


def labels_for(bucket: str, topic_prefix: str | None, prefix: str, group: str) -> dict[str, str]:
    """The label set of a shard's series."""
    topic, index = topic_and_index(prefix if topic_prefix is None else topic_prefix, prefix)
    return {"topic": topic, "bucket": bucket, "shard": str(index), "group": group}


_shard_labels: weakref.WeakKeyDictionary[Shard, dict[str, str]] = weakref.WeakKeyDictionary()


def shard_labels(shard: Shard) -> dict[str, str]:
    """A shard's label set (computed once per shard)."""
    labels = _shard_labels.get(shard)
    if labels is None:
        labels = _shard_labels[shard] = labels_for(shard.bucket, shard.topic, shard.prefix, shard.group)
    return labels


@functools.lru_cache(maxsize=128)
def _request_seconds(operation: str) -> Histogram:
    return S3_REQUEST_SECONDS.labels(operation=operation)


def observe_request(operation: str, seconds: float, exc: BaseException | None) -> None:
    """One S3 request attempt: its duration, and its error code when it failed with an answer or
    could not reach the store (``EndpointUnreachable``). Refusals of s3stream's own (a body over
    ``max_body_mb``) are not S3 errors."""
    _request_seconds(operation).observe(seconds)
    if exc is None or isinstance(exc, BodyTooLarge):
        return
    code = getattr(exc, "code", "") or type(exc).__name__
    S3_ERRORS.labels(operation=operation, code=code[:64]).inc()


class _Leased(Protocol):
    @property
    def bucket(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def topic(self) -> str | None: ...


def observe_leases(group: str, candidates: Iterable[_Leased], owned: set[tuple[str, str]]) -> None:
    """``s3stream_lease_owned``: 1 for each ``(bucket, prefix)`` in ``owned``, 0 for the other shards."""
    for cand in candidates:
        labels = labels_for(cand.bucket, cand.topic, cand.prefix, group)
        LEASE_OWNED.labels(**labels).set(1 if (cand.bucket, cand.prefix) in owned else 0)


class ShardSeries:
    """The per-shard gauges a consumer keeps (lag, last checkpoint), removed once the shard is gone
    from this process, so a shard another member took does not show a frozen value here."""

    _GAUGES = (LAG_SECONDS, LAG_MESSAGES, CHECKPOINT_LAST_SUCCESS)

    def __init__(self) -> None:
        self._seen: set[tuple[str, ...]] = set()

    def lag(self, shard: Shard, messages: int, seconds: float) -> None:
        labels = self._note(shard)
        LAG_MESSAGES.labels(**labels).set(messages)
        LAG_SECONDS.labels(**labels).set(seconds)

    def checkpointed(self, shard: Shard, *, written: bool) -> None:
        labels = self._note(shard)
        CHECKPOINT_LAST_SUCCESS.labels(**labels).set(time.time())
        if written:
            CHECKPOINT_COMMITS.labels(**labels).inc()

    def keep_only(self, shards: Iterable[Shard]) -> None:
        current = {tuple(shard_labels(s).values()) for s in shards}
        for gone in self._seen - current:
            for gauge in self._GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._seen &= current

    def _note(self, shard: Shard) -> dict[str, str]:
        labels = shard_labels(shard)
        self._seen.add(tuple(labels.values()))
        return labels


class _WithoutCreated:
    """The default registry as a collector, minus the ``*_created`` samples."""

    def collect(self) -> Iterator[Metric]:
        for metric in REGISTRY.collect():
            kept = [s for s in metric.samples if not s.name.endswith("_created")]
            if len(kept) != len(metric.samples):
                copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                copy.samples = kept
                metric = copy
            yield metric


_EXPOSED = CollectorRegistry(auto_describe=False)
_EXPOSED.register(_WithoutCreated())


def exposition() -> bytes:
    """The text exposition of every metric in the default registry, without ``*_created`` series."""
    return _generate_latest(_EXPOSED)


async def metrics_handler(_: web.Request) -> web.Response:
    """An aiohttp handler for ``GET /metrics``."""
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (``ready()`` true)."""

    def __init__(self, host: str, port: int, ready: Callable[[], tuple[bool, str]]) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.started_at = time.monotonic()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and self._runner.addresses:  # a free port was asked for: report it
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "uptime_s": round(time.monotonic() - self.started_at)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self._ready()
        return web.json_response({"status": "ready" if ok else "not ready", "detail": why},
                                 status=200 if ok else 503)
