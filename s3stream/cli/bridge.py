"""``s3stream bridge sqs``: stream a prefix into an SQS queue (the S3-to-SQS bridge), once or continuously.

The bridge is a :class:`~s3stream.pipeline.consumer.Consumer` whose handler is the ``sqs`` handler
(:mod:`s3stream.integrations.bridge`), with a checkpoint per consumer group like any consumer: a second run
sends
only what is new. ``--once`` stops the consumer cleanly when it is idle: every shard has completed a
listing pass that began after the start and covered everything up to then (a log-layout pass lists
at most 60 directories, so an older backlog takes several), and nothing is in flight; so
everything that existed when the command started was sent (and checkpointed). On a prefix that is
never quiet, ``--once`` waits for a quiet moment.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click

from s3stream.cli.app import fail, quiet_logs, run_async, s3_options, serve
from s3stream.cli.progress import reporter
from s3stream.config import Settings, build_settings, read_toml
from s3stream.errors import ConfigError, S3StreamError
from s3stream.integrations.bridge import SqsBridge, Template, queue_region
from s3stream.layouts.logcursor import LogCursor
from s3stream.layouts.logpoller import MAX_DIRS_PER_PASS
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.shard import Shard
from s3stream.s3.sqs import open_sqs
from s3stream.service.progress import ProgressCallback

HANDLER = "sqs"
_BRIDGE_OPTIONS = ("queue_url", "template", "group_by", "batch_linger", "deletes")


def default_group(queue_url: str) -> str:
    """The consumer group of a bridge when none is given: ``sqs-<queue name>``, so that each queue
    has its own checkpoint and a second run to the same queue sends only what is new."""
    name = queue_url.rstrip("/").rsplit("/", 1)[-1]
    return "sqs-" + (re.sub(r"[^A-Za-z0-9._-]", "_", name) or "queue")


def bridge_settings(url: str, *, config: str | None, endpoint_url: str | None = None,
                    group: str | None = None, checkpoint_dir: str | None = None,
                    queue_url: str | None = None, **handler: Any) -> tuple[Settings, dict[str, Any]]:
    """The consumer settings and the ``sqs`` handler options of a bridge: the config file's ``[s3]``,
    ``[consumer]``, ``[metrics]`` and ``[handlers.sqs]`` sections, then the command-line options.
    A bridge stops instead of dead-lettering a message it cannot send, unless the config says
    ``dead_letters = true``."""
    read = read_toml(config) if config else {}
    data: dict[str, Any] = {k: read[k] for k in ("s3", "consumer", "metrics") if k in read}
    options = {k: v for k, v in dict(read.get("handlers", {}).get(HANDLER, {})).items()
               if k in _BRIDGE_OPTIONS}
    options.update({k: v for k, v in {"queue_url": queue_url, **handler}.items() if v is not None})
    if not options.get("queue_url"):
        raise ConfigError("bridge sqs: --queue-url (or queue_url in [handlers.sqs]) is required")
    Template(options.get("template"))  # a bad template fails here, before anything is opened
    consumer = data.setdefault("consumer", {})
    consumer.setdefault("dead_letters", False)
    consumer["group"] = group or consumer.get("group") or default_group(str(options["queue_url"]))
    if checkpoint_dir is not None:
        consumer.setdefault("checkpoint", {}).update(store="file", directory=checkpoint_dir)
    if endpoint_url:
        data.setdefault("s3", {})["endpoint_url"] = endpoint_url
    data["sources"] = [{"url": url, "handler": HANDLER}]
    return build_settings(data), options


async def stop_when_idle(consumer: Consumer, *, check: float = 0.05) -> None:
    """Stop ``consumer`` once what existed when it started has been handled: every shard has completed
    a listing pass that *began* after a moment ``mark`` (its second pass ending after it) at which
    every log-layout shard's open directories fit in one pass, and nothing is in flight."""
    await consumer.started.wait()
    settle_ms = int(consumer.settings.consumer.settle_window * 1000)
    while True:
        mark = time.monotonic()
        if all(_caught_up(shard, settle_ms) for shard in consumer.shards):
            first: dict[int, float] = {}
            while not all(shard.last_poll > first.get(id(shard), float("inf")) for shard in consumer.shards):
                await asyncio.sleep(check)
                for shard in consumer.shards:
                    if id(shard) not in first and shard.last_poll > mark:
                        first[id(shard)] = shard.last_poll
            if consumer.pool is not None and consumer.pool.pending == 0:
                consumer.stop()
                return
        await asyncio.sleep(check)


def _caught_up(shard: Shard, settle_ms: int) -> bool:
    """True when the shard's next pass lists everything up to now (a log-layout pass lists at most
    ``MAX_DIRS_PER_PASS`` directories; a versions pass lists every page). Times are the
    server's, so a host clock ahead or behind does not matter."""
    if not isinstance(shard.cursor, LogCursor):
        return True
    if not shard.cursor.horizon_ms:  # no pass yet
        return False
    now_ms = shard.cursor.horizon_ms + 1000  # the server's time at the start of the last pass
    return len(shard.cursor.open_dirs(now_ms, settle_ms, MAX_DIRS_PER_PASS)) < MAX_DIRS_PER_PASS


