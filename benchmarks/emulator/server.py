"""The S3 emulator's HTTP side: the profiles, the request flow (routing, counting, signature checks,
per-prefix rate limits, added latency), the control endpoints, the server (:mod:`.wire`) and its command
line."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from benchmarks.emulator import documents as xml
from benchmarks.emulator.buckets import BucketOps
from benchmarks.emulator.calls import (
    BODY_METHODS,
    CONTROL,
    READ_METHODS,
    XML_TYPE,
    Call,
    decode_aws_chunked,
    operation,
    route,
)
from benchmarks.emulator.objects import ObjectOps
from benchmarks.emulator.sigcheck import SignatureVerifier
from benchmarks.emulator.state import S3Error, unimplemented
from benchmarks.emulator.wire import HttpProtocol, Incoming


@dataclass(frozen=True, slots=True)
class Profile:
    """How an emulated S3 behaves: latency per answer, request rates per prefix, directory buckets."""

    name: str
    latency: float
    put_rate: float | None
    get_rate: float | None
    directory_buckets: bool


PROFILES = {
    "zero": Profile("zero", 0.0, None, None, directory_buckets=False),
    "express": Profile("express", 0.005, None, None, directory_buckets=True),
    "standard": Profile("standard", 0.025, 3500.0, 5500.0, directory_buckets=False),
}

# A request-rate "prefix" is the bucket plus this many leading "/"-separated key segments: s3stream's
# shards live at <topic>/<shard>/, so each shard gets its own allowance, as S3 partitions by prefix.
RATE_PREFIX_DEPTH = 2


class RateLimiter:
    """A token bucket per prefix: ``rate`` requests per second, bursts of a tenth of a second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 10)
        self._state: dict[str, list[float]] = {}

    def allow(self, prefix: str, now: float) -> bool:
        state = self._state.get(prefix)
        if state is None:
            state = self._state[prefix] = [self.burst, now]
        tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
        state[1] = now
        if tokens < 1.0:
            state[0] = tokens
            return False
        state[0] = tokens - 1.0
        return True


def rate_prefix(key: str) -> str:
    """The part of a key (or listing prefix) a request-rate allowance belongs to."""
    parts = key.split("/", RATE_PREFIX_DEPTH)
    if len(parts) > RATE_PREFIX_DEPTH:
        return "/".join(parts[:RATE_PREFIX_DEPTH]) + "/"
    return key[: key.rfind("/") + 1]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


