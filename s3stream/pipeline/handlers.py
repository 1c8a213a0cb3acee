"""Handler plugins: the protocol, resolution by name, and the built-in ``stdout`` and ``jsonl``.

A handler is either an async callable taking a :class:`~s3stream.message.Message`, or an object with
``async handle(message)`` and ``async close()``. A *spec* names one: an entry point in the
``s3stream.handlers`` group (``stdout``) or ``package.module:attr``. The target may be the handler
itself (an ``async def``) or a factory that receives the handler's own config section and returns one.
A factory may be asynchronous (to open connection pools before the first message): an ``async def``
marked with :func:`handler_factory`, or any factory whose result is awaitable. :func:`open_handler`
awaits it once, when the consumer starts; the handler's ``close()`` is awaited once at shutdown, after
the in-flight messages have drained and the final checkpoint is written.

An output that goes away (the reader of a pipe exits, as ``head`` does; the file is closed) raises
:class:`~s3stream.errors.OutputClosed`: the end of the run, not a failure to retry or dead-letter.
"""

from __future__ import annotations

import base64
import errno
import inspect
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

import orjson

from s3stream import plugins
from s3stream.errors import HandlerError, OutputClosed
from s3stream.message import Message

HandleFn = Callable[[Message], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class HandlerObject(Protocol):
    """A handler with a lifecycle: ``handle`` per message, ``close`` once at shutdown."""

    async def handle(self, message: Message) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Handler:
    """A resolved handler, whatever shape it was written in."""

    name: str
    handle: HandleFn
    close: Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def resolve(spec: str) -> Any:
    """The object a spec names: ``module:attr`` or an ``s3stream.handlers`` entry point."""
    return plugins.load("handler", spec, "s3stream.handlers", error=HandlerError)


FACTORY_MARK = "__s3stream_handler_factory__"


def handler_factory(func: F) -> F:
    """Mark an ``async def factory(options) -> handler`` as a factory, not a handler: without the mark
    an ``async def`` is taken for the handler itself. The consumer awaits it once, at start."""
    setattr(func, FACTORY_MARK, True)
    return func


def _built(spec: str, options: dict[str, Any] | None) -> Any:
    """What ``spec``'s target gives: the handler, or what its factory returned (maybe an awaitable)."""
    target = resolve(spec)
    options = dict(options or {})
    marked = getattr(target, FACTORY_MARK, False)
    if inspect.iscoroutinefunction(target) and not marked:
        if options:
            raise HandlerError(f"handler {spec!r} is a function and takes no options: {sorted(options)} "
                               "(an async factory is marked with @s3stream.handler_factory)")
        return target
    if not callable(target):
        raise HandlerError(f"handler {spec!r} is not callable")
    if takes_a_message(target):
        raise HandlerError(
            f"handler {spec!r} is a plain function taking a message; s3stream expects an async "
            "function (async def handler(message)) or a factory, called once with the handler's "
            "options, that returns one")
    try:
        built = target(options)
    except HandlerError:
        raise
    except Exception as exc:
        raise HandlerError(f"handler {spec!r} could not be built: {exc}") from None
    if built is None and inspect.isfunction(target):
        raise HandlerError(
            f"handler {spec!r} is a plain function that returned None when called with its options; "
            "s3stream expects an async callable (async def handler(message)) or a factory that "
            "returns one")
    return built


def build_handler(spec: str, options: dict[str, Any] | None = None, *, name: str | None = None) -> Handler:
    """Resolve ``spec`` and build it with ``options`` into a :class:`Handler` (a synchronous factory
    only: see :func:`open_handler`)."""
    built = _built(spec, options)
    if inspect.isawaitable(built):
        if inspect.iscoroutine(built):
            built.close()
        raise HandlerError(f"handler {spec!r} has an async factory: open it with `await open_handler()`")
    return as_handler(built, name or spec)


async def open_handler(spec: str, options: dict[str, Any] | None = None, *,
                       name: str | None = None) -> Handler:
    """Resolve ``spec`` and build it with ``options`` into a :class:`Handler`, awaiting an async
    factory (once). A factory that raises is a HandlerError naming the spec."""
    built = _built(spec, options)
    if inspect.isawaitable(built):
        try:
            built = await built
        except HandlerError:
            raise
        except Exception as exc:
            raise HandlerError(f"handler {spec!r} could not be opened: {exc}") from None
    return as_handler(built, name or spec)


async def check_handler(spec: str, options: dict[str, Any] | None = None) -> None:
    """Open the handler ``spec`` names and close it again: what ``config check`` does."""
    handler = await open_handler(spec, options)
    await handler.close()


def takes_a_message(target: Any) -> bool:
    """True for a plain (not async) function that is evidently a handler rather than a factory: its
    one required parameter is annotated ``Message``, or is named ``message``/``msg`` and is not
    annotated as something else. A factory takes the options (a dict), so none is refused."""
    if not inspect.isfunction(target) or inspect.iscoroutinefunction(target):
        return False
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) != 1:
        return False
    param = required[0]
    note = param.annotation
    named = (note if isinstance(note, str) else getattr(note, "__name__", "")).rpartition(".")[2]
    if note is not param.empty:
        return named == "Message"
    return param.name in ("message", "msg")


