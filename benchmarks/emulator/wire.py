"""The emulator's HTTP/1.1 server: a plain asyncio protocol, so the emulator costs its clients as little CPU
on a shared machine as it can.

aiohttp's server spent most of the emulator's CPU per request (its request and response
objects, header handling, the writer); on a 2-core machine that CPU is taken from the clients being
measured. This protocol reads what S3 clients send (a request line, headers, a ``Content-Length`` or
chunked body, ``Expect: 100-continue`` answered), hands each request whole to the emulator in arrival
order, and writes the answer (an aiohttp ``web.Response``, which the operations build) with a
``Content-Length`` and a ``Date``. Connections are kept alive unless the client says
``Connection: close``. An answer computed at once (no latency, not a control endpoint) is written at
once; one that waits (``answer_later``) holds the connection's later requests until it is written.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEAD = 1 << 16
NO_BODY_STATUS = frozenset({204, 304})


@dataclass(slots=True)
class Incoming:
    """One request as read off the connection: everything the emulator looks at."""

    method: str
    raw_path: str
    host: str
    headers: CIMultiDictProxy[str]
    body: bytes


AnswerNow = Callable[[Incoming], web.Response | None]
AnswerLater = Callable[[Incoming], Coroutine[Any, Any, web.Response]]


class BadRequest(ValueError):
    """The bytes on the connection are not an HTTP/1.1 request this server reads."""


class _Clock:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self.second, self.text = -1, ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, email.utils.formatdate(second, usegmt=True)
        return self.text


_CLOCK = _Clock()


def _head(raw: bytes) -> tuple[str, str, str, CIMultiDict[str]]:
    lines = raw.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest(f"bad request line {lines[0][:80]!r}") from None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers.add(name.strip(), value.strip())
    return method, target, version, headers


def _dechunk(buf: bytearray) -> bytes | None:
    """A whole chunked body from the front of ``buf`` (removed), or None while it is incomplete."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # the trailers (none, usually) end with an empty line
            if end < 0:
                return None
            del buf[:end + 4]
            return b"".join(out)
        if len(buf) < eol + 2 + size + 2:
            return None
        out.append(bytes(buf[eol + 2:eol + 2 + size]))
        pos = eol + 2 + size + 2


def encode(response: web.Response, *, head_only: bool) -> bytes:
    """``response`` as HTTP/1.1 bytes: status line, its headers, ``Content-Length``, ``Date``, body."""
    body = response.body
    data = body if isinstance(body, bytes) else b""
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    if data and "Content-Type" not in response.headers:
        lines.append(f"Content-Type: {response.content_type}")
    if response.status not in NO_BODY_STATUS:
        lines.append(f"Content-Length: {len(data)}")
    lines.append(f"Date: {_CLOCK.now()}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or response.status in NO_BODY_STATUS else head + data


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, answer_now: AnswerNow, answer_later: AnswerLater,
                 connections: set[HttpProtocol]) -> None:
        self.answer_now, self.answer_later, self.connections = answer_now, answer_later, connections
        self.transport: asyncio.WriteTransport | None = None
        self.buf = bytearray()
        self.head: tuple[str, str, CIMultiDict[str], int, bool] | None = None  # read, body to come
        self.queue: deque[Incoming] = deque()
        self.waiting = False  # an answer is being computed: later requests wait for it
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's: it writes
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            while self._read_one():
                pass
        except (BadRequest, ValueError) as exc:
            self._send(encode(web.Response(status=400, text=str(exc)), head_only=False))
            self.close()
            return
        self._answer()

    def _read_one(self) -> bool:
        """Move one whole request from the buffer to the queue; False when it needs more bytes."""
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise BadRequest("request head too long")
                return False
            method, target, version, headers = _head(bytes(self.buf[:end]))
            del self.buf[:end + 4]
            chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
            length = 0 if chunked else int(headers.get("Content-Length", "0"))
            self.head = (method, target, headers, length, chunked)
            if (version == "HTTP/1.1" and headers.get("Expect", "").lower() == "100-continue"
                    and (chunked or len(self.buf) < length)):
                self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, target, headers, length, chunked = self.head
        if chunked:
            found = _dechunk(self.buf)
            if found is None:
                return False
            body = found
        else:
            if len(self.buf) < length:
                return False
            body = bytes(self.buf[:length])
            del self.buf[:length]
        self.head = None
        self.queue.append(Incoming(method, target, headers.get("Host", ""), CIMultiDictProxy(headers), body))
        return True

    def _answer(self) -> None:
        while self.queue and not self.waiting and self.transport is not None:
            request = self.queue.popleft()
            response = self.answer_now(request)
            if response is None:
                self.waiting = True
                task = asyncio.get_running_loop().create_task(self.answer_later(request))
                task.add_done_callback(partial(self._answered, request))
                return
            self._reply(request, response)

    def _answered(self, request: Incoming, task: asyncio.Task[web.Response]) -> None:
        self.waiting = False
        if task.cancelled() or self.transport is None:
            return
        self._reply(request, task.result())
        self._answer()

    def _reply(self, request: Incoming, response: web.Response) -> None:
        self._send(encode(response, head_only=request.method == "HEAD"))
        if request.headers.get("Connection", "").lower() == "close":
            self.close()

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
