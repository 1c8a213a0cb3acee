"""Handler plugins: resolution by name and ``module:attr``, the JSON line format, and the built-ins."""

from __future__ import annotations

import base64
import errno
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from s3stream.errors import HandlerError, OutputClosed
from s3stream.message import Message, ms_to_datetime
from s3stream.pipeline.handlers import (
    Handler,
    LineWriter,
    as_handler,
    build_handler,
    jsonl_handler,
    message_json,
    resolve,
    stdout_handler,
)
from tests import handler_plugins

REPO = Path(__file__).resolve().parents[1]
STAMP_MS = 1_700_000_123_000  # 2023-11-14T22:15:23Z


def msg(key: str = "topic/a", body: bytes = b"hello", *, version_id: str = "v1", deleted: bool = False,
        last_modified_ms: int = STAMP_MS) -> Message:
    return Message(bucket="bkt", key=key, version_id=version_id,
                   last_modified=ms_to_datetime(last_modified_ms), size=len(body), etag='"abc"', body=body,
                   deleted=deleted)


# --- resolution --------------------------------------------------------------------------------------


def test_resolve_builtins_by_entry_point_name() -> None:
    """``stdout`` and ``jsonl`` are found through the ``s3stream.handlers`` entry-point group."""
    assert resolve("stdout") is stdout_handler
    assert resolve("jsonl") is jsonl_handler


def test_build_stdout_by_name() -> None:
    """``build_handler("stdout")`` gives a Handler named after the spec, writing lines to stdout."""
    handler = build_handler("stdout")
    assert isinstance(handler, Handler)
    assert handler.name == "stdout"
    assert isinstance(handler.handle.__self__, LineWriter)  # type: ignore[attr-defined]


async def test_build_jsonl_by_name(tmp_path: Path) -> None:
    """``build_handler("jsonl", {"path": ...})`` resolves the entry point and passes it the options."""
    out = tmp_path / "out.jsonl"
    handler = build_handler("jsonl", {"path": str(out)}, name="archive")
    assert handler.name == "archive"
    await handler.handle(msg())
    await handler.close()
    assert orjson.loads(out.read_bytes())["key"] == "topic/a"


async def test_module_attr_plain_async_function() -> None:
    """``module:attr`` naming an ``async def`` uses the function itself as the handler."""
    handler_plugins.received.clear()
    handler = build_handler("tests.handler_plugins:record")
    assert handler.handle is handler_plugins.record
    assert handler.name == "tests.handler_plugins:record"
    m = msg()
    await handler.handle(m)
    await handler.close()  # a function has nothing to close, but close() must still work
    assert handler_plugins.received == [m]


async def test_module_attr_dotted_attribute_path() -> None:
    """``module:Outer.attr`` walks attributes after the colon."""
    handler_plugins.received.clear()
    handler = build_handler("tests.handler_plugins:Namespace.record")
    await handler.handle(msg(key="dotted"))
    assert [m.key for m in handler_plugins.received] == ["dotted"]


async def test_module_attr_factory_receives_its_options() -> None:
    """``module:attr`` naming a factory calls it with the handler's own options and uses the returned
    object's async handle() and close()."""
    handler_plugins.built.clear()
    options = {"table": "events", "batch": 10, "nested": {"a": 1}}
    handler = build_handler("tests.handler_plugins:make_collector", options, name="db")
    assert handler.name == "db"
    assert len(handler_plugins.built) == 1
    collector = handler_plugins.built[0]
    assert collector.options == options
    assert collector.options is not options  # the factory gets its own copy
    m1, m2 = msg(version_id="v1"), msg(version_id="v2")
    await handler.handle(m1)
    await handler.handle(m2)
    assert collector.messages == [m1, m2]
    assert not collector.closed
    await handler.close()
    assert collector.closed


def test_factory_without_options_receives_empty_dict() -> None:
    """A factory is called with an empty dict when no options are configured."""
    handler_plugins.built.clear()
    build_handler("tests.handler_plugins:make_collector")
    assert handler_plugins.built[0].options == {}


