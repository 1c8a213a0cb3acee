"""The emulator's HTTP/1.1 server (``benchmarks/emulator/wire.py``) spoken to byte by byte over a socket.

Real clients (aiobotocore, boto3) are the emulator's other tests; these send what they rarely do: a
chunked body, ``Expect: 100-continue`` before the body, several requests on one connection with a HEAD
among them, ``Connection: close`` and a request that is not HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from benchmarks.emulator import EmulatorProcess, run_emulator


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """A zero-profile emulator for the module."""
    with run_emulator("zero") as running:
        yield running


async def _open(emu: EmulatorProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = emu.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _response(reader: asyncio.StreamReader, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (lower-case names), body (read by its Content-Length)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = 0 if head else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split(" ")[1]), headers, body


async def test_chunked_body_after_100_continue_then_head_and_get_on_one_connection(
        emu: EmulatorProcess) -> None:
    """A PUT that asks ``Expect: 100-continue`` gets the interim answer before it sends its chunked body;
    the object stored is the body unchunked. On the same connection a HEAD answers the length and a
    ``Date`` but no body (the GET sent right after it is read correctly), and the GET answers the body."""
    reader, writer = await _open(emu)
    try:
        writer.write(b"PUT /wire-bucket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert (await _response(reader))[0] == 200
        writer.write(b"PUT /wire-bucket/k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
        assert (await _response(reader))[0] == 200
        writer.write(b"HEAD /wire-bucket/k HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /wire-bucket/k HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await _response(reader, head=True)
        assert (status, headers["content-length"]) == (200, "5")
        assert headers["date"].endswith("GMT")
        status, headers, body = await _response(reader)
        assert (status, body) == (200, b"hello")
    finally:
        writer.close()


async def test_connection_close_and_a_request_that_is_not_http(emu: EmulatorProcess) -> None:
    """``Connection: close`` gets its answer and then the end of the connection; bytes that are not a
    request line get a 400 and the end of the connection."""
    reader, writer = await _open(emu)
    writer.write(b"GET /no-such-bucket/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _response(reader))[0] == 404
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    reader, writer = await _open(emu)
    writer.write(b"nonsense\r\n\r\n")
    assert (await _response(reader))[0] == 400
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
