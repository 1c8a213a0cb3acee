"""Segments: many messages in one object, as JSON lines, optionally gzip- or zstd-compressed.

Each line is ``{"k": key?, "b": text}`` or ``{"k": key?, "b64": base64}`` for bodies that are not
UTF-8. The object name's suffix says how to read it: ``.seg.jsonl``, ``.seg.jsonl.gz`` or
``.seg.jsonl.zst``. A consumer splits a segment back into messages, each identified by the object key
and its offset (line number, from 0).
"""

from __future__ import annotations

import base64
import gzip
from typing import Literal

import orjson
import zstandard

from s3stream import codecs

Compression = Literal["none", "gzip", "zstd"]
SUFFIXES: dict[str, str] = {"none": ".seg.jsonl", "gzip": ".seg.jsonl.gz", "zstd": ".seg.jsonl.zst"}


class SegmentError(ValueError):
    """A segment object that cannot be decoded."""


def encode(messages: list[tuple[str | None, bytes]], compression: Compression = "none") -> bytes:
    """The bytes of a segment holding ``messages`` (``(key, body)`` pairs) in order."""
    lines = []
    for key, body in messages:
        doc: dict[str, str] = {} if key is None else {"k": key}
        try:
            doc["b"] = body.decode("utf-8")
        except UnicodeDecodeError:
            doc["b64"] = base64.b64encode(body).decode("ascii")
        lines.append(orjson.dumps(doc))
    data = b"\n".join(lines) + b"\n"
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def decode(data: bytes, suffix: str,
           limit: int = codecs.DEFAULT_MAX_DECOMPRESSED) -> list[tuple[str | None, bytes]]:
    """Split a segment (named with ``suffix``) back into ``(key, body)`` pairs. Every gzip member and
    zstd frame is read; a segment larger than ``limit`` bytes once decompressed (the source's
    ``max_decompressed_mb``) is refused as soon as its output passes the limit."""
    compression = "gzip" if suffix.endswith(".gz") else "zstd" if suffix.endswith(".zst") else "none"
    try:
        data = codecs.decompress(data, compression, limit)
    except codecs.DecodeError as exc:
        raise SegmentError(f"cannot decode segment: {exc}") from None
    if len(data) > limit:
        raise SegmentError(f"cannot decode segment: more than {limit:,} bytes "
                           "(the source's max_decompressed_mb)")
    try:
        out: list[tuple[str | None, bytes]] = []
        for line in data.splitlines():
            if not line:
                continue
            doc = orjson.loads(line)
            body = doc["b"].encode("utf-8") if "b" in doc else base64.b64decode(doc["b64"])
            out.append((doc.get("k"), body))
        return out
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SegmentError(f"cannot decode segment: {exc}") from None
