"""What is consumed and by whom: ``[[sources]]`` (with their notifications and routes),
``[handlers.NAME]``, ``[snapshot]``, and :class:`Settings`, the whole configuration."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from s3stream.config.env import parse_s3_url
from s3stream.config.sections import (
    ConsumerSettings,
    MetricsSettings,
    ProducerSettings,
    S3Settings,
    TracingSettings,
    _Model,
)
from s3stream.integrations.codecs import Compression, Framing
from s3stream.plugins import check_codec


class NotificationSettings(_Model):
    """A source's `notifications = {queue_url = …}`: discover new versions from the bucket's S3 Event
    Notifications read from an SQS queue (`s3stream notifications setup`), reconciled with a listing
    every reconcile_interval."""

    queue_url: str = Field(pattern=r"^https?://",
                           examples=["https://sqs.us-west-2.amazonaws.com/123456789012/my-queue"],
                           description="The SQS queue the bucket notifies (required).")
    visibility_timeout: int = Field(default=60, ge=2, le=43200, description="Seconds an SQS message is "
                                    "hidden; extended every third of it while its objects are handled.")
    reconcile_interval: float = Field(default=60.0, gt=0, description="Seconds between listing passes: "
                                      "the worst-case delay of an object whose event was lost.")
    wait_seconds: int = Field(default=20, ge=0, le=20, description="SQS long-poll wait in seconds.")
    max_in_flight: int = Field(default=100, gt=0, le=10000, description="SQS messages held at once; "
                               "receiving waits beyond it.")
    deletes: bool = Field(default=True, description="Deliver delete markers as deletion messages (false: "
                          "skip them).")


class RouteSettings(_Model):
    """Routes of a source, tried in order: the first whose prefix starts the key (or whose glob
    pattern matches it) names the handler, and the source's handler takes the rest."""

    prefix: str | None = Field(default=None, examples=["tenant-1/raw/"],
                               description="Keys starting with this go to handler (inside the source's "
                                           "prefix). Give exactly one of prefix and pattern.")
    pattern: str | None = Field(default=None, examples=["*/raw/*.csv"],
                                description="An fnmatch glob over the whole key (* also matches /).")
    handler: str = Field(min_length=1, examples=["tenant-1"], description="The handler of matching keys.")

    @model_validator(mode="after")
    def _one_of(self) -> RouteSettings:
        if (self.prefix is None) == (self.pattern is None):
            raise ValueError("give exactly one of prefix or pattern")
        return self


class SourceSettings(_Model):
    """One consumed prefix, and the handler that receives its messages. Give one `[[sources]]` entry
    per prefix; prefixes in one bucket must not overlap."""

    url: str = Field(examples=["s3://my-bucket/events/"],
                     description="s3://BUCKET/PREFIX (required): a topic, or any prefix; an empty prefix "
                                 "consumes the whole bucket. A versions-layout topic needs a versioned "
                                 "bucket.")
    handler: str = Field(default="stdout", description="A [handlers.NAME] section's name, a built-in "
                         "(stdout, jsonl, sqs) or package.module:attr.")
    codec: str = Field(default="raw", description="Decode each message into message.value: raw (value "
                       "stays None), json, text, csv, or a codec plugin's name (an s3stream.codecs entry "
                       "point, or module:attr).")
    framing: Framing = Field(default="none", description="\"none\": an object is one message; \"lines\": "
                             "one message per line, message.offset the line number.")
    compression: Compression = Field(default="auto", description="\"auto\": the Content-Encoding, else a "
                                     ".gz/.zst/.zstd name; \"gzip\" or \"zstd\" force one; \"none\" keeps "
                                     "the stored bytes.")
    max_decompressed_mb: int = Field(default=1024, gt=0, description="A body that decompresses to more "
                                     "MiB than this is dead-lettered (a compression bomb stops here).")
    notifications: NotificationSettings | None = Field(
        default=None, description="Discover new objects from S3 Event Notifications on an SQS queue.")
    routes: list[RouteSettings] = Field(default_factory=list, description="Handlers per key prefix or glob.")

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        return check_codec(value)

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        parse_s3_url(value)
        return value

    @property
    def bucket(self) -> str:
        return parse_s3_url(self.url)[0]

    @property
    def prefix(self) -> str:
        return parse_s3_url(self.url)[1]


class HandlerSettings(_Model):
    """A named handler with options. Every key but `use` is passed to the handler's
    factory as its options (the built-in jsonl takes `path`; sqs takes `queue_url`, `template`, …)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str = Field(examples=["jsonl"], description="An entry point of the s3stream.handlers group "
                     "(built in: stdout, jsonl, sqs) or package.module:attr (required).")

    def options(self) -> dict[str, Any]:
        """The handler's own config section (everything but ``use``)."""
        return dict(self.model_extra or {})


class SnapshotSettings(_Model):
    """The key-value file `s3stream snapshot serve` follows, and where it serves it."""

    url: str | None = Field(default=None, examples=["s3://my-bucket/batch/output.csv"],
                            description="s3://BUCKET/KEY of the key-value file (or `snapshot serve URL`).")
    parser: str = Field(default="csv", min_length=1, description="csv, csv-header, json, jsonl, a "
                        "snapshot parser plugin's name or module:attr.")
    interval: float = Field(default=30.0, gt=0, description="Seconds between checks for a new version.")
    fallback_versions: int = Field(default=10, ge=0, description="Versions newer than the one served that "
                                   "are tried, newest first, when the latest is refused.")
    max_mb: int = Field(default=256, gt=0, description="A version larger than this many MiB is refused "
                        "without being read; the last good one is served.")
    host: str = Field(default="127.0.0.1", description="The address the HTTP server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="The HTTP server's port.")

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not parse_s3_url(value)[1]:
            raise ValueError(f"expected s3://BUCKET/KEY, got {value!r}")
        return value


class Settings(_Model):
    """The whole configuration of one `s3stream run`."""

    s3: S3Settings = Field(default_factory=S3Settings,  # a factory: its region is read from the environment
                           description="How to reach the store.")
    consumer: ConsumerSettings = Field(default=ConsumerSettings(), description="The consumer's knobs.")
    producer: ProducerSettings = Field(default=ProducerSettings(), description="The producer's knobs.")
    metrics: MetricsSettings = Field(default=MetricsSettings(), description="Metrics and health endpoint.")
    sources: list[SourceSettings] = Field(default_factory=list, description="The consumed prefixes.")
    handlers: dict[str, HandlerSettings] = Field(default_factory=dict, description="Named handlers.")
    snapshot: SnapshotSettings = Field(default=SnapshotSettings(), description="The snapshot follower.")
    tracing: TracingSettings = Field(default=TracingSettings(), description="OpenTelemetry tracing.")