def as_handler(built: Any, name: str) -> Handler:
    """Wrap an async callable or a handle()/close() object as a :class:`Handler`."""
    if isinstance(built, HandlerObject):
        if not (inspect.iscoroutinefunction(built.handle) and inspect.iscoroutinefunction(built.close)):
            raise HandlerError(f"handler {name!r}: handle() and close() must both be async")
        return Handler(name=name, handle=built.handle, close=built.close)
    call = type(built).__call__ if not inspect.isfunction(built) else built
    if inspect.iscoroutinefunction(built) or inspect.iscoroutinefunction(call):
        return Handler(name=name, handle=built, close=_nothing)
    raise HandlerError(f"handler {name!r} must be an async callable or have async handle() and close()")


def message_json(message: Message) -> bytes:
    """One JSON line for a message, as ``stdout`` and ``jsonl`` write it."""
    doc: dict[str, Any] = {
        "bucket": message.bucket,
        "key": message.key,
        "version_id": message.version_id,
        "last_modified": message.last_modified.isoformat().replace("+00:00", "Z"),
        "deleted": message.deleted,
        "size": message.size,
    }
    if message.partition_key is not None:
        doc["partition_key"] = message.partition_key
    if message.offset is not None:
        doc["offset"] = message.offset
    if not message.deleted:
        try:
            doc["body"] = message.body.decode("utf-8")
        except UnicodeDecodeError:
            doc["body_b64"] = base64.b64encode(message.body).decode("ascii")
        if message.value is not None:  # decoded by the source's codec (json, text, csv)
            doc["value"] = message.value
    return orjson.dumps(doc) + b"\n"


def output_closed(exc: Exception, what: str) -> OutputClosed | None:
    """The :class:`OutputClosed` that ``exc``, raised writing to ``what``, means, if it means one: a
    broken pipe (the reader went away) or a write to a closed file."""
    if isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
        return OutputClosed(f"{what}: the reader went away")
    if isinstance(exc, ValueError) and "closed file" in str(exc):
        return OutputClosed(f"{what}: it was closed")
    return None


def write_out(stream: IO[bytes], data: bytes, what: str) -> None:
    """Write and flush ``data``; a gone output raises :class:`OutputClosed` (other errors as they are)."""
    try:
        stream.write(data)
        stream.flush()
    except (OSError, ValueError) as exc:
        closed = output_closed(exc, what)
        if closed is None:
            raise
        raise closed from exc


class LineWriter:
    """Writes each message as one JSON line to a binary stream, flushed per line. Once the stream is
    gone every later message raises :class:`OutputClosed` at once: nothing is written after a gap."""

    def __init__(self, stream: IO[bytes], *, owned: bool, name: str = "output") -> None:
        self._stream = stream
        self._owned = owned
        self._name = name
        self._closed: OutputClosed | None = None

    async def handle(self, message: Message) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            write_out(self._stream, message_json(message), self._name)
        except OutputClosed as exc:
            self._closed = exc
            raise

    async def close(self) -> None:
        try:
            if self._owned:
                self._stream.close()
            else:
                self._stream.flush()
        except (OSError, ValueError) as exc:
            if output_closed(exc, self._name) is None:
                raise


def stdout_handler(options: dict[str, Any]) -> LineWriter:
    """Built-in ``stdout``: one JSON object per message on standard output."""
    if options:
        raise HandlerError(f"handler 'stdout' takes no options, got {sorted(options)}")
    return LineWriter(sys.stdout.buffer, owned=False, name="standard output")


def jsonl_handler(options: dict[str, Any]) -> LineWriter:
    """Built-in ``jsonl``: the same lines appended to ``path``."""
    unknown = set(options) - {"path"}
    if unknown or not options.get("path"):
        raise HandlerError("handler 'jsonl' needs `path = \"FILE\"` and nothing else")
    path = Path(str(options["path"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    return LineWriter(path.open("ab"), owned=True, name=str(path))