def test_unknown_entry_point_name_is_handler_error() -> None:
    """An unknown name raises HandlerError naming it and listing the known handlers."""
    with pytest.raises(HandlerError) as info:
        build_handler("no-such-handler")
    message = str(info.value)
    assert "'no-such-handler'" in message
    assert "stdout" in message
    assert "jsonl" in message
    assert "module:attr" in message


@pytest.mark.parametrize("spec", [
    "tests.no_such_module_xyz:handle",
    "tests.handler_plugins:no_such_attr",
    "tests.handler_plugins:Namespace.missing",
    "tests.handler_plugins:",
])
def test_bad_module_attr_is_handler_error(spec: str) -> None:
    """A ``module:attr`` whose module or attribute does not exist raises HandlerError naming the spec."""
    with pytest.raises(HandlerError) as info:
        build_handler(spec)
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize("spec", [":record", ".handler_plugins:record"])
def test_malformed_module_attr_is_handler_error(spec: str) -> None:
    """A malformed ``module:attr`` (empty or relative module name) is also a HandlerError naming the
    spec, not a raw ValueError/TypeError from importlib (the CLI prints only S3StreamError cleanly)."""
    with pytest.raises(HandlerError) as info:
        build_handler(spec)
    assert repr(spec) in str(info.value)


def test_not_callable_target_is_handler_error() -> None:
    """A ``module:attr`` naming a non-callable raises HandlerError naming the spec."""
    with pytest.raises(HandlerError, match=r"'tests\.handler_plugins:NOT_CALLABLE' is not callable"):
        build_handler("tests.handler_plugins:NOT_CALLABLE")


def test_plain_function_given_options_is_error() -> None:
    """A plain async function takes no options: configuring some is an error naming them."""
    with pytest.raises(HandlerError) as info:
        build_handler("tests.handler_plugins:record", {"path": "x"})
    message = str(info.value)
    assert "'tests.handler_plugins:record'" in message
    assert "path" in message


def test_factory_that_raises_is_handler_error() -> None:
    """A factory that raises is reported as a HandlerError naming the spec and the cause."""
    with pytest.raises(HandlerError) as info:
        build_handler("tests.handler_plugins:make_failing", {"x": 1})
    message = str(info.value)
    assert "'tests.handler_plugins:make_failing'" in message
    assert "bad options" in message


def test_factory_returning_nothing_is_handler_error() -> None:
    """A factory that returns neither an async callable nor a handle()/close() object is rejected."""
    with pytest.raises(HandlerError, match="async callable"):
        build_handler("tests.handler_plugins:make_nothing", name="broken")


def test_object_with_sync_handle_is_handler_error() -> None:
    """An object whose handle()/close() are not coroutine functions is rejected when built (as the
    error text promises: "async handle() and close()"), not accepted only to fail on every message."""
    with pytest.raises(HandlerError):
        build_handler("tests.handler_plugins:make_sync", name="sync")


def test_as_handler_rejects_sync_callable() -> None:
    """``as_handler`` wraps async callables only; a plain sync function is a HandlerError."""
    def sync(message: Message) -> None:
        pass

    with pytest.raises(HandlerError, match="'mine' must be an async callable"):
        as_handler(sync, "mine")


async def test_as_handler_accepts_async_callable_object() -> None:
    """An object with an async ``__call__`` (like the test Recorder) is a valid handler."""
    seen: list[Message] = []

    class Callable:
        async def __call__(self, message: Message) -> None:
            seen.append(message)

    handler = as_handler(Callable(), "obj")
    m = msg()
    await handler.handle(m)
    await handler.close()
    assert seen == [m]


# --- message_json -----------------------------------------------------------------------------------


