"""Segments: many messages in one object, as JSON lines, optionally gzip- or zstd-compressed.

Each line is ``{"k": key?, "b": text}`` or ``{"k": key?, "b64": base64}`` for bodies that are not
UTF-8, with ``"tp": traceparent`` when the message carries a trace context (see
:mod:`s3stream.service.tracing`;
readers that do not know the field ignore it). The object name's suffix says how to read it:
``.seg.jsonl``, ``.seg.jsonl.gz`` or ``.seg.jsonl.zst``. A consumer splits a segment back into
messages, each identified by the object key and its offset (line number, from 0).
"""

from __future__ import annotations

import base64
import gzip
from typing import TYPE_CHECKING, Literal

import orjson
import zstandard

from s3stream.integrations import codecs

if TYPE_CHECKING:
    from s3stream.message import Message

Compression = Literal["none", "gzip", "zstd"]
SUFFIXES: dict[str, str] = {"none": ".seg.jsonl", "gzip": ".seg.jsonl.gz", "zstd": ".seg.jsonl.zst"}


class SegmentError(ValueError):
    """A segment object that cannot be decoded."""


class Decoded(list[tuple[str | None, bytes]]):
    """A segment's ``(key, body)`` pairs; ``contexts`` maps an offset to its message's traceparent."""

    contexts: dict[int, str]


def encode(messages: list[tuple[str | None, bytes]], compression: Compression = "none",
           contexts: list[str | None] | None = None) -> bytes:
    """The bytes of a segment holding ``messages`` (``(key, body)`` pairs) in order; ``contexts``, when
    given, holds each message's traceparent (or None)."""
    lines = []
    for index, (key, body) in enumerate(messages):
        doc: dict[str, str] = {} if key is None else {"k": key}
        try:
            doc["b"] = body.decode("utf-8")
        except UnicodeDecodeError:
            doc["b64"] = base64.b64encode(body).decode("ascii")
        parent = contexts[index] if contexts is not None else None
        if parent is not None:
            doc["tp"] = parent
        lines.append(orjson.dumps(doc))
    data = b"\n".join(lines) + b"\n"
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def decode(data: bytes, suffix: str,
           limit: int = codecs.DEFAULT_MAX_DECOMPRESSED) -> Decoded:
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
        out = Decoded()
        out.contexts = {}
        for line in data.splitlines():
            if not line:
                continue
            doc = orjson.loads(line)
            body = doc["b"].encode("utf-8") if "b" in doc else base64.b64decode(doc["b64"])
            if "tp" in doc:
                out.contexts[len(out)] = str(doc["tp"])
            out.append((doc.get("k"), body))
        return out
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SegmentError(f"cannot decode segment: {exc}") from None


def with_contexts(messages: list[Message], pairs: Decoded) -> list[Message]:
    """``messages`` (a segment's, in order) with each one's traceparent in its own ``metadata``."""
    for offset, parent in pairs.contexts.items():
        message = messages[offset]
        message.metadata = {**message.metadata, "traceparent": parent}
    return messages
