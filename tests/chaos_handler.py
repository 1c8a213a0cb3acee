"""The chaos test's handler plugin, loaded by ``use = "tests.chaos_handler:make"`` as a user's plugin is.

Each call appends two JSON lines to ``path``: ``start`` as the call begins and ``end`` as it returns,
each written with one ``write(2)`` on an ``O_APPEND`` descriptor, so a line is whole or absent and
``kill -9`` leaves a start without an end. Between them the call sleeps 5-20 ms, long enough for two
members running one shard at once to overlap. Lines carry the member name, the pid, a per-process call
number (pairing start and end), the shard prefix (``orders/<shard>/`` of the key), the key, the
version id, the body and ``time.time()``: every process shares the machine's clock.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from typing import Any

import orjson

from s3stream.message import Message


class ChaosRecorder:
    """Writes a start and an end line per call to ``path``, naming the member ``member``."""

    def __init__(self, path: str, member: str) -> None:
        self.member = member
        self.pid = os.getpid()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._calls = itertools.count()
        self._rng = random.Random()

    def _line(self, doc: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(doc) + b"\n")

    async def handle(self, message: Message) -> None:
        n = next(self._calls)
        self._line({"ev": "start", "m": self.member, "pid": self.pid, "n": n,
                    "shard": message.key.rsplit("/", 1)[0] + "/", "key": message.key,
                    "vid": message.version_id, "body": message.body.decode("utf-8", "replace"),
                    "t": time.time()})
        ok = False
        try:
            await asyncio.sleep(self._rng.uniform(0.005, 0.020))
            ok = True
        finally:  # cancelled at the end of a grace period: an end line saying so
            self._line({"ev": "end", "m": self.member, "pid": self.pid, "n": n, "ok": ok, "t": time.time()})

    async def close(self) -> None:
        os.close(self._fd)


def make(options: dict[str, Any]) -> ChaosRecorder:
    """The factory: ``[handlers.NAME]`` with ``path`` (the output file) and ``member`` (its name)."""
    if set(options) != {"path", "member"}:
        raise ValueError(f"chaos handler needs path and member, got {sorted(options)}")
    return ChaosRecorder(str(options["path"]), str(options["member"]))