class Emulator(ObjectOps, BucketOps):
    """The state of one emulated S3 and the handling of its requests."""

    def __init__(self, profile: Profile, *, verify_signatures: bool = False, put_rate: float | None = None,
                 get_rate: float | None = None, latency_ms: float | None = None) -> None:
        super().__init__(directory_buckets=profile.directory_buckets)
        self.profile = profile
        self.latency = profile.latency if latency_ms is None else latency_ms / 1000
        put_rate = profile.put_rate if put_rate is None else put_rate
        get_rate = profile.get_rate if get_rate is None else get_rate
        self.put_limit = RateLimiter(put_rate) if put_rate else None
        self.get_limit = RateLimiter(get_rate) if get_rate else None
        self.verifier = SignatureVerifier(self.sessions) if verify_signatures else None
        self.requests: Counter[str] = Counter()
        self.throttled = 0
        self.started = time.monotonic()
        self._ids = itertools.count(1)
        self._ops: dict[str, Callable[[Call], web.Response]] = {
            "GetObject": self.get_object, "HeadObject": self.get_object, "PutObject": self.put_object,
            "DeleteObject": self.delete_object, "DeleteObjects": self.delete_objects,
            "ListObjectsV2": self.list_objects_v2, "ListObjectVersions": self.list_object_versions,
            "CreateBucket": self.create_bucket, "HeadBucket": self.head_bucket,
            "DeleteBucket": self.delete_bucket, "GetBucketVersioning": self.get_bucket_versioning,
            "PutBucketVersioning": self.put_bucket_versioning, "CreateSession": self.create_session,
            "GetBucketLocation": self.get_bucket_location,
            "CreateMultipartUpload": self.create_multipart_upload, "UploadPart": self.upload_part,
            "CompleteMultipartUpload": self.complete_multipart_upload,
            "AbortMultipartUpload": self.abort_multipart_upload,
        }

    # ----------------------------------------------------------------------------- request flow

    def answer_now(self, request: Incoming) -> web.Response | None:
        """The answer, when it needs no waiting (no added latency, not a control endpoint); else None:
        :meth:`answer_later` then gives it."""
        if self.latency or request.raw_path.startswith(CONTROL):
            return None
        return self._answer(request)

    async def answer_later(self, request: Incoming) -> web.Response:
        """The answer to one request, after the profile's latency; control endpoints too."""
        path, _, qs = request.raw_path.partition("?")
        if path.startswith(CONTROL):
            return await self._control(request, path, qs)
        response = self._answer(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        return response

    def _answer(self, request: Incoming) -> web.Response:
        path, _, qs = request.raw_path.partition("?")
        request_id = f"{next(self._ids):016X}"
        try:
            call = self._prepare(request, path, qs, request_id)
            response = self._ops.get(call.op, self.not_implemented)(call)
        except S3Error as exc:
            response = self._error(exc, request_id)
        except Exception:  # an emulator bug: answer like S3's InternalError, and show it on stderr
            traceback.print_exc()
            response = self._error(S3Error(500, "InternalError", "emulator failure (see its stderr)"),
                                   request_id)
        return response

    def _prepare(self, request: Incoming, path: str, qs: str, request_id: str) -> Call:
        """Parse, count, read, verify and rate-limit one S3 request."""
        bucket, key = route(request.host, path)
        pairs = parse_qsl(qs, keep_blank_values=True) if qs else []
        query = dict(pairs)
        method = request.method
        op = operation(method, bucket, key, query)
        self.requests[op] += 1
        body = request.body if method in BODY_METHODS else b""
        if self.verifier is not None:
            self.verifier.verify(method, path, pairs, request.headers, body)
        if body and (request.headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
                     or "aws-chunked" in request.headers.get("Content-Encoding", "")):
            try:
                body = decode_aws_chunked(body)
            except ValueError:
                raise S3Error(400, "IncompleteBody", "the aws-chunked body is malformed") from None
        call = Call(op, method, bucket, key, query, request.headers, body, request_id)
        if self.put_limit is not None or self.get_limit is not None:
            self._throttle(call)
        return call

    def _throttle(self, call: Call) -> None:
        limiter = self.get_limit if call.method in READ_METHODS else self.put_limit
        if limiter is None:
            return
        where = f"{call.bucket}/{rate_prefix(call.key or call.query.get('prefix', ''))}"
        if not limiter.allow(where, time.monotonic()):
            self.throttled += 1
            raise S3Error(503, "SlowDown", "Please reduce your request rate.")

    def _error(self, exc: S3Error, request_id: str) -> web.Response:
        headers = {"x-amz-request-id": request_id, "Content-Type": XML_TYPE, **exc.headers}
        body = xml.error_xml(exc.code, exc.message, request_id, exc.extra)
        return web.Response(status=exc.status, body=body, headers=headers)

    def not_implemented(self, call: Call) -> web.Response:
        raise unimplemented(call.op if call.op != "Unsupported" else f"{call.method} with this query")

    # ----------------------------------------------------------------------------- control

    async def _control(self, request: Incoming, path: str, qs: str) -> web.Response:
        action, method = path[len(CONTROL):], request.method
        if (method, action) == ("GET", "stats"):
            return _json(self.stats())
        if (method, action) == ("POST", "reset"):
            self.reset(data=dict(parse_qsl(qs)).get("data", "") in ("1", "true"))
            return _json({"reset": True})
        if (method, action) == ("POST", "seed"):
            try:
                return _json({"stored": self.seed(orjson.loads(request.body))})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return _json({"error": f"bad seed document: {exc!r}"}, status=400)
        return _json({"error": f"no control endpoint {method} {path}"}, status=404)

    def stats(self) -> dict[str, Any]:
        """Counters of this emulator process (see the package docstring)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "profile": self.profile.name,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "requests": dict(self.requests),
            "throttled": self.throttled,
            "objects": sum(b.stored for b in self.buckets.values()),
            "uptime_seconds": time.monotonic() - self.started,
            "signatures": dict(self.verifier.counts) if self.verifier is not None else None,
        }

    def reset(self, *, data: bool = False) -> None:
        """Zero the counters; with ``data`` also drop every bucket."""
        self.requests.clear()
        self.throttled = 0
        if self.verifier is not None:
            self.verifier.counts.clear()
        if data:
            self.buckets.clear()


# ----------------------------------------------------------------------------------------- server


@dataclass(slots=True)
class EmulatorServer:
    """A running in-process emulator: ``url``, ``emulator`` (its state), ``await close()``."""

    emulator: Emulator
    url: str
    _server: asyncio.Server
    _connections: set[HttpProtocol]

    async def close(self) -> None:
        self._server.close()
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()


async def start_emulator_server(
    profile: str = "zero", host: str = "127.0.0.1", port: int = 0, *, verify_signatures: bool = False,
    put_rate: float | None = None, get_rate: float | None = None, latency_ms: float | None = None,
) -> EmulatorServer:
    """Start an emulator in this event loop (``port=0``: a free port)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    emulator = Emulator(PROFILES[profile], verify_signatures=verify_signatures, put_rate=put_rate,
                        get_rate=get_rate, latency_ms=latency_ms)
    # bodies are stored as sent: one sent with Content-Encoding: gzip stays gzip, as S3 does
    connections: set[HttpProtocol] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: HttpProtocol(emulator.answer_now, emulator.answer_later, connections), host, port,
        backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    return EmulatorServer(emulator, f"http://{host}:{bound}", server, connections)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    import benchmarks.emulator as package  # its docstring's first line describes the command

    description = (package.__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.emulator", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="zero")
    parser.add_argument("--verify-signatures", action="store_true")
    parser.add_argument("--put-rate", type=float, help="PUT/POST/DELETE per second per prefix")
    parser.add_argument("--get-rate", type=float, help="GET/HEAD per second per prefix")
    parser.add_argument("--latency-ms", type=float, help="added to every answer (overrides the profile)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = await start_emulator_server(
        args.profile, args.host, args.port, verify_signatures=args.verify_signatures,
        put_rate=args.put_rate, get_rate=args.get_rate, latency_ms=args.latency_ms,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.url}", flush=True)
    await stop.wait()
    await server.close()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.emulator``: serve until SIGTERM or SIGINT, then exit 0."""
    _run(_serve(_arguments(argv)))
