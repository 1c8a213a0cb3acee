"""Settings: pydantic models, loaded from TOML, validated once at start.

A bad value raises :class:`~s3stream.errors.ConfigError` whose message names the field
(``consumer.concurrency: Input should be greater than 0 (got -1)``).
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from s3stream.errors import ConfigError
from s3stream.integrations.codecs import Compression, Framing
from s3stream.plugins import check_codec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Settings(_Model):
    """How to reach the store. Credentials come from the standard AWS chain unless given here."""

    endpoint_url: str | None = Field(default=None, description="Falls back to AWS_ENDPOINT_URL.")
    region: str = Field(default_factory=lambda: env_region(os.environ), min_length=1,
                        description="The bucket's region [default: AWS_REGION, else AWS_DEFAULT_REGION, "
                                    "else us-east-1].")
    expected_bucket_owner: str | None = Field(
        default=None, pattern=r"^[0-9]{12}$",
        description="The AWS account that must own the buckets: sent with every request "
                    "(x-amz-expected-bucket-owner), so S3 refuses a bucket another account owns.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, description="Attempts per S3 call, retries included.")
    max_retry_time: float = Field(default=60.0, gt=0, description="Seconds one call may spend retrying.")
    max_connections: int | None = Field(
        default=None, ge=1, le=4096,
        description="Connections per pool to the store (unset: consumer concurrency + 8, producer's + 4).",
    )
    lean_path: bool = Field(
        default=True,
        description="GetObject, PutObject and listings over the lean signed-HTTP path (off: aiobotocore).",
    )

    def resolved_endpoint(self, service: str = "s3") -> str | None:
        """The endpoint URL for ``service`` (``"s3"``, ``"sqs"``…), as botocore resolves it:
        ``AWS_ENDPOINT_URL_<SERVICE>`` (upper-cased, spaces and dashes as ``_``) wins, then the
        setting (``--endpoint-url``), then ``AWS_ENDPOINT_URL``; None means AWS itself."""
        name = "AWS_ENDPOINT_URL_" + service.upper().replace(" ", "_").replace("-", "_")
        return os.environ.get(name) or self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


class CheckpointSettings(_Model):
    """Where cursors are committed: an S3 object (default), a local file, or memory (not kept)."""

    store: Literal["s3", "file", "memory"] = "s3"
    prefix: str = Field(default="_s3stream/checkpoints", description="Control prefix for the s3 store.")
    directory: str = Field(default=".s3stream/checkpoints", description="Folder for the file store.")
    interval: float = Field(default=1.0, gt=0, description="Most seconds between commits while busy.")


class LeaseSettings(_Model):
    """Consumer groups: members share a topic's shards by leases under the control prefix."""

    enabled: bool = Field(default=False, description="Share the shards with the group's other members.")
    duration: float = Field(default=30.0, ge=2, description="Seconds a lease lives without renewal.")
    renew_interval: float | None = Field(default=None, gt=0, description="Seconds between renewals "
                                         "[default: a third of the duration].")
    member_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$",
                                  description="This member's name [default: <host>-<pid>-<random>].")

    @model_validator(mode="after")
    def _renew_within_duration(self) -> LeaseSettings:
        if self.renew_interval is not None and self.renew_interval * 2 > self.duration:
            raise ValueError("renew_interval: must be at most half of duration, so a renewal can fail "
                             "once without losing the lease")
        return self

    @property
    def every(self) -> float:
        return self.renew_interval or self.duration / 3


