"""Options shared by ``s3stream consume`` and ``run``: the handler retry settings and the dead-letter
switch (overriding ``[consumer]`` in the config file), and the periodic status line on a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

import click
from prometheus_client import Metric

from s3stream.pipeline.consumer import Consumer
from s3stream.service import metrics

F = TypeVar("F", bound=Callable[..., Any])
STATUS_ENV = "S3STREAM_STATUS_INTERVAL"
MEMBER_STATUS_ENV = "S3STREAM_STATUS_MEMBER"  # set by --processes: each child's line names its member
DEFAULT_STATUS_INTERVAL = 10.0
HANDLER_KEYS = ("handler_attempts", "handler_retry_time", "dead_letters")


def handler_options(func: F) -> F:
    """``--handler-attempts``, ``--handler-retry-time`` and ``--dead-letters/--no-dead-letters``."""
    func = click.option("--dead-letters/--no-dead-letters", "dead_letters", default=None,
                        help="Set a message that keeps failing aside as a dead letter and go on, or stop "
                             "the consumer there. [default: dead letters, or [consumer] dead_letters]")(func)
    func = click.option("--handler-retry-time", type=click.FloatRange(min=0), metavar="SECONDS",
                        help="Seconds a failing message's calls are spread over (the waits double). "
                             "[default: 60, or [consumer] handler_retry_time]")(func)
    return click.option("--handler-attempts", type=click.IntRange(min=1),
                        help="Handler calls before a message is dead-lettered. "
                             "[default: 5, or [consumer] handler_attempts]")(func)


def apply_handler_options(cli: dict[str, Any], opts: dict[str, Any]) -> None:
    """Put the handler options that were given into ``cli['consumer']`` (command-line overrides)."""
    given = {name: opts[name] for name in HANDLER_KEYS if opts.get(name) is not None}
    if given:
        cli.setdefault("consumer", {}).update(given)


def status_interval() -> float:
    """Seconds between status lines (``S3STREAM_STATUS_INTERVAL``, 10 by default)."""
    try:
        return max(0.05, float(os.environ.get(STATUS_ENV, DEFAULT_STATUS_INTERVAL)))
    except ValueError:
        return DEFAULT_STATUS_INTERVAL


def _samples(metric: Any, suffix: str = "") -> list[float]:
    collected: list[Metric] = metric.collect()
    return [s.value for m in collected for s in m.samples if s.name.endswith(suffix)]


class StatusLine:
    """The consumer's progress since the process started, from its Prometheus metrics: messages
    handled (total and per second since the last line), backlog (listed, not yet handled), lag (age of
    the oldest unfinished message) and dead letters."""

    def __init__(self, label: str = "") -> None:
        self.prefix = f"status {label}:" if label else "status:"
        self.last_total = self._consumed()
        self.base = self.last_total
        self.base_dead = self._dead()
        self.last_time = time.monotonic()

    @staticmethod
    def _consumed() -> float:
        return sum(_samples(metrics.MESSAGES_CONSUMED, "_total"))

    @staticmethod
    def _dead() -> float:
        return sum(_samples(metrics.DEAD_LETTERS, "_total"))

    def text(self) -> str:
        now, total = time.monotonic(), self._consumed()
        rate = (total - self.last_total) / max(now - self.last_time, 1e-9)
        self.last_total, self.last_time = total, now
        backlog = int(sum(_samples(metrics.LAG_MESSAGES)))
        lag = max(_samples(metrics.LAG_SECONDS), default=0.0)
        return (f"{self.prefix} {rate:.1f} msg/s, {int(total - self.base)} handled, backlog {backlog}, "
                f"lag {lag:.1f}s, dead letters {int(self._dead() - self.base_dead)}")


async def _report(file: TextIO, interval: float, label: str) -> None:
    line = StatusLine(label)
    while True:
        await asyncio.sleep(interval)
        click.echo(line.text(), file=file)


async def serve_with_status(consumer: Consumer, serve: Callable[[Consumer], Awaitable[None]],
                            *, file: TextIO | None = None) -> None:
    """Run ``serve(consumer)``; while it runs, and only when stderr is a terminal, write a status line
    there every ``S3STREAM_STATUS_INTERVAL`` seconds (naming the member, in a ``--processes`` child)."""
    out = file if file is not None else sys.stderr
    if not out.isatty():
        await serve(consumer)
        return
    label = (consumer.settings.consumer.leases.member_id or "") if os.environ.get(MEMBER_STATUS_ENV) else ""
    reporter = asyncio.create_task(_report(out, status_interval(), label))
    try:
        await serve(consumer)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
