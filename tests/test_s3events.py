"""Pure parts of the notifications source: event parsing in its three formats, the bounded
de-duplication set, routing rules, the notification settings' validation, and the merging of queue
policies and bucket notification configurations by ``notifications setup``."""

from __future__ import annotations

import orjson
import pytest

from s3stream.cli.notify import (
    configuration_id,
    merge_notifications,
    merge_policy,
    queue_configuration,
    queue_statement,
)
from s3stream.config import build_settings
from s3stream.errors import ConfigError
from s3stream.integrations.routing import source_handler
from s3stream.integrations.s3events import NotAnS3Event, ObjectEvent, RecentSet, parse_message
from s3stream.message import Message, ms_to_datetime
from s3stream.pipeline.handlers import as_handler

RECORD = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-11-23T00:00:00.000Z",
          "eventName": "ObjectCreated:Put",
          "s3": {"bucket": {"name": "b"}, "object": {"key": "dir%2Fred+flower%2B1.jpg", "size": 3,
                                                    "eTag": "e", "versionId": "v1", "sequencer": "0A"}}}


def test_direct_record_is_parsed_and_its_key_decoded() -> None:
    """A direct S3 → SQS body: bucket, decoded key (``+`` is a space, ``%2B`` a plus), version,
    sequencer and ETag."""
    (event,) = parse_message(orjson.dumps({"Records": [RECORD]}).decode()).events
    assert event == ObjectEvent(bucket="b", key="dir/red flower+1.jpg", name="ObjectCreated:Put",
                                version_id="v1", sequencer="0A", etag="e", time="2026-11-23T00:00:00.000Z")
    assert not event.removed
    assert event.ident == ("b", "dir/red flower+1.jpg", "v", "v1")


def test_sns_envelope_is_unwrapped() -> None:
    """An SNS notification whose Message is a direct body parses to that body's events."""
    body = {"Type": "Notification", "MessageId": "m", "Message": orjson.dumps({"Records": [RECORD]}).decode()}
    (event,) = parse_message(orjson.dumps(body).decode()).events
    assert event.key == "dir/red flower+1.jpg"


def test_eventbridge_event_is_parsed_without_decoding() -> None:
    """An EventBridge "Object Deleted" event: its key is taken as is, and it is a removal."""
    body = {"detail-type": "Object Deleted", "source": "aws.s3", "time": "t",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "a+b c", "version-id": "v9",
                                                           "sequencer": "1F"}}}
    (event,) = parse_message(orjson.dumps(body).decode()).events
    assert (event.key, event.version_id, event.sequencer, event.removed) == ("a+b c", "v9", "1F", True)


def test_test_event_and_other_event_types_give_no_events() -> None:
    """``s3:TestEvent`` is recognised as such; records of other event types are counted as ignored."""
    assert parse_message('{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}').test
    tagging = {**RECORD, "eventName": "ObjectTagging:Put"}
    parsed = parse_message(orjson.dumps({"Records": [tagging, RECORD]}).decode())
    assert (len(parsed.events), parsed.ignored) == (1, 1)
    eventbridge = {"detail-type": "Object Restore Completed", "source": "aws.s3", "detail": {}}
    assert parse_message(orjson.dumps(eventbridge).decode()).ignored == 1


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"hello": 1}',
                                  '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}'])
def test_other_bodies_are_one_readable_line(body: str) -> None:
    """A body that is no S3 event in any format raises NotAnS3Event with one line."""
    with pytest.raises(NotAnS3Event) as info:
        parse_message(body)
    assert "\n" not in str(info.value)


def test_identity_falls_back_from_version_to_sequencer_to_etag_and_time() -> None:
    """Without a version id the sequencer identifies an event; without both (moto) the ETag, time
    and kind do, so moto's two records of one multipart upload (Put, CompleteMultipartUpload) at
    one instant are one."""
    seq = ObjectEvent("b", "k", "ObjectCreated:Put", sequencer="0A")
    assert seq.ident == ("b", "k", "s", "0A")
    put = ObjectEvent("b", "k", "ObjectCreated:Put", etag="e", time="t")
    complete = ObjectEvent("b", "k", "ObjectCreated:CompleteMultipartUpload", etag="e", time="t")
    assert put.ident == complete.ident
    assert put.ident != ObjectEvent("b", "k", "ObjectRemoved:Delete", etag="e", time="t").ident


def test_recent_set_is_bounded() -> None:
    """The de-duplication set keeps at most ``size`` identities, evicting the oldest."""
    recent = RecentSet(size=3)
    for i in range(5):
        recent.add(i)
    assert len(recent) == 3
    assert 0 not in recent
    assert 4 in recent


def test_recent_set_forgets_after_ttl() -> None:
    """An identity older than the TTL is no longer reported as seen."""
    recent = RecentSet(ttl=0.0)
    recent.add("x")
    assert "x" not in recent


