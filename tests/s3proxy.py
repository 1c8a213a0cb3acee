"""A fault-injecting HTTP reverse proxy for tests, in front of the moto S3 server.

:class:`S3Proxy` forwards every request (method, path, query, headers, body) upstream and relays the
response, unless a :class:`Rule` fires: rules match by method and a predicate over the incoming
:class:`aiohttp.web.Request`, optionally only for the first N matches or a seeded-random fraction, and
then answer with an :class:`S3Error`, :class:`Delay` the request, :class:`Drop` the connection, or
forward it and :class:`Transform` the upstream response before relaying it.
It runs its own event loop in a background thread, so sync tests (spawning the CLI) and async tests
alike can use it::

    with S3Proxy(moto_endpoint, [Rule(S3Error(503, "SlowDown"), method="GET", first=2)]) as proxy:
        ...  # point the client at proxy.endpoint

:func:`directory_bucket_rules` makes moto look like an S3 Express One Zone directory bucket::

    with S3Proxy(moto_endpoint, directory_bucket_rules(seed=1)) as proxy:
        ...
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
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
    """Wait ``seconds`` before forwarding the request, or (``after=True``) forward it at once and
    hold the answer back: the request takes effect upstream while the client is still waiting.
    ``restamp`` (with ``after``) gives the held answer the ``Date`` of when it leaves, as a server
    slow to send what it had already read would."""

    seconds: float
    after: bool = False
    restamp: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection without a response; ``reset`` sends a TCP RST instead of a FIN."""

    reset: bool = True


