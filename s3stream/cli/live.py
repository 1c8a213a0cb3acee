"""Live commands: ``tail`` (print new messages as they arrive) and ``chat`` (the AWS CLI walkthrough's chat
client).

Both run a :class:`~s3stream.pipeline.consumer.Consumer` whose checkpoints stay in memory and that writes no
dead letters, so they leave nothing behind in the bucket. An output that goes away (``tail | head``)
ends the run cleanly. The command line passes ``serve``, which runs the consumer until SIGINT/SIGTERM
(signals belong to the command line). Each says on stderr when its first listing pass is complete:
from then on, every message published is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, BinaryIO, Literal

import click
import orjson

from s3stream.config import CheckpointSettings, LeaseSettings, Settings
from s3stream.errors import BucketNotFound
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import TopicExists, create_topic, is_directory_bucket, load_topic
from s3stream.message import Message, datetime_to_ms, iso
from s3stream.ops.admin import directory_zone
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.handlers import message_json, write_out
from s3stream.s3.keys import split_url
from s3stream.s3.store import Store, open_store

ServeFn = Callable[[Consumer], Coroutine[Any, Any, None]]
HANDLER = "live"
LINE_LIMIT = 1 << 20  # longest chat line read from stdin


def live_config(url: str, *, start_from: Literal["earliest", "latest"] = "latest",
                poll_interval: float = 0.5, concurrency: int = 1) -> dict[str, Any]:
    """The consumer sections of a live reader of ``url``: memory checkpoints, no dead letters (a live
    reader writes nothing to the bucket), quick polls. With one worker (the default) messages are shown
    in the order they are handed out."""
    return {
        "consumer": {
            "group": HANDLER, "start_from": start_from, "poll_interval": poll_interval,
            "max_poll_interval": max(poll_interval, 1.0), "concurrency": concurrency,
            "checkpoint": {"store": "memory"}, "dead_letters": False,
        },
        "sources": [{"url": url, "handler": HANDLER}],
    }


async def first_pass(consumer: Consumer, task: asyncio.Task[None]) -> bool:
    """Wait until every shard has been listed once (False when the consumer stopped first)."""
    started = asyncio.ensure_future(consumer.started.wait())
    await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
    marks = [(shard, shard.last_poll) for shard in consumer.shards]
    while not task.done():
        if all(shard.last_poll != mark for shard, mark in marks):
            return True
        await asyncio.sleep(0.02)
    return False


class _Printer:
    """Prints each message: its body as a line, or with ``as_json`` its JSON line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    async def __call__(self, message: Message) -> None:
        if self.as_json:
            line = message_json(message)
        elif message.deleted:
            click.echo(f"(deleted: {message.key})", err=True)
            return
        else:
            line = message.body if message.body.endswith(b"\n") else message.body + b"\n"
        write_out(sys.stdout.buffer, line, "standard output")


def read_only(settings: Settings) -> Settings:
    """``settings`` with everything that would write to the bucket turned off, whatever the
    environment said (``S3STREAM_CONSUMER__…`` overrides beat ``live_config``): checkpoints in memory,
    no dead letters, no leases."""
    consumer = settings.consumer.model_copy(update={
        "dead_letters": False, "checkpoint": CheckpointSettings(store="memory"), "leases": LeaseSettings()})
    return settings.model_copy(update={"consumer": consumer})


async def tail(settings: Settings, *, as_json: bool, serve: ServeFn) -> None:
    """Print messages live until ``serve`` returns (on SIGINT or SIGTERM, or when the output is gone)."""
    consumer = Consumer(read_only(settings))
    consumer.register_handler(HANDLER, _Printer(as_json))
    task = asyncio.create_task(serve(consumer))
    if await first_pass(consumer, task):
        source = settings.sources[0].url
        click.echo(f"tailing {source} from {settings.consumer.start_from}; Ctrl-C to stop", err=True)
    await task


