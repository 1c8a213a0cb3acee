"""``s3stream notifications setup``: a bucket that notifies an SQS queue (the tenant router's set-up).

Three steps, each idempotent, so running the command twice changes nothing:

1. create the queue (events kept 14 days, long polling on);
2. merge into the queue's access policy a statement that lets ``s3.amazonaws.com`` send messages
   when ``aws:SourceArn`` is the bucket's ARN (other statements are kept);
3. merge into the bucket's notification configuration a queue configuration for
   ``s3:ObjectCreated:*`` (and ``s3:ObjectRemoved:*``) filtered by the prefix. Other configurations
   (topics, functions, EventBridge, other queues) are kept; an earlier s3stream configuration for
   the same queue and prefix is replaced.

The order matters on AWS: S3 checks that it may send to the queue when the configuration is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import click
import orjson

from s3stream.cli.app import fail, run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.config import Settings
from s3stream.errors import S3StreamError
from s3stream.s3.sqs import Queue, open_sqs, translate
from s3stream.s3.store import open_store

QUEUE_ATTRIBUTES = {"MessageRetentionPeriod": "1209600", "ReceiveMessageWaitTimeSeconds": "20"}


@dataclass(frozen=True, slots=True)
class SetUp:
    """What ``setup`` created or updated."""

    queue_url: str
    queue_arn: str
    configuration_id: str
    events: tuple[str, ...]
    versioned: bool


def configuration_id(queue_name: str, prefix: str) -> str:
    """The Id of s3stream's queue configuration for one queue and prefix (stable across runs)."""
    digest = hashlib.blake2b(prefix.encode(), digest_size=4).hexdigest()
    return f"s3stream-{queue_name}-{digest}"


def queue_statement(queue_arn: str, bucket: str) -> dict[str, Any]:
    """The policy statement letting S3 send the bucket's events to the queue."""
    partition = queue_arn.split(":")[1] if queue_arn.count(":") >= 5 else "aws"
    return {
        "Sid": f"s3stream-{bucket}",
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": f"arn:{partition}:s3:::{bucket}"}},
    }


def merge_policy(existing: dict[str, Any] | None, statement: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with ``statement`` added, replacing a statement with the same ``Sid``."""
    policy = dict(existing or {"Version": "2012-10-17"})
    kept = [s for s in _as_list(policy.get("Statement")) if s.get("Sid") != statement["Sid"]]
    policy["Statement"] = [*kept, statement]
    return policy


def queue_configuration(queue_arn: str, config_id: str, prefix: str,
                        events: tuple[str, ...]) -> dict[str, Any]:
    """One ``QueueConfigurations`` entry."""
    config: dict[str, Any] = {"Id": config_id, "QueueArn": queue_arn, "Events": list(events)}
    if prefix:
        config["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    return config


def merge_notifications(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """``existing`` (as GetBucketNotificationConfiguration returns it) with ``ours`` added: a queue
    configuration with the same Id, or for the same queue and prefix, is replaced; the rest is kept."""
    merged = {k: v for k, v in existing.items() if k != "QueueConfigurations"}
    kept = [c for c in existing.get("QueueConfigurations", [])
            if c.get("Id") != ours["Id"]
            and not (c.get("QueueArn") == ours["QueueArn"] and _prefix(c) == _prefix(ours))]
    merged["QueueConfigurations"] = [*kept, ours]
    return merged


def _prefix(config: dict[str, Any]) -> str:
    rules = config.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return next((str(r.get("Value", "")) for r in rules if str(r.get("Name", "")).lower() == "prefix"), "")


def _as_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


async def queue_policy(queue: Queue, queue_url: str) -> dict[str, Any] | None:
    """The queue's current access policy, or None."""

    async def once() -> Any:
        with translate("GetQueueAttributes", queue=queue_url):
            return await queue.client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"])

    resp = await queue.retry.call(once, what="GetQueueAttributes")
    raw = (resp.get("Attributes") or {}).get("Policy")
    return orjson.loads(raw) if raw else None


async def setup(settings: Settings, bucket: str, queue_name: str, *, prefix: str = "",
                deletes: bool = True) -> SetUp:
    """Create the queue, allow the bucket to send to it, and make the bucket notify it."""
    events = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*") if deletes else ("s3:ObjectCreated:*",)
    config_id = configuration_id(queue_name, prefix)
    async with open_store(settings.s3) as store, open_sqs(settings.s3) as queue:
        await store.check_bucket(bucket)
        versioned = await store.versioning_status(bucket) == "Enabled"
        url = await queue.create_queue(queue_name, attributes=QUEUE_ATTRIBUTES)
        arn = await queue.queue_arn(url)
        policy = merge_policy(await queue_policy(queue, url), queue_statement(arn, bucket))
        await queue.set_policy(url, policy)
        ours = queue_configuration(arn, config_id, prefix, events)
        await store.put_bucket_notification(bucket, merge_notifications(
            await store.get_bucket_notification(bucket), ours))
    return SetUp(queue_url=url, queue_arn=arn, configuration_id=config_id, events=events, versioned=versioned)


@click.group("notifications")
def notifications_group() -> None:
    """S3 Event Notifications: make a bucket notify an SQS queue that a source reads."""


@notifications_group.command("setup")
@click.option("--bucket", required=True, help="The bucket whose events are sent.")
@click.option("--queue-name", required=True, help="The SQS queue to create (or reuse).")
@click.option("--prefix", default="", help="Only keys under this prefix. [default: the whole bucket]")
@click.option("--deletes/--no-deletes", default=True, show_default=True,
              help="Also send s3:ObjectRemoved:* events.")
@s3_options
def notifications_setup(bucket: str, queue_name: str, prefix: str, deletes: bool,
                        endpoint_url: str | None, config: str | None) -> None:
    """Create the queue, its access policy and the bucket's notification configuration.

    Prints the queue URL on stdout, and on stderr what was configured with the [[sources]] entry
    that consumes it. --endpoint-url applies to S3 and SQS (AWS_ENDPOINT_URL_SQS overrides it).
    """
    try:
        settings = command_settings(config, endpoint_url)
    except S3StreamError as exc:
        fail(exc)

    async def go() -> None:
        done = await setup(settings, bucket, queue_name, prefix=prefix, deletes=deletes)
        click.echo(done.queue_url)
        under = f"under {prefix!r}" if prefix else "in the whole bucket"
        click.echo(f"bucket {bucket} notifies {done.queue_arn} of {', '.join(done.events)} {under} "
                   f"(configuration {done.configuration_id})", err=True)
        if not done.versioned:
            click.echo(f"note: bucket {bucket} is not versioned; a notifications source needs versioning "
                       f"(s3stream bucket create {bucket} --versioning)", err=True)
        click.echo(f'consume it with:\n  [[sources]]\n  url = "s3://{bucket}/{prefix}"\n'
                   f'  notifications = {{ queue_url = "{done.queue_url}" }}', err=True)

    run_async(go)
