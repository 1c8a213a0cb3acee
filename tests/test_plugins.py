"""Plugins: codecs, snapshot parsers and handlers found through entry points of a real distribution,
async handler factories, ``DeadLetterNow`` and ``Message.attempt``.

The ``fake_plugin`` fixture writes an installed distribution (``fake_plugin-0.1.dist-info`` with its
``METADATA`` and ``entry_points.txt``, and the module it points at) into a temporary folder put first
on ``sys.path``: ``importlib.metadata`` finds it as it finds any installed package, nothing patched.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from s3stream import DeadLetterNow, Message, handler_factory
from s3stream.config import Settings, build_settings
from s3stream.errors import ConfigError, HandlerError
from s3stream.integrations.codecs import Decoder, Encoder
from s3stream.integrations.snapshot import Follower
from s3stream.integrations.snapshotparsers import resolve_parser
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import CONTROL_PREFIX, create_topic
from s3stream.pipeline.consumer import Consumer
from s3stream.pipeline.handlers import build_handler, open_handler
from s3stream.plugins import CODECS_GROUP, Codec, available, load_codec
from s3stream.s3.store import Store
from s3stream.service.deadletter import DeadLetter, iter_dead_letters
from tests import handler_plugins
from tests.conftest import Recorder, cli_command, running, wait_until
from tests.test_cli import sigterm_and_wait

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0

FAKE_MODULE = '''
"""A third party's s3stream plugins."""
import codecs


class Rot13:
    """A codec: bodies are the ROT13 of UTF-8 text."""

    def decode(self, frame: bytes) -> str:
        return codecs.decode(frame.decode("utf-8"), "rot13")

    def encode(self, value: object) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"rot13 takes str, not {type(value).__name__}")
        return codecs.encode(value, "rot13").encode("utf-8")


def parse_kv(body: bytes) -> dict[str, str]:
    """A snapshot parser: ``key=value`` lines."""
    out = {}
    for line in body.decode("utf-8").splitlines():
        if line.strip():
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"no '=' in {line!r}")
            out[key.strip()] = value.strip()
    return out