def shard_namer(consumer: Consumer) -> Callable[[Message], str]:
    """A message's shard name (``s3://bucket/prefix``): the longest shard prefix holding its key."""

    def shard_of(message: Message) -> str:
        holding = [s for s in consumer.shards
                   if s.bucket == message.bucket and message.key.startswith(s.prefix)]
        best = max(holding, key=lambda s: len(s.prefix), default=None)
        return best.name if best is not None else f"s3://{message.bucket}/"

    return shard_of


async def run_bridge(settings: Settings, options: dict[str, Any], *, once: bool,
                     runner: Callable[[Consumer], Awaitable[None]] | None = None,
                     progress: ProgressCallback | None = None) -> int:
    """Bridge ``settings``' source into the queue of ``options``; returns how many messages were sent.
    The queue is checked first, so a wrong URL fails at once with one line. ``runner`` runs the
    consumer (the CLI's signal-handling ``serve``; ``Consumer.run`` by default); ``progress(sent,
    None)`` is called as messages are sent (at most every 0.1 s)."""
    queue_url = str(options["queue_url"])
    sqs_settings = settings.s3
    region = queue_region(queue_url)
    if region is not None:
        sqs_settings = sqs_settings.model_copy(update={"region": region})
    async with open_sqs(sqs_settings) as queue:
        await queue.queue_arn(queue_url)
        if once:  # a drain to the present: list on, never wait for a head
            settings = settings.model_copy(update={
                "consumer": settings.consumer.model_copy(update={"wakeup": "listing"})})
        consumer = Consumer(settings)
        bridge = SqsBridge(
            queue_url, queue=queue, template=options.get("template"),
            group_by=str(options.get("group_by", "shard")),
            batch_linger=float(options.get("batch_linger", 0.05)), deletes=bool(options.get("deletes", True)),
            shard_of=shard_namer(consumer),
        )
        consumer.register_handler(HANDLER, bridge)
        watcher = asyncio.create_task(stop_when_idle(consumer)) if once else None
        counter = asyncio.create_task(_count(bridge, progress)) if progress is not None else None
        try:
            await (runner or Consumer.run)(consumer)
        finally:
            for task in (watcher, counter):
                if task is not None:
                    task.cancel()
    if progress is not None:
        progress(bridge.sent, None)
    return bridge.sent


async def _count(bridge: SqsBridge, progress: ProgressCallback) -> None:
    """Report ``bridge.sent`` to ``progress`` whenever it changed, every 0.1 s."""
    reported = 0
    while True:
        await asyncio.sleep(0.1)
        if bridge.sent != reported:
            reported = bridge.sent
            progress(reported, None)


@click.group()
def bridge() -> None:
    """Bridge a prefix to another system (SQS)."""


@bridge.command("sqs")
@click.argument("url")
@click.option("--queue-url", help="The SQS queue (a .fifo URL gets deduplication and group ids).")
@click.option("--once", is_flag=True,
              help="Send what exists now, then exit (a second run sends only what is new).")
@click.option("--group", help="Consumer group, i.e. checkpoint. [default: sqs-<queue name>]")
@click.option("--template", help="Message body: a str.format template over bucket, key, version_id, size, "
                                 "etag, last_modified, deleted, offset; or a JSON object whose strings are.")
@click.option("--group-by", type=click.Choice(["shard", "key"]), help="FIFO MessageGroupId. [default: shard]")
@click.option("--checkpoint-dir", help="Keep checkpoints in this local folder instead of the bucket.")
@s3_options
def bridge_sqs(url: str, once: bool, endpoint_url: str | None, config: str | None, **opts: Any) -> None:
    """Send one SQS message per object (version) under s3://BUCKET/PREFIX, in batches of up to 10.

    With --once, progress goes to stderr (a bar on a terminal, else a line every 5 s). Without --once
    it keeps streaming until SIGTERM or SIGINT. --endpoint-url (or AWS_ENDPOINT_URL)
    applies to S3 and SQS; AWS_ENDPOINT_URL_SQS or AWS_ENDPOINT_URL_S3 overrides it for one service.
    """
    if once:
        quiet_logs()
    try:
        settings, options = bridge_settings(url, config=config, endpoint_url=endpoint_url, **opts)
    except S3StreamError as exc:
        fail(exc)

    async def go() -> None:
        if once:
            with reporter(f"sending {url}", unit="messages") as progress:
                sent = await run_bridge(settings, options, once=True, runner=serve, progress=progress)
        else:
            sent = await run_bridge(settings, options, once=False, runner=serve)
        click.echo(f"sent {sent} message(s) to {options['queue_url']}", err=True)

    run_async(go)
