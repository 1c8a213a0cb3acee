"""The checkpointer: commits each shard's cursor every ``interval`` s while work completes.

Thin by design: the cursor decides *what* may be committed (completed work only); this module only
decides *when* and writes it. A commit is skipped when the done set has not changed since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from s3stream.errors import CheckpointConflict, RetriableError
from s3stream.pipeline.shard import Shard
from s3stream.service import metrics
from s3stream.service.logs import get_logger

log = get_logger("s3stream.pipeline.checkpointer")


class Checkpointer:
    """Commits shard cursors about once per ``interval`` while work completes, and at shutdown."""

    def __init__(self, shards: list[Shard], *, interval: float,
                 on_conflict: Callable[[Shard], bool] | None = None) -> None:
        self.shards = shards  # the consumer's own list: shards come and go in a consumer group
        self.interval = interval
        self.wake = asyncio.Event()
        self.commits = 0
        self.on_conflict = on_conflict  # True: the conflict is handled (the shard's lease was lost)
        self.series = metrics.ShardSeries()

    async def run(self) -> None:
        """Commit every ``interval`` seconds, and when woken (a pass or a batch finished): at once if
        the last commit is ``interval`` old, else when it is. A consumer keeping up with a steady
        stream finishes its work between most messages; it still writes one checkpoint per shard per
        interval, not one per pass, and a crash redelivers at most about an interval of work."""
        last = float("-inf")
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.wake.wait()
            rest = last + self.interval - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
            self.wake.clear()
            last = time.monotonic()
            self.observe_lag()
            try:
                await self.flush()
            except RetriableError as exc:
                log.warning("checkpoint commit failed; will retry", error=str(exc))

    def observe_lag(self) -> None:
        """Per-shard lag gauges: unfinished items, and the age of the oldest of them."""
        now_ms = time.time() * 1000
        self.series.keep_only(self.shards)  # a shard given up or taken by another member: its series go
        for shard in self.shards:
            oldest = shard.cursor.oldest_in_flight_ms()
            self.series.lag(shard, shard.cursor.in_flight,
                            0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))

    async def flush(self) -> None:
        """Commit every shard whose done set changed since its last commit."""
        for shard in list(self.shards):
            await self.commit(shard)

    async def commit(self, shard: Shard) -> None:
        """Commit one shard if its done set changed. A conflict (another member fenced the shard)
        goes to ``on_conflict``; without one, or when it declines, it is raised. Commits of one shard
        (the periodic one, a handover's, the final one) take turns: each writes on the ETag of the last."""
        async with shard.commit_lock:
            snapshot = shard.cursor.checkpoint()
            generation = shard.cursor.generation
            if generation == shard.saved_generation:
                self.series.checkpointed(shard, written=False)  # nothing new: the stored one is current
                return
            try:
                await shard.checkpoints.save(snapshot)
            except CheckpointConflict:
                if self.on_conflict is not None and self.on_conflict(shard):
                    return
                raise
            shard.saved_generation = generation
        self.commits += 1
        self.series.checkpointed(shard, written=True)
        log.debug("committed", shard=shard.name, watermark_ms=shard.cursor.watermark_ms,
                  done=len(snapshot.done))
