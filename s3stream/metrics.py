"""Prometheus metrics, and the HTTP endpoint that serves them with ``/healthz`` and ``/readyz``.

The counters live in prometheus-client's default registry, so a library user who already exposes
Prometheus metrics gets s3stream's for free. ``s3stream run --metrics-port N`` serves them itself on
127.0.0.1 (``[metrics] host`` to change). Request counts by operation let cost be computed: multiply
``s3stream_s3_requests_total`` by the store's per-request price.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

MESSAGES_CONSUMED = Counter("s3stream_messages_consumed", "Messages handed to handlers and completed.",
                            ["shard"])
BYTES_CONSUMED = Counter("s3stream_bytes_consumed", "Body bytes of consumed messages.", ["shard"])
MESSAGES_PRODUCED = Counter("s3stream_messages_produced", "Messages stored by producers.", ["topic"])
BYTES_PRODUCED = Counter("s3stream_bytes_produced", "Body bytes of produced messages.", ["topic"])
HANDLER_SECONDS = Histogram("s3stream_handler_duration_seconds", "Time in the handler per message.",
                            ["handler"], buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
ERRORS = Counter("s3stream_errors", "Errors by kind.", ["kind"])
RETRIES = Counter("s3stream_retries", "Retries by what was retried.", ["what"])
QUEUE_DEPTH = Gauge("s3stream_queue_depth", "Items waiting in the work queue.")
IN_FLIGHT = Gauge("s3stream_in_flight", "Items handed to the workers and not completed.")
BODY_BYTES = Gauge("s3stream_body_bytes", "Bytes of object bodies held by the workers (max_inflight_mb).")
LAG_SECONDS = Gauge("s3stream_shard_lag_seconds", "Age of the oldest unfinished message, 0 when idle.",
                    ["shard"])
LAG_ITEMS = Gauge("s3stream_shard_lag_items", "Messages listed and not yet completed.", ["shard"])
CHECKPOINT_COMMITS = Counter("s3stream_checkpoint_commits", "Checkpoints written.", ["shard"])
S3_REQUESTS = Counter("s3stream_s3_requests", "S3 requests sent (every attempt), by operation.",
                      ["operation"])
DEAD_LETTERS = Counter("s3stream_dead_letters", "Messages sent to the dead-letter prefix.", ["shard"])


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for an exception (its class name)."""
    return type(exc).__name__


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
        app.router.add_get("/metrics", self._metrics)
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

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "uptime_s": round(time.monotonic() - self.started_at)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self._ready()
        return web.json_response({"status": "ready" if ok else "not ready", "detail": why},
                                 status=200 if ok else 503)