def test_message_json_fields_for_utf8_body() -> None:
    """A UTF-8 body appears as ``body``; the identity fields and an ISO-8601 UTC time ending in Z are
    present; the line ends with exactly one newline."""
    line = message_json(msg(key="topic/ü", body="héllo ✓".encode()))
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    doc = orjson.loads(line)
    assert doc["bucket"] == "bkt"
    assert doc["key"] == "topic/ü"
    assert doc["version_id"] == "v1"
    assert doc["deleted"] is False
    assert doc["body"] == "héllo ✓"
    assert "body_b64" not in doc
    assert doc["last_modified"] == "2023-11-14T22:15:23Z"
    assert datetime.fromisoformat(doc["last_modified"]) == datetime.fromtimestamp(STAMP_MS / 1000, tz=UTC)


def test_message_json_millisecond_timestamp_ends_in_z() -> None:
    """A timestamp with a sub-second part is still ISO-8601 UTC ending in Z and parses back exactly."""
    doc = orjson.loads(message_json(msg(last_modified_ms=STAMP_MS + 250)))
    assert doc["last_modified"].endswith("Z")
    assert "+00:00" not in doc["last_modified"]
    assert datetime.fromisoformat(doc["last_modified"]) == ms_to_datetime(STAMP_MS + 250)


def test_message_json_binary_body_is_base64() -> None:
    """A body that is not UTF-8 appears as ``body_b64`` and decodes back to the same bytes."""
    raw = b"\xff\xfe\x00binary\x80"
    doc = orjson.loads(message_json(msg(body=raw)))
    assert "body" not in doc
    assert base64.b64decode(doc["body_b64"]) == raw


def test_message_json_empty_body_is_empty_string() -> None:
    """An empty (non-deleted) object still has a ``body``, the empty string."""
    doc = orjson.loads(message_json(msg(body=b"")))
    assert doc["body"] == ""
    assert doc["deleted"] is False


def test_message_json_deletion_has_no_body() -> None:
    """A deletion (delete marker) is reported with ``deleted: true`` and neither body field."""
    doc = orjson.loads(message_json(msg(body=b"", deleted=True, version_id="dm1")))
    assert doc["deleted"] is True
    assert doc["version_id"] == "dm1"
    assert "body" not in doc
    assert "body_b64" not in doc


# --- jsonl --------------------------------------------------------------------------------------------


async def test_jsonl_appends_one_line_per_message(tmp_path: Path) -> None:
    """``jsonl`` appends (never truncates) one JSON line per message to ``path``, creating parent
    folders, and a second handler on the same file appends after the first."""
    out = tmp_path / "deep" / "er" / "out.jsonl"
    first = jsonl_handler({"path": str(out)})
    await first.handle(msg(version_id="v1"))
    await first.handle(msg(version_id="v2", body=b"\x80"))
    # flushed per line: visible before close
    assert len(out.read_bytes().splitlines()) == 2
    await first.close()

    second = build_handler("jsonl", {"path": str(out)})
    await second.handle(msg(version_id="dm", deleted=True, body=b""))
    await second.close()

    lines = out.read_bytes().splitlines()
    docs = [orjson.loads(line) for line in lines]
    assert [d["version_id"] for d in docs] == ["v1", "v2", "dm"]
    assert docs[0]["body"] == "hello"
    assert "body_b64" in docs[1]
    assert docs[2]["deleted"] is True
    assert out.read_bytes() == b"".join(
        message_json(m) for m in (msg(version_id="v1"), msg(version_id="v2", body=b"\x80"),
                                  msg(version_id="dm", deleted=True, body=b""))
    )


