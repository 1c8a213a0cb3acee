"""OpenTelemetry tracing: trace context from the producer through object metadata (or a segment's line)
to the consumer's span per message, its attributes, events and child spans, failures, and nothing at
all when tracing is off. Spans are collected with the SDK's ``InMemorySpanExporter``, set up here as
an application would; s3stream itself only uses the API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from s3stream import DeadLetterNow, Message
from s3stream.config import Settings, build_settings
from s3stream.layouts.producer import Producer
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, running, wait_until

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0
EXPORTER = InMemorySpanExporter()
app_tracer = trace.get_tracer("the-application")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The finished spans of this test (the SDK's provider is installed once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    EXPORTER.clear()
    return EXPORTER


def settings_for(endpoint: str, url: str, *, tracing: bool = True, **producer: Any) -> Settings:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0,
                     "handler_attempts": 3, "handler_retry_time": 0.3, "group": "traced"},
        "producer": producer,
        "tracing": {"enabled": tracing},
        "sources": [{"url": url, "handler": "rec"}],
    }, environ={})


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    span_id = parent.context.span_id
    return [s for s in exporter.get_finished_spans() if s.parent is not None and s.parent.span_id == span_id]


async def test_consumer_span_continues_the_producers_trace(spans: InMemorySpanExporter, store: Store,
                                                           bucket: str, moto_endpoint: str) -> None:
    """A message published inside an application span carries its ``traceparent`` in the object's
    metadata; the consumer's span for it is in the same trace, a child of that span, of kind CONSUMER,
    with the message's attributes, the ``fetched`` and ``decoded`` events in order and one
    ``handle rec`` child span. An object written without a context starts a trace of its own."""
    from s3stream.layouts.topics import create_topic

    topic = await create_topic(store, bucket, "orders", shards=1, layout="versions")
    settings = settings_for(moto_endpoint, f"s3://{bucket}/orders")
    async with Producer(settings) as producer:
        with app_tracer.start_as_current_span("checkout") as app:
            published = await producer.publish(f"s3://{bucket}/orders", b"order 1", key="o1")
    app_ctx = app.get_span_context()
    stored = await store.get_object(bucket, published.key)
    expected = f"00-{app_ctx.trace_id:032x}-{app_ctx.span_id:016x}-{app_ctx.trace_flags:02x}"
    assert stored.metadata["traceparent"] == expected
    await store.put_object(bucket, topic.shard_prefix(0) + "plain", b"no context")

    consumer, rec = Consumer(settings), Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await wait_until(lambda: len(named(spans, "process")) >= 2, TIMEOUT, "two message spans")
    (traced,) = [s for s in named(spans, "process") if (s.attributes or {})["s3stream.key"] == published.key]
    assert traced.name == "process orders"
    assert traced.kind is SpanKind.CONSUMER
    assert traced.context.trace_id == app_ctx.trace_id
    assert traced.parent is not None
    assert traced.parent.span_id == app_ctx.span_id
    assert dict(traced.attributes or {}) == {
        "messaging.system": "s3stream", "s3stream.bucket": bucket, "s3stream.key": published.key,
        "s3stream.version_id": published.version_id, "s3stream.topic": "orders",
        "s3stream.shard": published.key.rsplit("/", 1)[0] + "/", "s3stream.attempt": 1,
    }
    assert traced.status.status_code is StatusCode.UNSET
    fetched, decoded = traced.events
    assert (fetched.name, decoded.name) == ("fetched", "decoded")
    assert traced.start_time is not None
    assert traced.end_time is not None
    assert traced.start_time <= fetched.timestamp <= decoded.timestamp <= traced.end_time
    (call,) = children(spans, traced)
    assert call.name == "handle rec"
    assert dict(call.attributes or {}) == {"s3stream.handler": "rec", "s3stream.attempt": 1}
    delivered = {m.key: m for m in rec.messages}
    assert delivered[published.key].metadata["traceparent"] == stored.metadata["traceparent"]

    (plain,) = [s for s in named(spans, "process") if s is not traced]
    assert plain.parent is None
    assert plain.context.trace_id != app_ctx.trace_id


async def test_segments_carry_a_context_per_message(spans: InMemorySpanExporter, store: Store, bucket: str,
                                                    moto_endpoint: str) -> None:
    """Messages gathered into one segment from publishes in different spans keep each its own trace
    context (the ``tp`` field of its line); a ``publish_many`` call's messages share the call's. Each
    consumer span is in its producer's trace and names its offset in the segment."""
    from s3stream.layouts.topics import create_topic

    await create_topic(store, bucket, "seg", shards=1, layout="log")
    settings = settings_for(moto_endpoint, f"s3://{bucket}/seg", segment_max_messages=2, linger=5.0)
    url = f"s3://{bucket}/seg"
    traces: dict[bytes, int] = {}
    async with Producer(settings) as producer:

        async def publish_in_span(body: bytes) -> str:
            with app_tracer.start_as_current_span(f"request {body.decode()}") as app:
                traces[body] = app.get_span_context().trace_id
                return (await producer.publish(url, body)).key

        first, second = await asyncio.gather(publish_in_span(b"one"), publish_in_span(b"two"))
        with app_tracer.start_as_current_span("batch") as batch:
            many = await producer.publish_many(url, [(None, b"three"), (None, b"four")])
        traces[b"three"] = traces[b"four"] = batch.get_span_context().trace_id
    assert first == second  # one segment
    lines = [orjson.loads(line) for line in (await store.get_object(bucket, first)).body.splitlines()]
    assert sorted(line["b"] for line in lines) == ["one", "two"]
    assert all(line["tp"].split("-")[1] == f"{traces[line['b'].encode()]:032x}" for line in lines)
    assert many[0].key == many[1].key

    consumer, rec = Consumer(settings), Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await wait_until(lambda: len(named(spans, "process")) >= 4, TIMEOUT, "four message spans")
    assert len({(s.attributes or {})["s3stream.key"] for s in named(spans, "process")}) == 2  # two objects
    for message in rec.messages:
        (span,) = [s for s in named(spans, "process") if (s.attributes or {})["s3stream.key"] == message.key
                   and (s.attributes or {})["s3stream.offset"] == message.offset]
        assert span.context.trace_id == traces[message.body], message.body


