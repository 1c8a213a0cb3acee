"""Small handlers for tests/test_handlers.py, loaded by ``module:attr`` specs as a user's plugin is."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from s3stream.message import Message
from s3stream.pipeline.handlers import handler_factory

received: list[Message] = []


async def record(message: Message) -> None:
    """A plain async function handler: appends every message to ``received``."""
    received.append(message)


class Collector:
    """A handler object with a lifecycle, built by :func:`make_collector` from its options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.messages: list[Message] = []
        self.closed = False

    async def handle(self, message: Message) -> None:
        self.messages.append(message)

    async def close(self) -> None:
        self.closed = True


built: list[Collector] = []


def make_collector(options: dict[str, Any]) -> Collector:
    """A factory: receives the handler's own config section and returns a handle()/close() object."""
    collector = Collector(options)
    built.append(collector)
    return collector


def make_failing(options: dict[str, Any]) -> Collector:
    """A factory that rejects its options."""
    raise ValueError(f"bad options {sorted(options)}")


def make_nothing(options: dict[str, Any]) -> None:
    """A factory that forgot to return its handler."""


class SyncHandle:
    """An object whose handle()/close() are plain functions, not coroutines."""

    def handle(self, message: Message) -> None:
        pass

    def close(self) -> None:
        pass


def make_sync(options: dict[str, Any]) -> SyncHandle:
    """A factory returning an object with synchronous handle()/close()."""
    return SyncHandle()


class Namespace:
    """Holds a handler one attribute deeper, for ``module:Outer.attr`` specs."""

    record = staticmethod(record)


NOT_CALLABLE = 42


# --- async factories (tests/test_plugins.py) ----------------------------------------------------------

events: list[str] = []
gate: asyncio.Event | None = None  # a message whose key is the option ``hold`` waits for it


class Pool:
    """A handler holding a "connection pool" opened by an async factory and closed at shutdown."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.messages: list[Message] = []
        self.closed = False

    async def handle(self, message: Message) -> None:
        if message.key == self.options.get("hold") and gate is not None:
            events.append(f"held {message.key}")
            await gate.wait()
            events.append(f"released {message.key}")
        else:
            events.append(f"handle {message.key}")
        self.messages.append(message)

    async def close(self) -> None:
        events.append("close")
        self.closed = True


pools: list[Pool] = []


@handler_factory
async def open_pool(options: dict[str, Any]) -> Pool:
    """An ``async def`` factory marked as one: awaited once, at consumer start."""
    await asyncio.sleep(0)
    events.append("open")
    pool = Pool(options)
    pools.append(pool)
    return pool


def open_pool_later(options: dict[str, Any]) -> Coroutine[Any, Any, Pool]:
    """A plain factory whose result is awaitable: awaited as an async factory's is."""
    return open_pool(options)


@handler_factory
async def open_broken(options: dict[str, Any]) -> Pool:
    """An async factory whose connection fails."""
    raise ConnectionRefusedError("pool: connection refused")


async def always_fails(message: Message) -> None:
    """A handler that raises on every message (to exercise retries and dead letters)."""
    raise RuntimeError(f"cannot handle {message.key}")