def _message(key: str) -> Message:
    return Message("b", key, "v", ms_to_datetime(0), 0, "", b"")


async def test_router_picks_the_first_matching_route_else_the_default() -> None:
    """Routes are tried in order (glob before prefix here); unmatched keys go to the default."""
    got: list[tuple[str, str]] = []

    def named(name: str) -> object:
        async def handle(message: Message) -> None:
            got.append((name, message.key))
        return handle

    settings = build_settings({"sources": [{"url": "s3://b/", "handler": "other", "routes": [
        {"pattern": "*/raw/*.csv", "handler": "csv"}, {"prefix": "tenant-1/raw/", "handler": "t1"}]}]})
    handlers = {n: as_handler(named(n), n) for n in ("other", "csv", "t1")}
    routed = source_handler(settings.sources[0], handlers)
    for key in ("tenant-1/raw/a.csv", "tenant-1/raw/b.json", "tenant-2/x"):
        await routed.handle(_message(key))
    assert got == [("csv", "tenant-1/raw/a.csv"), ("t1", "tenant-1/raw/b.json"), ("other", "tenant-2/x")]


def test_route_outside_the_source_prefix_is_refused() -> None:
    """A prefix route that can never match the source's keys is a config error naming the route."""
    settings = build_settings({"sources": [{"url": "s3://b/in/", "routes": [
        {"prefix": "out/", "handler": "stdout"}]}]})
    handler = as_handler(named_noop, "stdout")
    with pytest.raises(ConfigError, match=r"routes\.0\.prefix: 'out/' is outside"):
        source_handler(settings.sources[0], {"stdout": handler})


async def named_noop(message: Message) -> None:
    return None


@pytest.mark.parametrize(("source", "field"), [
    ({"notifications": {"visibility_timeout": 60}}, r"sources\.0\.notifications\.queue_url: Field required"),
    ({"notifications": {"queue_url": "q"}}, r"sources\.0\.notifications\.queue_url: String should match"),
    ({"notifications": {"queue_url": "https://q", "reconcile_interval": 0}},
     r"sources\.0\.notifications\.reconcile_interval"),
    ({"notifications": {"queue_url": "https://q", "color": 1}}, r"sources\.0\.notifications\.color: unknown"),
    ({"routes": [{"prefix": "a/", "pattern": "*", "handler": "h"}]},
     r"sources\.0\.routes\.0: Value error, give exactly one of prefix or pattern"),
    ({"routes": [{"prefix": "a/"}]}, r"sources\.0\.routes\.0\.handler: Field required"),
])
def test_bad_notification_and_route_settings_name_the_field(source: dict[str, object], field: str) -> None:
    """Each bad setting is one ConfigError line naming its dotted field."""
    with pytest.raises(ConfigError, match=field) as info:
        build_settings({"sources": [{"url": "s3://b/in/", **source}]})
    assert "\n" not in str(info.value)


def test_policy_merge_keeps_other_statements_and_replaces_its_own() -> None:
    """Merging the S3 statement into a queue policy keeps foreign statements and is idempotent."""
    ours = queue_statement("arn:aws:sqs:us-east-1:123:q", "bkt")
    assert ours["Condition"] == {"ArnEquals": {"aws:SourceArn": "arn:aws:s3:::bkt"}}
    assert ours["Principal"] == {"Service": "s3.amazonaws.com"}
    foreign = {"Sid": "other", "Effect": "Allow", "Principal": "*", "Action": "sqs:*", "Resource": "x"}
    once = merge_policy({"Version": "2012-10-17", "Statement": [foreign]}, ours)
    assert merge_policy(once, ours) == once
    assert once["Statement"] == [foreign, ours]
    assert merge_policy(None, ours) == {"Version": "2012-10-17", "Statement": [ours]}


def test_notification_merge_keeps_other_configurations() -> None:
    """Topic, function and other queue configurations survive; ours is replaced, not duplicated."""
    arn = "arn:aws:sqs:us-east-1:123:q"
    ours = queue_configuration(arn, configuration_id("q", "in/"), "in/", ("s3:ObjectCreated:*",))
    other_queue = queue_configuration("arn:aws:sqs:us-east-1:123:r", "x", "in/", ("s3:ObjectCreated:*",))
    topic = {"Id": "t", "TopicArn": "arn:aws:sns:us-east-1:123:t", "Events": ["s3:ObjectCreated:*"]}
    existing = {"TopicConfigurations": [topic], "QueueConfigurations": [other_queue, {**ours, "Id": "old"}]}
    merged = merge_notifications(existing, ours)
    assert merged == {"TopicConfigurations": [topic], "QueueConfigurations": [other_queue, ours]}
    assert merge_notifications(merged, ours) == merged
    assert configuration_id("q", "in/") != configuration_id("q", "out/")
