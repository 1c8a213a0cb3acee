"""Codecs, framing and compression: how a plain object's bytes become messages, and back.

Reading an object (a source's ``codec``, ``framing`` and ``compression``) takes three steps:

1. **decompress**: ``auto`` reads ``Content-Encoding`` (``gzip``, ``x-gzip``, ``zstd``), else the key's
   extension (``.gz``, ``.zst``, ``.zstd``); ``gzip`` and ``zstd`` force one; ``none`` keeps the bytes as
   stored. Multi-member gzip and multi-frame zstd objects are read whole.
2. **split into frames**: framing ``none`` makes the object one frame; ``lines`` one frame per line
   (``\\n`` or ``\\r\\n``; blank lines are skipped but counted), whose ``offset`` is its line number from 0.
3. **decode each frame**: ``json`` gives the parsed value, ``text`` a ``str`` (UTF-8), ``csv`` the
   records as lists of fields (with ``lines``: the one record's fields; a quoted field may span lines).
   The value is the message's ``value``; ``raw`` leaves it None (the frame's bytes are its ``body``).
   Any other name is a plugin (:class:`s3stream.plugins.Codec`, from the ``s3stream.codecs``
   entry-point group or ``module:attr``) whose ``decode`` is applied to each frame.

A failure at any step raises :class:`DecodeError` naming the step and the line; the worker then sets
the whole object aside as one dead letter. Writing (a producer's settings, :class:`Encoder`) is the
reverse: encode each value, join the bodies as lines, compress.

Segments (``*.seg.jsonl[.gz|.zst]``, see :mod:`s3stream.layouts.segments`) are s3stream's own framing, with
the
message key in an envelope; a segment is split by its name whatever the source's framing and
compression say, and only the codec applies to each of its bodies.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
import zstandard

if TYPE_CHECKING:
    from s3stream.plugins import Codec

BuiltinCodec = Literal["raw", "json", "text", "csv"]
BUILTIN_CODECS: tuple[str, ...] = ("raw", "json", "text", "csv")
Framing = Literal["none", "lines"]
Compression = Literal["auto", "gzip", "zstd", "none"]
WriteCompression = Literal["none", "gzip", "zstd"]

EXTENSIONS: dict[str, str] = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
CONTENT_ENCODINGS: dict[str, str] = {"gzip": "gzip", "x-gzip": "gzip", "zstd": "zstd"}
COMPRESSION_SUFFIXES: dict[str, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}
LINES_EXTENSIONS: dict[str, str] = {"json": ".jsonl", "csv": ".csv", "text": ".txt", "raw": ".txt"}

Frame = tuple[int | None, bytes, Any]
"""One decoded frame: its offset (line number; None for a whole object), its bytes and its value."""


class EncodeError(ValueError):
    """A value the producer's codec or framing cannot write."""


class DecodeError(ValueError):
    """An object (or one of its lines) that cannot be decoded; ``offset`` is the bad line, from 0."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason if offset is None else f"line {offset + 1} (offset {offset}): {reason}")
        self.offset = offset
        self.body = b""  # the object as stored, set by the worker for its dead letter


def _json(frame: bytes) -> Any:
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None


def _text(frame: bytes) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8: {exc}") from None


def _raw(frame: bytes) -> None:
    return None  # the bytes are the message's body; ``value`` stays None


def _csv_document(frame: bytes) -> list[list[str]]:
    try:
        return [row for row in csv.reader(io.StringIO(_text(frame), newline=""), strict=True) if row]
    except csv.Error as exc:
        raise ValueError(f"invalid CSV: {exc}") from None


_VALUE: dict[str, Callable[[bytes], Any]] = {
    "json": _json, "text": _text, "raw": _raw, "csv": _csv_document,
}


def detect(key: str, content_encoding: str, compression: Compression = "auto") -> str:
    """``gzip``, ``zstd`` or ``none``: how an object is compressed, by the setting, else (``auto``)
    its ``Content-Encoding``, else its key's extension."""
    if compression != "auto":
        return compression
    for token in content_encoding.lower().split(","):
        found = CONTENT_ENCODINGS.get(token.strip())
        if found is not None:
            return found
    dot = key.rfind(".")
    return EXTENSIONS.get(key[dot:].lower(), "none") if dot >= 0 else "none"


DEFAULT_MAX_DECOMPRESSED = 1 << 30
_SLICE = 4096  # compressed bytes fed at a time, so output is checked against the limit as it grows