@dataclass(frozen=True, slots=True)
class Relayed:
    """An upstream response on its way back to the client.

    ``headers`` excludes hop-by-hop and framing headers; ``body`` is the raw bytes upstream sent (the
    proxy never decompresses). ``Content-Length`` is recomputed from whatever body is finally relayed.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Transform:
    """Forward the request upstream, then relay ``rewrite(request, response)`` instead of the response.

    ``rewrite`` may change the status, headers and body (:func:`dataclasses.replace` on the
    :class:`Relayed` it gets). It runs on the proxy's event loop, so it must be quick and not block.
    The upstream side effects (a PUT storing its object, say) happen whatever the client is told.
    """

    rewrite: Callable[[web.Request, Relayed], Relayed]


@dataclass(frozen=True, slots=True)
class StripHeaders:
    """Forward the request without the named headers (case-insensitive), as a proxy or an S3-compatible
    store that ignores them would: ``StripHeaders(("If-Match", "If-None-Match"))`` turns conditional
    writes into plain ones. The signature is not recomputed (moto does not check it)."""

    names: tuple[str, ...]


Action = S3Error | Delay | Drop | Transform | StripHeaders


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
        if isinstance(action, Delay) and not action.after:
            await asyncio.sleep(action.seconds)
        hold = action.seconds if isinstance(action, Delay) and action.after else 0.0
        if isinstance(action, Delay) and action.restamp:
            return await self._forward(request, _stamped_now, hold=hold)
        if isinstance(action, StripHeaders):
            dropped = {n.lower() for n in action.names}
            request = request.clone(headers={k: v for k, v in request.headers.items()
                                             if k.lower() not in dropped})
        return await self._forward(request, action.rewrite if isinstance(action, Transform) else None,
                                   hold=hold)

    def _drop(self, request: web.Request, *, reset: bool) -> NoReturn:
        if (transport := request.transport) is not None:
            if reset and (sock := transport.get_extra_info("socket")) is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError  # aiohttp treats this as a vanished peer: nothing is written

    async def _forward(
        self, request: web.Request, rewrite: Callable[[web.Request, Relayed], Relayed] | None = None,
        *, hold: float = 0.0,
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers,
            data=body if body else None, allow_redirects=False,
        ) as upstream:
            relayed = Relayed(
                upstream.status,
                tuple((k, v) for k, v in upstream.headers.items() if k.lower() not in _SKIP_HEADERS),
                await upstream.read(),
            )
            reason: str | None = upstream.reason
            head_length = upstream.headers.get("Content-Length")
        if hold:
            await asyncio.sleep(hold)
        if rewrite is not None:
            rewritten = rewrite(request, relayed)
            if rewritten.status != relayed.status:
                reason = None  # let aiohttp pick the phrase that goes with the new status
            relayed = rewritten
        reply = web.StreamResponse(status=relayed.status, reason=reason)
        for key, value in relayed.headers:
            if key.lower() not in _SKIP_HEADERS:
                reply.headers.add(key, value)
        if request.method != "HEAD":
            reply.content_length = len(relayed.body)
        elif head_length is not None:
            reply.headers["Content-Length"] = head_length  # HEAD: the size of the body not sent
        await reply.prepare(request)
        if relayed.body and request.method != "HEAD":
            await reply.write(relayed.body)
        await reply.write_eof()
        return reply


def _stamped_now(_request: web.Request, response: Relayed) -> Relayed:
    """``response`` with a ``Date`` of now."""
    now = formatdate(usegmt=True)
    headers = tuple((k, now if k.lower() == "date" else v) for k, v in response.headers)
    return replace(response, headers=headers)


# --- S3 Express One Zone directory buckets ---------------------------------------------------------
#
# moto emulates general purpose buckets only; these rules make it answer like a directory bucket where
# s3stream could notice the difference. Sources (AWS documentation unless said otherwise):
#
# [1] S3 User Guide, "Differences for directory buckets",
#     https://docs.aws.amazon.com/AmazonS3/latest/userguide/s3-express-differences.html: "ListObjectsV2
#     does not return objects in lexicographical (alphabetical) order. Additionally, prefixes must end
#     in a delimiter and only "/" can be specified as the delimiter." The same page lists the API
#     operations directory buckets support and the S3 features they do not (versioning among them).
# [2] S3 API Reference, ListObjectsV2, StartAfter: "This functionality is not supported for directory
#     buckets." https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html
# [3] The wire answer to an unaligned prefix, as seen from real directory buckets (not in the docs):
#     code InvalidRequest with the message below (github.com/awslabs/aws-s3-transfer-manager-rs
#     pull 112), HTTP status 400 (github.com/eclipse-store/store issue 224).
# [4] S3 API Reference, "Error responses", https://docs.aws.amazon.com/AmazonS3/latest/API/
#     ErrorResponses.html: NotImplemented is 501 ("...functionality that is not implemented"),
#     InvalidRequest is 400.
#
# NOT confirmed: the wire answers to ?versions, PUT ?versioning, start-after and a delimiter other
# than "/" on a directory bucket; no public source found shows them. We answer as S3 does for
# unsupported things [4]: 501 NotImplemented for an operation the bucket type lacks, 400
# InvalidRequest for a ListObjectsV2 parameter it refuses (as AWS does for the prefix, [3]).

UNALIGNED_PREFIX_MESSAGE = (
    "This bucket does not support a prefix that does not end in a delimiter. "
    "Specify a prefix path ending with a delimiter and try again."
)
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.DOTALL)


def _list_v2(request: web.Request) -> bool:
    return request.query.get("list-type") == "2"


def _unaligned_prefix(request: web.Request) -> bool:
    prefix = request.query.get("prefix", "")
    return _list_v2(request) and prefix != "" and not prefix.endswith("/")


def shuffle_contents(body: bytes, rng: random.Random) -> bytes:
    """``body`` with its ``<Contents>`` elements permuted by ``rng`` and every other byte in place.

    Each element moves into another's slot, so what surrounds them (``IsTruncated``,
    ``NextContinuationToken``, ``CommonPrefixes``, ``KeyCount``...) is untouched.
    """
    spans = [match.span() for match in _CONTENTS.finditer(body)]
    pieces = [body[start:end] for start, end in spans]
    rng.shuffle(pieces)
    out, pos = bytearray(), 0
    for (start, end), piece in zip(spans, pieces, strict=True):
        out += body[pos:start] + piece
        pos = end
    return bytes(out + body[pos:])


def directory_bucket_rules(seed: int = 0) -> list[Rule]:
    """Rules under which the proxied moto answers like an S3 Express One Zone directory bucket.

    In order (the first rule that fires answers the request):

    ===========================================  ==================================================
    ``GET ?versions`` (ListObjectVersions)       501 NotImplemented
    ``PUT ?versioning`` (PutBucketVersioning)    501 NotImplemented
    ListObjectsV2 with ``start-after``           400 InvalidRequest
    ListObjectsV2, ``prefix`` not ending in /    400 InvalidRequest, AWS's message
    ListObjectsV2, ``delimiter`` other than /    400 InvalidRequest
    any other ListObjectsV2                      forwarded; a 200's ``<Contents>`` shuffled
    ===========================================  ==================================================

    Everything else (PutObject, GetObject, HeadBucket, GetBucketVersioning...) is forwarded as is.
    The shuffle draws from one generator seeded with ``seed``, so a run's listing order is
    reproducible. It permutes the keys *within* each page only: moto has already cut the page and
    computed ``NextContinuationToken`` from its sorted order, so the pages still partition the keys
    and a paginated listing returns every key exactly once. AWS promises no order at all [1], so this
    is enough to catch a client that relies on key order, within a page or across pages.
    """
    rng = random.Random(seed)

    def shuffle(_request: web.Request, response: Relayed) -> Relayed:
        if response.status != 200:
            return response
        return replace(response, body=shuffle_contents(response.body, rng))

    return [
        Rule(S3Error(501, "NotImplemented", "directory buckets do not support ListObjectVersions"),
             method="GET", when=lambda r: "versions" in r.query),
        Rule(S3Error(501, "NotImplemented", "directory buckets do not support PutBucketVersioning"),
             method="PUT", when=lambda r: "versioning" in r.query),
        Rule(S3Error(400, "InvalidRequest", "StartAfter is not supported for directory buckets"),
             method="GET", when=lambda r: _list_v2(r) and "start-after" in r.query),
        Rule(S3Error(400, "InvalidRequest", UNALIGNED_PREFIX_MESSAGE), method="GET", when=_unaligned_prefix),
        Rule(S3Error(400, "InvalidRequest", 'directory buckets only support "/" as the delimiter'),
             method="GET", when=lambda r: _list_v2(r) and r.query.get("delimiter", "/") != "/"),
        Rule(Transform(shuffle), method="GET", when=_list_v2),
    ]
