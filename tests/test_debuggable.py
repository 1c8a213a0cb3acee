"""Debuggable failures: a failing handler's dead letter records the exception's type, message and a
bounded traceback, and its log lines carry the traceback; older dead letters (without those fields)
are still listed and replayed; and as a library s3stream leaves the application's logging alone:
its events follow the application's structlog configuration, or stdlib logging when structlog is not
configured, and nothing goes to stdout."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from s3stream.service.deadletter import TRACEBACK_LIMIT, DeadLetter, format_traceback
from tests.conftest import cli_command, make_settings, running, wait_until
from tests.test_cli import child_env, run_cli, sigterm_and_wait, write_config
from tests.test_faults import dead_letters

TIMEOUT = 30.0


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def frames(event: dict[str, Any]) -> list[str]:
    """The function names of the frames of a JSON log line's ``exception``."""
    return [f["name"] for exc in event.get("exception", []) for f in exc["frames"]]


async def test_failing_handler_dead_letter_and_log_lines_carry_the_traceback(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path,
) -> None:
    """``consume --handler mod:fn`` whose handler always raises: its dead letter has ``error_type``,
    ``error_message`` and a traceback naming the handler; the first failure's log line and the
    dead-lettered line (JSON on stderr) carry the exception with its frames; SIGTERM exits 0."""
    await store.put_object(bucket, "topic/k1", b"order 1")
    config = write_config(tmp_path / "c.toml", (
        "[s3]\naddressing_style = \"path\"\n[consumer]\npoll_interval = 0.1\nmax_poll_interval = 0.3\n"
        "settle_window = 2\nhandler_attempts = 2\nhandler_retry_time = 0.2\n"))
    err = (tmp_path / "stderr.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *cli_command("consume", f"s3://{bucket}/topic/", "--group", "e2e", "--config", config,
                     "--handler", "tests.errors_plugins:reject_customer", "--endpoint-url", moto_endpoint),
        env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    letters: list[dict[str, Any]] = []

    async def lettered() -> bool:
        letters[:] = await dead_letters(store, bucket, "e2e")
        return bool(letters) or proc.returncode is not None

    try:
        await wait_until(lettered, TIMEOUT, "dead letter")
        code = await sigterm_and_wait(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err.close()
    stderr = (tmp_path / "stderr.log").read_text()
    assert code == 0, stderr
    [letter] = letters
    assert letter["error_type"] == "builtins.ValueError"
    assert letter["error_message"] == "no such customer in topic/k1"
    assert "ValueError: no such customer in topic/k1" in letter["traceback"]
    assert "in reject_customer" in letter["traceback"]
    assert letter["attempts"] == 2
    events = json_lines(stderr)
    [first] = [e for e in events if e["event"] == "handler failed" and e["attempt"] == 1]
    [second] = [e for e in events if e["event"] == "handler failed" and e["attempt"] == 2]
    [lettered_line] = [e for e in events if e["event"] == "dead-lettered"]
    for event in (first, lettered_line):
        assert event["exception"][0]["exc_type"] == "ValueError", event
        assert "reject_customer" in frames(event), event
    assert "exception" not in second  # retries in between: one line each, no repeated traceback
    assert "Traceback" not in stderr  # JSON lines: the traceback is structured, one line per event


async def test_dead_letters_without_the_new_fields_are_listed_and_replayed(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path,
) -> None:
    """A dead letter written before ``error_type``/``error_message``/``traceback`` existed reads as
    empty strings; ``dlq list`` shows it beside a new one and ``dlq replay`` hands both to a handler."""
    old = {"bucket": bucket, "key": "topic/old", "version_id": "v-old", "offset": None, "error": "boom",
           "attempts": 5, "time_ms": 1_700_000_000_000, "body_b64": base64.b64encode(b"old body").decode()}
    new = {**old, "key": "topic/new", "version_id": "v-new", "error": "ValueError('x')",
           "error_type": "builtins.ValueError", "error_message": "x", "traceback": "Traceback ...",
           "body_b64": base64.b64encode(b"new body").decode(), "deleted": False, "partition_key": None}
    prefix = "_s3stream/dead-letters/legacy/topic/"
    for name, doc in (("0000000000001-old.json", old), ("0000000000002-new.json", new)):
        await store.put_object(bucket, prefix + name, orjson.dumps(doc))
    parsed = DeadLetter.from_json("k", orjson.dumps(old))
    assert (parsed.error_type, parsed.error_message, parsed.traceback) == ("", "", "")
    listed = await asyncio.to_thread(run_cli, "dlq", "list", f"s3://{bucket}/topic/", "--group", "legacy",
                                     "--endpoint-url", moto_endpoint, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 2, listed.stdout
    assert "topic/old" in listed.stdout
    assert "topic/new" in listed.stdout
    replayed = await asyncio.to_thread(run_cli, "dlq", "replay", f"s3://{bucket}/topic/", "--group", "legacy",
                                       "--endpoint-url", moto_endpoint, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert sorted(json.loads(line)["body"] for line in replayed.stdout.splitlines()) == ["new body",
                                                                                           "old body"]


def test_traceback_is_cut_to_its_last_characters_at_a_line_start() -> None:
    """A traceback longer than ``TRACEBACK_LIMIT`` keeps its end (the innermost frames and the error),
    starting after a ``...`` line at a line start, within the limit."""
    def recurse(n: int) -> None:  # two functions in turn: Python does not fold their frames
        if n == 0:
            raise ValueError("deep")
        other(n - 1)

    def other(n: int) -> None:
        recurse(n)

    try:
        recurse(200)
    except ValueError as exc:
        text = format_traceback(exc)
    assert len(text) <= TRACEBACK_LIMIT
    assert text.startswith("...\n  ")
    assert text.endswith("ValueError: deep\n")


# --- as a library -------------------------------------------------------------------------------------


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    """Put structlog's configuration back as it was after the test."""
    was, before = structlog.is_configured(), structlog.get_config()
    yield
    if was:
        structlog.configure(**before)
    else:
        structlog.reset_defaults()


async def run_failing_consumer(store: Store, bucket: str, endpoint: str, group: str) -> None:
    """Run a library Consumer whose handler always fails until the message is dead-lettered."""
    await store.put_object(bucket, "lib/k1", b"x")

    async def handler(message: Message) -> None:
        raise ValueError(f"no such customer in {message.key}")

    consumer = Consumer(make_settings(endpoint, f"s3://{bucket}/lib/", group=group, handler_attempts=2,
                                      handler_retry_time=0.2))
    consumer.register_handler("rec", handler)
    async with running(consumer):
        await wait_until(lambda: dead_letters(store, bucket, group), TIMEOUT, "dead letter")


async def test_an_applications_structlog_configuration_is_used_and_untouched(
    store: Store, bucket: str, moto_endpoint: str, capfd: pytest.CaptureFixture[str],
    structlog_restored: None,
) -> None:
    """An application that configured structlog gets s3stream's events through its own processors
    (the failure with its exception), its configuration is the same afterwards, stdlib logging's
    handlers are unchanged, and nothing reached stdout."""
    captured: list[dict[str, Any]] = []

    def capture(_: Any, method: str, event: dict[str, Any]) -> Any:
        captured.append({**event, "method": method})
        raise structlog.DropEvent

    structlog.configure(processors=[capture], logger_factory=structlog.ReturnLoggerFactory(),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    before = structlog.get_config()
    handlers = list(logging.getLogger().handlers)
    await run_failing_consumer(store, bucket, moto_endpoint, "lib-app")
    assert structlog.get_config() == before
    assert logging.getLogger().handlers == handlers
    failed = [e for e in captured if e["event"] == "handler failed"]
    assert failed
    assert failed[0]["method"] == "warning"
    assert isinstance(failed[0]["exc_info"], ValueError)
    assert any(e["event"] == "dead-lettered" for e in captured)
    assert capfd.readouterr().out == ""


async def test_without_structlog_configured_events_go_to_stdlib_logging(
    store: Store, bucket: str, moto_endpoint: str, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, structlog_restored: None,
) -> None:
    """With structlog unconfigured (its defaults print to stdout), s3stream's events are records of
    the ``s3stream.*`` stdlib loggers, with the exception as ``exc_info``; structlog stays
    unconfigured and nothing reached stdout."""
    structlog.reset_defaults()
    caplog.set_level(logging.INFO, logger="s3stream")
    await run_failing_consumer(store, bucket, moto_endpoint, "lib-stdlib")
    assert not structlog.is_configured()
    failed = [r for r in caplog.records if r.getMessage().startswith("handler failed")]
    assert failed, [r.getMessage() for r in caplog.records]
    assert failed[0].name == "s3stream.pipeline.workers"
    assert failed[0].levelno == logging.WARNING
    assert failed[0].exc_info is not None
    assert failed[0].exc_info[0] is ValueError
    assert "key=lib/k1" in failed[0].getMessage()
    assert capfd.readouterr().out == ""