def decompress(data: bytes, compression: str, limit: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """``data`` decompressed (``gzip``, ``zstd``) or as it is (``none``); DecodeError if it is damaged
    or would decompress to more than ``limit`` bytes (a compression bomb must not exhaust memory)."""
    try:
        if compression == "gzip":
            return _gunzip(data, limit)
        if compression == "zstd":
            return _unzstd(data, limit)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise DecodeError(f"cannot decompress ({compression}): {exc}") from None
    return data


def _too_large(limit: int) -> DecodeError:
    return DecodeError(f"decompresses to more than {limit:,} bytes (the source's max_decompressed_mb)")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every member of a gzip stream (zero padding after a member is allowed, as ``gzip`` allows)."""
    out: list[bytes] = []
    total = 0
    while data:
        unzip = zlib.decompressobj(wbits=31)
        pending = data
        while not unzip.eof:
            chunk = unzip.decompress(pending, limit - total + 1)
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            out.append(chunk)
            pending = unzip.unconsumed_tail
            if not pending and not chunk:
                raise EOFError("compressed data ended before the end-of-stream marker was reached")
        data = unzip.unused_data.lstrip(b"\x00")
    return b"".join(out)


def _unzstd(data: bytes, limit: int) -> bytes:
    """Every frame of a zstd stream (``decompressobj`` stops after the first); truncation is an error.
    Input goes in slices so a bomb is stopped within a slice's worth of output past ``limit``."""
    out: list[bytes] = []
    total = 0
    while data:
        obj = zstandard.ZstdDecompressor().decompressobj()
        start = 0
        while not obj.eof and start < len(data):
            chunk = obj.decompress(data[start:start + _SLICE])
            start += _SLICE
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            out.append(chunk)
        if not obj.eof:
            raise EOFError("compressed data ended before the end of its frame")
        data = obj.unused_data + data[start:]
    return b"".join(out)


def lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of ``data`` with their line numbers from 0, without line ends."""
    for offset, line in enumerate(data.split(b"\n")):
        if line[-1:] == b"\r":
            line = line[:-1]
        if line and not line.isspace():
            yield offset, line


@dataclass(frozen=True, slots=True)
class Decoder:
    """How a source reads plain objects. The default (raw, none, auto) hands an object that is not
    compressed to its handler exactly as before: one message, the stored bytes, no ``value``."""

    codec: str = "raw"  # a built-in codec's name, or a plugin's (resolved when the decoder is made)
    framing: Framing = "none"
    compression: Compression = "auto"
    max_decompressed: int = DEFAULT_MAX_DECOMPRESSED
    plugin: Codec | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.plugin is None and self.codec not in _VALUE:
            object.__setattr__(self, "plugin", _load(self.codec))

    @property
    def raw(self) -> bool:
        """True when bodies need no decoding (codec ``raw``): segments take their fast path."""
        return self.codec == "raw"

    def passthrough(self, key: str, content_encoding: str) -> bool:
        """True when the object is one message of its stored bytes: the workers' fast path (a few
        string checks per object: ``detect`` without its loop when there is no Content-Encoding)."""
        if self.codec != "raw" or self.framing != "none" or self.compression in ("gzip", "zstd"):
            return False
        if self.compression == "none":
            return True
        if content_encoding:
            return detect(key, content_encoding) == "none"
        return key[key.rfind("."):].lower() not in EXTENSIONS

    def decode(self, data: bytes, key: str, content_encoding: str = "") -> list[Frame]:
        """The frames of one stored object, decompressed, split and decoded."""
        data = decompress(data, detect(key, content_encoding, self.compression), self.max_decompressed)
        value = self._value()
        if self.framing == "none":
            return [(None, data, _checked(value, data, None))]
        if self.codec == "csv" and self.plugin is None:
            return _csv_records(data)
        out: list[Frame] = []
        offset = 0
        try:
            for offset, line in lines(data):
                out.append((offset, line, value(line)))
        except ValueError as exc:
            raise DecodeError(str(exc), offset) from None
        return out

    def decode_bodies(self, bodies: Sequence[bytes]) -> list[Any]:
        """The values of a segment's message bodies (each one whole frame), in order."""
        value = self._value()
        return [_checked(value, body, offset) for offset, body in enumerate(bodies)]


    def _value(self) -> Callable[[bytes], Any]:
        return _VALUE[self.codec] if self.plugin is None else functools.partial(_plugin_decode, self.plugin)


DEFAULT_DECODER = Decoder()


def _load(name: str) -> Codec:
    from s3stream.plugins import load_codec

    return load_codec(name)