NOT_A_CODEC = 42
'''

ENTRY_POINTS = """\
[s3stream.codecs]
rot13 = fake_plugin_mod:Rot13
broken = fake_plugin_mod:NOT_A_CODEC

[s3stream.snapshot_parsers]
kv = fake_plugin_mod:parse_kv

[s3stream.handlers]
pooled = tests.handler_plugins:open_pool
"""


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution ``fake-plugin`` registering a codec, a parser and a handler; the
    folder it lives in (first on ``sys.path``, as site-packages would be)."""
    site = tmp_path / "site"
    info = site / "fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "fake_plugin_mod.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("fake_plugin_mod", None)


def child_env(site: Path | None = None) -> dict[str, str]:
    """A CLI child's environment: test credentials, this worktree (and ``site``) on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3STREAM_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    env["PYTHONPATH"] = os.pathsep.join([*([str(site)] if site else []), str(REPO)])
    return env


def run_cli(*args: str, site: Path | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=child_env(site), cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``s3stream: error:`` line of a run that exited 2 without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3stream: error:"), lines[0]
    assert result.returncode == 2, result
    return lines[0]


def settings_for(endpoint: str, url: str, *, handler: str = "rec", handlers: dict[str, Any] | None = None,
                 producer: dict[str, Any] | None = None, **source: Any) -> Settings:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0,
                     "handler_attempts": 3, "handler_retry_time": 0.3, "group": "plugins"},
        "producer": producer or {},
        "handlers": handlers or {},
        "sources": [{"url": url, "handler": handler, **source}],
    }, environ={})


async def letters(store: Store, bucket: str) -> list[DeadLetter]:
    return [dl async for dl in iter_dead_letters(store, bucket, CONTROL_PREFIX, "plugins")]


# --- discovery ---------------------------------------------------------------------------------------


def test_entry_points_come_from_an_installed_distribution(fake_plugin: Path) -> None:
    """The codec, parser and handler are found through the distribution's own metadata: built-in
    names are listed first, the plugin's after them; the codec is an instance of the ``Codec``
    protocol, the parser and the handler load by name."""
    dist = importlib.metadata.distribution("fake-plugin")
    assert {ep.name for ep in dist.entry_points} == {"rot13", "broken", "kv", "pooled"}
    assert available(CODECS_GROUP, ("raw", "json", "text", "csv"))[:5] == ["raw", "json", "text", "csv",
                                                                          "broken"]
    codec = load_codec("rot13")
    assert isinstance(codec, Codec)
    assert Decoder("rot13").decode(b"uryyb", "k") == [(None, b"uryyb", "hello")]
    assert Encoder("rot13").prepare("hello") == b"uryyb"
    name, parser = resolve_parser("kv")
    assert (name, dict(parser(b"a = 1\nb=2\n"))) == ("kv", {"a": "1", "b": "2"})


def test_codec_errors_are_one_line_config_errors(fake_plugin: Path) -> None:
    """An unknown codec name lists every available one (built-in and registered); an entry point that
    is not a codec, or a value the codec refuses, names the codec."""
    with pytest.raises(ConfigError) as info:
        build_settings({"sources": [{"url": "s3://b/t", "codec": "nope"}]}, environ={})
    assert "unknown codec 'nope'; available: raw, json, text, csv, broken, rot13, or module:attr" in str(
        info.value)
    with pytest.raises(ConfigError, match="codec 'broken' must have decode"):
        Decoder("broken")
    with pytest.raises(ValueError, match="rot13 takes str, not int"):
        Encoder("rot13").prepare(7)
    with pytest.raises(ValueError, match="invalid start byte"):  # the object would be dead-lettered
        Decoder("rot13").decode(b"\xff", "k")


def test_config_check_loads_codec_plugins(tmp_path: Path) -> None:
    """``s3stream config check`` loads each codec a file names: a ``module:attr`` codec whose module is
    missing is one line naming it, exit 2."""
    config = tmp_path / "codec.toml"
    config.write_text('[[sources]]\nurl = "s3://b/t/"\ncodec = "no_such_codecs:Codec"\n')
    line = one_line_error(run_cli("config", "check", str(config), site=None, cwd=tmp_path))
    assert "codec 'no_such_codecs:Codec' cannot be loaded: No module named 'no_such_codecs'" in line


# --- codecs end to end -------------------------------------------------------------------------------


async def test_codec_plugin_through_the_library(fake_plugin: Path, store: Store, bucket: str,
                                                moto_endpoint: str) -> None:
    """A producer whose codec is the plugin's writes its encoding; a consumer whose source names it
    hands each message's decoded value to the handler, and an object it cannot decode goes to the
    dead letters with the codec's reason while the rest flows."""
    topic = await create_topic(store, bucket, "rot", shards=1, layout="versions")
    settings = settings_for(moto_endpoint, f"s3://{bucket}/rot", codec="rot13", producer={"codec": "rot13"})
    async with Producer(settings) as producer:
        await producer.publish(f"s3://{bucket}/rot", "hello", key="a")
        await producer.publish(f"s3://{bucket}/rot", "world", key="b")
    await store.put_object(bucket, topic.shard_prefix(0) + "bad", b"\xff\xfe")
    consumer, rec = Consumer(settings), Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(2)
        await wait_until(lambda: letters(store, bucket), TIMEOUT, "the dead letter")
    assert sorted((m.key.rsplit("/", 1)[1], m.body, m.value) for m in rec.messages) == [
        ("a", b"uryyb", "hello"), ("b", b"jbeyq", "world")]
    (letter,) = await letters(store, bucket)
    assert letter.original_key.endswith("/bad")
    assert "undecodable" in letter.error
    assert "utf-8" in letter.error


async def test_codec_plugin_through_the_cli(fake_plugin: Path, store: Store, bucket: str,
                                            moto_endpoint: str, tmp_path: Path) -> None:
    """``s3stream config check`` accepts the plugin's codec name; ``s3stream run`` decodes with it and
    the ``jsonl`` handler writes the value; SIGTERM stops the run with exit 0. An unknown codec is one
    line listing the available names (the plugin's among them), exit 2."""
    await store.put_object(bucket, "in/one", b"uryyb, jbeyq")
    out = tmp_path / "out.jsonl"
    config = tmp_path / "run.toml"
    config.write_text(
        f'[s3]\naddressing_style = "path"\nendpoint_url = "{moto_endpoint}"\n'
        "[consumer]\npoll_interval = 0.1\nmax_poll_interval = 0.3\nsettle_window = 2\n"
        f'[[sources]]\nurl = "s3://{bucket}/in/"\nhandler = "out"\ncodec = "rot13"\n'
        f"[handlers.out]\nuse = \"jsonl\"\npath = {json.dumps(str(out))}\n")
    checked = await asyncio.to_thread(run_cli, "config", "check", str(config), site=fake_plugin, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('codec = "rot13"', 'codec = "rot14"'))
    refused = await asyncio.to_thread(run_cli, "config", "check", str(bad), site=fake_plugin, cwd=tmp_path)
    line = one_line_error(refused)
    assert "sources.0.codec" in line
    assert "unknown codec 'rot14'" in line
    assert "rot13" in line

    log = (tmp_path / "stderr.log").open("wb")
    proc = await asyncio.create_subprocess_exec(*cli_command("run", "--config", str(config)),
                                                env=child_env(fake_plugin), cwd=tmp_path,
                                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        await wait_until(lambda: (out.exists() and out.read_bytes().endswith(b"\n"))
                         or proc.returncode is not None, TIMEOUT, "the decoded line")
        code = await sigterm_and_wait(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    assert code == 0, (tmp_path / "stderr.log").read_text()
    (doc,) = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert (doc["key"], doc["body"], doc["value"]) == ("in/one", "uryyb, jbeyq", "hello, world")


async def test_snapshot_parser_plugin(fake_plugin: Path, store: Store, bucket: str, moto_endpoint: str,
                                      tmp_path: Path) -> None:
    """The follower serves a file parsed by the parser registered as ``kv``; ``snapshot serve`` with an
    unknown parser is one line listing the built-in parsers and ``kv``, exit 2."""
    await store.put_object(bucket, "conf.kv", b"limit = 3\nname=kv\n")
    s3 = settings_for(moto_endpoint, f"s3://{bucket}/x").s3
    async with Follower(f"s3://{bucket}/conf.kv", parser="kv", interval=0.1, s3=s3) as follower:
        assert dict(follower.data) == {"limit": "3", "name": "kv"}
    result = await asyncio.to_thread(run_cli, "snapshot", "serve", f"s3://{bucket}/conf.kv", "--parser",
                                     "toml", "--endpoint-url", moto_endpoint, site=fake_plugin, cwd=tmp_path)
    line = one_line_error(result)
    assert "unknown parser 'toml'; available: csv, csv-header, json, jsonl, kv, or module:attr" in line


# --- async handler factories -------------------------------------------------------------------------


async def test_async_factory_opened_once_and_closed_after_the_drain(
    fake_plugin: Path, store: Store, bucket: str, moto_endpoint: str,
) -> None:
    """A handler registered by entry point whose factory is an ``async def`` is awaited once, with its
    options, before any message; its ``close()`` is awaited once, at shutdown, after the message that
    was being handled when the stop came has finished."""
    handler_plugins.events.clear()
    handler_plugins.pools.clear()
    handler_plugins.gate = asyncio.Event()
    for key in ("in/a", "in/b", "in/hold"):
        await store.put_object(bucket, key, key.encode())
    settings = settings_for(moto_endpoint, f"s3://{bucket}/in/", handler="db",
                            handlers={"db": {"use": "pooled", "hold": "in/hold", "size": 4}})
    consumer = Consumer(settings)
    async with running(consumer):
        await wait_until(lambda: {"held in/hold", "handle in/a", "handle in/b"}
                         <= set(handler_plugins.events), TIMEOUT, "the others handled, in/hold held")
        consumer.stop()
        for _ in range(50):  # let the stop run as far as it can without the held message
            await asyncio.sleep(0)
        assert "close" not in handler_plugins.events
        handler_plugins.gate.set()
    (pool,) = handler_plugins.pools
    assert pool.options == {"hold": "in/hold", "size": 4}
    assert pool.closed
    events = handler_plugins.events
    assert events[0] == "open"
    assert events.count("open") == events.count("close") == 1
    assert events[-2:] == ["released in/hold", "close"], events
    assert {"handle in/a", "handle in/b"} <= set(events)


async def test_async_factory_shapes() -> None:
    """A plain factory returning an awaitable is awaited like an ``async def`` factory; an ``async def``
    without the mark is a handler, and given options the error says how to mark a factory; the
    synchronous ``build_handler`` refuses an async factory; a factory that fails to connect is a
    HandlerError naming the spec and the cause."""
    handler_plugins.pools.clear()
    handler = await open_handler("tests.handler_plugins:open_pool_later", {"n": 1}, name="later")
    assert handler.name == "later"
    assert handler_plugins.pools[0].options == {"n": 1}
    await handler.close()

    async def unmarked(options: dict[str, Any]) -> None:
        pass

    handler_plugins.unmarked = unmarked  # type: ignore[attr-defined]
    with pytest.raises(HandlerError, match=r"@s3stream\.handler_factory"):
        await open_handler("tests.handler_plugins:unmarked", {"x": 1})
    with pytest.raises(HandlerError, match=r"has an async factory: open it with `await open_handler\(\)`"):
        build_handler("tests.handler_plugins:open_pool")
    with pytest.raises(HandlerError, match=r"'tests\.handler_plugins:open_broken' could not be opened: "
                                           r"pool: connection refused"):
        await open_handler("tests.handler_plugins:open_broken")
    assert handler_factory(unmarked) is unmarked


async def test_consumer_with_a_failing_async_factory_closes_what_it_opened(
    store: Store, bucket: str, moto_endpoint: str,
) -> None:
    """When one handler's async factory fails, ``run()`` raises its HandlerError and the handlers
    already opened are closed."""
    handler_plugins.events.clear()
    settings = build_settings({
        "s3": {"endpoint_url": moto_endpoint, "addressing_style": "path"},
        "handlers": {"db": {"use": "tests.handler_plugins:open_pool"},
                     "bad": {"use": "tests.handler_plugins:open_broken"}},
        "sources": [{"url": f"s3://{bucket}/a/", "handler": "db"},
                    {"url": f"s3://{bucket}/b/", "handler": "bad"}],
    }, environ={})
    with pytest.raises(HandlerError, match="connection refused"):
        await Consumer(settings).run()
    assert handler_plugins.events == ["open", "close"]


# --- DeadLetterNow and attempt ---------------------------------------------------------------------


async def test_dead_letter_now_skips_the_retries(store: Store, bucket: str, moto_endpoint: str) -> None:
    """A handler raising ``DeadLetterNow`` is called once for that message: it goes to the dead letters
    at once with the handler's reason and one attempt, and the other messages are handled."""
    calls: dict[str, int] = {}

    async def handle(message: Message) -> None:
        calls[message.key] = calls.get(message.key, 0) + 1
        if message.key == "in/poison":
            raise DeadLetterNow("order 17 has no customer")

    for key in ("in/ok", "in/poison"):
        await store.put_object(bucket, key, b"{}")
    consumer = Consumer(settings_for(moto_endpoint, f"s3://{bucket}/in/"))
    consumer.register_handler("rec", handle)
    async with running(consumer):
        await wait_until(lambda: letters(store, bucket), TIMEOUT, "the dead letter")
        await wait_until(lambda: "in/ok" in calls, TIMEOUT, "the other message")
    assert calls == {"in/ok": 1, "in/poison": 1}
    (letter,) = await letters(store, bucket)
    assert (letter.original_key, letter.attempts) == ("in/poison", 1)
    assert letter.error == "DeadLetterNow: order 17 has no customer"


async def test_attempt_counts_the_calls_of_one_message(store: Store, bucket: str,
                                                       moto_endpoint: str) -> None:
    """``message.attempt`` is 1 on the first call and 2, 3 on the retries; a handler may give up with
    ``DeadLetterNow`` on a later attempt, and that message is not called again."""
    seen: list[tuple[str, int]] = []

    async def handle(message: Message) -> None:
        seen.append((message.key, message.attempt))
        if message.key == "in/flaky" and message.attempt < 3:
            raise ConnectionError("downstream is down")
        if message.key == "in/hopeless" and message.attempt == 2:
            raise DeadLetterNow("gave up on the second try")
        if message.key == "in/hopeless":
            raise ConnectionError("downstream is down")

    for key in ("in/flaky", "in/hopeless"):
        await store.put_object(bucket, key, b"x")
    consumer = Consumer(settings_for(moto_endpoint, f"s3://{bucket}/in/"))
    consumer.register_handler("rec", handle)
    async with running(consumer):
        await wait_until(lambda: ("in/flaky", 3) in seen, TIMEOUT, "the third attempt")
        await wait_until(lambda: letters(store, bucket), TIMEOUT, "the dead letter")
    assert [a for k, a in seen if k == "in/flaky"] == [1, 2, 3]
    assert [a for k, a in seen if k == "in/hopeless"] == [1, 2]
    (letter,) = await letters(store, bucket)
    assert (letter.original_key, letter.attempts, letter.error) == (
        "in/hopeless", 2, "DeadLetterNow: gave up on the second try")
