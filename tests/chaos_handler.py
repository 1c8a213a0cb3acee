"""The chaos test's handler plugin, loaded by ``use = "tests.chaos_handler:make"`` as a user's plugin is.

Each call appends two JSON lines to ``path``: ``start`` as the call begins and ``end`` as it returns,
each written with one ``write(2)`` on an ``O_APPEND`` descriptor, so a line is whole or absent and
``kill -9`` leaves a start without an end. Between them the call sleeps 5-20 ms, long enough for two
members running one shard at once to overlap; a fraction ``slow`` of calls (at most one per process
every ``SLOW_GAP`` seconds) sleeps 4-8 s instead, longer than a lease, so a drain, a handover or a
pause meets a call still running. Lines carry the member name, the pid, a per-process call number
(pairing start and end), the shard prefix (``orders/<shard>/`` of the key), the key, the version id,
the body and ``time.time()``: every process shares the machine's clock.
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

SLOW_GAP = 12.0


class ChaosRecorder:
    """Writes a start and an end line per call to ``path``, naming the member ``member``."""

    def __init__(self, path: str, member: str, slow: float) -> None:
        self.member, self.slow = member, slow
        self.pid = os.getpid()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._calls = itertools.count()
        self._rng = random.Random()
        self._last_slow = -SLOW_GAP

    def _pause(self) -> float:
        now = time.monotonic()
        if self._rng.random() < self.slow and now - self._last_slow >= SLOW_GAP:
            self._last_slow = now
            return self._rng.uniform(4.0, 8.0)
        return self._rng.uniform(0.005, 0.020)

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
            await asyncio.sleep(self._pause())
            ok = True
        finally:  # cancelled at the end of a grace period: an end line saying so
            self._line({"ev": "end", "m": self.member, "pid": self.pid, "n": n, "ok": ok, "t": time.time()})

    async def close(self) -> None:
        os.close(self._fd)


def make(options: dict[str, Any]) -> ChaosRecorder:
    """The factory: ``[handlers.NAME]`` with ``path`` (the output file), ``member`` (its name) and
    optionally ``slow`` (the fraction of slow calls, 0 by default)."""
    if not {"path", "member"} <= set(options) <= {"path", "member", "slow"}:
        raise ValueError(f"chaos handler needs path and member, and takes slow; got {sorted(options)}")
    return ChaosRecorder(str(options["path"]), str(options["member"]), float(options.get("slow", 0.0)))