class ConsumerSettings(_Model):
    """The consumer's knobs. Times are seconds."""

    group: str = Field(default="default", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    concurrency: int = Field(default=64, gt=0, le=1024, description="Objects fetched and handled at once.")
    queue_size: int = Field(default=1000, gt=0)
    poll_interval: float = Field(default=0.05, gt=0, description="Wait between polls while messages flow.")
    max_poll_interval: float = Field(default=5.0, gt=0, description="Idle polls back off up to this.")
    settle_window: float = Field(default=30.0, ge=0, description="How late a version may become visible.")
    start_from: Literal["earliest", "latest"] = "earliest"
    page_size: int = Field(default=1000, gt=0, le=1000)
    handler_attempts: int = Field(default=5, ge=1, description="Tries before dead-lettering.")
    handler_retry_time: float = Field(default=60.0, ge=0, description="Seconds a failing message's "
                                      "attempts are spread over: the last comes this long after the first.")
    handler_timeout: float | None = Field(default=300.0, gt=0, description="Seconds per handler call.")
    dead_letters: bool = Field(default=True, description="Set failing messages aside (else stop).")
    max_body_mb: int = Field(default=256, gt=0, description="An object larger than this many MiB is "
                             "dead-lettered, never read whole.")
    max_inflight_mb: int = Field(default=1024, gt=0, description="MiB of bodies the workers hold at once, "
                                 "by listed size; a fetch waits for room.")
    shutdown_grace: float = Field(default=30.0, ge=0)
    checkpoint: CheckpointSettings = CheckpointSettings()
    leases: LeaseSettings = LeaseSettings()


class ProducerSettings(_Model):
    """The producer's knobs. Segments are on when ``segment_max_messages`` > 1 (log layout only)."""

    concurrency: int = Field(default=32, gt=0, le=1024, description="PUTs in flight at once.")
    segment_max_messages: int = Field(default=1, ge=1, description="Messages per segment object.")
    segment_max_bytes: int = Field(default=1 << 20, gt=0, description="Flush a segment at this size.")
    linger: float = Field(default=0.05, ge=0, description="Most seconds a message waits in a segment.")
    compression: Literal["none", "gzip", "zstd"] = "none"
    codec: str = Field(default="raw", description="How publish() turns a value into a body: raw, json, "
                       "text, csv, or a plugin's name.")
    framing: Framing = Field(default="none", description="lines: many messages per object, one a line.")
    multipart_threshold: int = Field(default=16 << 20, ge=5 << 20, description="Bodies above: multipart.")
    multipart_part_size: int = Field(default=8 << 20, ge=5 << 20, description="Size of each part.")
    sse: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = Field(
        default=None, description="Server-side encryption of the objects a producer writes (unset: the "
                                  "bucket's default encryption).",
    )
    sse_kms_key_id: str | None = Field(
        default=None, min_length=1,
        description="With sse = \"aws:kms\" (or \"aws:kms:dsse\"): the KMS key's id, ARN or alias "
                    "(unset: the account's AWS managed key for S3).",
    )
    put_deadline: float = Field(
        default=10.0, gt=0,
        description="Log layout: seconds from the time in an object's name to its write's answer; a "
                    "slower write is made again under a new time. Keep it below consumers' settle_window.",
    )

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> ProducerSettings:
        if self.sse_kms_key_id is not None and self.sse not in {"aws:kms", "aws:kms:dsse"}:
            raise ValueError('sse_kms_key_id: needs sse = "aws:kms" (or "aws:kms:dsse")')
        return self

    def encryption_headers(self) -> dict[str, str]:
        """The ``x-amz-server-side-encryption…`` headers of every object the producer writes."""
        headers: dict[str, str] = {"x-amz-server-side-encryption": self.sse} if self.sse else {}
        if self.sse_kms_key_id:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse_kms_key_id
        return headers

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        return check_codec(value)


class MetricsSettings(_Model):
    """The HTTP endpoint for ``/metrics``, ``/healthz`` and ``/readyz`` (off unless a port is set)."""

    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"
    ready_after: float = Field(default=60.0, gt=0, description="A shard not polled for this long: not ready.")


class NotificationSettings(_Model):
    """``notifications = {queue_url = …}`` on a source: discover new versions from S3 Event
    Notifications read from an SQS queue, reconciled with a listing every ``reconcile_interval``."""

    queue_url: str = Field(pattern=r"^https?://", description="The SQS queue the bucket notifies.")
    visibility_timeout: int = Field(default=60, ge=2, le=43200, description="Extended while handling.")
    reconcile_interval: float = Field(default=60.0, gt=0, description="Seconds between listing passes.")
    wait_seconds: int = Field(default=20, ge=0, le=20, description="SQS long-poll wait.")
    max_in_flight: int = Field(default=100, gt=0, le=10000, description="SQS messages held at once.")
    deletes: bool = Field(default=True, description="Deliver delete markers (false: skip them).")


class RouteSettings(_Model):
    """``[[sources.routes]]``: keys starting with ``prefix`` (or matching the glob ``pattern``) go to
    ``handler``; the first matching route wins, the source's ``handler`` takes the rest."""

    prefix: str | None = None
    pattern: str | None = None
    handler: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> RouteSettings:
        if (self.prefix is None) == (self.pattern is None):
            raise ValueError("give exactly one of prefix or pattern")
        return self


class SourceSettings(_Model):
    """One consumed prefix: ``url = "s3://bucket/prefix/"`` and the handler that receives it."""

    url: str
    handler: str = "stdout"
    codec: str = Field(default="raw", description="Decode each message: raw, json, text, csv, or a "
                       "plugin's name (s3stream.codecs entry points, module:attr).")
    framing: Framing = Field(default="none", description="lines: one message per line of an object.")
    compression: Compression = Field(default="auto", description="auto: Content-Encoding, else extension.")
    max_decompressed_mb: int = Field(default=1024, gt=0, description="A body decompressing to more is "
                                     "dead-lettered (a compression bomb must not exhaust memory).")
    notifications: NotificationSettings | None = None
    routes: list[RouteSettings] = Field(default_factory=list)

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
    """``[handlers.NAME]``: ``use`` is an entry-point name or ``module:attr``; other keys go to it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str

    def options(self) -> dict[str, Any]:
        """The handler's own config section (everything but ``use``)."""
        return dict(self.model_extra or {})


class SnapshotSettings(_Model):
    """``[snapshot]``: the key-value file ``s3stream snapshot serve`` follows, and where it serves it."""

    url: str | None = Field(default=None, description="s3://BUCKET/KEY of the key-value file.")
    parser: str = Field(default="csv", min_length=1, description="csv, csv-header, json, jsonl, module:attr.")
    interval: float = Field(default=30.0, gt=0, description="Seconds between checks for a new version.")
    fallback_versions: int = Field(default=10, ge=0, description="Older versions tried if the latest is bad.")
    max_mb: int = Field(default=256, gt=0, description="A version larger than this many MiB is refused "
                        "without being read; the last good one is served.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not parse_s3_url(value)[1]:
            raise ValueError(f"expected s3://BUCKET/KEY, got {value!r}")
        return value


class TracingSettings(_Model):
    """``[tracing]``: OpenTelemetry spans per consumed message and trace context carried from producers
    (see :mod:`s3stream.service.tracing`). Needs the ``otel`` extra; the application sets up the SDK."""

    enabled: bool = Field(default=False, description="Trace messages with the OpenTelemetry API.")

    @field_validator("enabled")
    @classmethod
    def _api_installed(cls, value: bool) -> bool:
        if value:
            from s3stream.service.tracing import require_api

            require_api()
        return value


class Settings(_Model):
    """The whole configuration of one ``s3stream run``."""

    s3: S3Settings = Field(default_factory=S3Settings)  # a factory: its region is read from the environment
    consumer: ConsumerSettings = ConsumerSettings()
    producer: ProducerSettings = ProducerSettings()
    metrics: MetricsSettings = MetricsSettings()
    sources: list[SourceSettings] = Field(default_factory=list)
    handlers: dict[str, HandlerSettings] = Field(default_factory=dict)
    snapshot: SnapshotSettings = SnapshotSettings()
    tracing: TracingSettings = TracingSettings()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` to ``("bucket", "some/prefix/")``.

    Not ``urlparse``: ``?`` and ``#`` are legal in keys and must stay part of the prefix.
    """
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
    return bucket, prefix


ENV_PREFIX = "S3STREAM_"
DEFAULT_REGION = "us-east-1"


def env_region(environ: Mapping[str, str]) -> str:
    """The region the environment names: ``AWS_REGION`` (the AWS SDKs' variable), else
    ``AWS_DEFAULT_REGION`` (the AWS CLI's), else us-east-1. ``[s3] region`` (or a flag) beats both."""
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """``S3STREAM_SECTION__KEY=value`` variables as ``{(section, key): (variable, value)}``.

    Values are read as TOML values when they parse (``8``, ``true``, ``2.5``, ``"x"``), else as
    strings. Variables without ``__`` (such as ``S3STREAM_LOG_LEVEL``) are not config.
    """
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[path] = (name, value)
    return out


def build_settings(data: dict[str, Any], *, environ: Mapping[str, str] | None = None,
                   cli: dict[str, Any] | None = None) -> Settings:
    """Validate a plain dict (as read from TOML), with ``S3STREAM_…`` overrides from ``environ``
    (the process environment unless given) and then the command line's (``cli``, nested like the
    file: a flag beats the environment, which beats the file), into :class:`Settings`, or raise
    ConfigError."""
    environ = os.environ if environ is None else environ
    overrides = env_overrides(environ)
    data = copy.deepcopy(data)
    if cli:
        overrides.update({path: ("the command line", value) for path, value in _leaves(cli)})
    for path, (_, value) in overrides.items():
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    s3 = data.setdefault("s3", {})
    if isinstance(s3, dict) and s3.get("region") is None:
        s3["region"] = env_region(environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        origins = {".".join(path): name for path, (name, _) in overrides.items()}
        raise ConfigError(describe_validation_error(exc, origins)) from None


def _leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """The (path, value) pairs of a nested dict's non-dict values."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in tree.items():
        out += _leaves(value, (*path, key)) if isinstance(value, dict) else [((*path, key), value)]
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a plain dict, or ConfigError naming the file."""
    file = Path(path)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file not found: {file}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read: {exc.strerror or exc}") from None


def load_settings(path: str | Path) -> Settings:
    """Read and validate a TOML config file."""
    return build_settings(read_toml(path))


def describe_validation_error(exc: ValidationError, origins: Mapping[str, str] | None = None) -> str:
    """pydantic's errors as ``field.path: what is wrong (got VALUE)`` lines joined by ``; ``;
    a field set from the environment names its variable."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "config"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        got = err.get("input")
        shown = err["type"] != "missing" and not isinstance(got, dict | list) and "secret" not in field
        suffix = f" (got {got!r})" if shown else ""
        origin = (origins or {}).get(field)
        parts.append(f"{field}: {message}{suffix}" + (f" (from {origin})" if origin else ""))
    return "invalid config: " + "; ".join(parts)
