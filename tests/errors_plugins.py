"""Handlers for tests/test_errors_cli.py, loaded by ``module:attr`` specs as a user's plugin is."""

from __future__ import annotations

from typing import Any

from s3stream.message import Message


def plain_handler(message):
    """The mistake: a plain function taking a message, named where a handler is expected. Never to be
    called: it would print to stdout, which the test checks is empty."""
    print("plain_handler was called with", message)


def annotated_handler(m: Message) -> None:
    """The same mistake, its parameter annotated ``Message`` under another name."""
    print("annotated_handler was called with", m)


def make_sink(message: dict[str, Any]) -> Any:
    """A valid factory, oddly naming its options ``message``: annotated as a dict, so not refused."""
    async def handle(msg: Message) -> None:
        del msg
    return handle


def make_unannotated(options):
    """A valid factory without annotations."""
    async def handle(msg: Message) -> None:
        del msg
    return handle


def returns_nothing(m):
    """A plain function that is called as a factory (its parameter gives nothing away) and returns None."""


async def reject_customer(message: Message) -> None:
    """Always fails, as a handler meeting data it cannot handle does."""
    raise ValueError(f"no such customer in {message.key}")
