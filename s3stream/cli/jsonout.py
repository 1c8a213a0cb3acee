"""``--json`` output: one JSON document (or one JSON line per item of a stream) on stdout.

Keys are stable, times are ISO 8601 UTC (``2026-11-23T14:46:00Z``), durations are seconds (``*_s``).
A command prints one document (an object, or an array for a list); ``history`` and ``tail``, which
print a stream of messages, print JSON lines, one message per line.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson


def emit(doc: Any) -> None:
    """Write ``doc`` as one indented JSON document on stdout."""
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.buffer.flush()


def emit_line(doc: Any) -> None:
    """Write ``doc`` as one JSON line on stdout (a stream of documents)."""
    sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
    sys.stdout.buffer.flush()
