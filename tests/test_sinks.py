"""Sinks that fail: a downstream that is down for a while, and an output that goes away.

DESIGN.md promise 7: a handler that keeps failing is dead-lettered only after retries spread over a
meaningful time (``handler_retry_time``), so a short outage of a downstream is ridden out; an output
that is gone (``consume … | head -3``) ends the run cleanly, commits only what was written and is
never a reason to dead-letter. ``tail`` writes nothing to the bucket, whatever happens to its output.
The CLI runs as a subprocess against moto; the pipeline tests run a Consumer in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from s3stream.config import ConsumerSettings, build_settings
from s3stream.errors import ConfigError
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.retry import HandlerBackoff
from s3stream.s3.store import Store
from tests.conftest import Recorder, cli_command, running, wait_until
from tests.test_cli import child_env
from tests.test_faults import dead_letters, redelivered_on_restart, settings

CONTROL = "_s3stream/"
BODY = 4000  # bytes per message: a backlog of a few hundred overflows a pipe's 64 KiB at once
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


async def write_backlog(store: Store, bucket: str, prefix: str, count: int) -> list[str]:
    """``count`` keys with one ~4 KB version each, written 16 at a time; the keys."""
    keys = [f"{prefix}m{i:04d}" for i in range(count)]
    sem = asyncio.Semaphore(16)

    async def put(key: str) -> None:
        async with sem:
            await store.put_object(bucket, key, key.encode() + b" " + b"x" * BODY)

    await asyncio.gather(*(put(key) for key in keys))
    return keys


async def control_objects(store: Store, bucket: str) -> list[tuple[str, str]]:
    """Every version and delete marker under the control prefix ``_s3stream/``."""
    page = await store.list_versions(bucket, CONTROL)
    assert not page.truncated
    return [(e.key, e.version_id) for e in page.entries]


@contextlib.contextmanager
def spawned(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The CLI with its stdout on a pipe we read, stderr in a file; killed if still running at exit."""
    with (cwd / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(cli_command(*args), env={**child_env(), **(env or {})}, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def read_lines_then_close(stdout: IO[bytes], count: int) -> tuple[list[bytes], int]:
    """Read ``count`` lines like ``head`` does, then close the pipe; the lines and the pipe's capacity
    (what the writer could have put in it that nobody will read)."""
    capacity = fcntl.fcntl(stdout.fileno(), F_GETPIPE_SZ)
    lines = [stdout.readline() for _ in range(count)]
    stdout.close()
    return lines, capacity


async def exited(proc: subprocess.Popen[bytes], within: float) -> int:
    """The exit code, failing the test if the process still runs after ``within`` seconds."""
    await wait_until(lambda: proc.poll() is not None, within, "the process exited")
    return proc.returncode


def stderr_of(cwd: Path) -> str:
    return (cwd / "stderr.log").read_text(errors="replace")


async def test_consume_into_a_closed_pipe_stops_cleanly_and_commits_only_what_was_written(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path,
) -> None:
    """``s3stream consume … | head -3`` over a backlog of 300 messages: once the reader is gone the
    consumer exits 0 within seconds, without a traceback; no dead letter is written; and the checkpoint
    passes no more than what went into the pipe (the 3 lines read, what our reader buffered and what the
    pipe holds), so a consumer started again in the group delivers every other message, and not the
    three that were read: the clean stop committed what was written."""
    keys = await write_backlog(store, bucket, "p/", 300)
    with spawned("consume", f"s3://{bucket}/p/", "--endpoint-url", moto_endpoint, "--concurrency", "4",
                 cwd=tmp_path) as proc:
        assert proc.stdout is not None
        lines, capacity = read_lines_then_close(proc.stdout, 3)
        assert all(line.endswith(b"\n") for line in lines), stderr_of(tmp_path)
        started = time.monotonic()
        code = await exited(proc, 20)
    took = time.monotonic() - started
    err = stderr_of(tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert took < 15, f"took {took:.1f}s to notice the closed output"
    assert await dead_letters(store, bucket, "default") == []
    line_size = len(lines[0])
    written_at_most = 3 + (capacity + 8192) // line_size + 1  # read, our reader's buffer, the pipe
    again = await redelivered_on_restart(store, moto_endpoint, bucket, "p/")
    assert {key for key, _ in again} <= set(keys)
    assert len(again) >= len(keys) - written_at_most, (
        f"the checkpoint passed {len(keys) - len(again)} messages; at most {written_at_most} reached "
        "the pipe")
    read_keys = {orjson.loads(line)["key"] for line in lines}
    assert not read_keys & {key for key, _ in again}, "what was written and read was committed"


async def test_tail_into_a_closed_pipe_exits_0_and_writes_nothing_to_the_bucket(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path,
) -> None:
    """``s3stream tail --from earliest … | head -1`` over a backlog larger than a pipe holds, even with
    the environment asking for S3 checkpoints and dead letters: tail exits 0 within seconds without a
    traceback, and the bucket's control prefix ``_s3stream/`` is exactly as before (no dead letters,
    no checkpoints)."""
    await write_backlog(store, bucket, "t/", 200)
    before = await control_objects(store, bucket)
    env = {"S3STREAM_CONSUMER__DEAD_LETTERS": "true", "S3STREAM_CONSUMER__CHECKPOINT__STORE": '"s3"'}
    with spawned("tail", f"s3://{bucket}/t/", "--from", "earliest", "--endpoint-url", moto_endpoint,
                 cwd=tmp_path, env=env) as proc:
        assert proc.stdout is not None
        [line], _ = read_lines_then_close(proc.stdout, 1)
        assert line.startswith(b"t/m"), stderr_of(tmp_path)
        code = await exited(proc, 20)
    err = stderr_of(tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert await control_objects(store, bucket) == before


async def test_a_downstream_down_for_a_second_and_a_half_is_ridden_out_with_the_defaults(
    store: Store, bucket: str, moto_endpoint: str,
) -> None:
    """With the default retry settings (``handler_attempts`` 5 over ``handler_retry_time`` 60 s), a
    handler that fails every call for 1.5 s from its first failure (a downstream restarting) and then
    works is not dead-lettered: a later attempt delivers the message, and nothing else waits for it."""
    outage = 1.5
    down_since: float | None = None
    calls: Counter[str] = Counter()
    rec = Recorder()

    async def handler(message: Message) -> None:
        nonlocal down_since
        calls[message.key] += 1
        if message.key == "d/k-flaky":
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since < outage:
                raise ConnectionError("downstream restarting")
        await rec(message)

    for i in range(5):
        await store.put_object(bucket, f"d/k{i}", b"fine")
    await store.put_object(bucket, "d/k-flaky", b"flaky")
    defaults = ConsumerSettings()
    assert (defaults.handler_attempts, defaults.handler_retry_time) == (5, 60.0)
    consumer = Consumer(settings(moto_endpoint, f"s3://{bucket}/d/", group="outage",
                                 handler_attempts=defaults.handler_attempts,
                                 handler_retry_time=defaults.handler_retry_time))
    consumer.register_handler("rec", handler)
    async with running(consumer) as task:
        await rec.wait_for(lambda: "d/k-flaky" in {m.key for m in rec.messages}, within=30)
        assert not task.done()
    assert down_since is not None
    assert calls["d/k-flaky"] >= 2
    assert await dead_letters(store, bucket, "outage") == []
    assert {m.key for m in rec.messages} == {*(f"d/k{i}" for i in range(5)), "d/k-flaky"}


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_the_retry_time(
    store: Store, bucket: str, moto_endpoint: str,
) -> None:
    """A handler that always fails on one message is tried ``handler_attempts`` (4) times, the last
    attempt ``handler_retry_time`` (1.2 s) after the first failure, never sooner; then the message is
    dead-lettered with the error and a bounded traceback naming where it was raised."""
    times: list[float] = []

    async def handler(message: Message) -> None:
        times.append(time.monotonic())
        raise ValueError("no such customer")

    await store.put_object(bucket, "f/k", b"x")
    consumer = Consumer(settings(moto_endpoint, f"s3://{bucket}/f/", group="fails", handler_attempts=4,
                                 handler_retry_time=1.2))
    consumer.register_handler("rec", handler)
    letters: list[dict[str, Any]] = []

    async def lettered() -> bool:
        letters[:] = await dead_letters(store, bucket, "fails")
        return bool(letters)

    async with running(consumer):
        await wait_until(lettered, within=30, what="dead letter stored")
    assert len(times) == 4
    assert times[-1] - times[0] >= 1.2
    assert times[-1] - times[0] < 3.0
    [letter] = letters
    assert letter["attempts"] == 4
    assert "no such customer" in letter["error"]
    assert "ValueError: no such customer" in letter["traceback"]
    assert "in handler" in letter["traceback"]
    assert len(letter["traceback"]) <= 8000


async def test_stop_during_a_retry_wait_is_prompt_and_keeps_the_message(
    store: Store, bucket: str, moto_endpoint: str,
) -> None:
    """A consumer stopped while a failing message waits for its next attempt (retry time 60 s, grace
    30 s) stops within a couple of seconds, without dead-lettering the message or committing past it:
    a consumer started again in the group delivers it."""
    failed = asyncio.Event()

    async def handler(message: Message) -> None:
        failed.set()
        raise RuntimeError("down")

    _, vid = await store.put_object(bucket, "s/k", b"x")
    consumer = Consumer(settings(moto_endpoint, f"s3://{bucket}/s/", group="stopping",
                                 handler_retry_time=60.0))
    consumer.register_handler("rec", handler)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(30):
        await failed.wait()
    stopped = time.monotonic()
    consumer.stop()
    async with asyncio.timeout(30):
        await task
    assert time.monotonic() - stopped < 3
    assert await dead_letters(store, bucket, "stopping") == []
    assert await redelivered_on_restart(store, moto_endpoint, bucket, "s/", group="stopping") == [
        ("s/k", str(vid))]


def test_backoff_spreads_the_attempts_over_the_retry_time() -> None:
    """The waits between attempts double (each drawn from the upper half of its step, so failures
    that happened together do not retry together) and the last attempt comes exactly the retry time
    after the first failure: 5 attempts over 60 s wait about 4, 8, 16 s and then up to 60 s."""
    backoff = HandlerBackoff(attempts=5, retry_time=60.0)
    assert backoff.steps == pytest.approx([4.0, 8.0, 16.0, 32.0])
    for _ in range(200):
        elapsed = 0.0
        for retry in range(1, 5):
            wait = backoff.wait(retry, elapsed)
            step = backoff.steps[retry - 1]
            if retry < 4:
                assert step / 2 <= wait <= step
            elapsed += wait
        assert elapsed == pytest.approx(60.0)
    assert HandlerBackoff(attempts=2, retry_time=5.0).wait(1, 0.5) == pytest.approx(4.5)
    assert HandlerBackoff(attempts=3, retry_time=1.0).wait(2, 5.0) == 0.0  # already late: at once
    assert HandlerBackoff(attempts=1, retry_time=60.0).steps == []


@pytest.mark.parametrize("value", [-1, "soon"])
def test_handler_retry_time_is_validated(value: object) -> None:
    """``consumer.handler_retry_time`` must be a number of seconds >= 0; a bad value names the field."""
    with pytest.raises(ConfigError, match=r"consumer\.handler_retry_time"):
        build_settings({"consumer": {"handler_retry_time": value}})