def _plugin_decode(plugin: Codec, frame: bytes) -> Any:
    """A plugin's ``decode``: whatever it raises is a reason to set the object aside, not a crash."""
    try:
        return plugin.decode(frame)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def _checked(value: Callable[[bytes], Any], frame: bytes, offset: int | None) -> Any:
    try:
        return value(frame)
    except ValueError as exc:
        raise DecodeError(str(exc), offset) from None


def _csv_records(data: bytes) -> list[Frame]:
    """CSV with framing ``lines``: one frame per record (a quoted field may span lines), its offset
    the record's first line, its value the list of fields."""
    parts = data.split(b"\n")
    if not parts[-1]:
        parts.pop()
    current = 0

    def feed() -> Iterator[str]:
        nonlocal current
        for current, part in enumerate(parts):  # noqa: B007 - ``current`` is read on failure
            yield _text(part) + "\n"

    reader = csv.reader(feed(), strict=True)
    out: list[Frame] = []
    start = 0
    try:
        for record in reader:
            end = reader.line_num
            if record:
                frame = b"\n".join(parts[start:end])
                out.append((start, frame[:-1] if frame[-1:] == b"\r" else frame, record))
            start = end
    except csv.Error as exc:
        raise DecodeError(f"invalid CSV: {exc}", current) from None
    except ValueError as exc:
        raise DecodeError(str(exc), current) from None
    return out


@dataclass(frozen=True, slots=True)
class Encoder:
    """How a producer writes: each value through the codec, then (framing ``lines``) one body per line
    of an object, then compression, marked by ``Content-Encoding`` and, on names s3stream chooses, a
    suffix."""

    codec: str = "raw"  # a built-in codec's name, or a plugin's (resolved when the encoder is made)
    framing: Framing = "none"
    compression: WriteCompression = "none"
    plugin: Codec | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.plugin is None and self.codec not in _VALUE:
            object.__setattr__(self, "plugin", _load(self.codec))

    @property
    def identity(self) -> bool:
        """True when bodies are written as given (codec raw, framing none): the producer's fast path."""
        return self.codec == "raw" and self.framing == "none"

    def prepare(self, value: Any) -> bytes:
        """A message body, or EncodeError: :meth:`encode`, and with framing ``lines`` one line (a csv
        record may hold a line break inside a quoted field)."""
        try:
            body = self.encode(value)
        except (TypeError, ValueError, csv.Error) as exc:
            raise EncodeError(f"producer.codec = {self.codec!r}: {exc}") from None
        if self.framing == "lines" and self.codec != "csv" and b"\n" in body:
            raise EncodeError("producer.framing = 'lines': a message body holds a line break")
        return body

    def encode(self, value: Any) -> bytes:
        """A message body: bytes as given; else json serialises any value, csv a record's fields (with
        framing ``lines``) or a list of records, text and raw a str as UTF-8."""
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if self.plugin is not None:
            return bytes(self.plugin.encode(value))
        if self.codec == "json":
            return orjson.dumps(value)
        if self.codec == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            if self.framing == "lines":
                writer.writerow(value)
                return out.getvalue()[:-1].encode("utf-8")
            writer.writerows(value)
            return out.getvalue().encode("utf-8")
        if isinstance(value, str):
            return value.encode("utf-8")
        raise TypeError(f"takes bytes or str, not {type(value).__name__}")

    def join(self, bodies: Sequence[bytes]) -> bytes:
        """One object's bytes before compression: with framing ``lines`` each (prepared) body ends with
        a line break; with ``none`` the one body as it is."""
        if self.framing == "none":
            (body,) = bodies
            return body
        return b"\n".join(bodies) + b"\n"

    def compress(self, data: bytes) -> bytes:
        if self.compression == "gzip":
            return gzip.compress(data, compresslevel=6)
        if self.compression == "zstd":
            return zstandard.ZstdCompressor(level=3).compress(data)
        return data

    @property
    def content_encoding(self) -> str | None:
        return None if self.compression == "none" else self.compression

    @property
    def suffix(self) -> str:
        """The suffix of a log-layout name: ``.jsonl``, ``.csv`` or ``.txt`` for lines, then ``.gz`` or
        ``.zst`` when compressed."""
        kind = LINES_EXTENSIONS.get(self.codec, ".txt") if self.framing == "lines" else ""
        return kind + COMPRESSION_SUFFIXES[self.compression]

    def body(self, bodies: Sequence[bytes]) -> bytes:
        """The stored bytes of a plain object holding ``bodies``."""
        return self.compress(self.join(bodies))
