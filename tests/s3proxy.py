"""A fault-injecting HTTP reverse proxy for tests, in front of the moto S3 server.

:class:`S3Proxy` forwards every request (method, path, query, headers, body) upstream and relays the
response, unless a :class:`Rule` fires: rules match by method and a predicate over the incoming
:class:`aiohttp.web.Request`, optionally only for the first N matches or a seeded-random fraction, and
then answer with an :class:`S3Error`, :class:`Delay` the request, or :class:`Drop` the connection.
It runs its own event loop in a background thread, so sync tests (spawning the CLI) and async tests
alike can use it::

    with S3Proxy(moto_endpoint, [Rule(S3Error(503, "SlowDown"), method="GET", first=2)]) as proxy:
        ...  # point the client at proxy.endpoint
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NoReturn
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web

# Hop-by-hop headers, plus the framing headers aiohttp recomputes for the body it sends.
_SKIP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "expect",
})


@dataclass(frozen=True, slots=True)
class S3Error:
    """Answer ``status`` with an S3 XML error document instead of forwarding."""

    status: int
    code: str
    message: str = "injected by s3proxy"


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds`` before forwarding the request."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection without a response; ``reset`` sends a TCP RST instead of a FIN."""

    reset: bool = True


Action = S3Error | Delay | Drop


@dataclass(slots=True)
class Rule:
    """Apply ``action`` to requests matching ``method`` (any if None) and ``when`` (any if None).

    ``first`` limits the rule to the first N matching requests; ``fraction`` applies it to that share
    of matching requests, drawn from a generator seeded with ``seed`` so runs are reproducible.
    ``matched`` and ``applied`` count what the rule saw and did.
    """

    action: Action
    method: str | None = None
    when: Callable[[web.Request], bool] | None = None
    first: int | None = None
    fraction: float = 1.0
    seed: int = 0
    matched: int = 0
    applied: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def fires(self, request: web.Request) -> bool:
        """Whether this rule applies to ``request`` (updating its counters). Call under the lock."""
        if self.method is not None and request.method != self.method.upper():
            return False
        if self.when is not None and not self.when(request):
            return False
        self.matched += 1
        if self.first is not None and self.matched > self.first:
            return False
        if self.fraction < 1.0 and self._rng.random() >= self.fraction:
            return False
        self.applied += 1
        return True


def error_body(error: S3Error, resource: str) -> bytes:
    """The XML document S3 sends with an error status."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>s3proxy</RequestId></Error>"
    ).encode()


class S3Proxy:
    """A reverse proxy to ``upstream`` on 127.0.0.1, applying the first rule that fires per request."""

    def __init__(self, upstream: str, rules: Iterable[Rule] = (), *, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = list(rules)
        self.requests: list[tuple[str, str, str]] = []  # (method, path?query, outcome)
        self._port = port
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.endpoint = ""

    def add(self, rule: Rule) -> Rule:
        """Add a rule after the existing ones (thread-safe); returns it for its counters."""
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule: forward everything from now on."""
        with self._lock:
            self.rules.clear()

    def start(self) -> S3Proxy:
        """Start serving in a background thread; returns once ``endpoint`` accepts connections."""
        loop = asyncio.new_event_loop()
        ready = asyncio.run_coroutine_threadsafe(self._serve(), loop)
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="s3proxy", daemon=True)
        self._thread.start()
        self.endpoint = ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> str:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _pick(self, request: web.Request) -> Action | None:
        with self._lock:
            return next((rule.action for rule in self.rules if rule.fires(request)), None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        action = self._pick(request)
        outcome = type(action).__name__ if action is not None else "forwarded"
        self.requests.append((request.method, request.path_qs, outcome))
        if isinstance(action, S3Error):
            return web.Response(status=action.status, content_type="application/xml",
                                body=error_body(action, request.path))
        if isinstance(action, Drop):
            self._drop(request, reset=action.reset)
        if isinstance(action, Delay):
            await asyncio.sleep(action.seconds)
        return await self._forward(request)

    def _drop(self, request: web.Request, *, reset: bool) -> NoReturn:
        if (transport := request.transport) is not None:
            if reset and (sock := transport.get_extra_info("socket")) is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError  # aiohttp treats this as a vanished peer: nothing is written

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers,
            data=body if body else None, allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            reply = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _SKIP_HEADERS:
                    reply.headers.add(key, value)
            if request.method != "HEAD":
                reply.content_length = len(payload)
            elif (length := upstream.headers.get("Content-Length")) is not None:
                reply.headers["Content-Length"] = length  # HEAD: the size of the body not sent
            await reply.prepare(request)
            if payload and request.method != "HEAD":
                await reply.write(payload)
            await reply.write_eof()
            return reply