async def test_jsonl_keeps_existing_content(tmp_path: Path) -> None:
    """Lines already in the file are kept: the handler opens for append."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"earlier": true}\n')
    handler = jsonl_handler({"path": str(out)})
    await handler.handle(msg())
    await handler.close()
    lines = out.read_bytes().splitlines()
    assert lines[0] == b'{"earlier": true}'
    assert orjson.loads(lines[1])["key"] == "topic/a"


@pytest.mark.parametrize("options", [{}, {"path": ""}, {"path": "x.jsonl", "mode": "w"}, {"file": "x"}])
def test_jsonl_requires_path_and_nothing_else(options: dict[str, str]) -> None:
    """``jsonl`` without a ``path`` (or with unknown options) is a HandlerError saying what it needs."""
    with pytest.raises(HandlerError, match="path"):
        build_handler("jsonl", options)


# --- stdout -------------------------------------------------------------------------------------------


async def test_stdout_writes_one_json_line_per_message(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """``stdout`` writes exactly ``message_json`` per message to standard output, and close() leaves
    stdout open."""
    handler = build_handler("stdout")
    messages = [msg(version_id="v1"), msg(version_id="v2", body=b"\xff"), msg(version_id="d", deleted=True)]
    for m in messages:
        await handler.handle(m)
    await handler.close()
    captured = capfdbinary.readouterr()
    assert captured.out == b"".join(message_json(m) for m in messages)
    assert [orjson.loads(line)["version_id"] for line in captured.out.splitlines()] == ["v1", "v2", "d"]
    assert not sys.stdout.closed


def test_stdout_rejects_options() -> None:
    """``stdout`` takes no options; giving some is a HandlerError naming them."""
    with pytest.raises(HandlerError, match=r"stdout.*path"):
        build_handler("stdout", {"path": "x"})


def test_stdout_line_is_flushed_before_close() -> None:
    """Each line is flushed as it is written: a process that handles one message and then dies
    without flushing anything (``os._exit``) still leaves the line on a piped stdout."""
    script = (
        "import asyncio, os\n"
        "from s3stream.pipeline.handlers import build_handler\n"
        "from s3stream.message import Message, ms_to_datetime\n"
        "m = Message(bucket='b', key='k', version_id='v9', last_modified=ms_to_datetime(0), size=2,\n"
        "            etag='', body=b'hi')\n"
        "h = build_handler('stdout')\n"
        "asyncio.run(h.handle(m))\n"
        "os._exit(0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    doc = orjson.loads(lines[0])
    assert doc["version_id"] == "v9"
    assert doc["body"] == "hi"
    assert doc["last_modified"] == "1970-01-01T00:00:00Z"


# --- an output that goes away ----------------------------------------------------------------------


async def test_writer_to_a_pipe_nobody_reads_raises_output_closed() -> None:
    """A ``LineWriter`` on a pipe whose reader has gone (``| head``) raises ``OutputClosed``, not
    ``BrokenPipeError``, and keeps raising it for every later message without writing anything."""
    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "wb")
    writer = LineWriter(stream, owned=True, name="the pipe")
    with pytest.raises(OutputClosed, match="the pipe: the reader went away"):
        await writer.handle(msg())
    with pytest.raises(OutputClosed):
        await writer.handle(msg(version_id="v2"))
    await writer.close()  # closing a gone output is quiet


async def test_writer_to_a_closed_file_raises_output_closed(tmp_path: Path) -> None:
    """A ``jsonl`` handler whose file was closed under it raises ``OutputClosed`` naming the file."""
    writer = jsonl_handler({"path": str(tmp_path / "out.jsonl")})
    await writer.close()
    with pytest.raises(OutputClosed, match=r"out\.jsonl: it was closed"):
        await writer.handle(msg())


async def test_a_full_disk_is_a_failure_not_a_closed_output() -> None:
    """Only a gone output ends the run: a write that fails otherwise (``/dev/full``: no space left)
    raises its own ``OSError``, so the message is retried and dead-lettered like any failure."""
    stream = os.fdopen(os.open("/dev/full", os.O_WRONLY), "wb", buffering=0)
    writer = LineWriter(stream, owned=True)
    with pytest.raises(OSError, match="No space left") as info:
        await writer.handle(msg())
    await writer.close()
    assert not isinstance(info.value, OutputClosed)
    assert info.value.errno == errno.ENOSPC
