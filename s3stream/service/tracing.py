"""OpenTelemetry tracing (optional: ``[tracing] enabled = true``, the ``otel`` extra).

s3stream only uses the OpenTelemetry *API*; the application installs the SDK and sets the tracer
provider and exporter. ``opentelemetry`` is imported only once tracing is enabled, so the default
install does not need it.

**Consumer.** Each message is one span, ``process <topic>`` (kind CONSUMER), from the start of its
object's fetch to the end of its last handler call, with the events ``fetched`` (the GET answered)
and ``decoded`` (the object split into messages), one child span ``handle <handler>`` per handler
call (retries included), and these attributes: ``messaging.system`` (``s3stream``),
``s3stream.bucket``, ``s3stream.key``, ``s3stream.version_id``, ``s3stream.topic``,
``s3stream.shard`` (the shard's prefix), ``s3stream.offset`` (a message in a segment or a lines
object) and ``s3stream.attempt`` (the handler calls made). A message dead-lettered (or that stops a
consumer without dead letters) has status ERROR with the reason; a failed call's child span has status
ERROR and the exception. A message left in flight (shutdown, a lost lease) gets the event ``left in
flight``. The span's parent is the trace context its producer stored (below); a message without one
starts a new trace.

**Producer.** When a span is current at ``publish``/``publish_many``, its W3C ``traceparent`` goes with
the message: as the object's metadata ``x-amz-meta-traceparent`` when the message is an object of its
own (versions layout, log layout without segments); as the ``tp`` field of the message's line in a
segment (per message); and on a framing-``lines`` object (bare lines, no place per message) as the
object's metadata when all its messages share one context, else not at all. A consumer hands it to
handlers as ``message.metadata["traceparent"]`` in every case.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from s3stream.errors import ConfigError, HandlerFailed
from s3stream.message import Message
from s3stream.pipeline.handlers import Handler

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from s3stream.pipeline.shard import Shard

TRACEPARENT = "traceparent"
INSTALL = "pip install 's3stream[otel]'"

_times: ContextVar[list[int] | None] = ContextVar("s3stream_fetch_times", default=None)
_span: ContextVar[Span | None] = ContextVar("s3stream_message_span", default=None)


def require_api() -> None:
    """ValueError naming the fix when the OpenTelemetry API is not installed (a setting's validator)."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise ValueError(f"tracing needs the OpenTelemetry API, which is not installed: {INSTALL}") from None


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, or None when no valid span is current."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def traced_metadata(metadata: dict[str, str] | None, parent: str | None) -> dict[str, str] | None:
    """``metadata`` with ``traceparent`` added when there is one."""
    if parent is None:
        return metadata
    return {**(metadata or {}), TRACEPARENT: parent}


class MessageTracer:
    """The consumer's spans: one per message, a child per handler call (see the module docstring)."""

    def __init__(self) -> None:
        try:
            require_api()
        except ValueError as exc:
            raise ConfigError(f"tracing.enabled: {exc}") from None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from s3stream import __version__

        self._tracer = trace.get_tracer("s3stream", __version__)
        self._w3c = TraceContextTextMapPropagator()

    def fetching(self) -> None:
        """A worker starts on an object: its messages' spans start now."""
        _times.set([time.time_ns(), 0, 0])

    def fetched(self) -> None:
        """The object's GET was answered."""
        times = _times.get()
        if times is not None:
            times[1] = time.time_ns()

    def decoded(self) -> None:
        """The object is split into messages; their handling starts."""
        times = _times.get()
        if times is not None and not times[2]:
            times[2] = time.time_ns()

    @contextlib.contextmanager
    def message(self, shard: Shard, message: Message) -> Iterator[None]:
        """The span of one message's handling, current while its handler calls run."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        times = _times.get() or [time.time_ns(), 0, 0]
        topic = (shard.topic or shard.prefix).rstrip("/")
        attributes: dict[str, Any] = {
            "messaging.system": "s3stream", "s3stream.bucket": message.bucket, "s3stream.key": message.key,
            "s3stream.version_id": message.version_id, "s3stream.topic": topic,
            "s3stream.shard": shard.prefix, "s3stream.attempt": message.attempt,
        }
        if message.offset is not None:
            attributes["s3stream.offset"] = message.offset
        span = self._tracer.start_span(
            f"process {topic}", context=self._w3c.extract(message.metadata), kind=SpanKind.CONSUMER,
            attributes=attributes, start_time=times[0], record_exception=False, set_status_on_exception=False,
        )
        for name, at in (("fetched", times[1]), ("decoded", times[2])):
            if at:
                span.add_event(name, timestamp=at)
        token = _span.set(span)
        try:
            with trace.use_span(span, end_on_exit=True, record_exception=False,
                                set_status_on_exception=False):
                yield
        except HandlerFailed as exc:  # dead letters off: the consumer stops at this message
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        except BaseException as exc:  # stopped, lease lost, output closed: redelivered later
            span.add_event("left in flight", {"reason": type(exc).__name__})
            raise
        finally:
            _span.reset(token)

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` with each call a ``handle <name>`` span, its attempt also set on the message's."""
        tracer, inner, name = self._tracer, handler.handle, handler.name

        async def handle(message: Message) -> None:
            span = _span.get()
            if span is not None:
                span.set_attribute("s3stream.attempt", message.attempt)
            attributes: dict[str, str | int] = {"s3stream.handler": name, "s3stream.attempt": message.attempt}
            with tracer.start_as_current_span(f"handle {name}", attributes=attributes):
                await inner(message)

        return Handler(name=handler.name, handle=handle, close=handler.close)


def dead_lettered(reason: str) -> None:
    """Mark the message span being handled (if tracing is on) as failed: it went to the dead letters."""
    span = _span.get()
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.add_event("dead-lettered", {"reason": reason})
        span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {reason}"))
