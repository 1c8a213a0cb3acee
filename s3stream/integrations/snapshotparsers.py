"""Parsers of key-value files for the snapshot follower: bytes in, a ``str`` → value mapping out.

A parser is a callable ``bytes -> Mapping[str, Any]`` that raises on invalid input; the follower
refuses a version whose parser raised, whatever the exception. The built-in ones are strict, because
a file that is half right is a corrupt batch output, not something to serve:

* every format is UTF-8 (a leading byte-order mark is ignored); a body of zero bytes is refused (a
  truncated or failed write), a well-formed file with no entries (``{}``, a header only) is not;
* a **duplicate key** refuses the version (the writer has a bug; picking one value would hide it),
  in ``json`` at any depth;
* ``csv``: RFC 4180 rows of exactly two fields, key and value (quote a value holding commas, quotes
  or line breaks); blank lines are skipped; values are strings; keys must not be empty;
  ``csv-header``: the same, its first row a header (two fields, not loaded);
* ``json``: one object, ``{"key": value, ...}``; values any JSON (``NaN`` and ``Infinity`` refused);
* ``jsonl``: one ``{"key": "...", "value": ...}`` object per non-blank line, exactly those two fields.

A plugin (:class:`s3stream.plugins.SnapshotParser`) is registered in the ``s3stream.snapshot_parsers``
entry-point group (its name is then a ``--parser`` value like the built-in ones) or named
``module:attr``. An entry point may name the parser or a class whose instances are one. The mapping
it returns is copied, so it cannot change under the follower afterwards, and checked: a mapping with
string keys.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from s3stream.errors import ConfigError, S3StreamError
from s3stream.plugins import PARSERS_GROUP, load

Parser = Callable[[bytes], Mapping[str, Any]]


class InvalidSnapshot(S3StreamError):
    """A version of a key-value file that its parser refused."""


def _text(body: bytes) -> str:
    if not body:
        raise InvalidSnapshot("empty file (zero bytes)")
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidSnapshot(f"not UTF-8: invalid byte at offset {exc.start}") from None


def _put(out: dict[str, Any], key: str, value: Any, where: str, first: dict[str, str]) -> None:
    if not key:
        raise InvalidSnapshot(f"{where}: empty key")
    if key in out:
        raise InvalidSnapshot(f"{where}: duplicate key {key!r} (first at {first[key]})")
    out[key] = value
    first[key] = where


def _parse_csv(body: bytes, *, header: bool) -> dict[str, str]:
    reader = csv.reader(io.StringIO(_text(body), newline=""), strict=True)
    out: dict[str, str] = {}
    first: dict[str, str] = {}
    skip = header
    try:
        for row in reader:
            if not row:
                continue
            where = f"line {reader.line_num}"
            if len(row) != 2:
                raise InvalidSnapshot(f"{where}: expected 2 fields (key, value), got {len(row)}")
            if skip:
                skip = False
                continue
            _put(out, row[0], row[1], where, first)
    except csv.Error as exc:
        raise InvalidSnapshot(f"line {reader.line_num}: {exc}") from None
    return out


def parse_csv(body: bytes) -> dict[str, str]:
    """CSV rows ``key,value``, no header."""
    return _parse_csv(body, header=False)


def parse_csv_header(body: bytes) -> dict[str, str]:
    """CSV rows ``key,value`` after a header row."""
    return _parse_csv(body, header=True)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidSnapshot(f"duplicate key {key!r}")
        out[key] = value
    return out


def _loads(text: str, where: str = "") -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique)
    except InvalidSnapshot as exc:
        raise InvalidSnapshot(f"{where}{exc}") from None
    except ValueError as exc:
        raise InvalidSnapshot(f"{where}not valid JSON: {exc}") from None


def parse_json(body: bytes) -> dict[str, Any]:
    """One JSON object of key → value."""
    data = _loads(_text(body))
    if not isinstance(data, dict):
        raise InvalidSnapshot(f"expected a JSON object, got {type(data).__name__}")
    if "" in data:
        raise InvalidSnapshot("empty key")
    return data


def parse_jsonl(body: bytes) -> dict[str, Any]:
    """One ``{"key": ..., "value": ...}`` object per non-blank line."""
    out: dict[str, Any] = {}
    first: dict[str, str] = {}
    for number, line in enumerate(_text(body).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        record = _loads(line, f"{where}: ")
        if not isinstance(record, dict) or set(record) != {"key", "value"}:
            raise InvalidSnapshot(f'{where}: expected an object with exactly "key" and "value"')
        if not isinstance(record["key"], str):
            raise InvalidSnapshot(f'{where}: "key" must be a string, got {type(record["key"]).__name__}')
        _put(out, record["key"], record["value"], where, first)
    return out


BUILTIN: dict[str, Parser] = {
    "csv": parse_csv, "csv-header": parse_csv_header, "json": parse_json, "jsonl": parse_jsonl,
}


def resolve_parser(spec: str | Parser) -> tuple[str, Parser]:
    """``(name, parser)`` for a built-in name, an ``s3stream.snapshot_parsers`` entry point, a
    ``module:attr`` plugin, or a callable."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    if spec in BUILTIN:
        return spec, BUILTIN[spec]
    target = load("parser", spec, PARSERS_GROUP, BUILTIN)
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(f"parser {spec!r} could not be built: {exc}") from None
    if not callable(target):
        raise ConfigError(f"parser {spec!r} is not callable (a {type(target).__name__})")
    return spec, target


def frozen(result: object) -> Mapping[str, Any]:
    """A read-only copy of a parser's result, or InvalidSnapshot when it is not a str-keyed mapping."""
    if not isinstance(result, Mapping):
        raise InvalidSnapshot(f"the parser returned a {type(result).__name__}, not a mapping")
    data = dict(result)
    bad = next((k for k in data if not isinstance(k, str)), None)
    if bad is not None:
        raise InvalidSnapshot(f"the parser returned a non-string key {bad!r}")
    return MappingProxyType(data)
