"""Small handlers for tests/test_handlers.py, loaded by ``module:attr`` specs as a user's plugin is."""

from __future__ import annotations

from typing import Any

from s3stream.message import Message

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


async def always_fails(message: Message) -> None:
    """A handler that raises on every message (to exercise retries and dead letters)."""
    raise RuntimeError(f"cannot handle {message.key}")