async def test_failures_show_on_the_spans(spans: InMemorySpanExporter, store: Store, bucket: str,
                                          moto_endpoint: str) -> None:
    """A message handled on its second attempt has ``s3stream.attempt`` 2, two ``handle`` children
    (the first with status ERROR and the exception) and no error itself; a message whose handler
    raises ``DeadLetterNow`` has status ERROR naming the reason and the ``dead-lettered`` event."""
    calls: dict[str, int] = {}

    async def handle(message: Message) -> None:
        calls[message.key] = calls.get(message.key, 0) + 1
        if message.key == "in/flaky" and message.attempt == 1:
            raise ConnectionError("downstream is down")
        if message.key == "in/poison":
            raise DeadLetterNow("no such customer")

    for key in ("in/flaky", "in/poison"):
        await store.put_object(bucket, key, b"x")
    consumer = Consumer(settings_for(moto_endpoint, f"s3://{bucket}/in/"))
    consumer.register_handler("rec", handle)
    async with running(consumer):
        await wait_until(lambda: len(named(spans, "process")) >= 2, TIMEOUT, "two message spans")
    got = {(s.attributes or {})["s3stream.key"]: s for s in named(spans, "process")}
    flaky, poison = got["in/flaky"], got["in/poison"]
    assert (flaky.attributes or {})["s3stream.attempt"] == 2
    assert flaky.status.status_code is StatusCode.UNSET
    tries = sorted(children(spans, flaky), key=lambda s: (s.attributes or {})["s3stream.attempt"])
    assert [t.status.status_code for t in tries] == [StatusCode.ERROR, StatusCode.UNSET]
    assert tries[0].events[0].name == "exception"
    assert poison.status.status_code is StatusCode.ERROR
    assert poison.status.description == "dead-lettered: DeadLetterNow: no such customer"
    assert "dead-lettered" in [e.name for e in poison.events]
    assert calls == {"in/flaky": 2, "in/poison": 1}


async def test_tracing_off_makes_no_spans_and_no_header(spans: InMemorySpanExporter, store: Store,
                                                        bucket: str, moto_endpoint: str) -> None:
    """With tracing off (the default), a publish inside an application span stores no ``traceparent``
    and the consumer makes no span: the application's own span is the only one."""
    from s3stream.layouts.topics import create_topic

    await create_topic(store, bucket, "quiet", shards=1, layout="log")
    settings = settings_for(moto_endpoint, f"s3://{bucket}/quiet", tracing=False)
    assert not Settings().tracing.enabled
    async with Producer(settings) as producer:
        with app_tracer.start_as_current_span("request"):
            published = await producer.publish(f"s3://{bucket}/quiet", b"hush")
    assert "traceparent" not in (await store.get_object(bucket, published.key)).metadata
    consumer, rec = Consumer(settings), Recorder()
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(1)
    assert "traceparent" not in rec.messages[0].metadata
    assert [s.name for s in spans.get_finished_spans()] == ["request"]


def test_tracing_without_the_api_is_one_line(tmp_path: Path) -> None:
    """s3stream imports no OpenTelemetry by default; with the API missing, ``[tracing] enabled = true``
    is one line naming the setting and the extra to install, exit 2."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = ("import sys, s3stream.cli, s3stream.pipeline.consumer, s3stream.layouts.producer; "
             "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    loaded = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT, check=True)
    assert loaded.stdout.strip() == "[]"
    config = tmp_path / "traced.toml"
    config.write_text('[tracing]\nenabled = true\n[[sources]]\nurl = "s3://b/t/"\n')
    blocked = ("import runpy, sys; sys.modules['opentelemetry'] = None; "
               f"sys.argv = ['s3stream', 'config', 'check', {json.dumps(str(config))}]; "
               "runpy.run_module('s3stream', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", blocked], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    assert result.returncode == 2
    assert line.startswith("s3stream: error: invalid config: tracing.enabled:")
    assert "pip install 's3stream[otel]'" in line