def chat_line(message: Message) -> str:
    """``[timestamp] user: message`` for a chat message (anything else is shown with its time)."""
    try:
        doc = orjson.loads(message.body)
        return f"[{doc['timestamp']}] {doc['user']}: {doc['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = message.body.decode("utf-8", errors="replace").rstrip("\n")
        return f"[{iso(datetime_to_ms(message.last_modified))}] ?: {text}"


async def _show(message: Message) -> None:
    if not message.deleted:
        write_out(sys.stdout.buffer, chat_line(message).encode("utf-8", errors="replace") + b"\n",
                  "standard output")


async def chat(settings: Settings, url: str, *, user: str, serve: ServeFn) -> None:
    """Join the room at ``url`` (creating bucket and room if missing), send stdin's lines as ``user``
    and show everyone's messages, until ``/exit``, the end of stdin, SIGINT or SIGTERM."""
    bucket, room = split_url(url)
    async with open_store(settings.s3, max_connections=8) as store:
        await ensure_room(store, bucket, room, region=settings.s3.region)
        async with Producer(settings, store=store) as producer:
            consumer = Consumer(read_only(settings))
            consumer.register_handler(HANDLER, _show)
            task = asyncio.create_task(serve(consumer))
            if await first_pass(consumer, task):
                click.echo(f"S3 Chat: joined {url} as {user}. Type a message and press Enter; /exit quits.",
                           err=True)
                await _converse(consumer, task, _send_lines(producer, url, user))
            await task


async def ensure_room(store: Store, bucket: str, room: str, *, region: str) -> None:
    """Create the bucket (unversioned: a room is a log-layout topic) and the room's topic if missing."""
    try:
        await store.check_bucket(bucket)
    except BucketNotFound:
        if is_directory_bucket(bucket):
            await store.create_directory_bucket(bucket, directory_zone(bucket))
        else:
            await store.create_bucket(bucket, versioning=False, region=region)
    if await load_topic(store, bucket, room) is None:
        with contextlib.suppress(TopicExists):  # another member created it first
            await create_topic(store, bucket, room, shards=1, layout="log")


async def _converse(consumer: Consumer, task: asyncio.Task[None], send: Awaitable[None]) -> None:
    """Send until ``send`` ends (then stop the consumer) or the consumer stops (then stop sending)."""
    sender = asyncio.ensure_future(send)
    try:
        await asyncio.wait({sender, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        consumer.stop()
        sender.cancel()
        await asyncio.wait({sender})
    error = None if sender.cancelled() else sender.exception()
    if error is not None:
        raise error


async def _send_lines(producer: Producer, url: str, user: str) -> None:
    async with stdin_lines() as lines:
        async for text in lines:
            if text == "/exit":
                return
            if text.strip():
                stamp = datetime.now().astimezone().isoformat(timespec="seconds")
                doc = {"user": user, "message": text, "timestamp": stamp}
                await producer.publish(url, orjson.dumps(doc))


@contextlib.asynccontextmanager
async def stdin_lines() -> AsyncIterator[AsyncIterator[str]]:
    """Standard input's lines (without line ends), read without blocking the event loop: a pipe, socket
    or terminal through the loop's pipe transport; anything else (a file, /dev/null) never blocks, so
    it is read at once (event loops refuse to watch files, and uvloop aborts on them)."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    transport: asyncio.BaseTransport | None = None
    with _dup_stdin() as pipe:
        mode = os.fstat(pipe.fileno()).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or pipe.isatty():
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe)
        else:
            reader.feed_data(pipe.read())
            reader.feed_eof()
        try:
            yield _lines(reader)
        finally:
            if transport is not None:
                transport.close()
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(sys.stdin.fileno(), True)  # the flag is shared with the terminal


def _dup_stdin() -> BinaryIO:
    """A second handle on stdin, for the transport to own and close (stdin itself stays open)."""
    return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)


async def _lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    while True:
        line = await reader.readline()
        if not line:
            return
        yield line.decode("utf-8", errors="replace").rstrip("\r\n")


def default_user() -> str:
    """``$USER``, else the login name, else ``anonymous``."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        return "anonymous"
